"""Loading a config from YAML + command-line overrides, with errors that name the offending key.

yacs already refuses unknown keys and type changes; here its messages are turned into one line that
names the file (or the override) and the key, and derived values are filled in or checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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


def load_config(
    config_file: str | Path | None = None, opts: Sequence[str] = (), freeze: bool = True
) -> CfgNode:
    """Defaults <- YAML file <- `KEY VALUE` overrides, then derived values checked.

    Args:
        config_file: a YAML file in lufficc/SSD format, or None for the defaults.
        opts: flat list of overrides, e.g. ["SOLVER.LR", "0.01", "MODEL.DEVICE", "cpu"].
        freeze: return a frozen (read-only) config.

    Raises:
        ConfigError: unknown key, wrong type, missing file, or inconsistent values; the message names them.
    """
    cfg = get_cfg()
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        _merge(cfg, lambda: cfg.merge_from_file(str(path)), f"config file {path}")
    if opts:
        if len(opts) % 2:
            raise ConfigError(f"overrides must be KEY VALUE pairs, got an odd number: {list(opts)}")
        _merge(cfg, lambda: cfg.merge_from_list(list(opts)), "command-line override")
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
    if cfg.INPUT.AUGMENTATION not in ("ssd", "crop", "light", "none"):  # ssd.data.transforms.AUGMENTATIONS
        raise ConfigError(
            f"INPUT.AUGMENTATION must be 'ssd', 'crop', 'light' or 'none', got {cfg.INPUT.AUGMENTATION!r}"
        )
    if cfg.SOLVER.BEST_MODE not in ("min", "max"):
        raise ConfigError(f"SOLVER.BEST_MODE must be 'min' or 'max', got {cfg.SOLVER.BEST_MODE!r}")
