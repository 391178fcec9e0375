"""COCO-sized work on this machine: start-up, DataLoader worker memory, one validation, test.py's evaluation.

    python benchmarks/scale.py                                  # 118,287 train / 5,000 val names (minutes)
    python benchmarks/scale.py --quick                          # seconds: the CI smoke test
    python benchmarks/scale.py --train 20000 --val 1000 --eval-images 500 1000 --results results/scale.json

The data set is COCO-shaped but synthetic: a few hundred real JPEGs (BCCD's, or drawn ones when BCCD is not
there) behind many file names (hard links), and an instances JSON with 80 categories, ~7.3 boxes per image,
polygon masks and mask areas, 1 % crowd boxes, like COCO's. It is written once under --root and reused.

Each step runs in its own process, so that its peak memory (VmHWM, reset at the start of the step) is its own:
- train: the training dataset and loader built as train.py builds them, to the first batch (start-up; the
  network is not built); the private memory (USS) of every DataLoader worker after a forced full
  `gc.collect()` every 25 batches, up to --worker-batches; one validation: --val-sample held-out images through
  the one-pass validation and, for comparison, the two passes it replaced; the time of a whole validation of
  the held-out images is computed from these per-image costs (said so in the output);
- eval N: test.py's evaluation of N validation images with 100 synthetic detections each (made before the clock
  starts): COCO + VOC + error analysis + report, the report taking the error analysis' detections and analysis
  as test.py hands them over; the wall and CPU time of each part (on a loaded machine the CPU time of this
  one-thread process is the closer to an idle machine's wall time), with the COCO AP of faster-coco-eval and of
  pycocotools side by side.
Results are printed and written to --results (JSON, with the command and the machine).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
BCCD_IMAGES = REPO_ROOT.parent / "shared" / "data" / "BCCD" / "JPEGImages"
CONFIG = REPO_ROOT / "configs" / "finetune_ssdlite320.yaml"
NUM_CLASSES = 80


# ----- memory of this process ---------------------------------------------------------------------------------


def _status_kb(key: str, pid: str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def reset_peak() -> int:
    """Reset VmHWM to the current RSS; returns the RSS in kB (the baseline of a step)."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kb("VmRSS")


def peak_increase_gb(baseline_kb: int) -> float:
    return (_status_kb("VmHWM") - baseline_kb) / 1e6


def private_mb(pid: str = "self") -> float:
    """Unique set size: the pages only this process holds (not shared with the parent after fork)."""
    fields = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    return sum(int(f.split()[1]) for f in fields if f.startswith(("Private_Clean:", "Private_Dirty:"))) / 1e3


# ----- the data set ------------------------------------------------------------------------------------------


