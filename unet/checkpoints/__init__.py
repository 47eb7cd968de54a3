"""Checkpoints: their files and metadata, writing them atomically and loading them, the
optimizer state, the training loop's background saver and the lock that keeps two runs apart."""
