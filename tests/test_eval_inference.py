"""inference_on_dataset / compute_validation_loss with a fake model, and test.py end to end on synthetic data."""

import importlib.util
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ssd.engine.inference import compute_validation_loss, inference_on_dataset, validate_on_dataset
from ssd.evaluation import DatasetEvaluator


class SizedDataset:
    """Three images of different original sizes; boxes are irrelevant here."""

    class_names = ("__background__", "cell")
    sizes = [(100, 200), (50, 60), (300, 400)]

    def __len__(self):
        return len(self.sizes)

    def get_annotation(self, index):
        h, w = self.sizes[index]
        return {"image_id": index, "file_name": "", "height": h, "width": w, "boxes_xyxy": np.zeros((0, 4), np.float32),
                "labels": np.zeros(0, np.int64), "difficult": np.zeros(0, bool)}  # fmt: skip


class FakeLoader:
    """Batches (images (N,3,8,8), targets, indices) over SizedDataset, in the order given."""

    def __init__(self, batches):
        self.dataset = SizedDataset()
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for indices in self.batches:
            n = len(indices)
            targets = [{"boxes_norm": torch.tensor([[0.1, 0.1, 0.5, 0.5]]), "labels": torch.tensor([1])}] * n
            yield torch.full((n, 3, 8, 8), 2.0), targets, torch.tensor(indices)


