"""Inference builds from a concrete config: an AUTO config takes its priors from the training run's stored one.

`MODEL.PRIORS.AUTO True` is a request to train.py's recipe step (ssd/engine/recipe.py), which fits the priors
to the training boxes and writes the fitted values, with AUTO False, into OUTPUT_DIR/config.yaml and into
every checkpoint's "config". test.py, demo.py and the tools never read the training data: they take those
stored values, or stop with one line saying which file to pass.
"""

from __future__ import annotations

from pathlib import Path

from yacs.config import CfgNode

from ssd.config.loading import ConfigError

# What the recipe step fits for MODEL.PRIORS.AUTO: taken over from the stored config as a whole.
FITTED_KEYS = (
    "MODEL.PRIORS.FEATURE_MAPS", "MODEL.PRIORS.STRIDES", "MODEL.PRIORS.MIN_SIZES", "MODEL.PRIORS.MAX_SIZES",
    "MODEL.PRIORS.ASPECT_RATIOS", "MODEL.PRIORS.BOXES_PER_LOCATION", "MODEL.BACKBONE.STRIDE8_MAP",
    "MODEL.BACKBONE.STRIDE8_SOURCE", "MODEL.BACKBONE.OUT_CHANNELS",
)  # fmt: skip

# Fitted keys newer than some checkpoints, with the value every checkpoint written before the key existed was
# trained with (such a stored config lacks the key).
BEFORE_THE_KEY = {"MODEL.BACKBONE.STRIDE8_SOURCE": "block"}


def concrete_priors(
    cfg: CfgNode, stored_config_yaml: str | None = None, source: str | Path | None = None
) -> CfgNode:
    """`cfg` with the fitted priors of `stored_config_yaml` when `cfg` says MODEL.PRIORS.AUTO.

    Args:
        cfg: the config given at inference (returned as it is when AUTO is False).
        stored_config_yaml: the "config" a checkpoint stores (train.py writes the concrete one), or None.
        source: the checkpoint it came from, named in the error.

    Raises:
        ConfigError: AUTO, and no stored config with fitted priors; the message says which file to pass.
    """
    if not cfg.MODEL.PRIORS.AUTO:
        return cfg
    stored = CfgNode.load_cfg(stored_config_yaml) if stored_config_yaml else None
    if stored is None or stored.get("MODEL", {}).get("PRIORS", {}).get("AUTO", True):
        where = f"checkpoint {source} stores none" if source else "no checkpoint is given"
        raise ConfigError(
            "MODEL.PRIORS.AUTO is True: the priors are fitted when train.py starts and "
            f"{where}; pass the training run's OUTPUT_DIR/config.yaml as --config-file, or a checkpoint "
            "written by train.py (it stores the fitted priors)"
        )
    resolved = cfg.clone()
    resolved.defrost()
    for key in FITTED_KEYS:
        node, stored_node = resolved, stored
        *path, leaf = key.split(".")
        for part in path:
            node, stored_node = node[part], stored_node[part]
        node[leaf] = stored_node[leaf] if leaf in stored_node else BEFORE_THE_KEY[key]
    resolved.MODEL.PRIORS.AUTO = False
    if cfg.is_frozen():
        resolved.freeze()
    return resolved
