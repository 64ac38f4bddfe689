"""Scoring a training folder with a teacher, for distillation (``maxsim score``).

A teacher scores each line's candidates: a Hugging Face sequence-classification cross-encoder
(its relevance logit), any ColBERT checkpoint (MaxSim, in maxsim's, colbert-ai's or PyLate's
format) or ``bm25``. The candidates are the line's positives and negatives, or with
``candidates=N`` the teacher's own top N over the corpus (BM25's for a cross-encoder), with the
known positives always kept. The result is a new training folder whose ``triples.jsonl`` lines
carry ``"scores"``; scores are written in chunks of lines as they are computed, so a killed run
goes on where it stopped, and the same inputs give the same files.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from maxsim import process_group
from maxsim.data.errors import DataError
from maxsim.data.training_folder import TrainingData, data_digest
from maxsim.errors import OutputExistsError, SettingsError
from maxsim.files import atomic_directory, atomic_write_text, check_replaceable
from maxsim.progress import progress

logger = logging.getLogger(__name__)

PARTIAL = ".score-partial"  # chunks of scored lines, kept until the folder is complete
MANIFEST = "score_manifest.json"


class Teacher:
    """Scores of (query, documents) pairs, and the top documents of the corpus for a query."""

    kind = ""

    def score(self, query: str, documents: Sequence[str]) -> list[float]:
        raise NotImplementedError

    def score_lines(self, queries: Sequence[str], documents: Sequence[Sequence[int]],
                    corpus: Sequence[str]) -> list[list[float]]:
        """The scores of each query with its documents (positions in ``corpus``), line by line."""
        return [self.score(q, [corpus[d] for d in docs]) for q, docs in zip(queries, documents)]

    def top(self, queries: Sequence[str], k: int) -> np.ndarray:
        """(Q, k) corpus positions, best first (-1 pads)."""
        raise NotImplementedError


class BM25Teacher(Teacher):
    kind = "bm25"

    def __init__(self, corpus: Sequence[str]) -> None:
        from maxsim.data.mining import BM25Miner

        self.miner = BM25Miner(list(corpus))
        self.position = {text: i for i, text in enumerate(corpus)}

    def score(self, query, documents):
        return [float(x) for x in self.miner.scores(query, [self.position[d] for d in documents])]

    def top(self, queries, k):
        return self.miner.rank(list(queries), k).positions


class ColBERTTeacher(Teacher):
    kind = "colbert"

    def __init__(self, path: str, corpus: Sequence[str], batch_size: int, device: str = "auto") -> None:
        from maxsim.model import ColBERT

        self.model = ColBERT.from_pretrained(path, device=device)
        self.model.warn_if_untrained("scoring as a teacher")
        self.model.eval()
        self.corpus, self.batch_size = list(corpus), batch_size

    def score(self, query, documents):
        from maxsim.scoring import maxsim

        q, q_mask = self.model.encode_queries([query], padded=True, batch_size=self.batch_size)
        d, d_mask = self.model.encode_documents(list(documents), padded=True, batch_size=self.batch_size)
        return maxsim(q, q_mask, d, d_mask)[0].tolist()

    def score_lines(self, queries, documents, corpus):
        """Each distinct document of the lines encoded once (a document recurs across lines), in
        batches of ``batch_size``; then each line's MaxSim."""
        from maxsim.scoring import maxsim

        distinct = sorted({d for docs in documents for d in docs})
        vectors = dict(zip(distinct, self.model.encode_documents([corpus[d] for d in distinct], self.batch_size)))
        q, q_mask = self.model.encode_queries(list(queries), padded=True, batch_size=self.batch_size)
        out = []
        for i, docs in enumerate(documents):
            d = torch.nn.utils.rnn.pad_sequence([vectors[p] for p in docs], batch_first=True)
            lengths = torch.tensor([len(vectors[p]) for p in docs])
            d_mask = torch.arange(d.shape[1])[None, :] < lengths[:, None]
            out.append(maxsim(q[i : i + 1], q_mask[i : i + 1], d, d_mask)[0].tolist())
        return out

    def top(self, queries, k):
        from maxsim.data.mining import DenseMiner

        return DenseMiner(self.model, self.corpus, self.batch_size).rank(list(queries), k).positions