class FakeDetector(nn.Module):
    """Eval forward: one box covering the whole original image. With targets: a loss that depends on the batch."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, images, targets=None, image_sizes=None):
        if targets is not None:
            assert not self.training, "validation must run in eval mode"
            n = images.shape[0]
            return {"reg_loss": self.scale * n, "cls_loss": self.scale * 2.0}
        assert not self.training and not torch.is_grad_enabled()
        return [
            {
                "boxes": torch.tensor([[0.0, 0.0, w, h]]),
                "labels": torch.tensor([1]),
                "scores": torch.tensor([0.9]),
            }
            for h, w in image_sizes
        ]


class OnePassDetector(FakeDetector):
    """FakeDetector with `losses_and_detections`; counts the images that go through the "network"."""

    def __init__(self):
        super().__init__()
        self.images_seen = 0

    def forward(self, images, targets=None, image_sizes=None):
        self.images_seen += images.shape[0]
        return super().forward(images, targets, image_sizes)

    def losses_and_detections(self, images, targets, image_sizes=None):
        self.images_seen += images.shape[0]
        return FakeDetector.forward(self, images, targets), FakeDetector.forward(
            self, images, None, image_sizes
        )


class RecordingEvaluator(DatasetEvaluator):
    def reset(self):
        self.seen = {}

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs, strict=True):
            self.seen[inp["index"]] = out["boxes"][0].tolist()

    def evaluate(self):
        return {"fake": {"count": float(len(self.seen))}}


def test_inference_passes_original_sizes_and_indices(caplog):
    model = FakeDetector().train()
    evaluator = RecordingEvaluator()
    with caplog.at_level(logging.INFO, logger="ssd.engine.inference"):
        results = inference_on_dataset(model, FakeLoader([[2, 0], [1]]), evaluator, "cpu")
    assert results == {"fake": {"count": 3.0}}
    assert evaluator.seen == {0: [0, 0, 200, 100], 1: [0, 0, 60, 50], 2: [0, 0, 400, 300]}
    assert model.training, "the model's mode must be restored"
    text = caplog.text
    assert re.search(
        r"Total inference time: \d+:\d\d:\d\d(\.\d+)? \(\d+\.\d{6} s / iter per device, on 1 devices\)", text
    )
    assert re.search(r"Total inference pure compute time: \d+:\d\d:\d\d \(\d+\.\d{6} s / iter per device, on 1 devices\)",
                     text)  # fmt: skip
    assert "FPS" in text


def test_validation_loss_is_the_image_weighted_mean():
    model = FakeDetector().train()
    # batches of 2 and 1 images: reg_loss 2 and 1 -> (2*2 + 1*1) / 3; cls_loss 2 everywhere
    losses = compute_validation_loss(model, FakeLoader([[0, 1], [2]]), "cpu")
    assert losses["reg_loss"] == pytest.approx(5 / 3)
    assert losses["cls_loss"] == pytest.approx(2.0)
    assert losses["loss"] == pytest.approx(5 / 3 + 2)
    assert model.training


def test_validation_in_one_pass_gives_the_loss_and_the_detections():
    model = OnePassDetector().train()
    evaluator = RecordingEvaluator()
    losses, results = validate_on_dataset(model, FakeLoader([[0, 1], [2]]), evaluator, "cpu")
    assert model.images_seen == 3  # each image through the network once (two passes would be 6)
    assert losses["reg_loss"] == pytest.approx(5 / 3) and losses["cls_loss"] == pytest.approx(2.0)
    assert losses["loss"] == pytest.approx(5 / 3 + 2)
    assert results == {"fake": {"count": 3.0}}
    assert evaluator.seen == {0: [0, 0, 200, 100], 1: [0, 0, 60, 50], 2: [0, 0, 400, 300]}
    assert model.training


def test_validation_loss_of_an_empty_loader_is_zero():
    assert compute_validation_loss(FakeDetector(), FakeLoader([]), "cpu") == {"loss": 0}


# ----- test.py, end to end: random weights, synthetic data (checks the plumbing, not accuracy) ---------------


def load_test_cli():
    """The top-level test.py, loaded by path (`import test` could find the standard library's test package)."""
    path = Path(__file__).resolve().parents[1] / "test.py"
    spec = importlib.util.spec_from_file_location("ssd_test_cli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_run(tmp_path):
    from ssd.config import load_config
    from ssd.modeling import build_detection_model

    opts = [
        "MODEL.NUM_CLASSES", "4", "MODEL.BACKBONE.NAME", "mobilenet_v2", "MODEL.BACKBONE.PRETRAINED", "False",
        "MODEL.BACKBONE.OUT_CHANNELS", "(96, 1280, 512, 256, 256, 64)", "MODEL.BOX_HEAD.PREDICTOR", "SSDLiteBoxPredictor",
        "MODEL.PRIORS.FEATURE_MAPS", "[20, 10, 5, 3, 2, 1]", "MODEL.PRIORS.STRIDES", "[16, 32, 64, 107, 160, 320]",
        "MODEL.PRIORS.MIN_SIZES", "[60, 105, 150, 195, 240, 285]",
        "MODEL.PRIORS.MAX_SIZES", "[105, 150, 195, 240, 285, 330]",
        "MODEL.PRIORS.ASPECT_RATIOS", "[[2, 3], [2, 3], [2, 3], [2, 3], [2, 3], [2, 3]]",
        "MODEL.PRIORS.BOXES_PER_LOCATION", "[6, 6, 6, 6, 6, 6]", "INPUT.IMAGE_SIZE", "320",
        "DATASETS.REGISTER", "('synth_eval:synthetic:4:3',)", "DATASETS.TEST", "('synth_eval',)",
        "DATA_LOADER.NUM_WORKERS", "0", "TEST.BATCH_SIZE", "2", "MODEL.DEVICE", "cpu",
        "OUTPUT_DIR", str(tmp_path / "run"),
    ]  # fmt: skip
    cfg = load_config(None, opts)
    torch.manual_seed(0)
    model = build_detection_model(cfg)
    (tmp_path / "run").mkdir()
    torch.save({"model": model.state_dict(), "iteration": 1}, tmp_path / "run" / "model_0000001.pth")
    (tmp_path / "run" / "last_checkpoint").write_text("model_0000001.pth")
    return opts, tmp_path / "run"


def test_test_py_end_to_end(tiny_run, capsys):
    test_cli = load_test_cli()
    opts, run_dir = tiny_run
    results = test_cli.main(["--config-file", "", *opts])
    assert set(results["synth_eval"]) == {"bbox", "voc", "analysis"}
    folder = run_dir / "inference" / "synth_eval"
    for name in ("results.json", "coco_instances_results.json", "analysis.json", "confusion_matrix.png",
                 "pr_curves.png", "ground_truth_coco_format.json"):  # fmt: skip
        assert (folder / name).is_file(), name
    log = (run_dir / "log.txt").read_text()
    assert re.search(
        r"Evaluation results for bbox:\n\| +AP +\| +AP50 +\| +AP75 +\| +APs +\| +APm +\| +APl +\|\n", log
    )
    assert "Per-category bbox AP:\n| category   |" in log
    assert "Per-category AP50" in log and "copypaste: Task: voc" in log
    assert "Total inference time:" in log


def test_test_py_without_checkpoint_says_so(tmp_path):
    test_cli = load_test_cli()
    with pytest.raises(SystemExit, match="no checkpoint to evaluate"):
        test_cli.main(
            ["--config-file", "", "--output-dir", str(tmp_path / "fresh"), "DATASETS.TEST", "('x',)"]
        )
    assert (tmp_path / "fresh").is_dir()  # OUTPUT_DIR is created before anything can fail


def test_test_py_scores_known_predictions(tiny_run):
    """test.py -> loader -> evaluators -> results.json on predictions whose AP is known by hand.

    The network's forward is replaced by an oracle that returns, for the k-th image it is given (the test
    loader is sequential in a single process), that image's ground truth, plus one false positive of class 1
    with the highest score of all, in a corner of image 0 where it overlaps nothing. Class 1 then has
    precision n / (n + 1) at every recall (n = its ground-truth boxes), for every IoU threshold; the other
    classes are perfect. So COCO AP = AP50 = VOC mAP = mean over classes of (n / (n + 1) for class 1, else 1).
    """
    from ssd.config import load_config
    from ssd.data.build import build_dataset

    test_cli = load_test_cli()
    opts, run_dir = tiny_run
    dataset = build_dataset(load_config(None, opts), ["synth_eval"], is_train=False)
    annotations = [dataset.get_annotation(i) for i in range(len(dataset))]
    false_positive = [0.0, 0.0, 3.0, 3.0]
    assert not any(box[0] < 3 and box[1] < 3 for box in annotations[0]["boxes_xyxy"]), "FP overlaps a box"
    counts = np.bincount(np.concatenate([a["labels"] for a in annotations]), minlength=4)[
        1:
    ]  # per class 1..3
    assert counts[0] >= 2 and counts.all(), counts  # every class present, class 1 more than once

    served = []

    def oracle(images, targets=None, image_sizes=None):
        assert targets is None and len(image_sizes) == images.shape[0]
        outputs = []
        for size in image_sizes:
            ann = annotations[len(served)]
            assert tuple(size) == (ann["height"], ann["width"])
            boxes, labels = ann["boxes_xyxy"].tolist(), ann["labels"].tolist()
            scores = np.linspace(0.9, 0.5, len(labels)).tolist()
            if len(served) == 0:
                boxes, labels, scores = [false_positive, *boxes], [1, *labels], [0.95, *scores]
            served.append(len(labels))
            outputs.append({"boxes": torch.tensor(boxes), "labels": torch.tensor(labels),
                            "scores": torch.tensor(scores)})  # fmt: skip
        return outputs

    real_build = test_cli.build_detection_model

    def build_with_oracle(cfg):
        model = real_build(cfg)
        model.forward = oracle  # test.py still loads the checkpoint into the real model
        return model

    test_cli.build_detection_model = build_with_oracle
    results = test_cli.main(["--config-file", "", *opts])["synth_eval"]
    assert len(served) == len(dataset)  # every image once

    n = counts[0]
    expected = 100 * (n / (n + 1) + 1 + 1) / 3
    assert results["bbox"][f"AP-{dataset.class_names[1]}"] == pytest.approx(100 * n / (n + 1), abs=1e-9)
    for task, metric in (("bbox", "AP"), ("bbox", "AP50"), ("bbox", "AP75"), ("voc", "mAP50_07")):
        assert results[task][metric] == pytest.approx(expected, abs=1e-9), (task, metric)
    written = json.loads((run_dir / "inference" / "synth_eval" / "results.json").read_text())
    assert written["bbox"]["AP"] == pytest.approx(expected, abs=1e-9)
