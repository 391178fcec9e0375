"""Configuration: `cfg` (lufficc-style global), `get_cfg()` (a fresh copy) and `load_config()`."""

from ssd.config.defaults import _C
from ssd.config.loading import ConfigError, check_config, get_cfg, load_config

# lufficc/SSD style: `from ssd.config import cfg; cfg.merge_from_file(...)`. Prefer get_cfg() in new code:
# a global shared by every caller is easy to mutate by accident.
cfg = _C.clone()

__all__ = ["ConfigError", "cfg", "check_config", "get_cfg", "load_config"]
