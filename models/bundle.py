"""Package a training checkpoint as the bundled model: weights only, plus its config, class names and command.

    python train.py --config-file configs/shapes_bundled.yaml
    python models/bundle.py outputs/shapes_bundled/model_final.pth models/shapes_ssdlite.pth \
        --command "python train.py --config-file configs/shapes_bundled.yaml"

Writes `models/shapes_ssdlite.pth` = {"model": state dict, "config": YAML text, "class_names": [...],
"command": str} and the same config beside it as `models/shapes_ssdlite.yaml` (what demo.py and test.py read).
Optimizer and scheduler states are dropped: they are twice the weights and only matter to resume training.
`--fp16` halves the file; the weights are cast back to float32 when loaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from ssd.engine.checkpoint import save_checkpoint_file  # noqa: E402
from ssd.modeling.model_zoo import load_detector  # noqa: E402

MAX_BYTES = 10 * 1024 * 1024


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="training checkpoint (with 'model' and 'config')")
    parser.add_argument("dst", help="bundled file to write (.pth); the config goes beside it as .yaml")
    parser.add_argument("--command", required=True, help="the training command, stored in the file")
    parser.add_argument("--fp16", action="store_true", help="store floating-point tensors in half precision")
    args = parser.parse_args(argv)

    loaded = load_detector(args.src)  # checks that the weights fit the stored config
    state_dict = loaded.model.state_dict()
    if args.fp16:
        state_dict = {k: v.half() if v.is_floating_point() else v for k, v in state_dict.items()}
    dst = Path(args.dst)
    cfg = loaded.cfg.clone()
    cfg.defrost()
    cfg.OUTPUT_DIR = f"outputs/{dst.stem}"  # not the training run's folder, which may be anywhere
    config_text = cfg.dump()
    bundle = {
        "model": state_dict,
        "config": config_text,
        "class_names": list(loaded.class_names),
        "command": args.command,
    }
    save_checkpoint_file(bundle, dst)
    dst.with_suffix(".yaml").write_text(
        f"# Config of {dst.name}, trained with: {args.command}\n{config_text}"
    )
    size = dst.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{dst} is {size / 2**20:.1f} MiB, over the 10 MiB limit: use --fp16")
    print(f"wrote {dst} ({size / 2**20:.1f} MiB) and {dst.with_suffix('.yaml')}")
    return dst


if __name__ == "__main__":
    main()
