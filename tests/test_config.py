"""Config loading: defaults, derived values, and errors that name the key."""

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