def generate(root: Path, num_train: int, num_val: int, num_sources: int, eval_sizes: list[int]) -> None:
    """Write root/{images,train.json,val.json,val_<N>.json} unless they exist for these sizes."""
    import cv2
    import numpy as np

    stamp = root / "sizes.json"
    sizes = {"train": num_train, "val": num_val, "sources": num_sources, "eval": sorted(eval_sizes)}
    if stamp.is_file() and json.loads(stamp.read_text()) == sizes:
        return
    shutil.rmtree(root, ignore_errors=True)
    (root / "sources").mkdir(parents=True)
    rng = np.random.default_rng(0)
    real = sorted(BCCD_IMAGES.glob("*.jpg"))[:num_sources] if BCCD_IMAGES.is_dir() else []
    for k in range(num_sources):
        if k < len(real):
            shutil.copyfile(real[k], root / "sources" / f"{k}.jpg")
        else:
            y, x = np.mgrid[0:480, 0:640]
            image = np.stack([x * 255 // 640, y * 255 // 480, np.full_like(x, (k * 37) % 256)], -1)
            cv2.imwrite(str(root / "sources" / f"{k}.jpg"), image.astype(np.uint8))
    heights_widths = [cv2.imread(str(root / "sources" / f"{k}.jpg")).shape[:2] for k in range(num_sources)]
    categories = [{"id": c + c // 10, "name": f"class{c:02d}"} for c in range(1, NUM_CLASSES + 1)]  # gaps
    for split, count in (("train", num_train), ("val", num_val)):
        (root / split).mkdir()
        images, annotations = [], []
        for i in range(count):
            k = i % num_sources
            os.link(root / "sources" / f"{k}.jpg", root / split / f"{i:012d}.jpg")
            height, width = heights_widths[k]
            images.append({"id": i + 1, "file_name": f"{i:012d}.jpg", "height": height, "width": width})
            for _ in range(rng.poisson(7.3)):
                w, h = np.exp(rng.uniform(np.log(6), np.log(0.9 * min(width, height)), 2))
                x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
                polygon = np.stack([x + w * rng.random(12), y + h * rng.random(12)], 1).round(2)
                annotations.append({
                    "id": len(annotations) + 1, "image_id": i + 1, "category_id": int(rng.choice(categories)["id"]),
                    "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)], "area": round(0.7 * w * h, 2),
                    "iscrowd": int(rng.random() < 0.01), "segmentation": [polygon.reshape(-1).tolist()],
                })  # fmt: skip
        with open(root / f"{split}.json", "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
        if split == "val":
            for n in eval_sizes:
                kept = {img["id"] for img in images[:n]}
                subset = {"images": images[:n], "annotations": [a for a in annotations if a["image_id"] in kept],
                          "categories": categories}  # fmt: skip
                (root / f"val_{n}.json").write_text(json.dumps(subset))
        del images, annotations
    stamp.write_text(json.dumps(sizes))


def config(root: Path, *opts: str):
    from ssd.config import load_config

    register = (
        f"scale_train:coco:{root}/train.json:{root}/train",
        f"scale_val:coco:{root}/val.json:{root}/val",
    )
    return load_config(CONFIG, [
        "DATASETS.REGISTER", str(register), "DATASETS.TRAIN", "('scale_train',)", "DATASETS.TEST", "()",
        "MODEL.NUM_CLASSES", str(NUM_CLASSES + 1), "MODEL.BACKBONE.PRETRAINED", "False",
        "MODEL.PRIORS.AUTO", "False", "INPUT.AUGMENTATION", "ssd", "SOLVER.BATCH_SIZE", "8",
        "TEST.BATCH_SIZE", "8", "SOLVER.MAX_ITER", "100000", "DATA_LOADER.NUM_WORKERS", "2", *opts,
    ])  # fmt: skip


# ----- the steps -----------------------------------------------------------------------------------------------


def step_train(args) -> dict:
    """Start-up to the first batch, worker memory over --worker-batches, one validation (see the docstring)."""
    import torch

    from ssd.data.build import build_test_loader, build_train_loader, build_train_val_datasets
    from ssd.data.split import DetectionSubset
    from ssd.engine.inference import compute_validation_loss, inference_on_dataset, validate_on_dataset
    from ssd.evaluation import build_evaluator
    from ssd.modeling import build_detection_model

    torch.set_num_threads(1)
    cfg = config(args.root)
    out: dict = {}
    baseline = reset_peak()
    start = time.perf_counter()
    train, val = build_train_val_datasets(cfg)
    out["datasets_s"] = time.perf_counter() - start
    loader = build_train_loader(cfg, dataset=train)
    uss_dir = args.root / "worker_uss"
    shutil.rmtree(uss_dir, ignore_errors=True)
    uss_dir.mkdir()
    original = DetectionSubset.get_item
    # Counted in each worker's own batches (a worker loads every other batch with 2 workers).
    workers = cfg.DATA_LOADER.NUM_WORKERS
    batch, every = cfg.SOLVER.BATCH_SIZE, max(1, min(25, args.worker_batches // workers // 10))

    def monitored_get_item(self, index, rng):  # runs in the workers: forced full GC, then the private memory
        monitored_get_item.count += 1
        if monitored_get_item.count % (batch * every) == 1:  # first image of every `every`-th batch
            gc_start = time.perf_counter()
            gc.collect()
            gc_s = time.perf_counter() - gc_start
            with open(uss_dir / f"{os.getpid()}.txt", "a") as f:
                f.write(f"{monitored_get_item.count // batch} {private_mb():.1f} {gc_s:.3f}\n")
        return original(self, index, rng)

    monitored_get_item.count = 0
    DetectionSubset.get_item = monitored_get_item
    iterator = iter(loader)
    next(iterator)
    out["startup_s"] = time.perf_counter() - start
    out["startup_peak_gb"] = peak_increase_gb(baseline)
    out["main_rss_gb"] = _status_kb("VmRSS") / 1e6
    out["train_images"], out["val_images"] = len(train), len(val)
    for _ in range(args.worker_batches - 1):
        next(iterator)
    del iterator, loader
    DetectionSubset.get_item = original
    time.sleep(1.0)
    per_worker = [
        [line.split() for line in path.read_text().splitlines()] for path in sorted(uss_dir.glob("*.txt"))
    ]
    first_after = min(50, args.worker_batches // 2) // workers  # the loader's batch 50, in a worker's batches
    growth, at_first, at_last, gc_times = [], [], [], []
    for rows in per_worker:
        early = next(float(r[1]) for r in rows if int(r[0]) >= first_after)
        late = float(rows[-1][1])
        at_first.append(early)
        at_last.append(late)
        growth.append(100 * (late / early - 1))
        gc_times.extend(float(r[2]) for r in rows)
    out["worker_first_batches"] = first_after * workers  # the loader's batches
    out["worker_last_batches"] = min(int(rows[-1][0]) for rows in per_worker) * workers
    out["worker_private_mb_first"], out["worker_private_mb_last"] = max(at_first), max(at_last)
    out["worker_growth_percent"] = max(growth)
    out["worker_gc_s"] = max(gc_times)

    model = build_detection_model(cfg)
    if args.trained_like:  # random heads score every class ~1/C, and nearly all candidates reach NMS
        from benchmarks.common import make_trained_like

        calibration = torch.stack([val[i][0] for i in range(min(16, len(val)))])  # (16, 3, S, S)
        make_trained_like(model, calibration, cfg.TEST.CONFIDENCE_THRESHOLD, 1000)
    out["trained_like_scores"] = bool(args.trained_like)
    sample = DetectionSubset(val, range(min(args.val_sample, len(val))), name="validation sample")
    cfg.defrost()
    cfg.DATA_LOADER.NUM_WORKERS = 0  # the per-image costs alone, in this process
    val_loader = build_test_loader(cfg, sample)
    evaluator = build_evaluator(cfg, sample, None, "validation sample", analysis=False)
    warm = DetectionSubset(val, range(min(8, len(val))))  # first calls are slower (allocations, imports)
    validate_on_dataset(
        model, build_test_loader(cfg, warm), build_evaluator(cfg, warm, analysis=False), "cpu"
    )
    # Wall time, and CPU time of this process (one thread): on a loaded machine the second is what an idle
    # one would take.
    start, cpu_start = time.perf_counter(), time.process_time()
    validate_on_dataset(model, val_loader, evaluator, "cpu")
    one_pass = (time.perf_counter() - start) / len(sample)
    one_pass_cpu = (time.process_time() - cpu_start) / len(sample)
    start, cpu_start = time.perf_counter(), time.process_time()
    compute_validation_loss(model, val_loader, "cpu")
    inference_on_dataset(model, val_loader, evaluator, "cpu")
    two_passes = (time.perf_counter() - start) / len(sample)
    two_passes_cpu = (time.process_time() - cpu_start) / len(sample)
    uncapped = round(cfg.DATASETS.VAL_FRACTION * (len(train) + len(val)))
    out["val_sample_images"] = len(sample)
    out["val_one_pass_ms_per_image"], out["val_two_passes_ms_per_image"] = 1e3 * one_pass, 1e3 * two_passes
    out["validation_min_computed"] = one_pass * len(val) / 60
    out["val_one_pass_cpu_ms_per_image"] = 1e3 * one_pass_cpu
    out["val_two_passes_cpu_ms_per_image"] = 1e3 * two_passes_cpu
    out["validation_cpu_min_computed"] = one_pass_cpu * len(val) / 60
    out["validation_uncapped_two_passes_cpu_min_computed"] = two_passes_cpu * uncapped / 60
    out["validation_uncapped_two_passes_min_computed"] = two_passes * uncapped / 60
    out["val_images_uncapped"] = uncapped
    return out


def step_eval(args, num_images: int) -> dict:
    """test.py's evaluation of `num_images` with 100 synthetic detections each (see the docstring)."""
    import numpy as np
    import torch
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from ssd.data.datasets import COCODataset
    from ssd.evaluation import ErrorAnalysisEvaluator, build_evaluator
    from ssd.evaluation.report import write_report

    cfg = config(args.root)
    dataset = COCODataset(args.root / f"val_{num_images}.json", args.root / "val")
    folder = args.root / f"eval_{num_images}"
    shutil.rmtree(folder, ignore_errors=True)
    evaluators = build_evaluator(cfg, dataset, folder, f"val_{num_images}")
    rng = np.random.default_rng(1)
    out: dict = {"images": num_images, "detections_per_image": 100}
    outputs = [synthetic_detections(dataset.get_annotation(i), rng) for i in range(len(dataset))]  # untimed
    # Each part's wall time and the CPU time of this process (one thread): on a loaded machine the second is
    # what an idle one would take.
    clock = {"start": (time.perf_counter(), time.process_time())}

    def lap(name: str, since: str) -> None:
        clock[name] = (time.perf_counter(), time.process_time())
        out[f"{name}_s"] = clock[name][0] - clock[since][0]
        out[f"{name}_cpu_s"] = clock[name][1] - clock[since][1]

    baseline = reset_peak()
    clock["start"] = (time.perf_counter(), time.process_time())
    evaluators.reset()
    for first in range(0, len(dataset), 8):
        indices = range(first, min(first + 8, len(dataset)))
        evaluators.process([{"index": i} for i in indices], [outputs[i] for i in indices])
    lap("process", "start")
    results, previous = {}, "process"
    for evaluator in evaluators.evaluators:
        results.update(evaluator.evaluate())
        lap(type(evaluator).__name__, previous)
        previous = type(evaluator).__name__
    (folder / "results.json").write_text(json.dumps(results))
    shared = next(
        e.last_run for e in evaluators.evaluators if isinstance(e, ErrorAnalysisEvaluator)
    )  # as test.py
    report = write_report(
        folder, dataset, f"val_{num_images}", cfg.TEST.ANALYSIS_SCORE_THRESHOLD, results, **shared
    )
    lap("report", previous)
    lap("total", "start")
    del outputs, shared
    out["peak_increase_gb"] = peak_increase_gb(baseline)
    out["report_mb"] = report["path"].stat().st_size / 1e6
    out["gallery_items"] = sum(report["gallery"].values())
    out["AP_faster"], out["AP50_faster"] = results["bbox"]["AP"], results["bbox"]["AP50"]
    out["VOC_mAP"] = results["voc"]["mAP50_07"] if "mAP50_07" in results.get("voc", {}) else float("nan")
    # The reference: pycocotools alone (its own loadRes and COCOeval, none of ssd.evaluation) on the two JSON
    # files, segmentation and all.
    img_ids = [dataset.get_annotation(i)["image_id"] for i in range(len(dataset))]
    part = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(args.root / f"val_{num_images}.json"))
        reference = COCOeval(
            ground_truth, ground_truth.loadRes(str(folder / "coco_instances_results.json")), "bbox"
        )
        reference.params.imgIds = img_ids
        reference.evaluate()
        reference.accumulate()
        reference.summarize()  # stats[0] AP, stats[1] AP50 (0-1), at maxDets 100 as the evaluator above
    out["pycocotools_s"] = time.perf_counter() - part
    out["AP_pycocotools"], out["AP50_pycocotools"] = 100 * reference.stats[0], 100 * reference.stats[1]
    del torch
    return out


def synthetic_detections(annotation: dict, rng) -> dict:
    """100 detections like a trained model's: jittered ground truth (20 % with another class) + random boxes."""
    import numpy as np
    import torch

    boxes = annotation["boxes_xyxy"].astype(np.float64)
    labels = annotation["labels"].copy()
    size = np.array([annotation["width"], annotation["height"]] * 2, np.float64)
    wh = np.maximum(boxes[:, 2:] - boxes[:, :2], 1.0)
    jittered = boxes + rng.normal(0, 0.1, boxes.shape) * np.concatenate([wh, wh], 1)
    relabel = rng.random(len(labels)) < 0.2
    labels[relabel] = rng.integers(1, NUM_CLASSES + 1, int(relabel.sum()))
    extra = 100 - len(labels)
    corner = rng.uniform(0, 0.8, (extra, 2)) * size[:2]
    random_boxes = np.concatenate([corner, corner + rng.uniform(8, 200, (extra, 2))], 1)
    all_boxes = np.clip(np.concatenate([jittered, random_boxes]), 0, size)[:100]
    all_labels = np.concatenate([labels, rng.integers(1, NUM_CLASSES + 1, extra)])[:100]
    scores = np.concatenate([rng.uniform(0.3, 1.0, len(labels)), rng.uniform(0.01, 0.6, extra)])[:100]
    order = np.argsort(-scores)
    return {
        "boxes": torch.from_numpy(all_boxes[order]).float(),
        "labels": torch.from_numpy(all_labels[order]).long(),
        "scores": torch.from_numpy(scores[order]).float(),
    }


# ----- orchestration -------------------------------------------------------------------------------------------


def machine() -> str:
    from benchmarks.record import machine_line

    return machine_line(1)


def run_step(args, step: str, *extra: str) -> dict:
    """Run one step in a fresh process; its last stdout line is the step's JSON."""
    command = [sys.executable, __file__, "--root", str(args.root), "--step", step, *extra,
               "--worker-batches", str(args.worker_batches), "--val-sample", str(args.val_sample)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"step {step} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root", type=Path, default=Path("/tmp/ssd_scale"), help="where the data set is written"
    )
    parser.add_argument("--train", type=int, default=118287, help="training image names")
    parser.add_argument("--val", type=int, default=5000, help="validation image names (test.py's set)")
    parser.add_argument("--sources", type=int, default=300, help="real JPEGs behind the names")
    parser.add_argument("--eval-images", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--worker-batches", type=int, default=3000)
    parser.add_argument("--val-sample", type=int, default=200, help="images timed for the validation cost")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test in seconds")
    parser.add_argument("--results", type=Path, help="write the results here as JSON")
    parser.add_argument("--steps", nargs="+", choices=("train", "eval"), default=["train", "eval"])
    parser.add_argument(
        "--trained-like",
        action="store_true",
        help="give the random-weight network a trained-like score distribution before timing validation "
        "(1000 candidates per image above TEST.CONFIDENCE_THRESHOLD, benchmarks/common.py)",
    )
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step == "train":
        print(json.dumps(step_train(args)))
        return 0
    if args.step == "eval":
        print(json.dumps(step_eval(args, args.images)))
        return 0
    if args.quick:
        args.train, args.val, args.sources, args.eval_images = 200, 40, 8, [24]
        args.worker_batches, args.val_sample = 20, 4
    command = "python benchmarks/scale.py " + " ".join(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    generate(args.root, args.train, args.val, args.sources, args.eval_images)
    print(
        f"data set under {args.root}: {args.train} train / {args.val} val names ({time.perf_counter() - start:.0f} s)"
    )
    train = {}
    if "train" in args.steps:
        train = run_step(args, "train", *(["--trained-like"] if args.trained_like else []))
        print(
            f"start-up to the first batch: {train['startup_s']:.1f} s (datasets {train['datasets_s']:.1f} s), "
            f"peak +{train['startup_peak_gb']:.2f} GB, main process {train['main_rss_gb']:.2f} GB; "
            f"{train['train_images']} train / {train['val_images']} held-out images"
        )
        print(
            f"worker private memory (forced full GC in the workers): {train['worker_private_mb_first']:.0f} MB "
            f"after {train['worker_first_batches']} batches, {train['worker_private_mb_last']:.0f} MB after "
            f"{train['worker_last_batches']} ({train['worker_growth_percent']:+.1f} %); longest GC {train['worker_gc_s']:.3f} s"
        )
        print(f"validation, per image ({train['val_sample_images']} timed): one pass {train['val_one_pass_ms_per_image']:.0f} ms, "
              f"two passes {train['val_two_passes_ms_per_image']:.0f} ms; computed from these: one validation of "
              f"{train['val_images']} images {train['validation_min_computed']:.1f} min (uncapped, two passes: "
              f"{train['val_images_uncapped']} images, {train['validation_uncapped_two_passes_min_computed']:.1f} min); "
            f"in CPU time: one pass {train['val_one_pass_cpu_ms_per_image']:.0f} ms, two passes "
            f"{train['val_two_passes_cpu_ms_per_image']:.0f} ms, one validation {train['validation_cpu_min_computed']:.1f} "
            f"min (uncapped, two passes: {train['validation_uncapped_two_passes_cpu_min_computed']:.1f} min)")  # fmt: skip
    evals = {}
    for n in args.eval_images if "eval" in args.steps else []:
        e = evals[str(n)] = run_step(args, "eval", "--images", str(n))
        print(f"evaluation of {n} images x 100 detections: {e['total_s']:.1f} s (COCO {e['COCOEvaluator_s']:.1f}, "
              f"VOC {e['PascalVOCEvaluator_s']:.1f}, analysis {e['ErrorAnalysisEvaluator_s']:.1f}, report "
              f"{e['report_s']:.1f} s, {e['report_mb']:.1f} MB, {e['gallery_items']} gallery items), peak "
              f"+{e['peak_increase_gb']:.2f} GB; COCO AP faster-coco-eval {e['AP_faster']:.4f} / pycocotools "
              f"{e['AP_pycocotools']:.4f} ({e['pycocotools_s']:.1f} s); CPU time {e['total_cpu_s']:.1f} s (COCO "
              f"{e['COCOEvaluator_cpu_s']:.1f}, VOC {e['PascalVOCEvaluator_cpu_s']:.1f}, analysis "
              f"{e['ErrorAnalysisEvaluator_cpu_s']:.1f}, report {e['report_cpu_s']:.1f}, process "
              f"{e['process_cpu_s']:.1f} s)")  # fmt: skip
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        rounded = {"train": {k: round(v, 2) if isinstance(v, float) else v for k, v in train.items()},
                   "eval": {n: {k: round(v, 4 if "AP" in k else 2) for k, v in e.items()} for n, e in evals.items()}}  # fmt: skip
        payload = {"command": command, "machine": machine(), **rounded}
        args.results.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"results written to {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
