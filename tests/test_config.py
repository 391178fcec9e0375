"""Config loading: defaults, derived values, and errors that name the key."""

from pathlib import Path

import pytest

from ssd.config import ConfigError, get_cfg, load_config


def test_defaults_are_lufficc_values():
    cfg = get_cfg()
    assert cfg.MODEL.NUM_CLASSES == 21
    assert cfg.INPUT.PIXEL_MEAN == [123, 117, 104]
    assert cfg.TEST.NMS_THRESHOLD == 0.45
    assert cfg.SOLVER.WARMUP_FACTOR == pytest.approx(1 / 3)


def test_boxes_per_location_is_derived_when_empty():
    cfg = load_config(opts=["MODEL.PRIORS.BOXES_PER_LOCATION", "[]"])
    assert cfg.MODEL.PRIORS.BOXES_PER_LOCATION == [4, 6, 6, 6, 4, 4]


def test_inconsistent_boxes_per_location_names_the_key():
    with pytest.raises(ConfigError, match="BOXES_PER_LOCATION"):
        load_config(opts=["MODEL.PRIORS.BOXES_PER_LOCATION", "[4, 4, 4, 4, 4, 4]"])


def test_unknown_key_names_the_key(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("MODEL:\n  NUM_CLASES: 3\n")
    with pytest.raises(ConfigError, match="NUM_CLASES") as info:
        load_config(bad)
    assert str(bad) in str(info.value)


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="SOLVER.MAX_ITER"):
        load_config(opts=["SOLVER.MAX_ITER", "'many'"])


def test_whole_numbers_are_accepted_for_float_keys(tmp_path):
    """`DATASETS.VAL_FRACTION 0` and `LR: 1` are floats to the user; yacs alone refuses an int for a float key."""
    config = tmp_path / "c.yaml"
    config.write_text("SOLVER:\n  LR: 1\n  MAX_ITER: 5\nDATASETS:\n  VAL_FRACTION: 0\n")
    cfg = load_config(config, ["MODEL.THRESHOLD", "1", "SOLVER.WEIGHT_DECAY", "0"])
    values = (cfg.SOLVER.LR, cfg.DATASETS.VAL_FRACTION, cfg.MODEL.THRESHOLD, cfg.SOLVER.WEIGHT_DECAY)
    assert values == (1.0, 0.0, 1.0, 0.0) and all(type(v) is float for v in values)
    assert type(cfg.SOLVER.MAX_ITER) is int
    with pytest.raises(ConfigError, match="SOLVER.LR"):  # a float key still refuses a string
        load_config(None, ["SOLVER.LR", "'fast'"])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_per_level_length_mismatch():
    with pytest.raises(ConfigError, match="MODEL.PRIORS.STRIDES"):
        load_config(opts=["MODEL.PRIORS.STRIDES", "[8, 16]"])


