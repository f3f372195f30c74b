"""Start-up time of the ``nas`` command: wall seconds of whole CLI processes (interpreter start, imports, work,
exit), side by side with a bare interpreter and with ``import torch`` in the same run.

    .venv/bin/python benchmarks/cli_startup.py [--repeat 7]

Each command runs ``--repeat`` times, interleaved with the others (so load from other processes hits all alike);
the median and the best are printed. ``--root`` runs the ``nas`` package of another checkout (to compare
commits); the space and arch files always come from this repository.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "python -c 'import torch'": ["-c", "import torch"],
    "nas space validate spaces/psvit_tiny.yaml": ["-m", "nas.cli", "space", "validate", "spaces/psvit_tiny.yaml"],
    "nas space show spaces/combined.yaml": ["-m", "nas.cli", "space", "show", "spaces/combined.yaml"],
    "nas flops spaces/reference/deit_small.yaml": ["-m", "nas.cli", "flops", "spaces/reference/deit_small.yaml"],
    "nas flops spaces/combined.yaml": ["-m", "nas.cli", "flops", "spaces/combined.yaml"],
    "nas flops missing.yaml": ["-m", "nas.cli", "flops", "missing.yaml"],
}


def run(args: list[str], root: Path) -> float:
    args = [str(REPO / a) if a.endswith(".yaml") else a for a in args]
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode not in (0, 2):  # 2: the missing file is reported as a user error
        raise RuntimeError(f"{args} failed: {proc.stderr}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--root", type=Path, default=REPO, help="checkout whose nas package runs (default: this one)")
    args = ap.parse_args()
    times: dict[str, list[float]] = {label: [] for label in COMMANDS}
    for _ in range(args.repeat):
        for label, cmd in COMMANDS.items():
            times[label].append(run(cmd, args.root))
    print(f"python {platform.python_version()}, {os.cpu_count()} cpus, nas from {args.root}, {args.repeat} runs each")
    print(f"{'command':45s} {'median s':>9s} {'best s':>7s}")
    for label, ts in times.items():
        print(f"{label:45s} {statistics.median(ts):9.3f} {min(ts):7.3f}")


if __name__ == "__main__":
    main()
