"""Do the folders ``maxsim export`` writes load in the real libraries, with the same vectors?

PyLate and colbert-ai pin other torch/transformers versions than maxsim, so this runs in three
environments, one step each (a work folder carries the exports and maxsim's vectors between them):

    python bench/interop_check.py export WORK
    /tmp/venv-pylate/bin/python bench/interop_check.py pylate WORK     # pylate 1.6.0
    /tmp/venv-colbert/bin/python bench/interop_check.py colbert WORK   # colbert-ai 0.2.22

(how each environment was installed: BENCHMARKS.md, "Checkpoint formats against the real
libraries")

``export`` writes, for each model, ``WORK/<model>-pylate`` and ``WORK/<model>-stanford`` with
``maxsim export`` and maxsim's own query and document vectors (float32, the model's forward) to
``WORK/<model>.npz``. Each library step loads its folders as a user of that library would
(``pylate.models.ColBERT(path)``; colbert-ai's
``Checkpoint(path, colbert_config=ColBERTConfig.load_from_checkpoint(path))``, as RAGatouille
does), encodes the same texts and prints one JSON line per model: the library's version,
whether every text got as many vectors as maxsim gives it, and the largest absolute difference
of any vector component.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

QUERIES = [
    "what do cats eat?",
    "how do bees make honey from the nectar of flowers, and why does it keep for so long without spoiling at all",
    "ldl cholesterol, statins & risk",
]
DOCUMENTS = [
    "Cats eat fish, mice and -- sometimes -- grass!",
    "Bees make honey from flower nectar. " * 40,
    "Statins lower LDL cholesterol (by 30-50%); the effect on risk is smaller: see [12].",
]
INTEROP = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "interop"
MODELS = {
    # the bundled MiniLM encoder with a new seeded projection, as `maxsim train` starts from it
    "minilm": {"name_or_path": None, "doc_maxlen": 180},
    # the same with the query [MASK] padding attended to
    "minilm-attend": {"name_or_path": None, "query_maxlen": 24, "attend_to_expansion_tokens": True},
    # checkpoints the libraries wrote, read by maxsim and written back in both formats
    "from-pylate": {"name_or_path": str(INTEROP / "pylate" / "checkpoint")},  # markers "[Q] "/"[D] "
    "from-stanford": {"name_or_path": str(INTEROP / "stanford" / "checkpoint")},
}


def export(work: Path) -> None:
    import numpy as np

    from maxsim.model import ColBERT

    work.mkdir(parents=True, exist_ok=True)
    for name, options in MODELS.items():
        model = ColBERT.from_pretrained(options.pop("name_or_path"), **options)
        model.eval()
        folder = model.save(work / f"{name}-maxsim")
        for fmt in ("pylate", "stanford"):
            subprocess.run([sys.executable, "-m", "maxsim", "export", str(folder), "--format", fmt, "--output",
                            str(work / f"{name}-{fmt}")], check=True, capture_output=True)
        vectors = {f"q{i}": v.numpy() for i, v in enumerate(model.encode_queries(QUERIES))}
        vectors.update({f"d{i}": v.numpy() for i, v in enumerate(model.encode_documents(DOCUMENTS))})
        np.savez(work / f"{name}.npz", **vectors)
        print(json.dumps({"model": name, "exported": [f"{name}-pylate", f"{name}-stanford"],
                          "settings": model.settings.model_dump(exclude={"base_model"})}))


def compare(name: str, library: str, version: str, queries, documents, work: Path) -> None:
    import numpy as np

    expected = np.load(work / f"{name}.npz")
    counts, worst = True, 0.0
    for key, got in [(f"q{i}", q) for i, q in enumerate(queries)] + [(f"d{i}", d) for i, d in enumerate(documents)]:
        want = expected[key]
        got = np.asarray(got, dtype=np.float32)
        if got.shape != want.shape:
            counts = False
            print(f"{name} {key}: {library} gives {got.shape}, maxsim {want.shape}", file=sys.stderr)
            continue
        worst = max(worst, float(np.abs(got - want).max()))
    print(json.dumps({"model": name, "library": library, "version": version, "same_vector_counts": counts,
                      "max_abs_diff": worst}))


def check_pylate(work: Path) -> None:
    import pylate
    from pylate import models

    for name in MODELS:
        model = models.ColBERT(model_name_or_path=str(work / f"{name}-pylate"), device="cpu")
        queries = model.encode(QUERIES, is_query=True, convert_to_numpy=True)
        documents = model.encode(DOCUMENTS, is_query=False, convert_to_numpy=True)
        compare(name, "pylate", pylate.__version__, queries, documents, work)


def check_colbert(work: Path) -> None:
    from importlib.metadata import version

    from colbert.infra import ColBERTConfig
    from colbert.modeling.checkpoint import Checkpoint

    for name in MODELS:
        folder = str(work / f"{name}-stanford")
        # as RAGatouille opens a checkpoint: the config read from the folder's artifact.metadata
        checkpoint = Checkpoint(folder, colbert_config=ColBERTConfig.load_from_checkpoint(folder))
        queries = checkpoint.queryFromText(QUERIES).cpu().numpy()
        documents = checkpoint.docFromText(DOCUMENTS, keep_dims=False)
        documents = documents[0] if isinstance(documents, tuple) else documents
        compare(name, "colbert-ai", version("colbert-ai"), list(queries), [d.cpu().numpy() for d in documents], work)


if __name__ == "__main__":
    step, folder = sys.argv[1], Path(sys.argv[2])
    {"export": export, "pylate": check_pylate, "colbert": check_colbert}[step](folder)
