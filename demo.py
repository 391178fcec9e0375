"""Run a detector on images or a video and write them with boxes, class names and scores drawn.

    python demo.py                                         # bundled model on generated shapes -> outputs/demo/
    python demo.py --ckpt vgg_ssd300_voc0712 --images-dir photos/      # a model zoo entry (downloaded once)
    python demo.py --config-file CFG --ckpt model_final.pth a.jpg b.png --score-threshold 0.3
    python demo.py --video street.mp4 --frame-stride 5 --ckpt mobilenet_v2_ssd320_voc0712
    python demo.py --print-config --ckpt vgg_ssd300_voc0712            # the merged config, then exit
    python demo.py --backend onnxruntime --threads 1       # the network in ONNX Runtime (docs/serving.md)

--ckpt takes a file, a URL or a model zoo name (`ssd/modeling/model_zoo.py`); without --config-file the zoo
entry's config, a `<ckpt>.yaml` beside the file or the config stored in the checkpoint is used. With no
image or video, the demo generates synthetic shape images (a seed that training never sees) and runs on
them, so it works on a fresh machine without any download.

Every image prints its times: load (read + resize + normalise), inference (network + post-processing) and
draw (drawing + writing); the last line gives the mean FPS of the inference alone, as lufficc/SSD does.
An image that cannot be read (corrupt, or above INPUT.MAX_IMAGE_PIXELS: its size is read from the header,
nothing is decoded) is reported on its own line and skipped; the others are still processed, and the demo
then exits with status 1, naming the skipped files. --images-dir takes every file whose suffix is one of
IMAGE_SUFFIXES (the formats OpenCV reads); other files there (.svg, .heic, .txt, ...) are counted and named on
one line, and do not change the exit status.

Where a model goes wrong (false positives by kind, missed objects, with pictures) needs labels: test.py writes
an HTML report per evaluated dataset (`ssd/evaluation/report.py`; the no-argument run prints the command).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

from ssd.config.loading import ConfigError
from ssd.data.datasets.image_files import read_image_rgb
from ssd.data.datasets.synthetic import SyntheticShapesDataset
from ssd.data.transforms import build_transforms
from ssd.engine.runtime import add_backend_arguments, build_backend
from ssd.modeling.model_zoo import MODEL_ZOO, LoadedDetector, load_detector
from ssd.modeling.weights import WeightsError
from ssd.utils.visualize import draw_boxes, write_image

# What OpenCV's image readers decode (cv2.imread's documentation; GIF from OpenCV 4.11, AVIF when built with
# it). A file that this OpenCV build cannot decode after all is reported and skipped like a corrupt one.
IMAGE_SUFFIXES = (
    ".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".webp", ".tif", ".tiff", ".gif", ".avif",
    ".jp2", ".pbm", ".pgm", ".ppm", ".pnm", ".pxm", ".sr", ".ras", ".exr", ".hdr", ".pic", ".pfm",
)  # fmt: skip
# Seeds of the built-in shapes datasets are 1 (train), 2 (val), 3 (test): the demo's images are new to the model.
DEMO_SEED = 2024
DEMO_NUM_IMAGES = 8
DEMO_IMAGE_SIZE = 300
# lufficc/SSD's demo uses 0.7. The bundled model, trained for minutes, is under-confident: on 100 new shape
# images it finds 80% of the objects above 0.25 but 59% above 0.5 (false positives: 3% and 1%).
DEFAULT_SCORE_THRESHOLD = 0.3
REPORT_HINT = (
    "python test.py --config-file models/shapes_ssdlite.yaml --ckpt models/shapes_ssdlite.pth, then open "
    "outputs/shapes_ssdlite/inference/shapes_test/report.html (docs/custom_dataset.md#the-report-where-it-goes-wrong)"
)
_CONFIG_KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)+")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Draw an SSD's detections on images or a video.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="model zoo names: " + ", ".join(MODEL_ZOO),
    )
    parser.add_argument("--config-file", "--config_file", default=None, metavar="FILE", help="YAML config")
    parser.add_argument(
        "--ckpt", default=None, help="checkpoint file, URL or model zoo name (default: the bundled model)"
    )
    parser.add_argument(
        "--images-dir", "--images_dir", default=None, help="every image in it (.jpg, .png, .webp, .tif, ...)"
    )
    parser.add_argument(
        "--video", default=None, metavar="FILE", help="a video file, annotated frame by frame"
    )
    parser.add_argument("--frame-stride", type=int, default=1, help="video: run on every N-th frame only")
    parser.add_argument("--output-dir", "--output_dir", default="outputs/demo", help="where results go")
    parser.add_argument(
        "--score-threshold",
        "--score_threshold",
        type=float,
        default=DEFAULT_SCORE_THRESHOLD,
        help=f"draw detections scoring above this (default {DEFAULT_SCORE_THRESHOLD})",
    )
    add_backend_arguments(parser)
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    parser.add_argument(
        "inputs", nargs="*", help="image files, then config overrides KEY VALUE ... (e.g. MODEL.DEVICE cpu)"
    )
    args = parser.parse_intermixed_args(argv)  # files may come before or after the options
    # Image files and KEY VALUE overrides share the positional list: overrides start at the first
    # upper-case dotted key (MODEL.DEVICE) that is not an existing file.
    split = next(
        (i for i, a in enumerate(args.inputs) if _CONFIG_KEY.fullmatch(a) and not Path(a).exists()),
        len(args.inputs),
    )
    args.files, args.opts = args.inputs[:split], args.inputs[split:]
    if args.frame_stride < 1:
        parser.error("--frame-stride must be >= 1")
    return args


class Detector:
    """A loaded model plus its test-time transform: uint8 RGB image -> detections above a score."""

    def __init__(self, loaded: LoadedDetector, score_threshold: float):
        self.loaded = loaded
        self.score_threshold = score_threshold
        cfg = loaded.cfg
        self.max_image_pixels = cfg.INPUT.MAX_IMAGE_PIXELS
        self.transform = build_transforms(cfg.INPUT.IMAGE_SIZE, cfg.INPUT.PIXEL_MEAN, is_train=False)

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, 3) RGB -> (1, 3, S, S) float32 on the model's device."""
        no_boxes = np.zeros((0, 4), np.float32)
        tensor, _, _ = self.transform(image, no_boxes, np.zeros(0, np.int64))
        return tensor[None].to(self.loaded.device)

    @torch.no_grad()
    def detect(self, images: torch.Tensor, height: int, width: int) -> dict[str, np.ndarray]:
        """(1, 3, S, S) -> {"boxes" (K, 4) xyxy pixels of the H x W original, "labels" (K,), "scores" (K,)}."""
        result = self.loaded.model(images, image_sizes=[(height, width)])[0]
        if self.loaded.device.type == "cuda":
            torch.cuda.synchronize()  # so that the inference time is the GPU's, not the launch time
        keep = result["scores"] > self.score_threshold
        return {key: value[keep].cpu().numpy() for key, value in result.items()}

    def draw(self, image: np.ndarray, detections: dict[str, np.ndarray]) -> np.ndarray:
        return draw_boxes(
            image, detections["boxes"], detections["labels"], detections["scores"], self.loaded.class_names
        )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:4.0f}ms"


