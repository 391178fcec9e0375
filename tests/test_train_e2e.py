"""train.py end to end on a tiny real SSD (MobileNetV2 x0.25 SSDLite at 96 px): exact resume, the NaN exit
status, the channels-last layout, a 2-process torchrun (gloo) run (disjoint data shards, synchronised weights,
gathered evaluation equal to a single process's), and a few iterations on BCCD."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from train_fakes import NaNAfter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # train.py lives at the repository root
import train as train_cli  # noqa: E402
from ssd.engine.checkpoint import load_checkpoint_file  # noqa: E402

# A tiny SSDLite: MobileNetV2 at width 0.25 on 96 x 96 inputs (feature maps 6, 3, 2, 1, 1, 1), 4 priors per
# cell (196 priors), synthetic shapes rendered at 96 px. An iteration of 4 images takes well under 0.1 s.
TINY = [
    "MODEL.NUM_CLASSES", "4",
    "MODEL.BOX_HEAD.PREDICTOR", "SSDLiteBoxPredictor",
    "MODEL.BACKBONE.NAME", "mobilenet_v2",
    "MODEL.BACKBONE.WIDTH_MULT", "0.25",
    "MODEL.BACKBONE.PRETRAINED", "False",
    "MODEL.BACKBONE.OUT_CHANNELS", "(24, 1280, 128, 64, 64, 16)",
    "MODEL.PRIORS.FEATURE_MAPS", "[6, 3, 2, 1, 1, 1]",
    "MODEL.PRIORS.STRIDES", "[16, 32, 48, 96, 96, 96]",
    "MODEL.PRIORS.MIN_SIZES", "[10, 20, 38, 58, 72, 86]",
    "MODEL.PRIORS.MAX_SIZES", "[20, 38, 58, 72, 86, 96]",
    "MODEL.PRIORS.ASPECT_RATIOS", "[[2], [2], [2], [2], [2], [2]]",
    "MODEL.PRIORS.BOXES_PER_LOCATION", "[4, 4, 4, 4, 4, 4]",
    "MODEL.DEVICE", "cpu",
    "INPUT.IMAGE_SIZE", "96",
    "DATASETS.REGISTER", "('tiny_train:synthetic:32:7:96', 'tiny_val:synthetic:8:8:96')",
    "DATASETS.TRAIN", "('tiny_train',)",
    "DATASETS.TEST", "()",
    "DATASETS.VAL_FRACTION", "0.0",  # no validation unless a test asks for it
    "DATA_LOADER.NUM_WORKERS", "0",
    "SOLVER.BATCH_SIZE", "4",
    "SOLVER.WARMUP_ITERS", "2",
    "SOLVER.LOG_PERIOD", "1",
    "SOLVER.EVAL_PERIOD", "0",
    "TEST.BATCH_SIZE", "8",
    "LOGGING.TENSORBOARD", "False",
    "LOGGING.PROGRESS_BAR", "False",
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load_test_cli():
    """The top-level test.py, loaded by path (`import test` could find the standard library's test package)."""
    spec = importlib.util.spec_from_file_location("ssd_test_cli", REPO / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_train(output_dir: Path, *extra: str, resume: bool = False) -> int:
    args = ["--config-file", "", "--skip-test", *(["--resume"] if resume else []), *TINY]
    return train_cli.main([*args, "OUTPUT_DIR", str(output_dir), *extra])


def test_resume_continues_exactly(tmp_path):
    # 2k iterations in one go vs. k iterations, "killed" right after the checkpoint at k, then --resume.
    k = 3
    common = ("SOLVER.MAX_ITER", str(2 * k), "SOLVER.CHECKPOINT_PERIOD", str(k), "SOLVER.OPTIMIZER", "AdamW")
    assert run_train(tmp_path / "once", *common) == 0
    reference = load_checkpoint_file(tmp_path / "once" / "model_final.pth")

    split = tmp_path / "split"
    shutil.copytree(tmp_path / "once", split)
    (split / "model_final.pth").unlink()
    (split / "last_checkpoint").write_text(f"model_{k:07d}.pth")
    assert run_train(split, *common, resume=True) == 0
    resumed = load_checkpoint_file(split / "model_final.pth")

    assert resumed["iteration"] == reference["iteration"] == 2 * k
    for name, value in reference["model"].items():
        assert torch.equal(resumed["model"][name], value), name
    assert resumed["scheduler"]["last_epoch"] == 2 * k
    # metrics.json: the interrupted run's lines after k were replaced, so every iteration appears once
    iterations = [json.loads(line)["iteration"] for line in (split / "metrics.json").read_text().splitlines()]
    assert iterations == list(range(1, 2 * k + 1))


def spy_on_layouts(monkeypatch) -> dict[str, list[bool]]:
    """Record, for each train.py run, whether the model's conv weights and its input images are channels-last.

    Only weights whose two layouts differ count: (O, I, kh, kw) with I > 1 and kh * kw > 1 (a 1x1 or a
    depthwise weight is contiguous in both layouts).
    """
    seen: dict[str, list[bool]] = {"weights": [], "images": []}
    real_train = train_cli.train
    nhwc = torch.channels_last

    def spy(model, *args, **kwargs):
        weights = [
            p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1
        ]
        assert weights, "no conv weight whose layout can be told apart"
        seen["weights"].append(all(p.is_contiguous(memory_format=nhwc) for p in weights))
        assert len({p.is_contiguous(memory_format=nhwc) for p in weights}) == 1  # one layout for all
        handle = model.register_forward_pre_hook(
            lambda module, inputs: seen["images"].append(inputs[0].is_contiguous(memory_format=nhwc))
        )
        try:
            return real_train(model, *args, **kwargs)
        finally:
            handle.remove()

    monkeypatch.setattr(train_cli, "train", spy)
    return seen


def test_channels_last_training_matches_nchw(tmp_path, monkeypatch):
    # SOLVER.CHANNELS_LAST (the default) changes the memory layout only. The first iteration's losses agree
    # within 0.1% (rounding). Later ones are not compared: train-mode BatchNorm over near-constant activations
    # of a random net (and hard negative mining's discrete choice) amplify rounding differences of 1e-5
    # into percent-level gradient differences, for either layout alike (the gradients of the same network
    # in eval mode agree to 1e-5: tests/test_fast_path.py).
    common = ("SOLVER.MAX_ITER", "1", "SOLVER.OPTIMIZER", "SGD")
    layouts = spy_on_layouts(monkeypatch)
    assert run_train(tmp_path / "nhwc", *common) == 0
    assert run_train(tmp_path / "nchw", *common, "SOLVER.CHANNELS_LAST", "False") == 0
    # What SOLVER.CHANNELS_LAST promises: NHWC weights and NHWC images in the training step, NCHW without it.
    assert layouts["weights"] == [True, False]
    assert layouts["images"] == [True, False]  # one training forward per run (no validation here)
    nhwc, nchw = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("nhwc", "nchw"))
    for key in ("cls_loss", "reg_loss"):
        assert nhwc[key] == pytest.approx(nchw[key], rel=1e-3), key  # measured 2e-4 apart
    saved = load_checkpoint_file(tmp_path / "nhwc" / "model_final.pth")["model"]
    assert all(value.is_contiguous() for value in saved.values())  # saved in the usual NCHW layout


def test_non_finite_loss_stops_with_its_own_exit_status(tmp_path, monkeypatch):
    import ssd.modeling

    real_build = ssd.modeling.build_detection_model
    monkeypatch.setattr(ssd.modeling, "build_detection_model", lambda cfg: NaNAfter(real_build(cfg), at=3))
    status = run_train(tmp_path, "SOLVER.MAX_ITER", "5", "SOLVER.CHECKPOINT_PERIOD", "2")
    assert status == train_cli.EXIT_NON_FINITE != 0
    log = (tmp_path / "log.txt").read_text()
    assert "not finite at iteration 3: cls_loss=nan, reg_loss=" in log
    assert f"Last good checkpoint: {tmp_path / 'model_0000002.pth'}" in log
    assert not (tmp_path / "model_final.pth").exists()


# The launcher of the torchrun test: train.py's main, with spies that record (1) the model, whose final weights
# this rank saves, and (2) the dataset indices that this rank's training and test loaders really yield.
LAUNCHER = """
import json, os, sys, torch
sys.path.insert(0, {repo!r})
import train
import ssd.data.build
from ssd.engine.checkpoint import unwrap

seen = {{"train": [], "test": []}}
real_train, real_test_loader = train.train, ssd.data.build.build_test_loader


class Recording:
    \"\"\"A loader that notes the indices of every batch it yields.\"\"\"

    def __init__(self, loader, log):
        self.loader, self.log = loader, log

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.log.append(batch[2].tolist())
            yield batch


def spy_train(model, optimizer, scheduler, train_loader, *args, **kwargs):
    seen["model"] = model
    return real_train(model, optimizer, scheduler, Recording(train_loader, seen["train"]), *args, **kwargs)


def spy_test_loader(*args, **kwargs):
    return Recording(real_test_loader(*args, **kwargs), seen["test"])


train.train = spy_train
ssd.data.build.build_test_loader = spy_test_loader  # build_validator and the final test import it late
status = train.main(sys.argv[1:])
assert status == 0, status
rank = os.environ["RANK"]
torch.save(unwrap(seen["model"]).state_dict(), os.path.join({out!r}, f"rank{{rank}}.pth"))
with open(os.path.join({out!r}, f"rank{{rank}}_indices.json"), "w") as f:
    json.dump({{"train": seen["train"], "test": seen["test"]}}, f)
"""


def test_torchrun_two_processes_shard_the_data_and_keep_identical_weights(tmp_path):
    # Each rank trains on its own shard; DDP averages gradients, so every rank ends with rank 0's weights.
    # 3 iterations x 4 images x 2 ranks = 24 = one epoch of the 24 training images: the two ranks' images are
    # disjoint and together the whole set. Validation (iteration 2 and 3) and the final test of the 8 tiny_val
    # images are sharded too, and the evaluators gather: the AP the distributed run reports must be the one a
    # single process measures for the saved model, on all 8 images.
    script = tmp_path / "launch.py"
    script.write_text(LAUNCHER.format(repo=str(REPO), out=str(tmp_path)))
    out = tmp_path / "out"
    args = ["--config-file", "", *TINY, "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "3"]
    args += ["DATASETS.REGISTER", "('tiny_train:synthetic:24:7:96', 'tiny_val:synthetic:8:8:96')"]
    args += ["DATASETS.VAL", "('tiny_val',)", "DATASETS.TEST", "('tiny_val',)", "SOLVER.EVAL_PERIOD", "2"]
    args += ["TEST.EVALUATORS", "('coco',)", "TEST.BATCH_SIZE", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*torchrun, str(script), *args], capture_output=True, text=True, timeout=240, env=env
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    final = load_checkpoint_file(out / "model_final.pth")
    rank0, rank1 = torch.load(tmp_path / "rank0.pth"), torch.load(tmp_path / "rank1.pth")
    assert len(final["rng"]) == 2  # both ranks' RNG states are saved
    for name, value in final["model"].items():
        # Parameters agree because DDP averages gradients. BatchNorm running statistics are per process (each
        # updates them from its own batch after DDP copied rank 0's in); train.py copies rank 0's into every
        # process before evaluating, so they agree after the run too.
        assert torch.equal(rank0[name], value), name
        assert torch.equal(rank1[name], value), name
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert [m["iteration"] for m in metrics if "total_loss" in m] == [1, 2, 3]  # rank 0 alone writes
    assert "bbox/AP50" in metrics[2] and "val/loss" in metrics[2]

    # The shards: training, disjoint and covering the training set; each evaluation, disjoint and covering tiny_val.
    indices = [json.loads((tmp_path / f"rank{r}_indices.json").read_text()) for r in (0, 1)]
    train0, train1 = ({i for batch in rank["train"] for i in batch} for rank in indices)
    assert [len(rank["train"]) for rank in indices] == [3, 3]
    assert not train0 & train1 and train0 | train1 == set(range(24)), (sorted(train0), sorted(train1))
    # the test loader is iterated once per evaluation (each validation: loss and AP in one pass; final test: AP)
    test0, test1 = ([i for batch in rank["test"] for i in batch] for rank in indices)
    assert len(test0) == len(test1) == 4 * (1 + 1 + 1)
    assert not set(test0) & set(test1) and set(test0) | set(test1) == set(range(8))

    # The gathered final evaluation equals a single process's evaluation of the saved model.
    distributed = json.loads((out / "inference" / "tiny_val" / "results.json").read_text())["bbox"]
    written = json.loads((out / "inference" / "tiny_val" / "coco_instances_results.json").read_text())
    test_cli = load_test_cli()
    single = test_cli.main(
        ["--config-file", "", "--ckpt", str(out / "model_final.pth"), *args[2:], "OUTPUT_DIR", str(tmp_path / "single")]
    )["tiny_val"]["bbox"]  # fmt: skip
    single_written = json.loads(
        (tmp_path / "single" / "inference" / "tiny_val" / "coco_instances_results.json").read_text()
    )
    assert {d["image_id"] for d in written} == {d["image_id"] for d in single_written} and len(
        written
    ) == len(single_written)
    assert single["AP"] > 0  # not a comparison of two zeros
    for key in ("AP", "AP50", "AP75"):
        assert distributed[key] == pytest.approx(single[key], abs=1e-6), key


def test_a_few_iterations_on_bccd_reduce_the_loss(tmp_path, bccd_root):
    from ssd.config import load_config
    from ssd.data.build import build_train_loader
    from ssd.engine.checkpoint import Checkpointer
    from ssd.engine.train_loop import TrainOptions, train
    from ssd.modeling import build_detection_model
    from ssd.solver import build_lr_scheduler, build_optimizer

    cfg = load_config(
        None,
        [
            *TINY,
            "MODEL.NUM_CLASSES", "4",
            "DATASETS.REGISTER", f"('bccd_train:voc:{bccd_root}:train',)",
            "DATASETS.CLASS_NAMES", "('RBC', 'WBC', 'Platelets')",
            "DATASETS.TRAIN", "('bccd_train',)",
            "SOLVER.OPTIMIZER", "AdamW", "SOLVER.LR", "5e-3", "SOLVER.MAX_ITER", "30",
        ],
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_detection_model(cfg)
    images, targets, _ = next(
        iter(build_train_loader(cfg, start_iter=cfg.SOLVER.MAX_ITER - 1))
    )  # a held batch

    def loss_on_held_batch() -> float:
        with torch.no_grad():
            return sum(model(images, targets).values()).item()  # train mode: BatchNorm uses the batch

    before = loss_on_held_batch()
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    options = TrainOptions(max_iter=cfg.SOLVER.MAX_ITER, log_period=5, checkpoint_period=0)
    train(model, optimizer, scheduler, build_train_loader(cfg), Checkpointer(model, tmp_path), options)
    after = loss_on_held_batch()
    assert after < 0.8 * before, (before, after)  # measured: 20.9 -> 14.2 (0.68)


def test_ckpt_initialises_a_model_with_another_class_count(tmp_path):
    assert run_train(tmp_path / "source", "SOLVER.MAX_ITER", "2") == 0
    source = load_checkpoint_file(tmp_path / "source" / "model_final.pth")["model"]
    # Fine-tune on 2 classes (a CSV dataset) from a 3-class model: the backbone is copied, the class heads keep
    # their init.
    ckpt = str(tmp_path / "source" / "model_final.pth")
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.full((96, 96, 3), 80, np.uint8))
    (tmp_path / "two.csv").write_text(
        "filename,width,height,class,xmin,ymin,xmax,ymax\na.png,96,96,cat,5,5,40,40\na.png,96,96,dog,50,50,90,90\n"
    )
    status = train_cli.main(
        ["--config-file", "", "--skip-test", "--ckpt", ckpt, *TINY, "MODEL.NUM_CLASSES", "3",
         "DATASETS.REGISTER", f"('two:csv:{tmp_path / 'two.csv'}:{images}',)", "DATASETS.TRAIN", "('two',)",
         "SOLVER.MAX_ITER", "0", "OUTPUT_DIR", str(tmp_path / "tuned")]
    )  # fmt: skip
    assert status == 0
    tuned = load_checkpoint_file(tmp_path / "tuned" / "model_final.pth")
    assert tuned["iteration"] == 0
    assert f"WEIGHTS: {ckpt}" in tuned["config"]  # the checkpoint records where its weights came from
    same = [k for k in source if torch.equal(source[k], tuned["model"][k])]
    skipped = [k for k in source if source[k].shape != tuned["model"][k].shape]
    assert any(k.startswith("backbone.") for k in same) and len(same) + len(skipped) == len(source)
    assert skipped and all("cls" in k for k in skipped), skipped


def test_missing_resume_weights_are_named(tmp_path, caplog):
    status = train_cli.main(
        ["--config-file", "", "--skip-test", "--ckpt", str(tmp_path / "nope.pth"), *TINY, "SOLVER.MAX_ITER", "1",
         "OUTPUT_DIR", str(tmp_path / "out")]
    )  # fmt: skip
    assert status != 0
    assert "nope.pth" in (tmp_path / "out" / "log.txt").read_text()


def test_print_config_with_lufficc_flags(capsys):
    status = train_cli.main(
        ["--print-config", "--log_step", "7", "--save_step", "50", "--use_tensorboard", "0", "--ckpt", "w.pth",
         "SOLVER.EVAL_PERIOD", "9"]
    )  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    for line in (
        "LOG_PERIOD: 7",
        "CHECKPOINT_PERIOD: 50",
        "TENSORBOARD: false",
        "WEIGHTS: w.pth",
        "EVAL_PERIOD: 9",
    ):
        assert line in printed, line
    assert "IMAGE_SIZE: 192" in printed  # no --config-file: the default shapes config


def test_default_config_builds_and_takes_a_step():
    from ssd.config import load_config
    from ssd.modeling import build_detection_model

    cfg = load_config(train_cli.DEFAULT_CONFIG)
    model = build_detection_model(cfg)  # checks OUT_CHANNELS and FEATURE_MAPS against the backbone
    assert model.priors_cxcywh.shape == ((144 + 36 + 9 + 4 + 1 + 1) * 4, 4)  # 780 priors at 192 px
    images = torch.zeros(2, 3, 192, 192)
    targets = [{"boxes_norm": torch.tensor([[0.1, 0.2, 0.4, 0.5]]), "labels": torch.tensor([2])}] * 2
    losses = model(images, targets)
    sum(losses.values()).backward()
    assert set(losses) == {"reg_loss", "cls_loss"} and all(torch.isfinite(v) for v in losses.values())
