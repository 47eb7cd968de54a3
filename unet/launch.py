"""``python -m unet.launch``: the parameter-server launcher (:mod:`unet.cluster.launch`)."""
import sys

from .cluster.launch import main

if __name__ == "__main__":
    sys.exit(main())
