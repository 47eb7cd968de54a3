"""What the hostile cases start from: a dataset, a trained tiny checkpoint, a test image."""
import os
import re
import shutil

from .files import load
from .runs import TINY, call_cli, make_dataset


class Workspace:
    """A dataset, a trained tiny checkpoint and a test image, and fresh copies of them."""

    def __init__(self, root):
        self.root = root
        self.data = make_dataset(os.path.join(root, "data"))
        self.image = os.path.join(self.data, "test", "image", "0.png")
        self.gray = load(self.image)
        self.ckpt = os.path.join(root, "ck", "unet.params")
        code, err = call_cli("segmenter", self.train_args(self.data, self.ckpt))
        if code != 0:
            raise RuntimeError(f"training the workspace checkpoint failed: {err}")
        self.count = 0

    def fresh(self, name):
        self.count += 1
        folder = os.path.join(self.root, f"{self.count:02d}-{re.sub(r'[^a-z0-9]+', '-', name)}")
        os.makedirs(folder)
        return folder

    def train_args(self, data, ckpt, epochs=1):
        return ["--data-dir", data, "--checkpoint-file", ckpt, "--log-dir",
                os.path.join(os.path.dirname(ckpt), "logs"), "--num-epochs", str(epochs),
                "--num-workers", "0", "--no-histograms"] + TINY

    def copy_data(self, folder):
        return shutil.copytree(self.data, os.path.join(folder, "data"))

    def copy_checkpoint(self, folder):
        from unet.checkpoints.files import meta_path
        target = os.path.join(folder, "unet.params")
        shutil.copy(self.ckpt, target)
        shutil.copy(meta_path(self.ckpt), meta_path(target))
        return target

    def copy_run(self, folder):
        """The whole checkpoint folder (best, last, optimizer state) copied to ``folder/ck``;
        returns the path of the copied best checkpoint."""
        run = shutil.copytree(os.path.dirname(self.ckpt), os.path.join(folder, "ck"))
        return os.path.join(run, os.path.basename(self.ckpt))

    def reference_mask(self):
        if not hasattr(self, "_reference"):
            folder = self.fresh("reference")
            out = os.path.join(folder, "ref_mask.png")
            code, err = call_cli("evaluate", ["--image", self.image, "--network-param",
                                              self.ckpt, "--output", out])
            if code != 0:
                raise RuntimeError(f"evaluate on the plain image failed: {err}")
            self._reference = load(out)
        return self._reference
