"""Segmenting images: the :class:`~unet.inference.segmenter.Segmenter`, overlap-tiling,
post-processing, evaluation of folders and dataset splits, and the metrics."""
