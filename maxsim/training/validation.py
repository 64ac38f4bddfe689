"""Validation during training: the dev set, its evaluation, and ``best/``.

The dev evaluation is exact MaxSim over the dev corpus (or the smaller one ``dev_max_documents``
cuts), encoded through the fast inference path where that path keeps the vectors as good as
float32's (:func:`dev_forward`), so that an evaluation costs as little as it can.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from maxsim.data.errors import DataError
from maxsim.data.training_folder import Corpus, TrainingData, read_beir_split
from maxsim.evaluation import evaluation_corpus
from maxsim.exact_search import exact_search
from maxsim.files import atomic_write_text, sha256_of
from maxsim.lexical import DEFAULT_LANGUAGE
from maxsim.model import ColBERT
from maxsim.model.inference import InferenceForward, cpu_computes_bf16
from maxsim.ranking import Ranking
from maxsim.search_config import read_choice
from maxsim.search_tuning import DEPTH, Comparison, choose, compare
from maxsim.search_tuning import report as search_report
from maxsim.training import checkpoints, distributed
from maxsim.training.budget import improved
from maxsim.training.cards import run_training
from maxsim.training.config import TrainConfig
from maxsim.training.report import MetricsLog

logger = logging.getLogger(__name__)

DEV_METRICS = ("ndcg@10", "mrr@10")
#: the bf16 fast path evaluates only if its token vectors keep at least this mean cosine to
#: float32's on a sample of dev documents (measured on SciFact: dev nDCG@10 then moves by less
#: than 0.003, BENCHMARKS.md)
MIN_FAST_COSINE = 0.999
CHECK_DOCUMENTS = 32


@dataclass
class DevSet:
    """Validation queries, the corpus they search, and their qrels; ``language`` is BM25's."""

    query_ids: list[str]
    query_texts: list[str]
    corpus: Corpus
    qrels: dict[str, dict[str, float]]
    language: str = DEFAULT_LANGUAGE
    _bm25: Ranking | None = None

    def bm25(self) -> Ranking:
        """BM25's ranking of the dev queries over the dev corpus (:data:`DEPTH` deep), made once."""
        if self._bm25 is None:
            from maxsim.data.mining import BM25Miner

            self._bm25 = BM25Miner(self.corpus.texts, self.language).rank(self.query_texts, DEPTH)
        return self._bm25


def dev_set(cfg: TrainConfig, data: TrainingData) -> tuple[TrainingData, DevSet | None]:
    """The validation set, from ``dev_fraction`` (held out of ``data``), ``dev_data`` or
    ``DATA/dev`` (written by maxsim prepare), its corpus cut to ``dev_max_documents``; returns
    the training data left and the dev set."""
    if cfg.dev_fraction is not None:
        data, qrels = data.hold_out(cfg.dev_fraction, cfg.seed)
        ids = list(qrels)
        dev = DevSet(ids, [data.queries.texts[data.queries.index[q]] for q in ids], data.corpus, qrels)
    else:
        found = dev_folder(cfg)
        if found is None:
            return data, None
        folder, split = found
        queries, corpus, qrels = read_beir_split(folder, split)
        logger.info("validating on %s (%d queries)", folder, len(qrels))
        dev = DevSet(queries.ids, queries.texts, corpus, qrels)
        if not any(d in corpus.index for docs in qrels.values() for d in docs):
            raise DataError(folder / "qrels" / f"{split}.tsv", None, f"none of the {sum(map(len, qrels.values()))} "
                            f"relevant documents of the dev set is in {folder / 'corpus.jsonl'}, so every dev score "
                            "would be 0 and best/ would be chosen on nothing",
                            "give the dev set the corpus its qrels point into (or the qrels of this corpus)")
    dev.language = bm25_language(Path(cfg.data))
    if cfg.dev_max_documents is not None and len(dev.corpus) > cfg.dev_max_documents:
        dev = smaller_corpus(dev, cfg.dev_max_documents, dev.language)
    return data, dev


