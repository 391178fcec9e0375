"""Inference latency of our SSDs against torchvision's, end to end and network alone, with FLOP accounting.

    .venv/bin/python benchmarks/inference.py [--pairs vgg300,mbv3_320] [--batch-sizes 1,8] [--threads 2]
                                             [--repeats 5] [--candidates 1000] [--profile] [--compile] [--quick]
                                             [--int8 int8,uint8] [--results results/bench_inference.json]

Pairs (benchmarks/common.py): our vgg_ssd300 (COCO config, 81 classes) against torchvision's
`ssd300_vgg16(weights=None, weights_backbone=None)` (91 classes), and our mobilenet_v3_ssd320 (built with 81
classes) against `ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)` (91 classes).

End to end: from a batch of uint8 (480, 640, 3) RGB images to detections in their pixels.
    ours:        ssd.data test transform (cv2 resize of the uint8 image, then float and mean) -> stack ->
                 model(images, image_sizes) (network + PostProcessor)
    torchvision: the image as a float tensor in 0..1 (what `to_tensor` gives) -> model(list of images)
                 (its transform normalises and resizes, then network, postprocess_detections, rescale).
Network alone: ours `predict_raw(images)`, torchvision `head(backbone(images))`, on a ready (N, 3, S, S) batch.

Both models have random weights made "trained-like" (common.make_trained_like): BatchNorm statistics from
their own activations, classification logits scaled to std 2, and a background bias calibrated so that
`--candidates` (prior, class) pairs per image pass each model's score threshold. Without this nearly every
candidate passes and post-processing would time NMS over ~10^5 boxes.

"ours onnxruntime" is the network of `ours` exported to ONNX and run in ONNX Runtime (fp32) with our pre- and
post-processing (ssd/engine/runtime.py, `--backend onnxruntime` of demo.py and test.py); "ours onnxruntime
int8" the same file quantized by ssd/engine/quantize.py with its default int8 activations (S8S8); `--int8
int8,uint8` adds "ours onnxruntime int8 U8S8", the file quantized with uint8 activations. Calibration uses 4 of
the synthetic test images: the weights are random, so this times int8 kernels, it says nothing of accuracy.
ONNX Runtime gets the same thread count as torch (--threads). "ours fast" is
`ssd.modeling.fast.optimize_for_inference(model)` (BN folding, channels-last; `--compile` adds torch.compile).
"torchvision NHWC" is the peer with the same channels-last layout, to show how much of the gain the layout
alone gives. Every contender runs round-robin in the same loop (common.interleaved_times).

FLOP bound: GFLOPs (FlopCounterMode, multiply-add = 2) / the machine's measured fp32 GEMM peak at the same
thread count (common.measure_peak_gflops). "x bound" = measured time / bound time (1.0 = at peak); the bound is
fp32's, so the int8 row, whose kernels do four 8-bit multiply-adds where fp32 does one, can go below 1.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import common  # benchmarks/common.py: the script's folder is on sys.path
import numpy as np
import record  # benchmarks/record.py
import torch

from ssd.data.transforms import build_transforms
from ssd.engine.runtime import OnnxRuntimeDetector, export_onnx, onnxruntime_session
from ssd.modeling.fast import optimize_for_inference

PIXEL_MEAN = (123, 117, 104)


def ours_preprocess(size: int):
    """uint8 (H, W, 3) images -> ((N, 3, S, S) float32 batch, [(H, W)]): the ssd.data test pipeline."""
    transform = build_transforms(size, PIXEL_MEAN, is_train=False)
    no_boxes, no_labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)

    def preprocess(images: list[np.ndarray]):
        tensors = [transform(image, no_boxes, no_labels)[0] for image in images]
        return torch.stack(tensors), [image.shape[:2] for image in images]

    return preprocess


def torchvision_inputs(images: list[np.ndarray]) -> list[torch.Tensor]:
    """uint8 (H, W, 3) -> float (3, H, W) in 0..1, the input torchvision's detection models expect."""
    return [torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0) for image in images]


