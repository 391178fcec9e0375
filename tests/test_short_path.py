"""The short path end to end: a few-line config on the fine-tuning base -> train.py fits the priors, holds out
a validation split, counts epochs -> test.py evaluates with the priors the model was trained with."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
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
