"""The programs: :mod:`~unet.commands.train` behind ``segmenter.py`` and ``unet-train``,
:mod:`~unet.commands.evaluate` behind ``evaluate.py`` and ``unet-evaluate``. Each parses its
flags into a config and calls the stages; bad input is one line on stderr and exit code 2."""