INT8_NAMES = {"int8": "ours onnxruntime int8", "uint8": "ours onnxruntime int8 U8S8"}


def onnxruntime_contenders(
    ours, size: int, calibration: torch.Tensor, threads: int, activations: tuple[str, ...] = ("int8",)
) -> dict:
    """{"ours onnxruntime": fp32, "ours onnxruntime int8": int8, ...} detectors of `ours` (its network
    exported, then quantized with calibration on `calibration` (N, 3, S, S), once per activation type of
    `activations`: "int8" (S8S8, the default of ssd/engine/quantize.py) and/or "uint8" (U8S8, named
    "... int8 U8S8")); {} when onnxruntime is missing."""
    try:
        from ssd.engine.quantize import quantize_int8
    except ImportError:
        print("  onnxruntime not installed: no ONNX Runtime rows")
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"ours onnxruntime": Path(tmp) / "ours.onnx"}
        export_onnx(ours, size, paths["ours onnxruntime"])
        for activation in activations:
            paths[INT8_NAMES[activation]] = Path(tmp) / f"ours_{activation}.onnx"
            quantize_int8(
                paths["ours onnxruntime"],
                paths[INT8_NAMES[activation]],
                [calibration.numpy()],
                activations=activation,
            )
        return {  # a session reads its file when it is made, so the folder may go
            name: OnnxRuntimeDetector(
                onnxruntime_session(path, threads), ours.priors_cxcywh, ours.postprocessor, str(path)
            )
            for name, path in paths.items()
        }


def prepare_pair(pair: str, candidates: int, use_compile: bool, threads: int = 1, int8=("int8",)):
    """(size, ours, ours fast, torchvision, ONNX Runtime contenders, calibration) with the same trained-like
    score distribution; calibration = {model: {"background_bias", "candidates_per_image", "threshold"}}."""
    ours, tv = common.build_ours(pair), common.build_torchvision(pair)
    size = common.IMAGE_SIZES[pair]
    calibration = ours_preprocess(size)(common.test_images(4, seed=1))[0]
    bias_ours, count_ours = common.make_trained_like(
        ours, calibration, ours.postprocessor.score_threshold, candidates
    )
    bias_tv, count_tv = common.make_trained_like(tv, calibration, tv.score_thresh, candidates)
    print(
        f"  score calibration: ours background bias {bias_ours:.2f} -> {count_ours} candidates/image "
        f"above {ours.postprocessor.score_threshold}; torchvision {bias_tv:.2f} -> {count_tv} above "
        f"{tv.score_thresh}"
    )
    fast = optimize_for_inference(ours, compile=use_compile)
    scores = {
        "ours": {"background_bias": bias_ours, "candidates_per_image": count_ours,
                 "threshold": ours.postprocessor.score_threshold},
        "torchvision": {"background_bias": bias_tv, "candidates_per_image": count_tv,
                        "threshold": tv.score_thresh},
    }  # fmt: skip
    return size, ours, fast, tv, onnxruntime_contenders(ours, size, calibration, threads, int8), scores


def profile_networks(named: dict, top: int = 12) -> dict:
    """torch.profiler table (self CPU time) of each network on the same input; printed and returned as
    {network: {"total_ms", "ops": {op: {"self_ms", "percent", "calls"}}}} (the `top` ops by self time)."""
    profiles = {}
    for name, fn in named.items():
        fn()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fn()
        print(f"\n  profile: {name}")
        averages = prof.key_averages()
        table = averages.table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40)
        print("\n".join("    " + line for line in table.splitlines()))
        total_us = sum(event.self_cpu_time_total for event in averages)
        ranked = sorted(averages, key=lambda event: event.self_cpu_time_total, reverse=True)[:top]
        profiles[name] = {
            "total_ms": round(total_us / 1e3, 3),
            "ops": {
                event.key: {
                    "self_ms": round(event.self_cpu_time_total / 1e3, 3),
                    "percent": round(100 * event.self_cpu_time_total / max(total_us, 1e-9), 2),
                    "calls": event.count,
                }
                for event in ranked
            },
        }
    return profiles


