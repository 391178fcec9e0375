"""Model zoo: named, downloadable SSD checkpoints of other projects, converted to this package on load.

    python demo.py --ckpt vgg_ssd300_voc0712 street.jpg          # downloads once, then runs offline
    python test.py --config-file configs/vgg_ssd300_voc0712.yaml --ckpt vgg_ssd300_voc0712

Each entry names the file's URL, the config (in `configs/`) that builds the matching network, the converter
from `weights.py` that renames its keys into ours, and the class names of its dataset. Files are cached in
torch.hub's folder, `$TORCH_HOME/hub/checkpoints` (`torch.hub.get_dir()`), and downloaded only when missing.
Without a network, download the file elsewhere and put it there under the same name (the error says where).

The entries: the lufficc/SSD release 1.2 checkpoints (full training checkpoints; only "model" is used) and
torchvision's COCO `ssd300_vgg16`. Sizes and published numbers: README of lufficc/SSD, torchvision docs.
"""

from __future__ import annotations

import tempfile
import urllib.error
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from yacs.config import CfgNode

from ssd.config.loading import ConfigError, load_config
from ssd.config.stored import concrete_priors
from ssd.data.datasets.base import BACKGROUND
from ssd.data.datasets.synthetic import SHAPE_CLASSES
from ssd.data.datasets.voc import VOC_CLASSES
from ssd.modeling.build import build_detection_model
from ssd.modeling.weights import (
    LoadReport,
    WeightsError,
    convert_lufficc,
    convert_torchvision_ssd300_vgg16,
    load_matching,
    load_model_weights,
    read_state_dict,
)
from ssd.utils.device import select_device

# The configs folder of the repository (the zoo's configs are not part of the installed package).
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"

LUFFICC_RELEASE = "https://github.com/lufficc/SSD/releases/download/1.2/"

