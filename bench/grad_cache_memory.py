"""Peak GPU memory and speed of one training step: the plain path against GradCache.

The issue-12 check: with ``grad_cache_chunk``, a batch of 4,096 (nway 2) must fit in the memory a
plain batch of 256 needs. A random-weight model of all-MiniLM-L6-v2's shape (384 wide, 6 layers;
its tokenizer), query_maxlen 32, doc_maxlen 180, synthetic texts long enough to fill 180 tokens,
bf16 autocast, AdamW; each row is one warm-up step then the mean of ``--steps`` timed steps
(forward, backward and optimizer step), with the peak of ``torch.cuda.max_memory_allocated``.

    python bench/grad_cache_memory.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch


def synthetic_folder(folder: Path, n_queries: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(3000)] + ["cell", "protein", "gene", "risk", "dose", "trial", "mouse", "tumor"]
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "queries.jsonl").open("w") as q, (folder / "corpus.jsonl").open("w") as c, \
            (folder / "triples.jsonl").open("w") as t:
        for i in range(n_queries):
            q.write(json.dumps({"_id": f"q{i}", "text": " ".join(rng.choices(words, k=12))}) + "\n")
            for kind in ("p", "n"):
                c.write(json.dumps({"_id": f"{kind}{i}", "text": " ".join(rng.choices(words, k=200))}) + "\n")
            t.write(json.dumps({"query_id": f"q{i}", "positive_ids": [f"p{i}"], "negative_ids": [f"n{i}"]}) + "\n")
    return folder


def minilm_shaped_model(folder: Path, device: str):
    from transformers import AutoTokenizer, BertConfig, BertModel

    from maxsim.model import ColBERT, default_base_model

    tokenizer = AutoTokenizer.from_pretrained(default_base_model())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return ColBERT.from_pretrained(folder, query_maxlen=32, doc_maxlen=180, device=device)


def measure(model, data, cache, batch_size: int, chunk: int | None, steps: int, device: str) -> dict:
    from maxsim.data.batches import build_batch
    from maxsim.training import TrainConfig
    from maxsim.training.distributed import Context
    from maxsim.training.trainer import forward_backward

    cfg = TrainConfig(data=".", output=".", batch_size=batch_size, grad_cache_chunk=chunk)
    ctx = Context(device=torch.device(device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    positives = data.positives_of()
    times = []
    torch.cuda.reset_peak_memory_stats() if device == "cuda" else None
    try:
        for step in range(steps + 1):
            rows = list(range((step * batch_size) % len(data.examples), (step * batch_size) % len(data.examples)
                              + batch_size))
            rows = [r % len(data.examples) for r in rows]
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            tb = build_batch(model, data, cache, positives, rows, 2, 0, 0)
            forward_backward(model, tb, ctx, cfg, 0, batch_size)
            optimizer.step()
            if device == "cuda":
                torch.cuda.synchronize()
            if step:
                times.append(time.perf_counter() - started)
    except torch.OutOfMemoryError:
        return {"batch": batch_size, "grad_cache_chunk": chunk, "result": "out of memory"}
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    mean = sum(times) / len(times)
    return {"batch": batch_size, "grad_cache_chunk": chunk, "step_s": round(mean, 3),
            "triplets_per_s": round(batch_size / mean, 1), "peak_gib": None if peak is None else round(peak, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rows", default="256:0,4096:256,1024:0", help="batch:chunk pairs (chunk 0: plain)")
    args = parser.parse_args()
    from maxsim.data.batches import TokenCache
    from maxsim.data.training_folder import TrainingData

    with tempfile.TemporaryDirectory() as tmp:
        biggest = max(int(r.split(":")[0]) for r in args.rows.split(","))
        data = TrainingData.load(synthetic_folder(Path(tmp) / "data", biggest * (args.steps + 1)), 2)
        model = minilm_shaped_model(Path(tmp) / "model", args.device)
        model.train()
        cache = TokenCache(model, data)
        if args.device == "cuda":
            print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)
        for row in args.rows.split(","):
            batch, chunk = (int(x) for x in row.split(":"))
            print(json.dumps(measure(model, data, cache, batch, chunk or None, args.steps, args.device)), flush=True)
            if args.device == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