def dev_folder(cfg: TrainConfig) -> tuple[Path, str] | None:
    """The BEIR folder and split the run validates on (``dev_data``, or ``DATA/dev`` written by
    maxsim prepare); None without one, or with ``dev_fraction`` (held out of the data itself)."""
    if cfg.dev_fraction is not None:
        return None
    if cfg.dev_data is not None:
        return Path(cfg.dev_data), cfg.dev_split
    if (Path(cfg.data) / "dev" / "qrels" / "dev.tsv").is_file():
        return Path(cfg.data) / "dev", "dev"
    return None


def dev_source(cfg: TrainConfig) -> dict:
    """What the dev set is, for search.json: a held-out share of the training queries, or a
    BEIR folder's split (its name only: a path says nothing on another machine)."""
    if cfg.dev_fraction is not None:
        return {"dev": f"{cfg.dev_fraction:g} of the training queries, held out"}
    found = dev_folder(cfg)
    return {"dev": f"{found[0].name}, split {found[1]}"} if found else {}


def dev_digest(cfg: TrainConfig) -> str | None:
    """sha256 of the dev set's files (queries, corpus, the split's qrels), so that a resume can
    tell the dev set best/ was chosen on from another; None where the dev set is held out of the
    training data (whose own digest covers it) or there is none."""
    found = dev_folder(cfg)
    if found is None:
        return None
    folder, split = found
    digest = hashlib.sha256()
    for name in ("queries.jsonl", "corpus.jsonl", f"qrels/{split}.tsv"):
        digest.update(name.encode() + b"\0")
        with (folder / name).open("rb") as handle:
            sha256_of(handle, digest)
    return digest.hexdigest()


def smaller_corpus(dev: DevSet, size: int, language: str) -> DevSet:
    """``dev`` searching at most ``size`` documents (:func:`~maxsim.evaluation.evaluation_corpus`)."""
    judged = {d for docs in dev.qrels.values() for d in docs}
    keep = evaluation_corpus(dev.query_texts, judged, dev.corpus.ids, dev.corpus.texts, size, language)
    corpus = dev.corpus.subset(keep)
    logger.info("dev corpus: %d of %d documents (--dev-max-documents: the judged ones and the dev queries' BM25 "
                "best); dev metrics on it are not comparable with full-corpus figures", len(corpus), len(dev.corpus))
    return DevSet(dev.query_ids, dev.query_texts, corpus, dev.qrels, language)


def bm25_language(data: Path) -> str:
    """The BM25 language ``maxsim prepare`` recorded in ``data/manifest.json`` (English if none)."""
    try:
        return json.loads((data / "manifest.json").read_text())["settings"]["bm25_language"]
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_LANGUAGE


def dev_forward(model: ColBERT, sample: list[list[int]]) -> tuple[InferenceForward | None, str]:
    """The forward the dev evaluation encodes with, and how to say it in the log.

    On a CPU that computes bf16 natively, the bf16 :class:`InferenceForward` (about 3x float32's
    document throughput) when its token vectors of ``sample`` (token ids of a few dev documents)
    keep a mean cosine of at least :data:`MIN_FAST_COSINE` to float32's; else the model itself
    (float32 on a CPU, bf16 autocast on CUDA).
    """
    if model.device.type != "cpu":
        return None, "bf16 autocast" if model.device.type == "cuda" else "float32"
    if not cpu_computes_bf16():
        return None, "float32 (this CPU has no native bf16)"
    fast = InferenceForward(model, dtype=torch.bfloat16, trace=False)
    exact = model.encode_token_ids(sample, False)
    quick = model.encode_token_ids(sample, False, forward=fast)
    cosine = torch.cat([(a * b).sum(-1) for a, b in zip(exact, quick)]).mean().item()
    if cosine < MIN_FAST_COSINE:
        logger.warning("dev evaluation in float32: bf16 token vectors have mean cosine %.4f to float32's here "
                       "(below %.3f)", cosine, MIN_FAST_COSINE)
        return None, "float32"
    return fast, f"bf16 (token vectors at mean cosine {cosine:.4f} to float32's)"


