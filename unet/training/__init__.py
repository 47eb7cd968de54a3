"""Training: the :class:`~unet.training.config.TrainConfig`, the loop and its steps, losses,
validation, the TensorBoard log and recomputation."""
