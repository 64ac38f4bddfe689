"""Where a GPU training step's time goes: torch.profiler over maxsim's whole training loop.

A random-weight model of all-MiniLM-L6-v2's shape on synthetic 180-token documents (as in
``bench/grad_cache_memory.py``), ``--batch-size`` triplets a step, nway 2, bf16 autocast. One short
run warms the kernels; a second run of ``--steps`` steps is profiled. Prints the steps' rate, how
much of the profiled wall time the GPU spent in kernels, and the operators that take the most GPU
and host time.

    python bench/gpu_profile.py --batch-size 128 --steps 8
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grad_cache_memory import minilm_shaped_model, synthetic_folder  # noqa: E402

from maxsim.training import TrainConfig, Trainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rows", type=int, default=25, help="operators listed per table")
    parser.add_argument("--device", default="cuda", help="cuda (cpu only to try the script)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = synthetic_folder(tmp / "data", args.batch_size * (args.steps + 3))
        minilm_shaped_model(tmp / "model", "cpu")

        def run(name: str, steps: int) -> float:
            cfg = TrainConfig(data=data, output=tmp / name, base_model=str(tmp / "model"), query_maxlen=32,
                              doc_maxlen=180, batch_size=args.batch_size, max_steps=steps, learning_rate=3e-5,
                              progress_bar=False, device=args.device, seed=0)
            Trainer(cfg).train()
            rows = [json.loads(x) for x in (tmp / name / "metrics.jsonl").read_text().splitlines()]
            return sorted(r["triplets_per_s"] for r in rows)[len(rows) // 2]

        run("warm", 3)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            started = time.perf_counter()
            rate = run("profiled", args.steps)
            wall = time.perf_counter() - started
    events = prof.key_averages()
    kernels = sum(e.self_device_time_total for e in events) / 1e6
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "none"
    print(json.dumps({"gpu": gpu, "batch": args.batch_size, "steps": args.steps,
                      "median_triplets_per_s": round(rate, 1), "profiled_wall_s": round(wall, 2),
                      "gpu_kernel_s": round(kernels, 2)}), flush=True)
    print(events.table(sort_by="self_device_time_total", row_limit=args.rows, max_name_column_width=60))
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