def evaluate_dev(model: ColBERT, dev: DevSet, dev_tokens: list[list[int]], cfg: TrainConfig) -> Comparison:
    """The model alone (exact MaxSim over the dev corpus, top 100 per query), BM25, and their
    fusions on the dev set: nDCG@10 and MRR@10 of each (:func:`~maxsim.search_tuning.compare`;
    the fusions reuse the two rankings, at no encoding cost)."""
    forward, precision = dev_forward(model, dev_tokens[:CHECK_DOCUMENTS])
    logger.info("dev evaluation: %d queries, %d documents, %s", len(dev.query_ids), len(dev_tokens), precision)
    ranking = exact_search(model, dev.query_texts, dev_tokens, k=DEPTH, batch_size=cfg.eval_batch_size,
                           progress=cfg.progress_bar, forward=forward)
    return compare(dev.query_ids, dev.corpus.ids, dev.qrels, ranking, dev.bm25(), cfg.metric)


def dev_row(comparison: Comparison) -> dict:
    """A metrics row's dev figures (without the ``dev_`` prefix): the model's own (``ndcg@10``,
    ``mrr@10``), BM25's (``bm25_...``) and the best fusion's (``fusion_...``, ``fusion``: its name)."""
    return {**{k: v for k, v in comparison.metrics["maxsim"].items() if k in DEV_METRICS}, **comparison.row()}


def log_dev(step: int, comparison: Comparison, before: str = "") -> None:
    model, bm25, best = comparison.metrics["maxsim"], comparison.metrics["bm25"], comparison.best_fusion()
    logger.info("step %d%s: dev %s; BM25 %s; best fusion (%s) %s", step, before,
                ", ".join(f"{k}={v:.4f}" for k, v in model.items()),
                ", ".join(f"{k}={v:.4f}" for k, v in bm25.items()), best,
                ", ".join(f"{k}={v:.4f}" for k, v in comparison.metrics[best].items()))


def evaluate_start(ctx: distributed.Context, cfg: TrainConfig, model: ColBERT, dev: DevSet,
                   dev_tokens: list[list[int]] | None, metrics_log, position: checkpoints.Position) -> None:
    """The dev metrics of the model before any training step (rank 0), logged and written as the
    step-0 row of ``metrics.jsonl``; sets ``position.start_value`` to ``cfg.metric``'s value and
    ``position.eval_s`` to the seconds it took, on every rank. It is what best/ is compared with
    at the end (:func:`warn_if_worse_than_start`), not a best/ candidate."""
    value, started = None, time.monotonic()
    if ctx.is_main:
        comparison = evaluate_dev(model, dev, dev_tokens, cfg)
        log_dev(0, comparison, " (before training)")
        metrics_log.append({"step": 0, **{f"dev_{k}": v for k, v in dev_row(comparison).items()}})
        value = comparison.metrics["maxsim"][cfg.metric]
    model.train()
    position.start_value = distributed.broadcast_object(ctx, value)
    position.eval_s = time.monotonic() - started


def warn_if_worse_than_start(cfg: TrainConfig, position: checkpoints.Position) -> None:
    """Say so, in the log and in ``best/best.json``, when best/ scores under the model the run
    started from (a run that collapsed: a learning rate far too high, say)."""
    if position.start_value is None or position.best_value is None or position.best_value >= position.start_value:
        return
    warning = (f"best/ (step {position.best_step}) scores dev {cfg.metric} {position.best_value:.4f}, worse than the "
               f"model the run started from ({position.start_value:.4f}): training made the model worse (check the "
               "learning rate and the data); the starting model is the better one")
    logger.warning(warning)
    best_file = Path(cfg.output) / "best" / checkpoints.BEST_FILE
    if best_file.is_file():
        info = json.loads(best_file.read_text())
        info.update(worse_than_start=True, warning=warning)
        atomic_write_text(best_file, json.dumps(info, indent=2) + "\n")


