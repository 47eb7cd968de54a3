"""The hostile cases, by what they attack. Each module yields ``(name, build)`` pairs, where
``build(folder) -> (cli, argv, check)`` prepares its files in a fresh ``folder`` (see
:mod:`reliability_kit.judge` for ``check``); the cases use only ``ws``, a
:class:`reliability_kit.workspace.Workspace`.

    images.py          evaluate.py on broken, odd and oddly named images and ground truths
    checkpoints.py     evaluate.py on damaged checkpoints, segmenter.py resuming from them
    training_data.py   segmenter.py on broken, odd and oddly named training files
    outputs.py         outputs that cannot be written or would replace an input
"""
