"""The short path end to end: a few-line config on the fine-tuning base -> train.py fits the priors, holds out
a validation split, counts epochs -> test.py evaluates with the priors the model was trained with."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # train.py and test.py live at the repository root
import test as test_cli  # noqa: E402
import train as train_cli  # noqa: E402

# A small network so the run takes seconds: MobileNetV2 x0.25 at 128 px, from scratch. Nothing about the
# priors, the backbone's channels or the schedule's length is written here: the base config and the data decide.
USER_CONFIG = """\
_BASE_: {base}
MODEL:
  NUM_CLASSES: 4
  DEVICE: "cpu"
  BACKBONE:
    WIDTH_MULT: 0.25
    PRETRAINED: False
INPUT:
  IMAGE_SIZE: 128
DATASETS:
  REGISTER: ("sp_train:synthetic:20:21:128", "sp_test:synthetic:6:22:128")
  TRAIN: ("sp_train",)
  TEST: ("sp_test",)
DATA_LOADER:
  NUM_WORKERS: 0
SOLVER:
  BATCH_SIZE: 4
  EPOCHS: 2
  MIN_ITER: 0  # the base's floor would make this a 640-iteration run
  EVAL_EPOCHS: 1
  WARMUP_ITERS: 2
LOGGING:
  TENSORBOARD: False
  PROGRESS_BAR: False
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_user_config_trains_validates_on_held_out_images_and_tests(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text(USER_CONFIG.format(base=REPO / "configs" / "finetune_ssdlite320.yaml"))
    out = tmp_path / "run"
    assert train_cli.main(["--config-file", str(config), "OUTPUT_DIR", str(out)]) == 0
    log = (out / "log.txt").read_text()
    # 20 images, 4 held out (20%) -> 16 to train on, 4 per iteration: 4 iterations per epoch, 2 epochs.
    assert "holding out 4 of the 20 training images" in log
    assert "MAX_ITER 8, EVAL_PERIOD 4" in log
    assert "prior IoU>=0.5" in log and "positives/box" in log  # the coverage table before training
    assert "INPUT.AUGMENTATION auto ->" in log

    written = yaml.safe_load((out / "config.yaml").read_text())
    priors = written["MODEL"]["PRIORS"]
    assert priors["AUTO"] is False and written["INPUT"]["AUGMENTATION"] in ("ssd", "crop")
    assert priors["BOXES_PER_LOCATION"] == [2 + 2 * len(r) for r in priors["ASPECT_RATIOS"]]
    assert written["SOLVER"]["MAX_ITER"] == 8
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    validated = [m["iteration"] for m in metrics if any(k.startswith("val/") for k in m)]
    assert validated == [4, 8]  # every epoch, on the held-out images
    assert (out / "model_best.pth").is_file()

    # test.py with the user's own config (AUTO True): the priors come from the checkpoint. train.py's own
    # final evaluation was of model_best.pth (TEST.EVALUATE_BEST in the base), so the two results agree.
    assert "TEST.EVALUATE_BEST: evaluating" in log
    args = [
        "--config-file",
        str(config),
        "--ckpt",
        str(out / "model_best.pth"),
        "--output-dir",
        str(tmp_path / "t"),
    ]
    results = test_cli.main(args)
    at_end = json.loads((out / "inference" / "sp_test" / "results.json").read_text())
    assert results["sp_test"]["bbox"]["AP50"] == pytest.approx(at_end["bbox"]["AP50"], abs=1e-6)
    assert results["sp_test"]["voc"]["mAP50_07"] == pytest.approx(at_end["voc"]["mAP50_07"], abs=1e-6)


def prior_boxes_xyxy(cfg) -> np.ndarray:
    """(P, 4) the priors of a concrete config as the detections of zero offsets show them: xyxy in 0..1,
    clipped to the image (postprocess.py clips decoded boxes)."""
    from ssd.modeling.priors import make_priors
    from ssd.structures.boxes import cxcywh_to_xyxy

    p = cfg.MODEL.PRIORS
    priors = make_priors(
        cfg.INPUT.IMAGE_SIZE, p.FEATURE_MAPS, p.STRIDES, p.MIN_SIZES, p.MAX_SIZES, p.ASPECT_RATIOS, p.CLIP
    )  # (P, 4) cxcywh
    return cxcywh_to_xyxy(priors.double()).clamp(0.0, 1.0).numpy()


def test_test_py_uses_the_priors_stored_in_the_checkpoint_and_never_reads_the_training_data(tmp_path):
    """An AUTO config at test time: the checkpoint's stored priors are the ones the weights learnt with, and
    inference never fits them again (it never reads DATASETS.TRAIN: here that name is unknown to test.py).
    The stored sizes are 1.25x the fit's (same boxes per location: the weights load either way). All weights
    are zero, so every detection is a prior itself (zero offsets decode to the prior, every class 1/4)."""
    from ssd.config import load_config
    from ssd.data.build import build_dataset, hold_out_validation
    from ssd.data.views import training_boxes
    from ssd.engine.checkpoint import Checkpointer
    from ssd.engine.recipe import fit_config_priors
    from ssd.modeling import build_detection_model

    config = tmp_path / "mine.yaml"
    config.write_text(USER_CONFIG.format(base=REPO / "configs" / "finetune_ssdlite320.yaml"))
    user = load_config(config)
    assert user.MODEL.PRIORS.AUTO
    part, _ = hold_out_validation(user, build_dataset(user, user.DATASETS.TRAIN, True, annotations_only=True))
    boxes_norm, labels, _ = training_boxes(part)
    refit = fit_config_priors(user, boxes_norm, labels, len(part))
    stored = refit.clone()
    stored.defrost()
    stored.MODEL.PRIORS.MIN_SIZES = [round(1.25 * m, 1) for m in refit.MODEL.PRIORS.MIN_SIZES]
    stored.MODEL.PRIORS.MAX_SIZES = [round(1.25 * m, 1) for m in refit.MODEL.PRIORS.MAX_SIZES]
    model = build_detection_model(stored)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    ckpt = Checkpointer(model, tmp_path / "run", config_yaml=stored.dump()).save("model_final", iteration=0)

    never_read = ["DATASETS.TRAIN", "('no_such_dataset',)"]
    test_cli.main(
        ["--config-file", str(config), "--ckpt", str(ckpt), "--output-dir", str(tmp_path / "t"), *never_read]
    )
    detections = json.loads(
        (tmp_path / "t" / "inference" / "sp_test" / "coco_instances_results.json").read_text()
    )
    assert detections and np.allclose([d["score"] for d in detections], 0.25)
    xywh = np.array([d["bbox"] for d in detections]) / 128.0  # (K, 4), the 128 px test images
    boxes_xyxy = np.concatenate((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), axis=1)  # (K, 4) in 0..1

    def distance_to_nearest_prior(priors_xyxy: np.ndarray) -> np.ndarray:
        """(K,) largest coordinate difference from each detection to its closest prior."""
        return np.abs(boxes_xyxy[:, None, :] - priors_xyxy[None, :, :]).max(axis=2).min(axis=1)

    worst = distance_to_nearest_prior(prior_boxes_xyxy(stored)).max()
    assert worst < 1e-4, f"a detection lies {worst:.4f} from every stored prior: test.py used other priors"
    assert distance_to_nearest_prior(prior_boxes_xyxy(refit)).max() > 1e-2  # (and the refit would show)

    # demo.py and tools/export.py load through load_detector: the same rule.
    from ssd.modeling.model_zoo import load_detector
    from ssd.structures.boxes import cxcywh_to_xyxy

    loaded = load_detector(ckpt, config, never_read)
    loaded_xyxy = cxcywh_to_xyxy(loaded.model.priors_cxcywh.double()).clamp(0.0, 1.0).numpy()  # (P, 4)
    np.testing.assert_allclose(loaded_xyxy, prior_boxes_xyxy(stored), atol=1e-6)

    # A checkpoint without a stored config (a bare state dict): one line saying which file to pass.
    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)
    with pytest.raises(
        SystemExit, match=r"^test.py: MODEL.PRIORS.AUTO is True.*OUTPUT_DIR/config.yaml"
    ) as err:
        test_cli.main(
            ["--config-file", str(config), "--ckpt", str(bare), "--output-dir", str(tmp_path / "u")]
        )
    assert "\n" not in str(err.value)
    from ssd.config import ConfigError

    with pytest.raises(ConfigError, match=f"checkpoint {bare} stores none.*OUTPUT_DIR/config.yaml"):
        load_detector(bare, config)