def list_images(images_dir: str | None, files: list[str]) -> list[Path]:
    """Images of --images-dir (sorted) and the listed files; SystemExit with one line if one is missing."""
    paths = []
    if images_dir is not None:
        folder = Path(images_dir)
        if not folder.is_dir():
            raise SystemExit(f"demo.py: images folder not found: {folder}")
        files_there = sorted(p for p in folder.iterdir() if p.is_file())
        paths = [p for p in files_there if p.suffix.lower() in IMAGE_SUFFIXES]
        others = [p.name for p in files_there if p.suffix.lower() not in IMAGE_SUFFIXES]
        if not paths:
            raise SystemExit(
                f"demo.py: no images in {folder} (suffixes {' '.join(IMAGE_SUFFIXES)}); "
                f"{len(others)} other files"
            )
        if others:
            print(
                f"demo.py: {len(others)} files in {folder} are not images OpenCV reads (by suffix) and are "
                f"skipped: {', '.join(others[:10])}{' ...' if len(others) > 10 else ''}",
                file=sys.stderr,
            )
    for name in files:
        if not Path(name).is_file():
            raise SystemExit(f"demo.py: image not found: {name}")
        paths.append(Path(name))
    return paths


def synthetic_images() -> Iterator[tuple[str, np.ndarray, dict]]:
    """(name, uint8 RGB image, annotation) of freshly generated shape images (see DEMO_SEED)."""
    dataset = SyntheticShapesDataset(DEMO_NUM_IMAGES, seed=DEMO_SEED, image_size=DEMO_IMAGE_SIZE)
    for index in range(len(dataset)):
        yield f"shapes_{index:03d}.png", dataset.load_image(index), dataset.get_annotation(index)


