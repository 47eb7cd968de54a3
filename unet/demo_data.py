"""``python -m unet.demo_data``: the demo dataset writer (:mod:`unet.data.demo`)."""
import sys

from .data.demo import main

if __name__ == "__main__":
    sys.exit(main())
