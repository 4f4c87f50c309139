"""Wall time of one tiny sweep through each launcher: the inline loop and submitit's local executor.

The sweep: stages 01-03 on a tiny synthetic set (210 training images, 32 px, smallface, one
epoch, detectors msp and tknn), open class surprise, two seeds, so two run folders. Each launcher
runs it from scratch through the command line (``python -m ferlib.run sweep``, a fresh process,
as a user would), into its own folder under ``outputs/bench_sweep/`` with its own cache; the data
set is written once, before the first timing. The script prints one line per launcher and checks
that every launcher's ``metrics.csv`` files are identical.

What the figures say: a local submitit job is a new interpreter (it imports torch and records the
environment), so on a machine without GPUs the launcher adds a few seconds per run folder; its gain
is elsewhere (one job per GPU, Slurm, resubmission). ``--parallel`` adds a row with that many local
jobs at a time (on a CPU machine they share its cores).

Usage (from the repository root)::

    .venv/bin/python benchmarks/sweep_launchers.py                     # papermill, as the CLI default
    .venv/bin/python benchmarks/sweep_launchers.py --executor python --parallel 2
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ferlib.data.synthetic import SyntheticConfig, write_synthetic  # noqa: E402

PARAMS = ["epochs=1", "input_size=32", "batch_size=16", "progress=False", "arch=smallface"]
PARAMS += ["detectors=['msp', 'tknn']"]


def sweep(base: Path, data: Path, name: str, executor: str, launcher: list[str]) -> float:
    out = base / name
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "ferlib.run", "sweep", "--dataset", "synthetic", "--data-root", str(data)]
    cmd += ["--open", "surprise", "--seeds", "0", "1", "--stages", "01", "02", "03", "--executor", executor]
    cmd += ["--outputs", str(out), *launcher]
    for item in [*PARAMS, f"cache_dir={out / 'cache'}"]:
        cmd += ["-p", item]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{name}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executor", choices=("papermill", "python"), default="papermill")
    parser.add_argument("--parallel", type=int, default=0, help="also time N local jobs at a time")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench_sweep"))
    args = parser.parse_args()

    base = Path(args.out)
    data = write_synthetic(base / "synthetic", SyntheticConfig(n_train=210, n_valid=70, n_test=70, seed=0))
    local = ["--launcher", "submitit", "--cluster", "local"]
    rows = [("inline", "inline", []), ("submitit local, 1 at a time", "local-1", local)]
    if args.parallel > 1:
        launcher = [*local, "--array-parallelism", str(args.parallel)]
        rows.append((f"submitit local, {args.parallel} at a time", f"local-{args.parallel}", launcher))
    print(f"2-run tiny sweep, stages 01-03, --executor {args.executor}; {os.cpu_count()} CPUs")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    folders = []
    for label, name, launcher in rows:
        folders.append(base / name)
        wall = sweep(base, data, name, args.executor, launcher)
        print(f"{label:32s} {wall:7.1f} s", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for run in ("synthetic_open-surprise_seed0", "synthetic_open-surprise_seed1"):
        files = [folder / run / "metrics.csv" for folder in folders]
        same = all(filecmp.cmp(files[0], f, shallow=False) for f in files[1:])
        print(f"{run}: metrics.csv identical across launchers: {same}")


if __name__ == "__main__":
    main()
