#!/usr/bin/env python
"""Train the U-Net on a dataset folder, or print its summary (also installed as ``unet-train``).

    python segmenter.py --checkpoint-file ./unet_best.params          # train on ./dataset
    python segmenter.py --checkpoint=load --checkpoint-file ./unet_best.params   # resume
    python segmenter.py --summary --channels 3 --image-size 512      # the reference table

Every flag: ``python segmenter.py --help``; the program is :mod:`unet.commands.train`.
"""
from unet.commands.train import build_parser, console_main, main  # noqa: F401

if __name__ == "__main__":
    console_main()
