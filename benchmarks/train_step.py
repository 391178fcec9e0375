"""Training step time of our SSDs against torchvision's: forward + loss + backward + SGD step.

    .venv/bin/python benchmarks/train_step.py [--pairs vgg300,mbv3_320] [--batch-size 8] [--threads 2]
                                              [--repeats 3] [--quick]
                                              [--results results/bench_train_step.json]

Same pairs as benchmarks/inference.py (random weights, every layer trainable in both: torchvision freezes
no layer when `weights_backbone=None`). Each step sees the same batch of S x S images with 3 random boxes
each:
    ours:        model(images (N, 3, S, S) minus the pixel mean, targets with boxes_norm) -> loss dict
                 (prior matching and encoding run inside the forward, see docs/contracts.md)
    torchvision: model(list of (3, S, S) images in 0..1, targets with pixel boxes) -> loss dict
                 (its transform normalises and resizes, a no-op resize here, inside the step)
then sum of the losses, zero_grad, backward, SGD(lr 1e-3, momentum 0.9, weight decay 5e-4) step. The input
pipeline is not timed (see benchmarks/data_pipeline.py). Contenders run round-robin (common.interleaved_times).

"ours" trains as train.py does by default (SOLVER.CHANNELS_LAST: NHWC weights and images); "ours NCHW" is
the same model in the default layout, and "torchvision NHWC" gives the peer channels-last weights (its
transform batches the images in NCHW; the convolutions then run channels-last), so the table separates the
gain of the layout from the rest. The ratio line compares the defaults.
"""

from __future__ import annotations

import argparse
import copy

import common  # benchmarks/common.py: the script's folder is on sys.path
import record  # benchmarks/record.py
import torch
from torch import nn

PIXEL_MEAN = torch.tensor([123.0, 117.0, 104.0]).view(1, 3, 1, 1)


def random_targets(batch_size: int, num_classes: int, boxes_per_image: int = 3, seed: int = 0):
    """N dicts with boxes_norm (G, 4) xyxy in 0..1 (sides 0.1 .. 0.5) and labels (G,) in 1..C-1."""
    generator = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(batch_size):
        corner = torch.rand(boxes_per_image, 2, generator=generator) * 0.5
        side = 0.1 + torch.rand(boxes_per_image, 2, generator=generator) * 0.4
        labels = torch.randint(1, num_classes, (boxes_per_image,), generator=generator)
        targets.append({"boxes_norm": torch.cat([corner, corner + side], dim=1), "labels": labels})
    return targets


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)


def step(model: nn.Module, optimizer: torch.optim.Optimizer, inputs, targets) -> float:
    losses = model(inputs, targets)
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pairs", default="vgg300,mbv3_320", help=f"comma-separated, of {list(common.PAIRS)}"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps each (after one warm-up step)")
    parser.add_argument("--quick", action="store_true", help="sanity run: batch 2, 1 repeat")
    parser.add_argument("--results", metavar="PATH", help="also write every printed number as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.repeats = 2, 1
    common.setup_threads(args.threads)
    results = record.start(args.threads)
    results |= {"repeats": args.repeats, "batch_size": args.batch_size, "pairs": {}}
    print(record.machine_line(args.threads))

    for pair in args.pairs.split(","):
        size = common.IMAGE_SIZES[pair]
        ours, tv = common.build_ours(pair).train(), common.build_torchvision(pair).train()
        images_01 = torch.rand(args.batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
        images_ours = images_01 * 255.0 - PIXEL_MEAN  # (N, 3, S, S), the data loader's output
        targets_ours = random_targets(args.batch_size, ours.num_classes)
        targets_tv = [
            {"boxes": t["boxes_norm"] * size, "labels": t["labels"]} for t in targets_ours
        ]  # same boxes in pixels; labels 1..80 are valid torchvision labels too
        ours_nchw = copy.deepcopy(ours)
        ours.to(memory_format=torch.channels_last)  # as train.py with SOLVER.CHANNELS_LAST True
        images_nhwc = images_ours.contiguous(memory_format=torch.channels_last)
        tv_nhwc = copy.deepcopy(tv).to(memory_format=torch.channels_last)
        opt_ours, opt_nchw, opt_tv, opt_tv_nhwc = sgd(ours), sgd(ours_nchw), sgd(tv), sgd(tv_nhwc)
        times = common.interleaved_times(
            {
                "ours": lambda: step(ours, opt_ours, images_nhwc, targets_ours),  # noqa: B023
                "ours NCHW": lambda: step(ours_nchw, opt_nchw, images_ours, targets_ours),  # noqa: B023
                "torchvision": lambda: step(tv, opt_tv, list(images_01), targets_tv),  # noqa: B023
                "torchvision NHWC": lambda: step(tv_nhwc, opt_tv_nhwc, list(images_01), targets_tv),  # noqa: B023
            },
            args.repeats,
        )
        print(f"\n== {pair}, batch {args.batch_size}: one training step")
        for name, values in times.items():
            print(common.format_row(name, values, f"{args.batch_size / common.median(values):6.2f} images/s"))
        median = {name: common.median(values) for name, values in times.items()}
        ratios = {
            "ours / torchvision": median["ours"] / median["torchvision"],
            "ours NCHW / torchvision": median["ours NCHW"] / median["torchvision"],
            "ours / torchvision NHWC": median["ours"] / median["torchvision NHWC"],
        }
        print(f"  ratio ours / torchvision (defaults): {ratios['ours / torchvision']:.2f}")
        print(f"  ratio ours NCHW / torchvision: {ratios['ours NCHW / torchvision']:.2f}")
        print(f"  ratio ours / torchvision NHWC (same layout): {ratios['ours / torchvision NHWC']:.2f}")
        results["pairs"][pair] = {
            "times": {
                name: record.timing(values) | {"images_per_s": args.batch_size / common.median(values)}
                for name, values in times.items()
            },
            "ratios": ratios,
        }
    print(f"\n{record.machine_line(args.threads)}")
    record.write(args.results, results)


if __name__ == "__main__":
    main()