def run_on_images(detector: Detector, sources, output_dir: Path) -> list[dict]:
    """Detect, draw and write each image; returns per image {"name", "output", detections...}.

    An unreadable image file is reported and skipped; after the others are done, SystemExit names them.
    """
    results, skipped = [], []
    total_inference = 0.0
    sources = list(sources)
    for i, source in enumerate(sources, start=1):
        start = time.perf_counter()
        if isinstance(source, Path):
            try:
                name, image = source.name, read_image_rgb(source, detector.max_image_pixels)
            except OSError as err:  # corrupt, not an image, too many pixels, or deleted since it was listed
                print(f"({i:04d}/{len(sources):04d}) {source.name}: skipped, {err}", file=sys.stderr)
                skipped.append(str(source))
                continue
        else:
            name, image = source[0], source[1]
        images = detector.prepare(image)
        loaded = time.perf_counter()
        detections = detector.detect(images, image.shape[0], image.shape[1])
        inferred = time.perf_counter()
        output = write_image(output_dir / name, detector.draw(image, detections))
        drawn = time.perf_counter()
        total_inference += inferred - loaded
        print(
            f"({i:04d}/{len(sources):04d}) {name}: objects {len(detections['scores']):02d} | "
            f"load {_ms(loaded - start)} | inference {_ms(inferred - loaded)} | draw {_ms(drawn - inferred)}"
        )
        results.append({"name": name, "output": output, **detections})
    if results:
        print(f"{len(results)} images written to {output_dir}; mean FPS {len(results) / total_inference:.1f}")
    if skipped:
        raise SystemExit(
            f"demo.py: {len(skipped)} of {len(sources)} images could not be read and were skipped: "
            + ", ".join(skipped)
        )
    return results


def run_on_video(detector: Detector, video: Path, output_dir: Path, frame_stride: int) -> dict:
    """Annotate every `frame_stride`-th frame of `video` into output_dir/<stem>_detections.mp4."""
    if not video.is_file():
        raise SystemExit(f"demo.py: video not found: {video}")
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise SystemExit(f"demo.py: cannot open video {video} (not a video, or no codec for it in OpenCV)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    output = output_dir / f"{video.stem}_detections.mp4"
    output_dir.mkdir(parents=True, exist_ok=True)
    writer = None
    read = written = 0
    total_inference = 0.0
    try:
        while True:
            start = time.perf_counter()
            ok, frame_bgr = capture.read()
            if not ok:
                break
            read += 1
            if (read - 1) % frame_stride:
                continue
            frame = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
            images = detector.prepare(frame)
            loaded = time.perf_counter()
            detections = detector.detect(images, frame.shape[0], frame.shape[1])
            inferred = time.perf_counter()
            if writer is None:
                # mp4v (MPEG-4 part 2) is the codec OpenCV's own builds can always write into .mp4.
                fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                size = (frame.shape[1], frame.shape[0])
                writer = cv2.VideoWriter(str(output), fourcc, fps / frame_stride, size)
                if not writer.isOpened():
                    raise SystemExit(f"demo.py: OpenCV cannot write {output} (no mp4v encoder)")
            writer.write(cv2.cvtColor(detector.draw(frame, detections), cv2.COLOR_RGB2BGR))
            drawn = time.perf_counter()
            written += 1
            total_inference += inferred - loaded
            print(
                f"frame {read - 1:05d}: objects {len(detections['scores']):02d} | load {_ms(loaded - start)} | "
                f"inference {_ms(inferred - loaded)} | draw {_ms(drawn - inferred)}"
            )
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if written == 0:
        raise SystemExit(f"demo.py: no frame could be read from {video}")
    print(f"{written} of {read} frames written to {output}; mean FPS {written / total_inference:.1f}")
    return {"output": output, "frames_read": read, "frames_written": written}


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    try:
        loaded = load_detector(args.ckpt, args.config_file, args.opts)
    except (WeightsError, ConfigError, KeyError) as err:
        raise SystemExit(f"demo.py: {err}") from None
    if args.print_config:
        print(loaded.cfg.dump())
        return loaded.cfg
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        model = build_backend(
            loaded.model, args.backend, loaded.cfg.INPUT.IMAGE_SIZE, args.onnx, args.threads
        )
    except (ValueError, FileNotFoundError, ImportError) as err:
        raise SystemExit(f"demo.py: {err}") from None
    where = str(loaded.device)
    if args.backend == "onnxruntime":  # ONNX Runtime runs on the CPU: the images are prepared there
        loaded = dataclasses.replace(loaded, model=model, device=torch.device("cpu"))
        where = f"onnxruntime on the cpu, {args.onnx or 'network exported now'}"
    print(f"Loaded weights from {loaded.source} ({where}); classes: {', '.join(loaded.class_names[1:])}")
    detector = Detector(loaded, args.score_threshold)
    output_dir = Path(args.output_dir)
    if args.video:
        return run_on_video(detector, Path(args.video), output_dir, args.frame_stride)
    paths = list_images(args.images_dir, args.files)
    if paths:
        return run_on_images(detector, paths, output_dir)
    print(f"No images given: running on {DEMO_NUM_IMAGES} generated shape images (seed {DEMO_SEED})")
    print(f"(To see where a model goes wrong on labelled images: {REPORT_HINT})")
    return run_on_images(detector, [(name, image) for name, image, _ in synthetic_images()], output_dir)


if __name__ == "__main__":
    main()