# The 80 COCO categories in ascending category id, i.e. our contiguous labels 1..80 (weights.COCO_CATEGORY_IDS).
COCO_CLASSES: tuple[str, ...] = (
    BACKGROUND,
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

Converter = Callable[[Mapping[str, Tensor]], dict[str, Tensor]]


@dataclass(frozen=True)
class ZooEntry:
    """One downloadable checkpoint.

    Attributes:
        name: the zoo name (`--ckpt NAME`).
        url: where the file is downloaded from; its last path part is the cached file name.
        config: file name in `configs/` of the network these weights fit.
        converter: renames the file's state dict into our keys.
        class_names: label -> name, "__background__" first.
        note: what the weights are and their published accuracy.
    """

    name: str
    url: str
    config: str
    converter: Converter
    class_names: tuple[str, ...]
    note: str

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def config_file(self) -> Path:
        return CONFIGS_DIR / self.config


def _lufficc(name: str, note: str, file_name: str | None = None) -> ZooEntry:
    classes = COCO_CLASSES if "coco" in name else (BACKGROUND, *VOC_CLASSES)
    return ZooEntry(
        name, LUFFICC_RELEASE + (file_name or f"{name}.pth"), f"{name}.yaml", convert_lufficc, classes, note
    )


MODEL_ZOO: dict[str, ZooEntry] = {
    entry.name: entry
    for entry in (
        _lufficc("vgg_ssd300_voc0712", "lufficc/SSD VGG16 SSD300, VOC07+12; VOC2007 test mAP 77.7"),
        _lufficc("vgg_ssd512_voc0712", "lufficc/SSD VGG16 SSD512, VOC07+12; VOC2007 test mAP 80.7"),
        _lufficc("vgg_ssd300_coco_trainval35k", "lufficc/SSD VGG16 SSD300, COCO; minival AP 25.2"),
        _lufficc("vgg_ssd512_coco_trainval35k", "lufficc/SSD VGG16 SSD512, COCO; minival AP 29.0"),
        _lufficc(
            "mobilenet_v2_ssd320_voc0712",
            "lufficc/SSD MobileNetV2 SSDLite320, VOC07+12; VOC2007 test mAP 68.9",
            file_name="mobilenet_v2_ssd320_voc0712_v2.pth",
        ),
        _lufficc(
            "mobilenet_v3_ssd320_voc0712",
            "lufficc/SSD MobileNetV3-Large SSDLite320, VOC07+12; VOC2007 test mAP 69.5",
        ),
        ZooEntry(
            "torchvision_ssd300_vgg16_coco",
            "https://download.pytorch.org/models/ssd300_vgg16_coco-b556d3b4.pth",
            # torchvision's ssd300_vgg16 has exactly the priors and layers of lufficc's COCO SSD300 config.
            "vgg_ssd300_coco_trainval35k.yaml",
            convert_torchvision_ssd300_vgg16,
            COCO_CLASSES,
            "torchvision ssd300_vgg16 COCO_V1 weights; COCO val2017 box AP 25.1 (torchvision docs)",
        ),
    )
}


def is_zoo_name(name: str | Path | None) -> bool:
    return isinstance(name, str) and name in MODEL_ZOO


def get_entry(name: str) -> ZooEntry:
    """The entry called `name`; KeyError listing the known names otherwise."""
    if name not in MODEL_ZOO:
        raise KeyError(f"unknown model zoo name {name!r}; known: {', '.join(MODEL_ZOO)}")
    return MODEL_ZOO[name]


def cached_path(entry: ZooEntry) -> Path:
    """Where the entry's file lives in the torch hub cache (it may not exist yet)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / entry.file_name


def download(entry: ZooEntry) -> Path:
    """The cached file of `entry`, downloaded first if missing.

    Raises:
        WeightsError: no network (or the server refused); one line naming the URL and where to put the file.
    """
    path = cached_path(entry)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # download_url_to_file writes to a temporary file and renames it when complete, so an interrupted
        # download never leaves a truncated file under the final name.
        torch.hub.download_url_to_file(entry.url, str(path), progress=True)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise WeightsError(
            f"cannot download model zoo entry {entry.name!r} from {entry.url} ({reason}); without network, "
            f"download that file elsewhere and place it at {path}"
        ) from None
    return path


def load_zoo_state_dict(name: str) -> dict[str, Tensor]:
    """The converted state dict (our keys) of zoo entry `name`, downloading the file if needed.

    Raises:
        KeyError: unknown name.
        WeightsError: no network and no cached file, an unreadable file, or keys the converter does not know.
    """
    entry = get_entry(name)
    path = download(entry)
    state_dict = read_state_dict(path)  # lufficc's files are training checkpoints: keeps only "model"
    try:
        return entry.converter(state_dict)
    except WeightsError as err:
        raise WeightsError(f"{path} (model zoo entry {name!r}): {err}") from None


# ----- a ready-to-run detector from a --config-file / --ckpt pair (demo.py, tools/export.py) -----------

# The models shipped in the repository (models/, packaged by models/bundle.py: float16 weights, the config
# beside each file as .yaml). `--ckpt NAME` and MODEL.WEIGHTS NAME accept their names, like the zoo's.
MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
BUNDLED_MODELS: dict[str, str] = {
    "shapes_ssdlite": "synthetic shapes, trained by configs/shapes_bundled.yaml (what `python demo.py` runs)",
    "bccd_ssdlite": "BCCD blood cells, trained by configs/examples/bccd.yaml (the short path, fitted priors)",
}
BUNDLED_CHECKPOINT = MODELS_DIR / "shapes_ssdlite.pth"


def bundled_file(name: str | Path) -> Path | None:
    """models/<name>.pth for a bundled model's name, else None."""
    return MODELS_DIR / f"{name}.pth" if isinstance(name, str) and name in BUNDLED_MODELS else None


def read_weights(source: str | Path) -> dict[str, Tensor]:
    """A state dict from any name MODEL.WEIGHTS and --ckpt accept: a zoo name (downloaded and converted),
    a bundled model's name (models/NAME.pth), a file or a URL (`weights.read_state_dict`).

    Raises:
        WeightsError: see `load_zoo_state_dict` and `weights.read_state_dict`.
    """
    source = str(source)
    if is_zoo_name(source):  # e.g. MODEL.WEIGHTS vgg_ssd300_voc0712
        return load_zoo_state_dict(source)
    return read_state_dict(bundled_file(source) or source)  # e.g. --ckpt bccd_ssdlite


def load_weights(model: torch.nn.Module, source: str | Path, strict: bool = False) -> LoadReport:
    """`weights.load_model_weights` for any name `read_weights` accepts (train.py's MODEL.WEIGHTS, test.py)."""
    return load_model_weights(model, source, strict, state_dict=read_weights(source))


@dataclass
class LoadedDetector:
    """A detector in eval mode with what is needed to run and label it."""

    model: torch.nn.Module
    cfg: CfgNode
    class_names: tuple[str, ...]
    source: str  # the checkpoint path, URL or zoo name it was loaded from
    device: torch.device


def read_checkpoint_metadata(path: Path) -> dict:
    """The non-tensor entries of a checkpoint dict ("config", "class_names", ...); {} for a bare state dict."""
    try:  # mmap: the tensors are not read, so this costs nothing even for a 200 MB file
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # read_state_dict reports unreadable files with a better message
        return {}
    if not isinstance(content, Mapping) or not isinstance(content.get("model"), Mapping):
        return {}
    return {k: v for k, v in content.items() if k != "model" and isinstance(v, str | list | tuple | int)}


def default_class_names(cfg: CfgNode) -> tuple[str, ...]:
    """Class names when the checkpoint has none: DATASETS.CLASS_NAMES, else guessed from the class count."""
    num_classes = cfg.MODEL.NUM_CLASSES
    if cfg.DATASETS.CLASS_NAMES:
        return (BACKGROUND, *cfg.DATASETS.CLASS_NAMES)
    if num_classes == len(SHAPE_CLASSES) + 1 and any(n.startswith("shapes") for n in cfg.DATASETS.TEST):
        return (BACKGROUND, *SHAPE_CLASSES)
    for names in ((BACKGROUND, *VOC_CLASSES), COCO_CLASSES):
        if num_classes == len(names):
            return names
    return (BACKGROUND, *(f"class {i}" for i in range(1, num_classes)))


def load_detector(
    ckpt: str | Path | None = None,
    config_file: str | Path | None = None,
    opts: Sequence[str] = (),
) -> LoadedDetector:
    """Build the network of a config and load a checkpoint into it, strictly; eval mode, on MODEL.DEVICE.

    Args:
        ckpt: a zoo name (`MODEL_ZOO`), a URL, or a file holding a state dict or a checkpoint dict with
            "model" (ours may also hold "config" (YAML text) and "class_names"); None = the bundled model.
        config_file: the network's config; None = the zoo entry's config, else `<ckpt>.yaml` beside the
            file, else the "config" stored in the checkpoint.
        opts: `KEY VALUE` overrides. MODEL.BACKBONE.PRETRAINED is always off (the checkpoint replaces
            every weight, so the ImageNet file is not needed).

    Raises:
        WeightsError: missing/unreadable checkpoint, no network for a zoo entry, or weights that do not
            fit the config's network (the message names the key).
        ConfigError: no config found, or a bad config / override.
    """
    ckpt = str(ckpt) if ckpt is not None else str(BUNDLED_CHECKPOINT)
    ckpt = str(bundled_file(ckpt) or ckpt)
    metadata: dict = {}
    if is_zoo_name(ckpt):
        entry = get_entry(ckpt)
        config_file = config_file or entry.config_file
        state_dict = load_zoo_state_dict(ckpt)
        metadata["class_names"] = entry.class_names
    else:
        state_dict = read_state_dict(ckpt)  # raises WeightsError naming a missing or unreadable file
        if not ckpt.startswith(("http://", "https://")):
            metadata = read_checkpoint_metadata(Path(ckpt).expanduser())
            beside = Path(ckpt).expanduser().with_suffix(".yaml")
            if config_file is None and beside.is_file():
                config_file = beside
    overrides = [*opts, "MODEL.BACKBONE.PRETRAINED", "False"]
    if config_file is None and isinstance(metadata.get("config"), str):
        with (
            tempfile.TemporaryDirectory() as tmp
        ):  # load_config reads files; the YAML lives in the checkpoint
            stored = Path(tmp) / "config.yaml"
            stored.write_text(metadata["config"])
            cfg = load_config(stored, overrides, freeze=True)
    elif config_file is None:
        raise ConfigError(
            f"no config for {ckpt}: pass --config-file (the checkpoint stores none and there is no "
            f"{Path(ckpt).with_suffix('.yaml').name} beside it)"
        )
    else:
        cfg = load_config(config_file, overrides, freeze=True)

    cfg = concrete_priors(cfg, metadata.get("config"), ckpt)  # AUTO: the priors the weights learnt with
    model = build_detection_model(cfg)
    report = load_matching(model, state_dict, ckpt)  # fp16 tensors are cast to the model's float32
    if report.shape_mismatch or report.missing or report.unexpected:
        raise WeightsError(
            f"{ckpt} does not fit the network of {config_file or 'its stored config'}:\n{report.summary()}"
        )
    device = select_device(cfg.MODEL.DEVICE)
    model.eval().to(device)
    class_names = tuple(metadata.get("class_names") or default_class_names(cfg))
    if len(class_names) != cfg.MODEL.NUM_CLASSES:
        raise ConfigError(
            f"{ckpt}: {len(class_names)} class names for MODEL.NUM_CLASSES {cfg.MODEL.NUM_CLASSES}"
        )
    return LoadedDetector(model, cfg, class_names, ckpt, device)
