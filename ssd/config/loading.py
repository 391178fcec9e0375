"""Loading a config from YAML + command-line overrides, with errors that name the offending key.

yacs already refuses unknown keys and type changes; here its messages are turned into one line that
names the file (or the override) and the key, and derived values are filled in or checked.

A YAML file may start from another one with `_BASE_: other.yaml` (Detectron2's convention): the path is
relative to the file that names it, a base may have a base of its own, and the including file wins where
both set a key. Bases are merged first, one file at a time, so an error still names the file that holds
the bad key. `--print-config` shows the merged result.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml
from yacs.config import CfgNode

from ssd.config.defaults import _C


class ConfigError(ValueError):
    """A config file, override or value that cannot be used; the message names the key."""


def get_cfg() -> CfgNode:
    """Return a fresh, mutable copy of the defaults."""
    return _C.clone()


def _merge(cfg: CfgNode, merge, source: str) -> None:
    try:
        merge()
    except KeyError as err:  # yacs: "Non-existent config key: MODEL.FOO"
        msg = str(err.args[0]) if err.args else str(err)
        raise ConfigError(f"{source}: {msg} (a typo? see docs/config.md for every key)") from None
    except (ValueError, AssertionError, TypeError) as err:  # yacs: type mismatch / bad override list
        raise ConfigError(f"{source}: {err}") from None


def _ints_as_floats(defaults: CfgNode, data: dict) -> dict:
    """`data` (a YAML mapping) with whole numbers given for float keys turned into floats (`VAL_FRACTION: 0`
    means 0.0; yacs would refuse the int). Other values are left for yacs to check."""
    converted = {}
    for key, value in data.items():
        default = defaults.get(key)
        if isinstance(default, CfgNode) and isinstance(value, dict):
            value = _ints_as_floats(default, value)
        elif type(default) is float and type(value) is int:
            value = float(value)
        converted[key] = value
    return converted


def _override_ints_as_floats(cfg: CfgNode, opts: Sequence[str]) -> list[str]:
    """KEY VALUE overrides with a whole number for a float key written as a float ("0" -> "0.0")."""
    converted = list(opts)
    for i in range(0, len(converted) - 1, 2):
        node = cfg
        for part in str(converted[i]).split("."):
            node = node.get(part) if isinstance(node, CfgNode) else None
        if type(node) is float:
            try:
                converted[i + 1] = repr(float(int(converted[i + 1])))
            except (TypeError, ValueError):
                pass  # not a whole number: yacs checks it
    return converted


BASE_KEY = "_BASE_"


def merge_config_file(cfg: CfgNode, path: str | Path, _including: tuple[Path, ...] = ()) -> None:
    """Merge a YAML file into `cfg`, its `_BASE_` chain first (the including file wins).

    Raises:
        ConfigError: a missing file (named with the file that includes it), a `_BASE_` cycle, a file that is
            not a YAML mapping, or an unknown key / wrong type (named with the file that sets it).
    """
    path = Path(path)
    if not path.is_file():
        where = f" (the {BASE_KEY} of {_including[-1]})" if _including else ""
        raise ConfigError(f"config file not found: {path}{where}")
    resolved = path.resolve()
    if resolved in _including:
        chain = " -> ".join(str(p) for p in (*_including, resolved))
        raise ConfigError(f"{BASE_KEY} cycle: {chain}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys, got {type(data).__name__}")
    base = data.pop(BASE_KEY, None)
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ConfigError(f"config file {path}: {BASE_KEY} must be one file name, got {base!r}")
        merge_config_file(cfg, path.parent / base, (*_including, resolved))
    data = _ints_as_floats(cfg, data)
    _merge(cfg, lambda: cfg.merge_from_other_cfg(CfgNode(data)), f"config file {path}")


def load_config(
    config_file: str | Path | None = None, opts: Sequence[str] = (), freeze: bool = True
) -> CfgNode:
    """Defaults <- YAML file <- `KEY VALUE` overrides, then derived values checked.

    Args:
        config_file: a YAML file in lufficc/SSD format (optionally with `_BASE_`), or None for the defaults.
        opts: flat list of overrides, e.g. ["SOLVER.LR", "0.01", "MODEL.DEVICE", "cpu"].
        freeze: return a frozen (read-only) config.

    Raises:
        ConfigError: unknown key, wrong type, missing file, or inconsistent values; the message names them.
    """
    cfg = get_cfg()
    if config_file:
        merge_config_file(cfg, config_file)
    if opts:
        if len(opts) % 2:
            raise ConfigError(f"overrides must be KEY VALUE pairs, got an odd number: {list(opts)}")
        opts = _override_ints_as_floats(cfg, opts)
        _merge(cfg, lambda: cfg.merge_from_list(opts), "command-line override")
    check_config(cfg)
    if freeze:
        cfg.freeze()
    return cfg


def check_config(cfg: CfgNode) -> None:
    """Fill in and check derived values in place (cfg must not be frozen if a value is derived).

    - MODEL.PRIORS.BOXES_PER_LOCATION = 2 + 2 * len(ASPECT_RATIOS[level]) (computed when empty).
    - Every per-level list has one entry per feature map.
    """
    priors = cfg.MODEL.PRIORS
    levels = len(priors.FEATURE_MAPS)
    per_level = {
        "MODEL.PRIORS.STRIDES": priors.STRIDES,
        "MODEL.PRIORS.MIN_SIZES": priors.MIN_SIZES,
        "MODEL.PRIORS.MAX_SIZES": priors.MAX_SIZES,
        "MODEL.PRIORS.ASPECT_RATIOS": priors.ASPECT_RATIOS,
        "MODEL.BACKBONE.OUT_CHANNELS": cfg.MODEL.BACKBONE.OUT_CHANNELS,
    }
    for key, value in per_level.items():
        if len(value) != levels:
            raise ConfigError(
                f"{key} has {len(value)} entries but MODEL.PRIORS.FEATURE_MAPS has {levels}: {list(value)}"
            )
    expected = [2 + 2 * len(ratios) for ratios in priors.ASPECT_RATIOS]
    if len(priors.BOXES_PER_LOCATION) == 0:
        was_frozen = cfg.is_frozen()
        cfg.defrost()
        priors.BOXES_PER_LOCATION = expected
        if was_frozen:
            cfg.freeze()
    elif list(priors.BOXES_PER_LOCATION) != expected:
        raise ConfigError(
            f"MODEL.PRIORS.BOXES_PER_LOCATION = {list(priors.BOXES_PER_LOCATION)} but ASPECT_RATIOS "
            f"{list(priors.ASPECT_RATIOS)} give 2 + 2 * len(ratios) = {expected}"
        )
    for key, value, lowest in (
        ("MODEL.NUM_CLASSES", cfg.MODEL.NUM_CLASSES, 2),
        ("INPUT.IMAGE_SIZE", cfg.INPUT.IMAGE_SIZE, 1),
        ("SOLVER.BATCH_SIZE", cfg.SOLVER.BATCH_SIZE, 1),
        ("MODEL.BACKBONE.FREEZE_TO_STRIDE", cfg.MODEL.BACKBONE.FREEZE_TO_STRIDE, 0),
    ):
        if value < lowest:
            raise ConfigError(f"{key} must be >= {lowest}, got {value}")
    for key, value in (
        ("MODEL.THRESHOLD", cfg.MODEL.THRESHOLD),
        ("TEST.NMS_THRESHOLD", cfg.TEST.NMS_THRESHOLD),
    ):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key} must be in [0, 1], got {value}")
    if cfg.SOLVER.OPTIMIZER not in ("SGD", "AdamW"):
        raise ConfigError(f"SOLVER.OPTIMIZER must be 'SGD' or 'AdamW', got {cfg.SOLVER.OPTIMIZER!r}")
    if cfg.SOLVER.LR_SCHEDULER not in ("multistep", "cosine"):
        raise ConfigError(
            f"SOLVER.LR_SCHEDULER must be 'multistep' or 'cosine', got {cfg.SOLVER.LR_SCHEDULER!r}"
        )
    stride8_source = cfg.MODEL.BACKBONE.STRIDE8_SOURCE
    if stride8_source not in ("block", "expansion"):  # backbone/mobilenet_v2.STRIDE8_SOURCES
        raise ConfigError(
            f"MODEL.BACKBONE.STRIDE8_SOURCE must be 'block' or 'expansion', got {stride8_source!r}"
        )
    if cfg.INPUT.AUGMENTATION not in ("ssd", "crop", "light", "none", "auto"):  # transforms.AUGMENTATIONS
        raise ConfigError(
            f"INPUT.AUGMENTATION must be 'ssd', 'crop', 'light', 'none' or 'auto', got {cfg.INPUT.AUGMENTATION!r}"
        )
    if cfg.INPUT.MAX_IMAGE_PIXELS < 0:
        raise ConfigError(
            f"INPUT.MAX_IMAGE_PIXELS must be >= 0 (0 = no limit), got {cfg.INPUT.MAX_IMAGE_PIXELS}"
        )
    if not 0.0 <= cfg.DATASETS.VAL_FRACTION < 1.0:
        raise ConfigError(f"DATASETS.VAL_FRACTION must be in [0, 1), got {cfg.DATASETS.VAL_FRACTION}")
    if cfg.DATASETS.MAX_UNREADABLE_IMAGES < 0:
        raise ConfigError(
            f"DATASETS.MAX_UNREADABLE_IMAGES must be >= 0, got {cfg.DATASETS.MAX_UNREADABLE_IMAGES}"
        )
    if cfg.DATASETS.VAL_MAX_IMAGES < 0:
        raise ConfigError(
            f"DATASETS.VAL_MAX_IMAGES must be >= 0 (0 = no cap), got {cfg.DATASETS.VAL_MAX_IMAGES}"
        )
    if cfg.SOLVER.MIN_ITER < 0:
        raise ConfigError(f"SOLVER.MIN_ITER must be >= 0 (0 = no floor), got {cfg.SOLVER.MIN_ITER}")
    if cfg.SOLVER.EPOCHS < 0 or cfg.SOLVER.EVAL_EPOCHS < 0:
        raise ConfigError(
            f"SOLVER.EPOCHS and SOLVER.EVAL_EPOCHS must be >= 0, got {cfg.SOLVER.EPOCHS} and {cfg.SOLVER.EVAL_EPOCHS}"
        )
    if cfg.SOLVER.EPOCHS > 0 and cfg.SOLVER.LR_SCHEDULER != "cosine":
        raise ConfigError(
            f"SOLVER.EPOCHS = {cfg.SOLVER.EPOCHS} needs SOLVER.LR_SCHEDULER 'cosine' (got "
            f"{cfg.SOLVER.LR_SCHEDULER!r}, whose SOLVER.LR_STEPS are in iterations); or give SOLVER.MAX_ITER"
        )
    if cfg.SOLVER.BEST_MODE not in ("min", "max"):
        raise ConfigError(f"SOLVER.BEST_MODE must be 'min' or 'max', got {cfg.SOLVER.BEST_MODE!r}")