def run_pair(pair: str, args: argparse.Namespace, peak: float) -> dict:
    """Calibrate one pair, count its FLOPs, then time it at every batch size (and profile if asked).

    Returns:
        what it printed: {"gflops_per_image", "batches": {batch size: time_batch's dict}, "profile"?}.
    """
    print(f"\n== {pair}: ours {common.PAIRS[pair][0]} vs torchvision {common.PAIRS[pair][2]}")
    size, ours, fast, tv, ort, scores = prepare_pair(
        pair, args.candidates, args.compile, args.threads, tuple(args.int8.split(","))
    )
    tv_net = common.torchvision_network(tv)
    one = torch.randn(1, 3, size, size) * 60
    with torch.inference_mode():
        gflops = {"ours": common.count_gflops(lambda: ours.predict_raw(one))}
        gflops["torchvision"] = common.count_gflops(lambda: tv_net(one))
    print(f"  GFLOPs per image (network): ours {gflops['ours']:.2f}, torchvision {gflops['torchvision']:.2f}")
    result = {"score_calibration": scores, "gflops_per_image": gflops, "batches": {}}
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        result["batches"][str(batch_size)] = time_batch(
            size, ours, fast, tv, ort, batch_size, args.repeats, gflops, peak
        )
    if args.profile:
        one = ours_preprocess(size)(common.test_images(1))[0]
        with torch.inference_mode():
            result["profile_batch_1"] = profile_networks(
                {
                    "ours fast predict_raw": lambda: fast.predict_raw(one),
                    "ours predict_raw": lambda: ours.predict_raw(one),
                    "torchvision head(backbone)": lambda: tv_net(one),
                }
            )
    return result


