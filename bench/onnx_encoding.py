"""One query's encoding through ONNX Runtime beside maxsim's own query precisions, on the CPU.

    pip install --target bench/.venv-onnx onnx onnxruntime
    python bench/onnx_encoding.py --packages bench/.venv-onnx --model runs/journey/run/best --threads 1

The model's encoder and projection (:class:`maxsim.model.inference.FrozenForward`) are exported
to ONNX at one query's shape (1, query_maxlen), then quantised dynamically to int8 (weights per
output channel, as maxsim's int8). Each way encodes the same padded query ids (the tokenizer is
left out, as it is the same for all): p50 / p95 milliseconds over ``--repeats`` runs, and the
mean and least cosine of its token vectors with float32's. Rows: ``onnxruntime-float32``,
``onnxruntime-int8`` and maxsim's ``float32``, ``bf16``, ``int8`` (its frozen, traced forward).
Appends one row each to bench/results/onnx_encoding.jsonl. ONNX Runtime is not a dependency of
maxsim: this says whether it would pay. ``--packages``: a folder of the two packages, looked in
after this Python's own (so that it shadows none of them).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from results_log import record  # noqa: E402

from maxsim.model import ColBERT, InferenceForward, cpu_computes_bf16  # noqa: E402
from maxsim.model.inference import FrozenForward  # noqa: E402

QUERY = "what causes the body to reject a kidney transplant in older patients"


def timed(run, repeats: int) -> tuple[np.ndarray, float, float]:
    """(last output, p50 ms, p95 ms) of ``repeats`` calls of ``run`` after ten warm ones."""
    for _ in range(10):
        out = run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - started)
    return np.asarray(out), 1e3 * float(np.percentile(times, 50)), 1e3 * float(np.percentile(times, 95))


def onnx_sessions(forward: FrozenForward, ids: torch.Tensor, mask: torch.Tensor, folder: Path, threads: int):
    """{name: ONNX Runtime session} of the float32 export and its dynamic int8 quantisation."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    plain, int8 = folder / "query.onnx", folder / "query-int8.onnx"
    torch.onnx.export(forward, (ids, mask), str(plain), input_names=["input_ids", "attention_mask"],
                      output_names=["vectors"], dynamo=False, opset_version=17)
    quantize_dynamic(str(plain), str(int8), weight_type=QuantType.QInt8, per_channel=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for name, path in (("onnxruntime-float32", plain), ("onnxruntime-int8", int8))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="base", help="a checkpoint folder, or base")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--packages", help="a folder holding onnx and onnxruntime (pip install --target)")
    args = parser.parse_args()
    if args.packages:
        sys.path.append(str(Path(args.packages).resolve()))
    torch.set_num_threads(args.threads)
    model = ColBERT.from_pretrained(None if args.model == "base" else args.model).eval()
    batch = model.pad_queries(model.tokenize_queries([QUERY]))
    ids, mask = batch.input_ids, batch.attention_mask
    forward = FrozenForward(model.encoder, model.linear).eval()
    with torch.inference_mode():
        reference = forward(ids, mask).numpy()[0]
    runs = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, session in onnx_sessions(forward, ids, mask, Path(folder), args.threads).items():
            feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
            runs[name] = lambda session=session, feed=feed: session.run(None, feed)[0][0]
        for precision in ("float32", "bf16", "int8"):
            frozen = InferenceForward.for_precision(model, precision)
            runs[precision] = lambda frozen=frozen: frozen(ids, mask, fixed_shape=True)[0].numpy()
        for name, run in runs.items():
            out, p50, p95 = timed(run, args.repeats)
            cosine = (out * reference).sum(-1) / np.linalg.norm(out, axis=-1) / np.linalg.norm(reference, axis=-1)
            figures = {"way": name, "native_bf16": cpu_computes_bf16(), "threads": args.threads,
                       "query_tokens": int(ids.shape[1]), "encode_p50_ms": round(p50, 2),
                       "encode_p95_ms": round(p95, 2), "mean_token_cosine": round(float(cosine.mean()), 5),
                       "min_token_cosine": round(float(cosine.min()), 4)}
            print(figures, flush=True)
            record(HERE / "results" / "onnx_encoding.jsonl", figures,
                   command="python bench/onnx_encoding.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
