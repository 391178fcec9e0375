"""Evaluate a trained detector on DATASETS.TEST.

    python test.py --config-file configs/vgg_ssd300_voc0712.yaml [--ckpt PATH] [--output-dir DIR] [KEY VALUE ...]

The network can run in ONNX Runtime instead of PyTorch (`--backend onnxruntime [--onnx FILE]`, e.g. an int8
file from tools/quantize.py); pre- and post-processing stay the same (docs/serving.md).

Without --ckpt, the checkpoint named in OUTPUT_DIR/last_checkpoint is used. Results go to
OUTPUT_DIR/inference/<dataset>/ (results.json, coco_instances_results.json, analysis.json, confusion_matrix.png,
pr_curves.png, and report.html: the errors with pictures, see docs/custom_dataset.md); the log to OUTPUT_DIR/log.txt. Several GPUs: `torchrun --nproc_per_node N test.py ...`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ssd.config import ConfigError, load_config
from ssd.config.stored import concrete_priors
from ssd.data.datasets.image_files import DatasetError
from ssd.engine.checkpoint import LAST_CHECKPOINT, CheckpointError
from ssd.engine.inference import evaluate_on_test_datasets
from ssd.engine.runtime import add_backend_arguments, build_backend
from ssd.modeling import build_detection_model
from ssd.modeling.model_zoo import bundled_file, load_weights, read_checkpoint_metadata
from ssd.modeling.weights import WeightsError
from ssd.utils import dist as dist_utils
from ssd.utils.device import select_device
from ssd.utils.logging import setup_logger


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate an SSD checkpoint on DATASETS.TEST.")
    parser.add_argument(
        "--config-file", required=True, metavar="FILE", help="YAML config (lufficc/SSD format)"
    )
    parser.add_argument(
        "--ckpt",
        default=None,
        help="checkpoint or weights file, URL or model-zoo name; default: the one named in OUTPUT_DIR/last_checkpoint",
    )
    parser.add_argument("--output-dir", "--output_dir", default=None, help="overrides OUTPUT_DIR")
    add_backend_arguments(parser)
    parser.add_argument(
        "--print-config", action="store_true", help="print the merged config as YAML and exit"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def find_checkpoint(ckpt: str | None, output_dir: Path) -> str:
    """--ckpt if given, else the file named in OUTPUT_DIR/last_checkpoint; a clear error if there is none."""
    if ckpt:
        return ckpt
    pointer = output_dir / LAST_CHECKPOINT
    if not pointer.is_file():
        raise SystemExit(
            f"test.py: no checkpoint to evaluate: --ckpt was not given and {pointer} does not exist "
            "(train first, or pass --ckpt PATH)"
        )
    name = pointer.read_text().strip()
    path = Path(name) if Path(name).is_absolute() else output_dir / name
    if not path.is_file():
        raise SystemExit(f"test.py: {pointer} names {name}, but {path} does not exist")
    return str(path)


def main(argv: list[str] | None = None) -> dict:
    """Evaluate; a bad config, checkpoint, weights file or dataset ends with one line and exit status 1."""
    try:
        return run(parse_args(argv))
    except (ConfigError, CheckpointError, WeightsError, DatasetError) as err:
        raise SystemExit(f"test.py: {err}") from None
    finally:
        dist_utils.cleanup_distributed()


def run(args: argparse.Namespace) -> dict:
    # The checkpoint replaces every weight, so the ImageNet backbone file is neither loaded nor needed.
    cfg = load_config(args.config_file, [*args.opts, "MODEL.BACKBONE.PRETRAINED", "False"], freeze=False)
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    cfg.freeze()
    if args.print_config:
        print(cfg.dump())
        return {}
    device = select_device(cfg.MODEL.DEVICE)
    dist_utils.init_distributed(device.type)
    output_dir = Path(cfg.OUTPUT_DIR)
    output_dir.mkdir(parents=True, exist_ok=True)  # lufficc/SSD's test.py crashes on a fresh OUTPUT_DIR
    logger = setup_logger(output_dir, rank=dist_utils.get_rank())
    logger.info(f"Command line: {' '.join(sys.argv)}")
    if not cfg.DATASETS.TEST:
        raise SystemExit("test.py: DATASETS.TEST is empty; name the datasets to evaluate")

    ckpt = find_checkpoint(args.ckpt, output_dir)
    if cfg.MODEL.PRIORS.AUTO:  # the priors the weights were trained with, stored in the checkpoint
        path = bundled_file(ckpt) or Path(ckpt)
        stored = read_checkpoint_metadata(path).get("config") if path.is_file() else None
        cfg = concrete_priors(cfg, stored, ckpt)
    model = build_detection_model(cfg)
    load_weights(model, ckpt, strict=True)
    model.to(device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        model = build_backend(model, args.backend, cfg.INPUT.IMAGE_SIZE, args.onnx, args.threads)
    except (ValueError, FileNotFoundError, ImportError) as err:
        raise SystemExit(f"test.py: {err}") from None
    if args.backend == "onnxruntime":
        device = torch.device("cpu")  # ONNX Runtime runs on the CPU
        logger.info(f"Network in ONNX Runtime: {args.onnx or 'exported from the checkpoint now'}")
    logger.info(f"Evaluating {ckpt} on {', '.join(cfg.DATASETS.TEST)} ({device})")
    return evaluate_on_test_datasets(cfg, model, device, output_dir)


if __name__ == "__main__":
    main()
