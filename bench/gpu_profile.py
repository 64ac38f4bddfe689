"""Where a GPU training step's time goes: torch.profiler over maxsim's training.

A random-weight model of all-MiniLM-L6-v2's shape on synthetic 180-token documents (as in
``bench/grad_cache_memory.py``), ``--batch-size`` triplets a step, nway 2, bf16 autocast.

1. The whole ``Trainer`` loop: one short run warms the kernels, a second run of ``--steps`` steps
   is profiled (loading and the final save included). Prints the steps' median rate, the GPU's
   kernel time, and the operators that take the most GPU and host time.
2. The same steps without the loop around them (batch, forward and backward, clipping and the
   AdamW step, as ``Trainer`` runs them), profiled from the fifth step on with
   ``torch.profiler.schedule``, so that the table holds steady steps only: host time against GPU
   time a step, kernel launches, host syncs and copies a step.

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
from torch.profiler import ProfilerActivity, profile, schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grad_cache_memory import minilm_shaped_model, synthetic_folder  # noqa: E402

from maxsim.training import TrainConfig, Trainer  # noqa: E402


def whole_runs(data: Path, model_dir: Path, tmp: Path, args) -> None:
    def run(name: str, steps: int) -> float:
        cfg = TrainConfig(data=data, output=tmp / name, base_model=str(model_dir), query_maxlen=32,
                          doc_maxlen=180, batch_size=args.batch_size, max_steps=steps, learning_rate=3e-5,
                          progress_bar=False, device=args.device, seed=0)
        Trainer(cfg).train()
        rows = [json.loads(x) for x in (tmp / name / "metrics.jsonl").read_text().splitlines()]
        return sorted(r["triplets_per_s"] for r in rows)[len(rows) // 2]

    run("warm", 3)
    with profile(activities=activities(args.device)) as prof:
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


def steady_steps(data: Path, model_dir: Path, args) -> None:
    """Profile ``args.steps`` steps after four unprofiled ones, the trainer's pieces in a plain loop."""
    from maxsim.data.batches import TokenCache, build_batch
    from maxsim.data.training_folder import TrainingData
    from maxsim.model import ColBERT
    from maxsim.training.distributed import Context
    from maxsim.training.trainer import apply_gradients, forward_backward, make_optimizer

    cfg = TrainConfig(data=data, output=".", batch_size=args.batch_size, learning_rate=3e-5)
    ctx = Context(device=torch.device(args.device))
    model = ColBERT.from_pretrained(model_dir, query_maxlen=32, doc_maxlen=180, device=args.device).train()
    training = TrainingData.load(data, 2)
    cache, positives = TokenCache(model, training), training.positives_of()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(parameters, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    n, wait = len(training.examples), 4
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    with profile(activities=activities(args.device), schedule=schedule(wait=wait - 1, warmup=1, active=args.steps)) \
            as prof:
        for step in range(wait + args.steps):
            if step == wait:
                sync()
                started = time.perf_counter()
            rows = [(step * args.batch_size + i) % n for i in range(args.batch_size)]
            optimizer.zero_grad(set_to_none=True)
            batch = build_batch(model, training, cache, positives, rows, 2, 0, 0)
            forward_backward(model, batch, ctx, cfg, 0, args.batch_size)
            apply_gradients(ctx, parameters, optimizer, scheduler, cfg.max_grad_norm)
            prof.step()
        sync()
        seconds = (time.perf_counter() - started) / args.steps
    events = prof.key_averages()
    count = {e.key: e.count for e in events}
    per_step = {"steady_step_s": round(seconds, 4), "triplets_per_s": round(args.batch_size / seconds, 1),
                "host_op_s": round(sum(e.self_cpu_time_total for e in events) / 1e6 / args.steps, 4),
                "gpu_kernel_s": round(sum(e.self_device_time_total for e in events) / 1e6 / args.steps, 4)}
    for name, keys in (("launches", ("cudaLaunchKernel", "cuLaunchKernelEx")), ("syncs", ("cudaStreamSynchronize",)),
                       ("copies", ("cudaMemcpyAsync",))):
        per_step[name] = sum(count.get(k, 0) for k in keys) / args.steps
    print(json.dumps({"steady, per step": per_step}), flush=True)
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))


def activities(device: str) -> list:
    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rows", type=int, default=25, help="operators listed per table")
    parser.add_argument("--device", default="cuda", help="cuda (cpu only to try the script)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = synthetic_folder(tmp / "data", args.batch_size * (args.steps + 4))
        minilm_shaped_model(tmp / "model", "cpu")
        whole_runs(data, tmp / "model", tmp, args)
        steady_steps(data, tmp / "model", args)


if __name__ == "__main__":
    main()
