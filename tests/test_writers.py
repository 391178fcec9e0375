"""Writers: bounded windows, the console line, metrics.json (incl. resume), TensorBoard, wandb, tqdm + logging."""

from __future__ import annotations

import io
import json
import logging

import pytest

from ssd.engine.writers import ConsolePrinter, JSONWriter, MetricWindows, ProgressBar, TensorBoardWriter
from ssd.utils.logging import TqdmHandler


def test_windows_are_bounded_and_smooth_with_the_median():
    windows = MetricWindows(window=5)
    for i in range(10_000):
        windows.put(total_loss=float(i % 7), lr=i * 1e-6, time=0.5)
    assert all(len(v) == 5 for v in windows._values.values())  # flat memory whatever the run length
    summary = windows.summary(iteration=100, max_iter=110)
    assert summary["total_loss"] == 2.0  # median of the last five values, 9995..9999 % 7 = 6, 0, 1, 2, 3
    assert summary["lr"] == pytest.approx(9999e-6)  # the latest LR, not smoothed
    assert summary["eta_seconds"] == pytest.approx(5.0)


def test_console_line(caplog):
    printer = ConsolePrinter(max_iter=100)
    scalars = {"total_loss": 9.0123, "reg_loss": 2.3, "cls_loss": 6.7123, "lr": 6.667e-4}
    scalars |= {"time": 0.21, "data_time": 0.004, "eta_seconds": 3725.0, "max_mem": 812.4}
    with caplog.at_level(logging.INFO, logger="ssd.engine.writers"):
        printer.write_train(40, scalars)
    line = caplog.records[-1].getMessage()
    assert line.startswith(" eta: 1:02:05  iter: 40/100  total_loss: 9.012  reg_loss: 2.3  cls_loss: 6.712")
    assert "time: 0.2100  data_time: 0.0040  lr: 0.0006667  max_mem: 812M" in line


def test_json_writer_lines_and_resume_truncation(tmp_path):
    path = tmp_path / "metrics.json"
    writer = JSONWriter(path)
    for it in (10, 20, 30):
        writer.write_train(it, {"total_loss": 1.0 / it, "lr": 0.1})
    writer.write_val(20, {"val/loss": 2.0, "bbox/AP50": 50.0})
    writer.close()
    with open(path, "a") as f:
        f.write('{"iteration": 31, "total_lo')  # a killed run's half line
    records = [json.loads(line) for line in path.read_text().splitlines()[:4]]
    assert records[0] == {"iteration": 10, "lr": 0.1, "total_loss": 0.1}
    assert list(records[0]) == sorted(records[0])  # sorted keys, as Detectron2 writes them

    resumed = JSONWriter(path, start_iter=20)  # resumed from the checkpoint of iteration 20
    resumed.write_train(30, {"total_loss": 0.5})
    resumed.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["iteration"], "val/loss" in r) for r in records] == [
        (10, False),
        (20, False),
        (20, True),
        (30, False),
    ]
    assert records[-1]["total_loss"] == 0.5


def test_tensorboard_writes_grouped_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = TensorBoardWriter(tmp_path)
    writer.write_train(5, {"total_loss": 3.0, "lr": 0.01})
    writer.write_val(5, {"val/loss": 2.5, "bbox/AP50": 40.0})
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags == {"train/total_loss", "train/lr", "val/loss", "val/bbox/AP50"}
    assert events.Scalars("val/bbox/AP50")[0].value == 40.0


def test_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from ssd.engine.writers import WandbWriter

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    writer = WandbWriter("ssd-test", tmp_path, {"SOLVER": {"LR": 0.1}})
    writer.write_train(1, {"total_loss": 3.0})
    writer.write_val(1, {"val/loss": 2.0})
    writer.write_train(2, {"total_loss": 2.5})  # wandb commits step 1 when step 2 starts
    history = dict(writer._run.summary)
    writer.close()
    assert history["train/total_loss"] == 3.0 and history["val/loss"] == 2.0
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_log_lines_do_not_tear_the_progress_bar():
    stream = io.StringIO()
    logger = logging.getLogger("ssd.test_writers")
    handler = TqdmHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        bar = ProgressBar(max_iter=10, file=stream)  # the bar and the log lines share one stream
        bar.write_train(3, {"total_loss": 1.5, "lr": 0.01})
        logger.warning("a log line")
        bar.close()
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().replace("\r", "\n").splitlines()
    assert "a log line" in lines  # on a line of its own, not glued to the bar
    assert any("total_loss=1.500" in line for line in lines)
