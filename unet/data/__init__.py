"""Data on disk and in batches: image and mask reading and writing, mask encodings, dataset
listing and checks, augmentation, weight maps, the batch loader and its worker processes, and
the demo and ISBI 2012 datasets."""
