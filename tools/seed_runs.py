"""Train the same config with several seeds and write one results file: the mean and spread of each metric.

One training run is one sample: float kernels differ between CPU families, a run diverges from there, and on
a small test set the spread between seeds is several points. Numbers that README.md and docs/ publish for a
training recipe come from this tool, so they are a mean over seeds with their spread, and the results file
says where and how they were measured:

    python tools/seed_runs.py --seeds 0 1 2 --results results/train_default.json
    python tools/seed_runs.py --seeds 0 1 2 --results results/raccoon.json \\
        -- --config-file configs/examples/raccoon.yaml

Everything after `--` is passed to train.py (config file and KEY VALUE overrides); each run gets
`SEED <seed>` and its own `OUTPUT_DIR` (under --output-root). The results file holds, per run, the seed,
wall-clock and CPU time (of train.py and its data-loader workers) and test.py's metrics
(OUTPUT_DIR/inference/<dataset>/results.json), and per metric the mean, sample standard deviation, min and max
over the runs. `tests/test_published_numbers.py` checks the numbers of the docs against these files.

`--jobs N` runs N seeds at the same time (each run's CPU time is still its own, read when it ends; with
train.py's DataLoader workers, N runs share the cores, so the wall time of each grows). Each run's output then
goes to OUTPUT_DIR/stdout.txt instead of the terminal. Each run holds its own model, data and loader workers
in memory: on a machine without room for N of them, every run slows down waiting for memory, so keep N to
what the memory holds (top's RES of one train.py, times N, well under the total).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from any folder without installing the package

from ssd.utils.device import cpu_model  # noqa: E402


def machine_description() -> dict:
    import torch

    return {
        "cpu": cpu_model(),
        "logical_cpus": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": round(os.getloadavg()[0], 2),
    }


def flatten_metrics(results: dict) -> dict[str, float]:
    """{dataset: {task: {metric: v}}} -> {"dataset/task/metric": v} (the keys of the summary)."""
    return {
        f"{dataset}/{task}/{metric}": value
        for dataset, tasks in results.items()
        for task, metrics in tasks.items()
        for metric, value in metrics.items()
    }


def summarize(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (n - 1; 0 for one run), min and max, rounded to 1e-4."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {
        k: round(v, 2) for k, v in {"mean": mean, "std": std, "min": min(values), "max": max(values)}.items()
    }


def run_one(train_args: list[str], seed: int, output_dir: Path, quiet: bool = False) -> dict:
    """Run train.py once; return its seed, times and flattened test metrics.

    quiet: send the run's output to OUTPUT_DIR/stdout.txt (for runs that share the terminal).
    """
    start = time.perf_counter()
    command = [
        sys.executable,
        str(REPO / "train.py"),
        *train_args,
        "SEED",
        str(seed),
        "OUTPUT_DIR",
        str(output_dir),
    ]
    print("+", " ".join(command), flush=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "stdout.txt", "w") if quiet else contextlib.nullcontext() as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT if log else None)
        # wait4 gives this child's own resource use (with the workers it reaped), also while other runs go on
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        where = f"; its output is in {output_dir / 'stdout.txt'}" if quiet else ""
        raise SystemExit(f"seed {seed}: train.py exited with {process.returncode}{where}")
    cpu = usage.ru_utime + usage.ru_stime
    results = {}
    for path in sorted((output_dir / "inference").glob("*/results.json")):
        results[path.parent.name] = json.loads(path.read_text())
    if not results:
        raise SystemExit(f"{output_dir}: no inference/*/results.json (does the config set DATASETS.TEST?)")
    return {
        "seed": seed,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "metrics": flatten_metrics(results),
    }


def build_results(runs: list[dict], command: str, train_args: list[str], machine: dict) -> dict:
    keys = sorted(set.intersection(*(set(run["metrics"]) for run in runs)))
    summary = {key: summarize([run["metrics"][key] for run in runs]) for key in keys}
    for key in ("wall_s", "cpu_s"):
        summary[key] = summarize([run[key] for run in runs])
        summary[key.replace("_s", "_min")] = summarize([run[key] / 60 for run in runs])
    return {
        "command": command,
        "train_args": train_args,
        "date": datetime.date.today().isoformat(),
        "machine": machine,
        "seeds": [run["seed"] for run in runs],
        "runs": runs,
        "summary": summary,
    }


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run per seed (>= 3 to publish)"
    )
    parser.add_argument("--results", required=True, metavar="JSON", help="the results file to write")
    parser.add_argument(
        "--output-root", default="outputs/seed_runs", metavar="DIR", help="runs go to DIR/<name>/seed<k>"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="runs at the same time (default 1: one after another)",
    )
    args = parser.parse_args(own)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds repeats a seed: {args.seeds}")
    return args, train_args


def main(argv: list[str] | None = None) -> dict:
    args, train_args = parse_args(argv)
    results_path = Path(args.results)
    machine = machine_description()
    root = Path(args.output_root) / results_path.stem
    quiet = args.jobs > 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [
            pool.submit(run_one, train_args, seed, (root / f"seed{seed}").resolve(), quiet)
            for seed in args.seeds
        ]
        runs = [future.result() for future in futures]
    command = "python tools/seed_runs.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = build_results(runs, command, train_args, machine)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    for key, stats in results["summary"].items():
        print(
            f"{key}: {stats['mean']:.2f} +- {stats['std']:.2f} (min {stats['min']:.2f}, max {stats['max']:.2f})"
        )
    print(f"written to {results_path}")
    return results


if __name__ == "__main__":
    main()
