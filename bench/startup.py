"""Start-up of the command line: ``maxsim --help``, ``--version`` and each command's ``--help``,
each timed as a whole process (median of several runs), optionally beside another checkout of
maxsim (its folder on PYTHONPATH) in the same run, command by command, alternating.

    python bench/startup.py [--runs 7] [--baseline PATH_TO_OTHER_CHECKOUT]

Appends one JSON line per command to ``bench/results/startup.jsonl``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import results_log

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [["--help"], ["--version"], ["index", "build", "--help"], ["search", "--help"], ["train", "--help"],
            ["prepare", "--help"], ["eval", "--help"], ["serve", "--help"], ["add", "--help"]]


def seconds(args: list[str], checkout: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "maxsim", *args], cwd=checkout, env=env, check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--baseline", type=Path, help="another checkout of maxsim, timed beside this one")
    args = parser.parse_args()
    for command in COMMANDS:
        if args.baseline is not None and command == ["--version"]:
            continue  # (a flag the former command line may not have)
        ours, theirs = [], []
        seconds(command, ROOT)  # (a warm-up: the files in the page cache)
        for _ in range(args.runs):
            ours.append(seconds(command, ROOT))
            if args.baseline is not None:
                theirs.append(seconds(command, args.baseline.resolve()))
        row = {"command_timed": "maxsim " + " ".join(command), "runs": args.runs,
               "median_s": round(statistics.median(ours), 3), "max_s": round(max(ours), 3)}
        if theirs:
            row.update(baseline=str(args.baseline), baseline_median_s=round(statistics.median(theirs), 3),
                       ratio=round(statistics.median(ours) / statistics.median(theirs), 3))
        results_log.record(ROOT / "bench" / "results" / "startup.jsonl", row)


if __name__ == "__main__":
    main()
