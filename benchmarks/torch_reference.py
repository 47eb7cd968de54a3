"""The same U-Net in PyTorch, timed the same way as bench.py, for a like-for-like comparison.

Not part of the package and not imported by it: run it with a Python that has torch (the project
does not depend on torch), e.g.

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 numpy
    /tmp/torchenv/bin/python benchmarks/torch_reference.py --size 256 512

Architecture as unet.model.network with the defaults: residual BaseConvBlocks (1x1 projection, 3x3 conv,
LayerNorm over the width, LeakyReLU 0.01, 3x3 conv, LayerNorm, sum, LeakyReLU), 2x2 max-pooling,
nearest up-sampling + 3x3 conv, concatenation, 1x1 head; batch 1, 1 input channel, 2 classes,
35.9M parameters at 3 channels. Training step: forward, softmax cross-entropy, backward, Adam.
"""
import argparse
import json
import resource
import statistics
import time

import torch
from torch import nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, cin, cout, width):
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, 1)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm1 = nn.LayerNorm(width)          # over the last axis, as Gluon's LayerNorm()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm2 = nn.LayerNorm(width)

    def forward(self, x):
        y = F.leaky_relu(self.norm1(self.conv1(x)), 0.01)
        return F.leaky_relu(self.norm2(self.conv2(y)) + self.proj(x), 0.01)


class UNet(nn.Module):
    def __init__(self, cin=1, classes=2, base=64, depth=4, size=512):
        super().__init__()
        self.stem = Block(cin, base, size)
        self.down = nn.ModuleList(Block(base * 2 ** i, base * 2 ** (i + 1), size // 2 ** (i + 1))
                                  for i in range(depth))
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for i in reversed(range(depth)):
            wide = base * 2 ** (i + 1)
            self.up.append(nn.Conv2d(wide, wide // 2, 3, padding=1))
            self.fuse.append(Block(wide, wide // 2, size // 2 ** i))
        self.head = nn.Conv2d(base, classes, 1)

    def forward(self, x):
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], 2)))
        x = skips.pop()
        for up, fuse in zip(self.up, self.fuse):
            x = up(F.interpolate(x, scale_factor=2, mode="nearest"))
            x = fuse(torch.cat([x, skips.pop()], 1))
        return self.head(x)


def measure(task, size, channels, repeat, warmup, bf16=False):
    """Median ms of ``repeat`` steps after ``warmup``; ``bf16``: under CPU autocast to bfloat16
    (float32 weights and optimizer, as MXNet's ``--amp bf16``)."""
    torch.manual_seed(0)
    net = UNet(channels, size=size)
    x = torch.randn(1, channels, size, size)
    if task == "train":
        target = torch.randint(0, 2, (1, size, size))
        opt = torch.optim.Adam(net.parameters(), 1e-3)

        def step():
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(net(x).float(), target)
            loss.backward()
            opt.step()
    else:
        net.eval()

        def step():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                net(x)
    times = []
    for i in range(warmup + repeat):
        start = time.perf_counter()
        step()
        if i >= warmup:
            times.append(1000 * (time.perf_counter() - start))
    return {"task": task, "size": size, "channels": channels, "framework": "pytorch",
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "precision": "bf16 autocast" if bf16 else "fp32",
            "ms_median": statistics.median(times),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    parser.add_argument("--size", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--bf16", action="store_true",
                        help="bfloat16 autocast on the CPU (fast where oneDNN has AMX kernels)")
    args = parser.parse_args()
    for task in args.task:
        for size in args.size:
            print(json.dumps(measure(task, size, args.channels, args.repeat, args.warmup,
                                     args.bf16)),
                  flush=True)


if __name__ == "__main__":
    main()