# Ten 128 px images in a CSV file, for the fit-on-the-training-split test: two 50 px boxes (one "big", one
# "tiny") everywhere, 20 px "tiny" boxes only in the two images VAL_FRACTION 0.2 holds out.
SPLIT_CONFIG = """\
_BASE_: {base}
MODEL:
  NUM_CLASSES: 3
  DEVICE: "cpu"
  BACKBONE:
    WIDTH_MULT: 0.25
    PRETRAINED: False
INPUT:
  IMAGE_SIZE: 128
DATASETS:
  CLASS_NAMES: ("big", "tiny")
DATA_LOADER:
  NUM_WORKERS: 0
SOLVER:
  BATCH_SIZE: 3
  EPOCHS: 1
  MIN_ITER: 0  # the base's floor would make this a 640-iteration run
  EVAL_EPOCHS: 1
  WARMUP_ITERS: 1
  BEST_METRIC: "val/loss"  # validation computes the loss only (no evaluators): seconds
  BEST_MODE: "min"
TEST:
  EVALUATORS: ()
LOGGING:
  TENSORBOARD: False
  PROGRESS_BAR: False
"""


def held_out_by_the_documented_rule(file_names: list[str], fraction: float) -> set[str]:
    """ssd/data/split.py's rule, written again for images that all hold every class (so that its first step,
    one image per class, is the image of smallest hash): the round(fraction * n) images whose base names
    ("img03.png", unique here) have the smallest SHA-1 (first 8 bytes, big-endian)."""
    by_hash = sorted(
        file_names, key=lambda n: int.from_bytes(hashlib.sha1(Path(n).name.encode()).digest()[:8], "big")
    )
    return set(by_hash[: round(fraction * len(file_names))])


