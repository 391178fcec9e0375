"""Post-processing time on trained-like scores, ours against torchvision's, and its share of end to end.

    .venv/bin/python benchmarks/postprocess.py [--pairs vgg300,mbv3_320] [--batch-sizes 1,8] [--threads 2]
                                              [--repeats 10] [--candidates 1000] [--quick]
                                              [--results results/bench_postprocess.json]

Both models of a pair get the same trained-like score distribution (common.make_trained_like: `--candidates`
(prior, class) pairs per image above each model's score threshold). The network runs once; then, on its
outputs, interleaved:
    ours:        PostProcessor(cls_logits, offsets, priors, image sizes): softmax, decode, per-class
                 threshold, top-k, class-aware NMS, top 100, boxes in the original image's pixels
    torchvision: model.postprocess_detections(head outputs, anchors, (S, S)) then
                 model.transform.postprocess(...) (rescale to the original size): the same steps with its
                 defaults (top 400 per class, 200 per image)
The share of end to end divides by `ours fast` end to end (benchmarks/inference.py's definition), timed in
the same loop.
"""

from __future__ import annotations

import argparse

import common  # benchmarks/common.py: the script's folder is on sys.path
import record  # benchmarks/record.py
import torch
from inference import ours_preprocess, torchvision_inputs
from torchvision.models.detection.image_list import ImageList

from ssd.modeling.fast import optimize_for_inference


def run_pair(pair: str, batch_sizes: list[int], repeats: int, candidates: int) -> dict:
    """Post-processing of one pair at every batch size, printed and returned as {batch size: {"detections_kept",
    "times": {contender: {"median_ms", "min_ms"}}, "ours_over_torchvision", "share_percent": {"ours", "torchvision"}}}.
    """
    size = common.IMAGE_SIZES[pair]
    ours, tv = common.build_ours(pair), common.build_torchvision(pair)
    preprocess = ours_preprocess(size)
    calibration = preprocess(common.test_images(4, seed=1))[0]
    common.make_trained_like(ours, calibration, ours.postprocessor.score_threshold, candidates)
    common.make_trained_like(tv, calibration, tv.score_thresh, candidates)
    fast = optimize_for_inference(ours)

    def one_batch(batch_size: int) -> dict:
        images = common.test_images(batch_size)
        batch, sizes = preprocess(images)
        with torch.inference_mode():
            cls_logits, offsets = fast.predict_raw(batch)
            features = list(tv.backbone(batch).values())
            head_outputs = tv.head(features)
            image_list = ImageList(batch, [(size, size)] * batch_size)
            anchors = tv.anchor_generator(image_list, features)

            def ours_post():
                return fast.postprocessor(cls_logits, offsets, fast.priors_cxcywh, sizes)

            def tv_post():
                detections = tv.postprocess_detections(head_outputs, anchors, image_list.image_sizes)
                return tv.transform.postprocess(detections, image_list.image_sizes, sizes)

            def ours_e2e():
                images_t, image_sizes = preprocess(images)
                return fast(images_t, image_sizes=image_sizes)

            kept = (sum(len(d["labels"]) for d in ours_post()), sum(len(d["labels"]) for d in tv_post()))
            times = common.interleaved_times(
                {"ours": ours_post, "torchvision": tv_post, "ours fast end to end": ours_e2e}, repeats
            )
            tv_e2e = common.interleaved_times(
                {"torchvision end to end": lambda: tv(torchvision_inputs(images))}, 2
            )
        post, e2e = common.median(times["ours"]), common.median(times["ours fast end to end"])
        print(f"\n== {pair}, batch {batch_size}: post-processing ({kept[0]} / {kept[1]} detections kept)")
        for name, values in {**times, **tv_e2e}.items():
            print(common.format_row(name, values))
        ratio = post / common.median(times["torchvision"])
        share = {
            "ours": 100 * post / e2e,
            "torchvision": 100
            * common.median(times["torchvision"])
            / common.median(tv_e2e["torchvision end to end"]),
        }
        print(
            f"  ours / torchvision: {ratio:.2f}; share of end to end: "
            f"ours {share['ours']:.1f}% (of ours fast), torchvision {share['torchvision']:.1f}% (2 e2e samples)"
        )
        return {
            "detections_kept": {"ours": kept[0], "torchvision": kept[1]},
            "times": {name: record.timing(values) for name, values in {**times, **tv_e2e}.items()},
            "ours_over_torchvision": ratio,
            "share_percent": share,
        }

    return {str(batch_size): one_batch(batch_size) for batch_size in batch_sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pairs", default="vgg300,mbv3_320", help=f"comma-separated, of {list(common.PAIRS)}"
    )
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=1000, help="candidates per image above threshold")
    parser.add_argument("--quick", action="store_true", help="sanity run: batch 1, 3 repeats")
    parser.add_argument("--results", metavar="PATH", help="also write every printed number as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.batch_sizes, args.repeats = "1", 3
    common.setup_threads(args.threads)
    results = record.start(args.threads)
    results |= {"repeats": args.repeats, "candidates_per_image": args.candidates}
    print(record.machine_line(args.threads))
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    results["pairs"] = {
        pair: run_pair(pair, batch_sizes, args.repeats, args.candidates) for pair in args.pairs.split(",")
    }
    print(f"\n{record.machine_line(args.threads)}")
    record.write(args.results, results)


if __name__ == "__main__":
    main()