def step_zero(cfg: TrainConfig) -> dict:
    """The step-0 dev figures (the model before training, and its best fusion with BM25) from
    ``metrics.jsonl``: ``{"maxsim": ..., "fusion": ..., "fusion_name": ...}`` for ``cfg.metric``."""
    start = next((row for row in MetricsLog(Path(cfg.output) / "metrics.jsonl").rows() if row.get("step") == 0), {})
    keys = (("maxsim", f"dev_{cfg.metric}"), ("fusion", f"dev_fusion_{cfg.metric}"), ("fusion_name", "dev_fusion"))
    return {name: start[key] for name, key in keys if key in start}


def report_search(cfg: TrainConfig) -> None:
    """The end of a run with a dev set: the model alone, BM25 and the best fusion on dev, with the
    step-0 figures beside them, and the search configuration written into ``best/``; a warning,
    plainly, when the model alone is worse than BM25."""
    choice = read_choice(Path(cfg.output) / "best")
    if choice is None:
        return
    lines = search_report(choice, step_zero(cfg))
    for line in lines[:2]:
        logger.info("%s", line)
    for line in lines[2:]:
        logger.warning("%s", line)


def validate(ctx: distributed.Context, cfg: TrainConfig, model: ColBERT, dev: DevSet,
             dev_tokens: list[list[int]] | None, position: checkpoints.Position) -> dict[str, float]:
    """Evaluate on the dev set (rank 0) and replace ``best/`` when ``cfg.metric`` improves; count
    the evaluations in a row that do not improve, and mark the run stopped when they reach
    ``cfg.early_stopping_patience``.

    ``best/`` also gets the search configuration chosen on the same rankings
    (:func:`~maxsim.search_tuning.choose`) as ``search.json``. Updates ``position``'s best on
    every rank; returns the dev figures (:func:`dev_row`; empty on other ranks).
    """
    row: dict = {}
    if ctx.is_main:
        comparison = evaluate_dev(model, dev, dev_tokens, cfg)
        scores = {k: v for k, v in comparison.metrics["maxsim"].items() if k in DEV_METRICS}
        row, value = dev_row(comparison), scores[cfg.metric]
        log_dev(position.step, comparison)
        position.bad_evals = 0 if improved(value, position.best_value, cfg.early_stopping_threshold) else \
            position.bad_evals + 1
        if position.best_value is None or value > position.best_value:
            position.best_value, position.best_step = value, position.step
            choice = choose(comparison, chosen_on={"by": "maxsim train", "step": position.step,
                                                   "documents": len(dev.corpus), **dev_source(cfg)})
            checkpoints.save_best(Path(cfg.output), model, {
                "step": position.step, "metric": cfg.metric, "value": value, "metrics": scores,
                "start_value": position.start_value, "worse_than_start": (
                    position.start_value is not None and value < position.start_value),
                "baselines": {"bm25": choice.dev["bm25"], "best_fusion": choice.dev["best_fusion"],
                              "step_0": step_zero(cfg)},
                "search": choice.summary()},
                run_training(cfg, position.step, best=True, dev_metrics=scores, search=choice.model_dump(mode="json")),
                search=choice)
    position.best_value, position.best_step, position.bad_evals = distributed.broadcast_object(
        ctx, (position.best_value, position.best_step, position.bad_evals))
    if cfg.early_stopping_patience is not None and position.bad_evals >= cfg.early_stopping_patience:
        position.stopped = "early stopping"
        logger.info("early stopping: %d dev evaluations in a row have not beaten the best (%s %.4f at step %d)",
                    position.bad_evals, cfg.metric, position.best_value, position.best_step)
    model.train()
    return row