class CrossEncoderTeacher(Teacher):
    kind = "cross-encoder"

    def __init__(self, path: str, corpus: Sequence[str], batch_size: int, device: str = "auto") -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from maxsim.model import pick_device

        model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=False)
        self.model = model.float().eval().to(pick_device(device))
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        self.batch_size = batch_size
        self.bm25 = BM25Teacher(corpus)

    def score(self, query, documents):
        out = []
        with torch.inference_mode():
            for start in range(0, len(documents), self.batch_size):
                part = list(documents[start : start + self.batch_size])
                inputs = self.tokenizer([query] * len(part), part, truncation="only_second", padding=True,
                                        max_length=512, return_tensors="pt").to(self.model.device)
                out += self.model(**inputs).logits[:, -1].float().tolist()  # the relevance logit
        return out

    def top(self, queries, k):
        return self.bm25.top(queries, k)  # the miner's top k, scored by the cross-encoder


def load_teacher(name: str, corpus: Sequence[str], batch_size: int = 32, device: str = "auto") -> Teacher:
    """``bm25``, a ColBERT checkpoint (any format) or a sequence-classification cross-encoder, the
    latter two on ``device`` (``auto``: a CUDA GPU where one is visible, else the CPU)."""
    if name == "bm25":
        return BM25Teacher(corpus)
    from maxsim.model.checkpoint import resolve_model_path
    from maxsim.model.formats import detect_format

    path = resolve_model_path(name)
    if detect_format(path) is not None:
        return ColBERTTeacher(str(path), corpus, batch_size, device)
    try:
        architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        architectures = []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return CrossEncoderTeacher(str(path), corpus, batch_size, device)
    raise SettingsError(f"teacher {name!r} is neither bm25, a ColBERT checkpoint nor a sequence-classification "
                        f"cross-encoder (its config.json names {architectures or 'no architecture'})")


def score_training_folder(data_dir: str | Path, teacher: str, output: str | Path, candidates: int | None = None,
                          batch_size: int = 32, chunk_lines: int = 64, show_progress: bool = True,
                          device: str = "auto") -> dict:
    """Write ``output``: ``data_dir``'s queries and corpus, and its triples with the teacher's scores.

    ``device``: where a model teacher runs (``auto``: a CUDA GPU where one is visible, else the
    CPU; on a GPU in bf16 autocast, so its scores can differ from a CPU's in the third decimal).

    Returns the manifest (also ``output/score_manifest.json``). A run killed midway goes on
    from its last complete chunk of ``chunk_lines`` lines when run again with the same arguments.

    Under torchrun (``torchrun --nproc_per_node G -m maxsim score ...``) each rank scores every
    G-th chunk on its own device and writes it whole; rank 0 writes the folder once all are
    done (the others return the settings). The files are those of one process: byte for byte
    with BM25, and with a model the same up to its float rounding (each rank encodes its own
    lines' documents, in batches made of those alone).
    """
    data_dir, output = Path(data_dir), Path(output)
    if output.resolve() == data_dir.resolve():
        raise OutputExistsError(f"--output {output} is the training folder itself: choose a new folder")
    check_replaceable(output, lambda p: (p / MANIFEST).is_file() or (p / PARTIAL).is_dir(), "scored training folder",
                      None)
    if candidates is not None and candidates < 1:
        raise SettingsError(f"--candidates must be 1 or more, got {candidates}")
    if teacher != "bm25":
        from maxsim.model import pick_device

        pick_device(device)  # a device that is not there fails now, not after reading the folder
    data = TrainingData.load(data_dir, 1)
    settings = {"data": str(data_dir.resolve()), "teacher": teacher, "candidates": candidates,
                "data_sha256": data_digest(data_dir), "teacher_sha256": teacher_digest(teacher)}
    partial = output / PARTIAL
    partial.mkdir(parents=True, exist_ok=True)
    started = partial / "settings.json"
    if started.is_file():
        check_same_run(json.loads(started.read_text()), settings, output)
    with process_group.joined(device if teacher != "bm25" else "cpu") as context:
        if context.is_main:
            atomic_write_text(started, json.dumps(settings))
        model = load_teacher(teacher, data.corpus.texts, batch_size, _device_of(context, device))
        _score_chunks(data, model, partial, candidates, chunk_lines, show_progress and context.is_main, context)
        process_group.barrier(context)  # every rank's chunks are written
        if not context.is_main:
            return settings
        return _assemble(data_dir, output, partial, settings, model.kind, len(data.examples))


def _device_of(context: process_group.Context, device: str) -> str:
    """Where this rank's teacher runs: its own GPU under torchrun, else as asked."""
    return str(context.device) if context.distributed and context.device.type == "cuda" else device


