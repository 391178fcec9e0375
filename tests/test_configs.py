"""The six lufficc/SSD configs: they load, and build the networks lufficc/SSD builds (prior counts,
parameter counts and state-dict sizes measured on lufficc/SSD, reference sec. 2.2 and 4); and every shipped
config selects model_best.pth in the direction its metric improves."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssd.config import load_config
from ssd.modeling import build_detection_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# name: (priors, parameters, state-dict entries) of lufficc/SSD.
LUFFICC = {
    "vgg_ssd300_voc0712": (8732, 26_285_486, 71),
    "vgg_ssd512_voc0712": (24564, 27_188_676, 79),
    "vgg_ssd300_coco_trainval35k": (8732, 34_305_206, 71),
    "vgg_ssd512_coco_trainval35k": (24564, 36_038_196, 79),
    "mobilenet_v2_ssd320_voc0712": (3234, 3_304_708, 478),
    "mobilenet_v3_ssd320_voc0712": (3234, 3_860_436, 490),
}


@pytest.mark.parametrize("name", sorted(LUFFICC))
def test_config_builds_lufficc_network(name):
    cfg = load_config(CONFIGS / f"{name}.yaml", ["MODEL.BACKBONE.PRETRAINED", "False"])
    assert cfg.OUTPUT_DIR == f"outputs/{name}"
    model = build_detection_model(cfg)
    priors, parameters, entries = LUFFICC[name]
    assert model.priors_cxcywh.shape == (priors, 4)
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert len(model.state_dict()) == entries


def test_configs_keep_lufficc_values():
    for name in LUFFICC:
        cfg = load_config(CONFIGS / f"{name}.yaml")
        assert cfg.MODEL.BACKBONE.PRETRAINED  # lufficc/SSD trains from ImageNet weights
    coco = load_config(CONFIGS / "vgg_ssd300_coco_trainval35k.yaml")
    assert coco.MODEL.NUM_CLASSES == 81 and coco.SOLVER.MAX_ITER == 400000
    assert list(coco.MODEL.PRIORS.MIN_SIZES) == [21, 45, 99, 153, 207, 261]  # torchvision's ssd300 priors
    ssd512 = load_config(CONFIGS / "vgg_ssd512_voc0712.yaml")
    assert ssd512.SOLVER.BATCH_SIZE == 24 and ssd512.MODEL.PRIORS.MAX_SIZES[-1] == 537.65
    assert (
        load_config(CONFIGS / "mobilenet_v3_ssd320_voc0712.yaml").MODEL.BOX_HEAD.PREDICTOR
        == "SSDLiteBoxPredictor"
    )


REPO = CONFIGS.parent
SHIPPED = sorted(
    [*CONFIGS.rglob("*.yaml"), *(REPO / "models").glob("*.yaml")], key=lambda p: str(p.relative_to(REPO))
)


def better_direction(metric: str) -> str:
    """Which way BEST_METRIC improves, from its name alone: losses fall, AP / AR / mAP rise."""
    name = metric.split("/")[-1]
    if "loss" in name:
        return "min"
    if name.startswith(("AP", "AR", "mAP")):
        return "max"
    raise AssertionError(f"no known direction for SOLVER.BEST_METRIC {metric!r}; add it to this test")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_best_mode_follows_the_direction_of_the_best_metric(path):
    """A wrong BEST_MODE keeps the worst checkpoint as model_best.pth and stops early on improvement, and
    nothing else fails (the run still trains). The merged config counts, so a file inheriting its
    BEST_METRIC from a _BASE_ is checked too; the defaults are "val/loss" with "min"."""
    cfg = load_config(path)
    if not cfg.SOLVER.BEST_METRIC:
        pytest.skip(f"{path.name} selects no best checkpoint")
    assert cfg.SOLVER.BEST_MODE == better_direction(cfg.SOLVER.BEST_METRIC), (
        f"{path}: SOLVER.BEST_METRIC {cfg.SOLVER.BEST_METRIC!r} with BEST_MODE {cfg.SOLVER.BEST_MODE!r}"
    )
