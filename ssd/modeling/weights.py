"""Loading weights: ImageNet backbones, fine-tuning checkpoints, and other projects' SSD checkpoints.

Three entry points:

- `load_pretrained_backbone(backbone, name)`: ImageNet weights of a backbone, downloaded once through the
  torch hub cache ($TORCH_HOME/hub/checkpoints), renamed into our keys, loaded and reported.
- `load_model_weights(model, path_or_url)`: initialise a detector from a checkpoint (fine-tuning). Tensors
  whose shape differs (another class count) are skipped and reported.
- `convert_torchvision_ssd300_vgg16(state_dict)` and `convert_lufficc(state_dict)`: rename the state dict of
  torchvision's `ssd300_vgg16` or of a lufficc/SSD checkpoint into ours (`tools/convert_weights.py`).

Every file is read with `torch.load(..., weights_only=True)`: a checkpoint is data, never code.
"""

from __future__ import annotations

import logging
import re
import urllib.error
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)


class WeightsError(RuntimeError):
    """A weights file that is missing, unreadable or does not fit the model; the message names it."""


# ImageNet weights of each backbone (the files lufficc/SSD loads).
PRETRAINED_URLS = {
    # amdegroot/ssd.pytorch: VGG16 with fc6/fc7 already subsampled to conv6/conv7 ("reduced fc"), keys are
    # the indices of its layer list ("21.weight" is conv4_3). Input: RGB 0..255 minus (123, 117, 104).
    "vgg": "https://s3.amazonaws.com/amdegroot-models/vgg16_reducedfc.pth",
    # torchvision's MobileNetV2 (ImageNet top-1 71.9): `features.*` keys equal ours.
    "mobilenet_v2": "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
    # d-li14/mobilenetv3.pytorch, MobileNetV3-Large (top-1 75.2). Quirk: its last 1x1 conv (160 -> 960) is
    # stored as `conv.0/1.*`, not under `features`; lufficc/SSD loads the file non-strictly and so leaves
    # that layer randomly initialised. We rename `conv.*` to `features.16.*` so it is loaded.
    "mobilenet_v3": "https://github.com/d-li14/mobilenetv3.pytorch/raw/master/pretrained/mobilenetv3-large-1cd25616.pth",
}

# lufficc/SSD (and amdegroot) keep VGG16 in an index-numbered layer list; our layers have names.
# Only layers with weights are listed (the others are ReLUs and pools).
LUFFICC_VGG_INDEX_TO_NAME = {
    0: "conv1_1", 2: "conv1_2", 5: "conv2_1", 7: "conv2_2",
    10: "conv3_1", 12: "conv3_2", 14: "conv3_3",
    17: "conv4_1", 19: "conv4_2", 21: "conv4_3",
    24: "conv5_1", 26: "conv5_2", 28: "conv5_3",
    31: "conv6", 33: "conv7",
}  # fmt: skip
# lufficc/SSD `backbone.extras.{i}`: conv8_1, conv8_2, conv9_1, ... (SSD300 has 8, SSD512 10).
LUFFICC_VGG_EXTRA_NAMES = tuple(f"conv{8 + i // 2}_{1 + i % 2}" for i in range(10))

# The 80 COCO category ids that exist (1..90 has 10 unused ids); torchvision's COCO head has one output per
# id 0..90, ours one per contiguous label 0..80, label i <-> i-th id of this list (0 = background).
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))


@dataclass
class LoadReport:
    """What a load did: keys loaded, skipped for a shape mismatch, absent from the file, or unused."""

    source: str
    loaded: list[str] = field(default_factory=list)
    shape_mismatch: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.source}: loaded {len(self.loaded)} tensors"]
        if self.shape_mismatch:
            skipped = ", ".join(f"{k} {list(a)} vs {list(b)}" for k, (a, b) in self.shape_mismatch.items())
            lines.append(f"  skipped, shape in file vs model: {skipped}")
        if self.missing:
            lines.append(
                f"  not in the file, left as initialised ({len(self.missing)}): {_abbreviate(self.missing)}"
            )
        if self.unexpected:
            lines.append(
                f"  in the file but not in the model ({len(self.unexpected)}): {_abbreviate(self.unexpected)}"
            )
        return "\n".join(lines)


