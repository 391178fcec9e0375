"""The SSD network: backbones, box predictors, priors, matching, loss, post-processing, and their assembly.

`build_detection_model(cfg)` (build.py) is the entry point; `detector.py` shows the data flow.
"""

from ssd.modeling.build import build_detection_model

__all__ = ["build_detection_model"]
