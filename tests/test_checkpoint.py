"""Checkpoints: atomic saves survive SIGKILL, clear errors for bad files, RNG and training state round trip."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from ssd.engine.checkpoint import (
    Checkpointer,
    CheckpointError,
    get_rng_state,
    load_checkpoint_file,
    set_rng_state,
)


def test_state_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    saver = Checkpointer(model, tmp_path, optimizer=optimizer, scaler=scaler, config_yaml="SEED: 3\n")
    path = saver.save(
        "model_0000042", iteration=42, best={"best": 1.5, "best_iteration": 40, "bad_validations": 1}
    )
    assert path == tmp_path / "model_0000042.pth"
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000042.pth"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    other = torch.nn.Linear(3, 2)
    other_opt = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    loaded = Checkpointer(other, tmp_path, optimizer=other_opt).resume()
    assert loaded["iteration"] == 42 and loaded["config"] == "SEED: 3\n" and loaded["best"]["best"] == 1.5
    assert torch.equal(other.weight, model.weight)
    assert torch.equal(
        other_opt.state_dict()["state"][0]["momentum_buffer"],
        optimizer.state_dict()["state"][0]["momentum_buffer"],
    )


def test_rng_state_round_trip():
    state = get_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.random(), np.random.rand(), torch.rand(3)  # move every generator on
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_resume_without_checkpoint_starts_from_scratch(tmp_path):
    assert Checkpointer(torch.nn.Linear(1, 1), tmp_path).resume() == {}


def test_bad_files_are_named(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match="not found.*nope.pth"):
        load_checkpoint_file(missing)

    good = tmp_path / "good.pth"
    torch.save({"model": torch.nn.Linear(50, 50).state_dict()}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_checkpoint_file(truncated)

    (tmp_path / "last_checkpoint").write_text("model_gone.pth")
    with pytest.raises(CheckpointError, match="model_gone.pth"):
        Checkpointer(torch.nn.Linear(1, 1), tmp_path).resume()


def test_checkpoint_of_another_model_is_refused_with_the_file_name(tmp_path):
    Checkpointer(torch.nn.Linear(3, 2), tmp_path).save("model_final", iteration=1)
    with pytest.raises(CheckpointError, match="model_final.pth.*MODEL.WEIGHTS"):
        Checkpointer(torch.nn.Linear(3, 5), tmp_path).resume()


SAVER = textwrap.dedent(
    """
    import sys, torch
    from ssd.engine.checkpoint import Checkpointer
    model = torch.nn.Linear(1000, 4000)  # 16 MB per file: each save takes long enough to be interrupted
    saver = Checkpointer(model, sys.argv[1])
    for iteration in range(1, 10_000):
        with torch.no_grad():
            model.bias.fill_(iteration)  # the file's content tells which save wrote it
        saver.save("model_best", iteration)  # rewritten in place, as model_best.pth is during training
    """
)


@pytest.mark.parametrize("attempt", range(2))
def test_sigkill_during_save_leaves_a_loadable_latest_checkpoint(tmp_path, attempt):
    process = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path)])
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "last_checkpoint").exists():  # wait for the first complete save
            assert process.poll() is None and time.monotonic() < deadline, "saver died or never saved"
            time.sleep(0.01)
        time.sleep(random.Random(attempt).uniform(0.05, 0.6))  # then kill it at some moment of a later save
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    path = Checkpointer(torch.nn.Linear(1000, 4000), tmp_path).last_checkpoint()
    checkpoint = load_checkpoint_file(path)
    iteration = checkpoint["iteration"]
    assert path.name == "model_best.pth"
    assert torch.all(checkpoint["model"]["bias"] == iteration)
