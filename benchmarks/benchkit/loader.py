"""The ``data`` row (the data pipeline alone) and the demo data set it shares with ``epoch``."""
import tempfile

from .timing import timed


def demo_dataset(folder, size, count):
    """Write the demo data set into ``folder``: ``count`` training images of ``size x size``,
    2 validation and 1 test image, seed 0. Returns ``folder``."""
    from unet.data.demo import generate_demo_dataset
    generate_demo_dataset(folder, seed=0, size=size, n_train=count, n_validate=2, n_test=1)
    return folder


def run_data(spec):
    """Time epochs of the training loader (load and augment) over ``epoch_images`` images.

    Returns
    -------
    dict
        ``first_ms``, ``times_ms`` (whole epochs), ``images`` per epoch and ``workers``.
    """
    from unet.data.samples import prepare_data
    from unet.data.loader import EpochLoader, SegmentationDataset
    size, count = spec["size"], spec["epoch_images"]
    with tempfile.TemporaryDirectory() as folder:
        info = prepare_data(demo_dataset(folder, size, count), 2, channels=spec["channels"])
        dataset = SegmentationDataset(info.train, info, size, augment=True, seed=0)
        loader = EpochLoader(dataset, spec["batch"], shuffle=True, num_workers=spec["workers"])
        state = {"epoch": 0}

        def one_epoch():        # as in training: the workers live across epochs
            for _ in loader.epoch(state["epoch"]):
                pass
            state["epoch"] += 1

        try:
            first, times = timed(one_epoch, spec["warmup"], spec["repeat"])
        finally:
            loader.close()
        images = len(dataset)
    return dict(first_ms=first, times_ms=times, images=images, workers=spec["workers"])