def _score_chunks(data: TrainingData, model: Teacher, partial: Path, candidates: int | None, chunk_lines: int,
                  show_progress: bool, context: process_group.Context) -> None:
    """Score this rank's chunks of ``chunk_lines`` lines (chunk c goes to rank c % world size)
    that are not written yet, each into its own file, written whole."""
    n_chunks = (len(data.examples) + chunk_lines - 1) // chunk_lines
    mine = [c for c in range(context.rank, n_chunks, context.world_size)
            if not (partial / f"chunk-{c:06d}.jsonl").is_file()]
    lines_of = {c: range(c * chunk_lines, min((c + 1) * chunk_lines, len(data.examples))) for c in mine}
    tops = {}
    if candidates is not None and mine:  # one ranking of the corpus for each of these lines' queries
        wanted = [i for c in mine for i in lines_of[c]]
        ranked = model.top([data.queries.texts[data.examples[i].query] for i in wanted], candidates)
        tops = dict(zip(wanted, ranked))
    bar = progress(sum(len(r) for r in lines_of.values()), "scoring", "line", enabled=show_progress)
    for c in mine:
        lines = lines_of[c]
        top = None if candidates is None else np.stack([tops[i] for i in lines])
        rows = _score_lines(data, model, lines, top)
        atomic_write_text(partial / f"chunk-{c:06d}.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
        bar.update(len(lines))
    bar.close()


def _assemble(data_dir: Path, output: Path, partial: Path, settings: dict, kind: str, n_lines: int) -> dict:
    """The scored folder from the chunks (rank 0, once every chunk is written)."""
    rows = "".join(path.read_text() for path in sorted(partial.glob("chunk-*.jsonl")))
    manifest = {"format": "maxsim scored training folder v1", **settings, "teacher_kind": kind,
                "lines": n_lines}
    with atomic_directory(output) as tmp:
        for name in ("queries.jsonl", "corpus.jsonl"):
            shutil.copyfile(data_dir / name, tmp / name)
        if (data_dir / "dev").is_dir():  # the dev slice maxsim prepare held out: train validates on it
            shutil.copytree(data_dir / "dev", tmp / "dev")
        (tmp / "triples.jsonl").write_text(rows)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("scored %d lines with %s (%s) into %s", n_lines, settings["teacher"], kind, output)
    return manifest


def teacher_digest(teacher: str) -> str:
    """What identifies a teacher's scores: ``bm25``, or the sha256 of every file in the model's
    folder (a folder replaced by another model, or retrained in place, has another)."""
    if teacher == "bm25":
        return "bm25"
    from maxsim.data.readers import file_hash
    from maxsim.model.checkpoint import resolve_model_path

    return file_hash(resolve_model_path(teacher))


def check_same_run(saved: dict, settings: dict, output: Path) -> None:
    """Refuse to go on with a partial scoring run that other settings, data or another teacher
    started: its chunks and the new ones would mix two runs' scores in one folder."""
    changed = [key for key in settings if saved.get(key) != settings[key]]
    if not changed:
        return
    said = {"teacher_sha256": "the teacher's files changed since the run started (another model in the same "
                              "folder, or one retrained in place)",
            "data_sha256": "the training folder's files changed since the run started"}
    reasons = [said.get(key, f"{key}: {saved.get(key)!r} -> {settings[key]!r}") for key in changed]
    raise SettingsError(f"{output} holds a partial scoring run that another run started ({'; '.join(reasons)}): "
                        "going on would mix the scores of two runs. Fix: use another --output (or delete "
                        f"{output / PARTIAL} to start again), or finish it with its own teacher and data")


def _score_lines(data: TrainingData, teacher: Teacher, lines: range, tops: np.ndarray | None) -> list[dict]:
    """The scored rows of some lines; ``tops``: (len(lines), N) candidate positions, or None for
    each line's own documents."""
    examples = [data.examples[i] for i in lines]
    positives_of = data.positives_of()
    candidates = []
    for row, ex in enumerate(examples):
        known = positives_of[ex.query]
        if tops is None:
            negatives = list(ex.negatives)
        else:
            negatives = [int(p) for p in tops[row] if p >= 0 and int(p) not in known]
        candidates.append((list(ex.positives), negatives))
    all_scores = teacher.score_lines([data.queries.texts[ex.query] for ex in examples],
                                     [p + n for p, n in candidates], data.corpus.texts)
    rows = []
    for ex, (positives, negatives), scores in zip(examples, candidates, all_scores):
        docs = positives + negatives
        if len(scores) != len(docs) or not all(np.isfinite(scores)):
            raise DataError(data.folder / "triples.jsonl", None, f"the teacher gave no finite score for a document "
                            f"of query {data.queries.ids[ex.query]!r}", "check the teacher model")
        rows.append({"query_id": data.queries.ids[ex.query], "positive_ids": [data.corpus.ids[d] for d in positives],
                     "negative_ids": [data.corpus.ids[d] for d in negatives],
                     "scores": [round(float(s), 6) for s in scores]})
    return rows