def write_csv(path: Path, rows: list[tuple[str, str, list[float]]]) -> None:
    lines = ["filename,width,height,class,xmin,ymin,xmax,ymax"]
    lines += [f"{name},128,128,{cls},{','.join(f'{v:g}' for v in box)}" for name, cls, box in rows]
    path.write_text("\n".join(lines) + "\n")


def test_priors_are_fitted_on_the_training_split_only(tmp_path):
    """train.py with DATASETS.VAL empty holds out 20 % of the training images; the priors must be fitted on the
    other 80 %, never on the held-out images (their boxes would leak into the recipe). The tiny boxes only in
    the held-out images would bring the stride-8 level (+100 points for their class); and the fit must be the
    one of a run whose training set is exactly those 80 % (the held-out images given as DATASETS.VAL)."""
    import cv2

    images = tmp_path / "images"
    images.mkdir()
    names = [f"img{i:02d}.png" for i in range(10)]
    rng = np.random.default_rng(0)
    for name in names:
        cv2.imwrite(str(images / name), rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))
    # Every image has the same two large boxes, one of each class (so the split holds out the two smallest
    # hashes), so the training boxes are the same whichever two they are.
    held_out = held_out_by_the_documented_rule([str(images / name) for name in names], 0.2)
    assert len(held_out) == 2
    big = [[10, 12, 58, 60], [66, 60, 118, 112]]  # 48-52 px: three stride-16 cells, no need for stride 8
    tiny = [[8 + 36 * k, 90, 28 + 36 * k, 110] for k in range(3)]  # 20 px: 2.5 strides of 8
    rows = {name: [(name, cls, box) for cls, box in zip(("big", "tiny"), big, strict=True)] for name in names}
    for name in names:
        if str(images / name) in held_out:
            rows[name] += [(name, "tiny", box) for box in tiny]
    write_csv(tmp_path / "all.csv", [r for name in names for r in rows[name]])
    write_csv(tmp_path / "train.csv", [r for n in names if str(images / n) not in held_out for r in rows[n]])
    write_csv(tmp_path / "val.csv", [r for n in names if str(images / n) in held_out for r in rows[n]])
    config = tmp_path / "split.yaml"
    config.write_text(SPLIT_CONFIG.format(base=REPO / "configs" / "finetune_ssdlite320.yaml"))

    def train(out: Path, *opts: str) -> dict:
        args = ["--config-file", str(config), "--skip-test", "OUTPUT_DIR", str(out), *opts]
        assert train_cli.main(args) == 0
        return yaml.safe_load((out / "config.yaml").read_text())

    held = train(tmp_path / "held", "DATASETS.REGISTER", f"('all:csv:{tmp_path}/all.csv:{images}',)",
                 "DATASETS.TRAIN", "('all',)")  # fmt: skip
    assert "holding out 2 of the 10 training images" in (tmp_path / "held" / "log.txt").read_text()
    assert held["MODEL"]["BACKBONE"]["STRIDE8_MAP"] is False  # the tiny boxes were not seen
    assert held["SOLVER"]["MAX_ITER"] == 3  # 8 training images / 3 per iteration = 2.67 -> 3
    given = train(tmp_path / "given", "DATASETS.REGISTER",
                  f"('tr:csv:{tmp_path}/train.csv:{images}', 'va:csv:{tmp_path}/val.csv:{images}')",
                  "DATASETS.TRAIN", "('tr',)", "DATASETS.VAL", "('va',)")  # fmt: skip
    assert held["MODEL"]["PRIORS"] == given["MODEL"]["PRIORS"]
    assert held["MODEL"]["BACKBONE"] == given["MODEL"]["BACKBONE"]
