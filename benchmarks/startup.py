"""train.py's start-up on a COCO-sized data set: wall time and peak memory up to its first iteration.

    python benchmarks/startup.py                                # 118,287 training images (minutes, once)
    python benchmarks/startup.py --quick                        # seconds: the CI smoke test
    python benchmarks/startup.py --results results/startup.json

The data set is benchmarks/scale.py's synthetic COCO-shaped one (`generate`: 80 categories, ~7.3 boxes and a
polygon per box, 1 % crowd), written once under --root. train.py then runs in its own process, as a user runs
it: the fine-tuning base (configs/finetune_ssdlite320.yaml: fitted priors, "auto" augmentation, epochs,
validation on the held-out images), ImageNet weights off (nothing to download), on the CPU, logging every
iteration. When its first iteration is logged the benchmark reads the peak memory (VmHWM) of train.py and of
its DataLoader workers, and stops it: the rest of the run is not start-up.

Reported, from starting the process: the wall time, train.py's CPU time (what the wall time would be on an
idle machine: the start-up runs on one core) and its peak RSS when the training loop starts (config, recipe
step, model, optimizer and loaders built: the start-up proper), the same after the first
iteration (which adds the workers' start and one forward/backward), the workers' peaks, and the time of each
recipe step (ssd/engine/recipe.py logs them: "Recipe step 'fit priors' took 1.23 s"). The peaks include the
interpreter with torch and the package imported (about 0.8 GB with a CUDA build of torch).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import record  # noqa: E402
from benchmarks.scale import NUM_CLASSES, generate  # noqa: E402

CONFIG = REPO_ROOT / "configs" / "finetune_ssdlite320.yaml"
FIRST_ITERATION = re.compile(r"\biter: 1\b")
LOOP_START = "Start training from iteration"  # the training loop's first line: model, optimizer, loader built
RECIPE_STEP = re.compile(r"Recipe step '([^']+)' took ([0-9.]+) s")


def status_kb(pid: int, key: str) -> int:
    """A /proc/PID/status field in kB (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (its own threads; not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def children(pid: int) -> list[int]:
    """The child processes of `pid` (DataLoader workers), from /proc/PID/task/*/children."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def imports_peak_gb() -> float:
    """Peak RSS of a Python process that only imports what train.py imports before its first step (torch,
    the package): the floor under train.py's own peak."""
    code = (
        "import pathlib, train, ssd.engine.recipe, ssd.engine.inference; "
        "print([l for l in pathlib.Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM')][0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    return round(int(out.stdout.split()[1]) / 1e6, 2)


def train_command(root: Path, output_dir: Path, quick: bool = False) -> list[str]:
    register = (f"startup_train:coco:{root}/train.json:{root}/train",)
    small_batch = ["SOLVER.BATCH_SIZE", "2"] if quick else []  # --quick: a first iteration of seconds
    return [
        sys.executable, str(REPO_ROOT / "train.py"), "--config-file", str(CONFIG), "--skip-test",
        "OUTPUT_DIR", str(output_dir), "DATASETS.REGISTER", str(register), "DATASETS.TRAIN", "('startup_train',)",
        "DATASETS.TEST", "()", "MODEL.NUM_CLASSES", str(NUM_CLASSES + 1), "MODEL.BACKBONE.PRETRAINED", "False",
        "MODEL.DEVICE", "cpu", "SOLVER.LOG_PERIOD", "1", "LOGGING.PROGRESS_BAR", "False",
        "LOGGING.TENSORBOARD", "False", *small_batch,
    ]  # fmt: skip


def run_to_first_iteration(root: Path, output_dir: Path, timeout_s: float, quick: bool = False) -> dict:
    """Start train.py, follow its output to the first iteration, read the peaks, stop it."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    process = subprocess.Popen(
        train_command(root, output_dir, quick), cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    peaks = {"main_kb": 0, "workers_kb": {}}
    done = threading.Event()

    def watch_memory() -> None:  # VmHWM only grows; the workers' is read while they live
        while not done.wait(0.2):
            peaks["main_kb"] = max(peaks["main_kb"], status_kb(process.pid, "VmHWM"))
            for child in children(process.pid):
                peaks["workers_kb"][child] = max(peaks["workers_kb"].get(child, 0), status_kb(child, "VmHWM"))

    watcher = threading.Thread(target=watch_memory, daemon=True)
    watcher.start()
    lines, first_iteration_s, loop_start_s, loop_start_kb, loop_start_cpu_s = [], None, None, 0, 0.0
    for line in process.stdout:
        lines.append(line.rstrip())
        if LOOP_START in line:  # start-up proper ends here; the first iteration starts the workers
            loop_start_s, loop_start_kb = time.perf_counter() - start, status_kb(process.pid, "VmHWM")
            loop_start_cpu_s = cpu_seconds(process.pid)
        if FIRST_ITERATION.search(line):
            first_iteration_s = time.perf_counter() - start
            break
        if time.perf_counter() - start > timeout_s:
            break
    peaks["main_kb"] = max(peaks["main_kb"], status_kb(process.pid, "VmHWM"))
    for child in children(process.pid):
        peaks["workers_kb"][child] = max(peaks["workers_kb"].get(child, 0), status_kb(child, "VmHWM"))
    done.set()
    watcher.join()
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)  # train.py and its workers: the run itself is not measured
    process.wait()
    if first_iteration_s is None:
        tail = "\n".join(lines[-30:])
        raise SystemExit(
            f"startup.py: train.py did not reach its first iteration (exit {process.returncode}):\n{tail}"
        )
    steps = {name: float(seconds) for line in lines for name, seconds in RECIPE_STEP.findall(line)}
    workers = sorted(peaks["workers_kb"].values(), reverse=True)
    return {
        "loop_start_s": round(loop_start_s, 1),
        "loop_start_cpu_s": round(loop_start_cpu_s, 1),
        "loop_start_peak_rss_gb": round(loop_start_kb / 1e6, 2),
        "first_iteration_s": round(first_iteration_s, 1),
        "peak_rss_gb": round(peaks["main_kb"] / 1e6, 2),
        "worker_peak_rss_gb": [round(kb / 1e6, 2) for kb in workers],
        "recipe_steps_s": steps,
        "log_tail": [line for line in lines if RECIPE_STEP.search(line) or "holding out" in line],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/ssd_scale_startup"), help="data set folder")
    parser.add_argument("--train", type=int, default=118287, help="training images")
    parser.add_argument("--sources", type=int, default=300, help="real JPEGs behind the names")
    parser.add_argument("--quick", action="store_true", help="200 images, batch 2: a smoke test in seconds")
    parser.add_argument("--timeout", type=float, default=900, help="give up after this many seconds")
    parser.add_argument("--results", help="write the results here as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.train, args.sources = 200, 8
        args.root = args.root.with_name(args.root.name + "_quick")
    results = record.start(threads=int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(record.machine_line(int(os.environ.get("OMP_NUM_THREADS", "1"))))
    start = time.perf_counter()
    generate(args.root, args.train, 1, args.sources, [])  # one val image: train.py holds out its own
    print(f"data set under {args.root}: {args.train} training images ({time.perf_counter() - start:.0f} s)")
    measured = run_to_first_iteration(args.root, args.root / "run", args.timeout, args.quick)
    for line in measured.pop("log_tail"):
        print("  " + line.split("] ", 1)[-1])
    print(
        f"train.py to its training loop: {measured['loop_start_s']:.1f} s, peak RSS "
        f"{measured['loop_start_peak_rss_gb']:.2f} GB, CPU time {measured['loop_start_cpu_s']:.1f} s; to the end of its first iteration: "
        f"{measured['first_iteration_s']:.1f} s, peak RSS {measured['peak_rss_gb']:.2f} GB (train.py), "
        f"workers {measured['worker_peak_rss_gb']} GB"
    )
    measured["imports_peak_rss_gb"] = imports_peak_gb()
    print(
        f"(a Python process importing torch and the package alone: peak RSS {measured['imports_peak_rss_gb']:.2f} GB)"
    )
    results.update(train_images=args.train, **measured)
    record.write(args.results, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
