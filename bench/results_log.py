"""What every bench writes with its figures: the machine, the commit, and one JSON line per row
appended to ``bench/results/NAME.jsonl`` (date, machine, commit, command, then the row)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return f"{platform.machine()}, {os.cpu_count()} cores, {model}{vector_units()}"


def vector_units() -> str:
    """The CPU's widest vector instructions, as they change the figures (the same model name
    comes with and without AVX-512 on rented machines): ', AMX-BF16', ', AVX512-BF16', ', AVX-512'
    or ', AVX2' (empty where /proc/cpuinfo does not say)."""
    info = Path("/proc/cpuinfo")
    flags = next((set(line.split(":", 1)[1].split()) for line in info.read_text().splitlines()
                  if line.startswith("flags")), set()) if info.exists() else set()
    for flag, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX-512"),
                       ("avx2", "AVX2")):
        if flag in flags:
            return f", {name}"
    return ""


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                  ":(top,exclude)bench/results"], cwd=HERE,  # (figures appended are not code)
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if changed else head  # (-dirty: measured with changes not yet committed)


def record(results: Path, row: dict, command: str | None = None) -> None:
    """Append ``row`` to ``results`` (a .jsonl file) with the date, machine, commit and command
    (this process's, unless ``command`` names the one that ran it), and print it."""
    row = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
           "commit": commit(), "command": command or " ".join([Path(sys.executable).name, *sys.argv]), **row}
    results.parent.mkdir(exist_ok=True)
    with results.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