def test_config_reference_is_generated_and_current():
    """docs/config.md is generated from defaults.py comments; every key must be documented."""
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parents[1] / "tools" / "gen_config_docs.py"
    result = subprocess.run([sys.executable, str(tool), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def load_config_docs_tool():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "gen_config_docs.py"
    spec = importlib.util.spec_from_file_location("gen_config_docs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_reference_gives_only_restated_defaults_and_paper_sections():
    """A comment may restate its key's default and cite a paper section; a measured number fails the check."""
    from pathlib import Path

    import doc_numbers

    tool = load_config_docs_tool()
    rows = [
        ("A.IOU", "0.5", "IoU above which a prior matches (sec. 2.2: overlap > 0.5); 0.25 is too low."),
        ("A.FAST", "True", "NHWC: measured 1.7x faster, 3.1 ms per step (sec. 3)."),
    ]
    assert tool.given_numbers(rows) == ["0.5", "2.2", "3"]  # not 0.25 (no key's default), 1.7, 3.1
    problems = doc_numbers.check_page("\n".join(tool.table(rows)), "config.md", Path("."), None)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "0.25 is not in any results file nor given",
        "1.7 is not in any results file nor given",
        "3.1 is not in any results file nor given",
    ]
    repo = Path(__file__).resolve().parents[1]
    assert doc_numbers.check_page(tool.render(), "docs/config.md", repo, None) == []  # the page as generated


# ----- _BASE_ inheritance --------------------------------------------------------------------------------


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_chain_is_relative_to_each_file_and_the_child_wins(tmp_path):
    write(tmp_path / "a" / "root.yaml", "SOLVER:\n  LR: 0.5\n  MAX_ITER: 7\nINPUT:\n  IMAGE_SIZE: 64\n")
    write(tmp_path / "a" / "b" / "middle.yaml", "_BASE_: ../root.yaml\nSOLVER:\n  MAX_ITER: 9\n")
    child = write(tmp_path / "c" / "child.yaml", "_BASE_: ../a/b/middle.yaml\nSOLVER:\n  BATCH_SIZE: 3\n")
    cfg = load_config(child)
    assert cfg.SOLVER.LR == 0.5  # from the root, two levels up
    assert cfg.SOLVER.MAX_ITER == 9  # the middle file overrides the root
    assert cfg.SOLVER.BATCH_SIZE == 3  # the child's own key
    assert cfg.INPUT.IMAGE_SIZE == 64
    assert "_BASE_" not in cfg.dump()  # the merged result holds no inheritance key


def test_command_line_overrides_win_over_every_file(tmp_path):
    write(tmp_path / "base.yaml", "SOLVER:\n  LR: 0.5\n")
    child = write(tmp_path / "child.yaml", "_BASE_: base.yaml\nSOLVER:\n  LR: 0.25\n")
    assert load_config(child, ["SOLVER.LR", "0.125"]).SOLVER.LR == 0.125


def test_missing_base_names_the_file_and_the_including_file(tmp_path):
    child = write(tmp_path / "child.yaml", "_BASE_: nowhere/base.yaml\n")
    with pytest.raises(ConfigError, match="not found") as info:
        load_config(child)
    assert str(tmp_path / "nowhere" / "base.yaml") in str(info.value)
    assert "child.yaml" in str(info.value)


def test_base_cycle_is_refused(tmp_path):
    write(tmp_path / "a.yaml", "_BASE_: b.yaml\n")
    write(tmp_path / "b.yaml", "_BASE_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_unknown_key_in_a_base_names_the_base(tmp_path):
    write(tmp_path / "base.yaml", "SOLVER:\n  LR_TYPO: 1\n")
    child = write(tmp_path / "child.yaml", "_BASE_: base.yaml\n")
    with pytest.raises(ConfigError, match="LR_TYPO") as info:
        load_config(child)
    assert "base.yaml" in str(info.value) and "child.yaml" not in str(info.value)


def test_rebased_shipped_config_equals_its_flat_form():
    """configs/mobilenet_v2_ssd320_voc0712.yaml now inherits the network; the values are lufficc's."""
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "mobilenet_v2_ssd320_voc0712.yaml")
    assert cfg.MODEL.BOX_HEAD.PREDICTOR == "SSDLiteBoxPredictor"
    assert cfg.MODEL.BACKBONE.OUT_CHANNELS == (96, 1280, 512, 256, 256, 64)
    assert cfg.MODEL.PRIORS.MIN_SIZES == [60, 105, 150, 195, 240, 285]
    assert cfg.INPUT.IMAGE_SIZE == 320 and cfg.MODEL.NUM_CLASSES == 21


# ----- epochs ----------------------------------------------------------------------------------------------


def test_epochs_set_max_iter_and_periods():
    from ssd.solver import resolve_epoch_schedule

    cfg = load_config(opts=["SOLVER.EPOCHS", "40", "SOLVER.EVAL_EPOCHS", "5", "SOLVER.BATCH_SIZE", "8",
                            "SOLVER.LR_SCHEDULER", "cosine"])  # fmt: skip
    resolved = resolve_epoch_schedule(cfg, num_images=128)  # 16 iterations per epoch
    assert resolved.SOLVER.MAX_ITER == 640
    assert resolved.SOLVER.EVAL_PERIOD == 80 and resolved.SOLVER.CHECKPOINT_PERIOD == 80
    assert cfg.SOLVER.MAX_ITER == 120000  # the input config is left alone
    # 100 images on 2 processes of 8: 6.25 iterations per epoch, rounded up over the whole run.
    assert resolve_epoch_schedule(cfg, num_images=100, world_size=2).SOLVER.MAX_ITER == 250
    assert resolve_epoch_schedule(cfg, num_images=100, world_size=2).SOLVER.EVAL_PERIOD == 32


def test_epochs_round_the_whole_run_up_not_each_epoch():
    """The rule in SOLVER.EPOCHS's doc (defaults.py): MAX_ITER = ceil(EPOCHS * images / (BATCH_SIZE * processes)).
    The sampler is one endless stream whose batches cross epoch ends (ssd/data/samplers.py), so the run is
    rounded up once, over its whole length, not epoch by epoch."""
    from ssd.solver import resolve_epoch_schedule

    cfg = load_config(opts=["SOLVER.EPOCHS", "5", "SOLVER.EVAL_EPOCHS", "2", "SOLVER.BATCH_SIZE", "4",
                            "SOLVER.LR_SCHEDULER", "cosine"])  # fmt: skip
    resolved = resolve_epoch_schedule(cfg, num_images=13)  # 13 / 4 = 3.25 iterations per epoch
    # 5 * 3.25 = 16.25 -> 17 (round and floor give 16; ceil(3.25) * 5 = 20); 2 * 3.25 = 6.5 -> 7.
    assert resolved.SOLVER.MAX_ITER == 17
    assert resolved.SOLVER.EVAL_PERIOD == 7 and resolved.SOLVER.CHECKPOINT_PERIOD == 7
    # 3 processes of 4 images: 13 / 12 per epoch, 5 * 13 / 12 = 5.42 -> 6.
    assert resolve_epoch_schedule(cfg, num_images=13, world_size=3).SOLVER.MAX_ITER == 6
    # Fewer images than one batch: 5 * 3 / 4 = 3.75 -> 4 iterations; EVAL 2 * 3 / 4 = 1.5 -> 2.
    tiny = resolve_epoch_schedule(cfg, num_images=3)
    assert (tiny.SOLVER.MAX_ITER, tiny.SOLVER.EVAL_PERIOD) == (4, 2)


def test_min_iter_lengthens_a_small_run_and_keeps_the_number_of_validations(caplog):
    from ssd.solver import resolve_epoch_schedule

    cfg = load_config(opts=["SOLVER.EPOCHS", "40", "SOLVER.EVAL_EPOCHS", "5", "SOLVER.BATCH_SIZE", "8",
                            "SOLVER.LR_SCHEDULER", "cosine", "SOLVER.MIN_ITER", "640"])  # fmt: skip
    # 70 images: 8.75 iterations per epoch, 40 epochs = 350 -> the floor, 640 (73.1 epochs). 8 validations
    # (40 / 5) over 640 iterations: every 80.
    with caplog.at_level("INFO"):
        small = resolve_epoch_schedule(cfg, num_images=70)
    assert (small.SOLVER.MAX_ITER, small.SOLVER.EVAL_PERIOD, small.SOLVER.CHECKPOINT_PERIOD) == (640, 80, 80)
    assert any(
        "would be 350 iterations; the run takes 640 (73.1 epochs)" in r.getMessage() for r in caplog.records
    )
    # 205 images: 40 epochs = 1025 iterations, above the floor: EPOCHS decides, 5 epochs = 128.1 -> 129.
    large = resolve_epoch_schedule(cfg, num_images=205)
    assert (large.SOLVER.MAX_ITER, large.SOLVER.EVAL_PERIOD) == (1025, 129)
    with pytest.raises(ConfigError, match="SOLVER.MIN_ITER must be >= 0"):
        load_config(opts=["SOLVER.MIN_ITER", "-1"])


def test_epochs_need_the_cosine_schedule():
    with pytest.raises(ConfigError, match="SOLVER.EPOCHS"):
        load_config(opts=["SOLVER.EPOCHS", "10"])  # the default multistep LR_STEPS are in iterations
