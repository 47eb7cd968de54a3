#!/usr/bin/env python
"""Segment images with a trained U-Net checkpoint, score them, or export the network (also
installed as ``unet-evaluate``).

    python evaluate.py --image ./input.png --network-param ./unet_best.params
    python evaluate.py --image ./images/ --network-param ./unet_best.params --tta
    python evaluate.py --data-dir ./data --network-param ./unet_best.params
    python evaluate.py --network-param ./unet_best.params --export ./deploy/unet

Every flag: ``python evaluate.py --help``; the program is :mod:`unet.commands.evaluate`.
"""
from unet.commands.evaluate import build_parser, console_main, main  # noqa: F401

if __name__ == "__main__":
    console_main()
