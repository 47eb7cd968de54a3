"""``python -m unet.isbi``: the ISBI 2012 converter (:mod:`unet.data.isbi`)."""
import sys

from .data.isbi import main

if __name__ == "__main__":
    sys.exit(main())