def _abbreviate(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


# ----- reading files ---------------------------------------------------------------------------------


def _hub_cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _load_url(url: str) -> dict:
    """Download `url` into the torch hub cache (once) and load it; offline errors name where to put it."""
    file_name = url.rsplit("/", 1)[-1]
    cached = _hub_cache_dir() / file_name
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
        raise WeightsError(
            f"cannot download {url} ({err}); without network, download it elsewhere and place it at {cached}"
        ) from None
    except Exception as err:  # a truncated or foreign file already in the cache
        raise WeightsError(
            f"cannot read {cached} (downloaded from {url}): {type(err).__name__}: {_first_line(err)}; "
            "delete it to download it again"
        ) from None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def read_state_dict(path_or_url: str | Path) -> dict[str, Tensor]:
    """A state dict from a file or URL holding a state dict or a checkpoint dict with "model".

    Names (a model-zoo entry, a bundled model) are `model_zoo.read_weights`'s: this module, which the
    backbones use for their ImageNet files, knows nothing of the zoo.

    Raises:
        WeightsError: the file is missing, unreadable, holds neither form, or holds NaN/inf weights; the
            message names the file.
    """
    source = str(path_or_url)
    if source.startswith(("http://", "https://")):
        content = _load_url(source)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise WeightsError(f"checkpoint not found: {path}")
        try:
            content = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise WeightsError(
                f"cannot read checkpoint {path}: {type(err).__name__}: {_first_line(err)}"
            ) from None
    if isinstance(content, Mapping) and isinstance(content.get("model"), Mapping):
        content = content["model"]  # a training checkpoint (ssd/engine/checkpoint.py, lufficc/SSD)
    if not isinstance(content, Mapping) or not all(isinstance(v, Tensor) for v in content.values()):
        raise WeightsError(
            f"{source} holds neither a state dict (name -> tensor) nor a checkpoint dict with a 'model' state dict"
        )
    # A diverged model (NaN/inf) would evaluate to AP 0 and draw boxes everywhere: refuse it by name.
    diverged = [k for k, v in content.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if diverged:
        raise WeightsError(
            f"{source} holds NaN/inf weights ({', '.join(diverged[:5])}{', ...' if len(diverged) > 5 else ''}): "
            "it was saved by a diverged run; use an earlier checkpoint"
        )
    # Checkpoints saved from DistributedDataParallel prefix every key with "module.".
    return {key.removeprefix("module."): value for key, value in content.items()}


# ----- loading into a module -------------------------------------------------------------------------


def load_matching(module: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> LoadReport:
    """Load every tensor of `state_dict` whose key and shape exist in `module`; report the rest."""
    report = match_state_dict(module, state_dict, source)
    module.load_state_dict({key: state_dict[key] for key in report.loaded}, strict=False)
    return report


def match_state_dict(module: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> LoadReport:
    """What `load_matching` would load (same key and shape) and what not, without changing `module`."""
    own = module.state_dict()
    report = LoadReport(source)
    for key, value in state_dict.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.shape_mismatch[key] = (tuple(value.shape), tuple(own[key].shape))
        else:
            report.loaded.append(key)
    report.missing = [key for key in own if key not in state_dict]
    return report


# Below this share of the model's tensors matched, MODEL.WEIGHTS was written for another network: fine-tuning
# from it would train from (almost) scratch while the log says "initialised from ...".
MIN_MATCHED_SHARE = 0.5


def _layer_groups(keys: list[str]) -> list[str]:
    """The distinct two-part prefixes of state-dict keys ("backbone.vgg", "predictor.cls_heads"), in order."""
    return list(dict.fromkeys(".".join(key.split(".")[:2]) for key in keys))


def _architecture_hint(report: LoadReport) -> str:
    """E.g. "the file has backbone.features.*, the model backbone.vgg.*": the layers only one side has."""
    in_file = [g for g in _layer_groups(report.unexpected) if g not in _layer_groups(report.missing)]
    in_model = [g for g in _layer_groups(report.missing) if g not in _layer_groups(report.unexpected)]
    if not in_file and not in_model:
        return "layers of the same names but other shapes"
    return (
        f"the file has {', '.join(f'{g}.*' for g in in_file[:3]) or 'no other layers'}, the model "
        f"{', '.join(f'{g}.*' for g in in_model[:3]) or 'no other layers'}"
    )


def _num_classes_hint(model: nn.Module, key: str, file_shape: tuple[int, ...]) -> str:
    """For a classification-head tensor that differs only in its output count, the class count the file
    was trained with ("" when that is not the difference: another architecture, named elsewhere)."""
    num_classes = getattr(model, "num_classes", None)
    model_shape = tuple(model.state_dict()[key].shape)
    if num_classes is None or "cls_heads" not in key or file_shape[1:] != model_shape[1:]:
        return ""
    anchors = model_shape[0] // num_classes
    if file_shape[0] % anchors or file_shape[0] // anchors == num_classes:
        return ""
    return f": the checkpoint has {file_shape[0] // anchors} classes but MODEL.NUM_CLASSES is {num_classes}"


def load_model_weights(
    model: nn.Module,
    path_or_url: str | Path,
    strict: bool = False,
    state_dict: Mapping[str, Tensor] | None = None,
) -> LoadReport:
    """Initialise `model` from a checkpoint, e.g. to fine-tune a detector on another dataset.

    Tensors whose shape differs from the model's (the classification heads when the class count differs)
    are skipped and stay as initialised. The result is logged and returned. A file of which fewer than
    `MIN_MATCHED_SHARE` of the model's tensors match is refused: it was written for another architecture.

    Args:
        model: the module to fill (usually an SSDDetector).
        path_or_url: a state dict file, or a checkpoint dict with a "model" entry; a URL is cached by torch.hub.
        strict: every key must exist in both and every shape must match; otherwise raise.
        state_dict: the weights, already read (`model_zoo.load_weights` passes a converted zoo entry);
            `path_or_url` then only names them in the report.

    Raises:
        WeightsError: missing or unreadable file; a file for another architecture (both modes); with
            strict, the first key that does not fit. `model` is unchanged then.
    """
    if state_dict is None:
        state_dict = read_state_dict(path_or_url)
    report = match_state_dict(model, state_dict, str(path_or_url))
    total = len(model.state_dict())
    if strict and (report.missing or report.unexpected):
        raise WeightsError(
            f"{path_or_url} was written for another architecture than this config builds "
            f"({_architecture_hint(report)}): {len(report.missing)} of the model's {total} tensors are not in "
            f"the file, e.g. {_abbreviate(report.missing, 3)}; check MODEL.BACKBONE and the config"
        )
    if strict:
        for key, (file_shape, model_shape) in report.shape_mismatch.items():
            raise WeightsError(
                f"{path_or_url}: {key} has shape {list(file_shape)} in the checkpoint but {list(model_shape)} "
                f"in the model{_num_classes_hint(model, key, file_shape)}"
            )
    if len(report.loaded) < MIN_MATCHED_SHARE * total:
        raise WeightsError(
            f"{path_or_url}: only {len(report.loaded)} of the model's {total} tensors match the file by name "
            f"and shape ({_abbreviate(report.loaded, 3) or 'none'}): it was written for another architecture "
            f"({_architecture_hint(report)}); check MODEL.BACKBONE and the config, or train without MODEL.WEIGHTS"
        )
    model.load_state_dict({key: state_dict[key] for key in report.loaded}, strict=False)
    logger.info(report.summary())
    return report


def _imagenet_vgg_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """amdegroot's `vgg16_reducedfc.pth`: "21.weight" -> "vgg.conv4_3.weight"."""
    renamed = {}
    for key, value in state_dict.items():
        index, param = key.split(".", 1)
        if int(index) not in LUFFICC_VGG_INDEX_TO_NAME:
            raise WeightsError(f"unexpected key {key!r} in the VGG16 ImageNet file")
        renamed[f"vgg.{LUFFICC_VGG_INDEX_TO_NAME[int(index)]}.{param}"] = value
    return renamed


def _imagenet_mobilenet_v2_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torchvision's file: `features.*` is ours as is; the ImageNet `classifier.*` is dropped."""
    return {k: v for k, v in state_dict.items() if k.startswith("features.")}


def _imagenet_mobilenet_v3_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """d-li14's file: `features.*` as is, its last 1x1 conv `conv.{0,1}.*` -> `features.16.*`."""
    renamed = {}
    for key, value in state_dict.items():
        if key.startswith("features."):
            renamed[key] = value
        elif key.startswith("conv."):
            renamed["features.16." + key.removeprefix("conv.")] = value
    return renamed


_IMAGENET_KEY_CONVERTERS: dict[str, Callable[[Mapping[str, Tensor]], dict[str, Tensor]]] = {
    "vgg": _imagenet_vgg_keys,
    "mobilenet_v2": _imagenet_mobilenet_v2_keys,
    "mobilenet_v3": _imagenet_mobilenet_v3_keys,
}


def load_pretrained_backbone(backbone: nn.Module, name: str) -> LoadReport:
    """Load the ImageNet weights of backbone `name` (a key of PRETRAINED_URLS) through the torch hub cache.

    Every tensor of the file must fit (same shape); layers the file does not have (the SSD extra layers,
    L2Norm) keep their initialisation and are listed in the report's `missing`.

    Raises:
        WeightsError: no network and no cached file (the message names the URL and the cache folder),
            an unreadable file, or a tensor whose shape does not fit.
    """
    url = PRETRAINED_URLS[name]
    state_dict = _IMAGENET_KEY_CONVERTERS[name](_load_url(url))
    report = load_matching(backbone, state_dict, url)
    if report.shape_mismatch or report.unexpected:
        raise WeightsError(f"ImageNet weights of {name!r} do not fit the backbone:\n{report.summary()}")
    logger.info(report.summary())
    return report


# ----- converting other projects' checkpoints ---------------------------------------------------------


def convert_torchvision_ssd300_vgg16(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torchvision `ssd300_vgg16` (91 COCO outputs) -> our VGG16 SSD300 with 81 classes.

    The network is the same (peers reference A.11): same priors as `vgg_ssd300_coco_trainval35k.yaml`,
    same prior order and head channel layout (a * C + c), same input normalisation. Only names differ, and
    the classification head, which torchvision indexes by raw COCO category id (0..90, 10 unused ids), is
    sliced to background + the 80 used ids in ascending order, our contiguous labels 0..80.

    Raises:
        WeightsError: a key this mapping does not know (not an ssd300_vgg16 state dict).
    """
    keep_classes = torch.tensor((0, *COCO_CATEGORY_IDS))  # (81,)
    converted = {}
    for key, value in state_dict.items():
        if match := re.fullmatch(r"backbone\.features\.(\d+)\.(weight|bias)", key):
            new_key = (
                f"backbone.vgg.{LUFFICC_VGG_INDEX_TO_NAME[int(match[1])]}.{match[2]}"  # conv1_1 .. conv4_3
            )
        elif match := re.fullmatch(r"backbone\.extra\.0\.([135])\.(weight|bias)", key):
            new_key = f"backbone.vgg.conv5_{(int(match[1]) + 1) // 2}.{match[2]}"  # after pool4
        elif match := re.fullmatch(r"backbone\.extra\.0\.7\.([13])\.(weight|bias)", key):
            new_key = f"backbone.vgg.{'conv6' if match[1] == '1' else 'conv7'}.{match[2]}"  # fc6, fc7
        elif key == "backbone.scale_weight":
            new_key = "backbone.l2_norm.weight"
        elif match := re.fullmatch(r"backbone\.extra\.([1-4])\.([02])\.(weight|bias)", key):
            new_key = f"backbone.extras.conv{7 + int(match[1])}_{1 + int(match[2]) // 2}.{match[3]}"
        elif match := re.fullmatch(r"head\.regression_head\.module_list\.(\d+)\.(weight|bias)", key):
            new_key = f"predictor.reg_heads.{match[1]}.{match[2]}"
        elif match := re.fullmatch(r"head\.classification_head\.module_list\.(\d+)\.(weight|bias)", key):
            new_key = f"predictor.cls_heads.{match[1]}.{match[2]}"
            if value.shape[0] % 91:
                raise WeightsError(f"{key} has {value.shape[0]} outputs, not a multiple of 91 COCO classes")
            anchors = value.shape[0] // 91
            per_anchor = value.reshape(anchors, 91, *value.shape[1:])  # (A, 91, ...): channel a * 91 + c
            value = per_anchor[:, keep_classes].reshape(
                anchors * len(keep_classes), *value.shape[1:]
            )  # (A*81, ...)
        else:
            raise WeightsError(f"unknown key {key!r}: not a torchvision ssd300_vgg16 state dict")
        converted[new_key] = value.clone()
    return converted


_LUFFICC_SEPARABLE = {"0": "depthwise", "1": "bn", "3": "pointwise"}


def convert_lufficc(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A lufficc/SSD checkpoint (or its "model" state dict) -> ours, for its VGG and MobileNet configs.

    - VGG: `backbone.vgg.{index}` -> `backbone.vgg.{conv name}`, `backbone.extras.{i}` -> `conv8_1`, ...
    - MobileNetV2/V3: the backbone layout is the same as ours, keys unchanged.
    - Heads: `box_head.predictor.{cls,reg}_headers.{l}` -> `predictor.{cls,reg}_heads.{l}`; the SSDLite
      separable conv `conv.{0,1,3}` -> `depthwise`, `bn`, `pointwise`.

    Raises:
        WeightsError: a key this mapping does not know (e.g. lufficc's EfficientNet, not implemented here).
    """
    if isinstance(state_dict.get("model"), Mapping):
        state_dict = state_dict["model"]
    is_vgg = any(key.startswith("backbone.vgg.") for key in state_dict)
    converted = {}
    for key, value in state_dict.items():
        if is_vgg and (match := re.fullmatch(r"backbone\.vgg\.(\d+)\.(weight|bias)", key)):
            new_key = f"backbone.vgg.{LUFFICC_VGG_INDEX_TO_NAME[int(match[1])]}.{match[2]}"
        elif is_vgg and (match := re.fullmatch(r"backbone\.extras\.(\d+)\.(weight|bias)", key)):
            new_key = f"backbone.extras.{LUFFICC_VGG_EXTRA_NAMES[int(match[1])]}.{match[2]}"
        elif key == "backbone.l2_norm.weight" or re.match(r"backbone\.(features|extras)\.", key):
            new_key = key
        elif match := re.fullmatch(
            r"box_head\.predictor\.(cls|reg)_headers\.(\d+)\.conv\.([013])\.(.+)", key
        ):
            new_key = f"predictor.{match[1]}_heads.{match[2]}.{_LUFFICC_SEPARABLE[match[3]]}.{match[4]}"
        elif match := re.fullmatch(r"box_head\.predictor\.(cls|reg)_headers\.(\d+)\.(weight|bias)", key):
            new_key = f"predictor.{match[1]}_heads.{match[2]}.{match[3]}"
        else:
            raise WeightsError(f"unknown key {key!r}: not a lufficc/SSD VGG or MobileNet checkpoint")
        converted[new_key] = value.clone()
    return converted