def time_batch(
    size, ours, fast, tv, ort: dict, batch_size: int, repeats: int, gflops: dict, peak: float
) -> dict:
    """Time end to end and network alone at one batch size, all contenders interleaved; print the rows.

    Returns:
        what it printed: {"end_to_end": {contender: {"median_ms", "min_ms"}}, "end_to_end_ratio" (median /
        torchvision's), "network" (also "gflop_per_s", "x_bound"), "network_ratio", "flop_bound_ms",
        "int8_speedup" (ONNX Runtime fp32 median / int8 median, end to end and network)}.
    """
    preprocess = ours_preprocess(size)
    images = common.test_images(batch_size)
    batch, sizes = preprocess(images)
    tv_net = common.torchvision_network(tv)
    tv_nhwc_net = common.torchvision_network(copy.deepcopy(tv).to(memory_format=torch.channels_last))

    def ours_e2e(model):
        images_t, image_sizes = preprocess(images)
        return model(images_t, image_sizes=image_sizes)

    with torch.inference_mode():
        e2e = common.interleaved_times(
            {
                "ours": lambda: ours_e2e(ours),
                "ours fast": lambda: ours_e2e(fast),
                # the default argument binds each model now, not the loop's last one
                **{name: (lambda m=model: ours_e2e(m)) for name, model in ort.items()},
                "torchvision": lambda: tv(torchvision_inputs(images)),
            },
            repeats,
        )
        net = common.interleaved_times(
            {
                "ours": lambda: ours.predict_raw(batch),
                "ours fast": lambda: fast.predict_raw(batch),
                **{name: (lambda m=model: m.predict_raw(batch)) for name, model in ort.items()},
                "torchvision": lambda: tv_net(batch),
                "torchvision NHWC": lambda: tv_nhwc_net(batch),
            },
            repeats,
        )
    medians = {
        "end_to_end": {name: common.median(times) for name, times in e2e.items()},
        "network": {name: common.median(times) for name, times in net.items()},
    }
    ratios = {
        part: {name: value / part_medians["torchvision"] for name, value in part_medians.items()}
        for part, part_medians in medians.items()
    }
    result = {
        "end_to_end": {name: record.timing(times) for name, times in e2e.items()},
        "end_to_end_ratio": ratios["end_to_end"],
        "network": {name: record.timing(times) for name, times in net.items()},
        "network_ratio": ratios["network"],
        "flop_bound_ms": round(gflops["ours"] * batch_size / peak * 1e3, 3),
    }
    contenders = ["ours", "ours fast", *ort]
    print(f"\n  batch {batch_size}, end to end (uint8 480x640 -> detections):")
    for name, times in e2e.items():
        print(common.format_row(name, times))
    print(
        "  ratio to torchvision: "
        + ", ".join(f"{name} {ratios['end_to_end'][name]:.2f}" for name in contenders)
    )
    print(f"  batch {batch_size}, network alone ({size}x{size} input):")
    for name, times in net.items():
        flops = gflops["torchvision" if name.startswith("torchvision") else "ours"] * batch_size
        seconds = common.median(times)
        bound = flops / peak
        result["network"][name] |= {"gflop_per_s": flops / seconds, "x_bound": seconds / bound}
        extra = f"{flops / seconds:6.1f} GFLOP/s  {seconds / bound:5.2f} x bound"
        print(common.format_row(name, times, extra))
    print(
        "  ratio to torchvision: "
        + ", ".join(f"{name} {ratios['network'][name]:.2f}" for name in contenders)
        + f"; FLOP bound ours {result['flop_bound_ms']:.1f} ms"
    )
    for key, name in (
        ("int8_speedup", "ours onnxruntime int8"),
        ("int8_u8s8_speedup", "ours onnxruntime int8 U8S8"),
    ):
        if {"ours onnxruntime", name} <= set(ort):
            result[key] = {
                part: part_medians["ours onnxruntime"] / part_medians[name]
                for part, part_medians in medians.items()
            }
            print(
                f"  {name.removeprefix('ours onnxruntime ')} speed-up over ONNX Runtime fp32: end to end "
                f"{result[key]['end_to_end']:.2f}x, network {result[key]['network']:.2f}x"
            )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pairs", default="vgg300,mbv3_320", help=f"comma-separated, of {list(common.PAIRS)}"
    )
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument("--candidates", type=int, default=1000, help="candidates per image above threshold")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables (batch 1)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast path (slow to start)")
    parser.add_argument("--quick", action="store_true", help="sanity run: batch 1, 2 repeats")
    parser.add_argument(
        "--int8",
        default="int8",
        help="int8 activation types to time, comma-separated: int8 (S8S8, the default) and/or uint8 (U8S8)",
    )
    parser.add_argument("--results", metavar="PATH", help="also write every printed number as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.batch_sizes, args.repeats = "1", 2
    if not set(args.int8.split(",")) <= set(INT8_NAMES):
        parser.error(f"--int8 takes {' and/or '.join(INT8_NAMES)}, got {args.int8!r}")
    common.setup_threads(args.threads)
    results = record.start(args.threads)
    results |= {"repeats": args.repeats, "candidates_per_image": args.candidates, "compile": args.compile}
    results["int8_activations"] = args.int8.split(",")
    print(record.machine_line(args.threads))
    peak = common.measure_peak_gflops()
    print(
        f"fp32 GEMM 2048^3: torch.matmul {peak['matmul']:.1f} GFLOP/s, oneDNN 1x1 conv {peak['conv1x1']:.1f} "
        f"GFLOP/s -> peak {peak['peak']:.1f} GFLOP/s"
    )

    results["pairs"] = {pair: run_pair(pair, args, peak["peak"]) for pair in args.pairs.split(",")}

    peak_end = common.measure_peak_gflops()
    results["gemm_gflop_per_s"] = {"start": peak, "end": peak_end}
    print(
        f"\nfp32 GEMM peak again at the end: {peak_end['peak']:.1f} GFLOP/s; {record.machine_line(args.threads)}"
    )
    record.write(args.results, results)


if __name__ == "__main__":
    main()
