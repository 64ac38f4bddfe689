"""Choosing a model's search configuration on dev queries: the model alone, or its ranking fused
with BM25's (rrf, or the weighted sum at each weight of :data:`WEIGHTS`).

Every configuration is scored from two rankings of the dev queries over the dev corpus, the
model's (exact MaxSim) and BM25's, each :data:`DEPTH` deep: fusing costs no encoding. The choice
(:func:`choose`) keeps the model alone unless the best fusion beats it by a paired test: a
sign-flip permutation test on the per-query differences of the dev metric, taking the maximum
over all the fusions tried in each permutation (so that picking the best of eleven does not
make chance look like a gain), one-sided, at :data:`ALPHA`. With few dev queries the test keeps
the model alone unless the gain is clear; the figures are written either way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maxsim.evaluation import per_query, run_from_ranking
from maxsim.fusion import Hybrid, fuse
from maxsim.lexical import DEFAULT_LANGUAGE
from maxsim.ranking import Ranking
from maxsim.search_config import SearchChoice, describe

logger = logging.getLogger(__name__)

#: the weights of the weighted fusion tried (MaxSim's share)
WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: candidates each ranking brings, as :class:`~maxsim.fusion.Hybrid`'s default depth
DEPTH = Hybrid().depth
#: the paired test's level, its permutations and their seed
ALPHA, PERMUTATIONS, SEED = 0.05, 10_000, 0
#: metrics reported for each configuration
REPORTED = ("ndcg@10", "mrr@10")


def fusions() -> list[tuple[str, Hybrid]]:
    """The fused configurations tried, by name: ``rrf`` and ``weighted 0.1`` ... ``weighted 0.9``."""
    return [("rrf", Hybrid(fusion="rrf")), *[(f"weighted {w:g}", Hybrid(weight=w)) for w in WEIGHTS]]


def fused_ranking(first: Ranking, second: Ranking, settings: Hybrid) -> Ranking:
    """Row by row :func:`~maxsim.fusion.fuse` of two rankings of the same queries (``first``:
    MaxSim's), each cut to ``settings.depth``."""
    rows = []
    for i in range(len(first)):
        items, scores = first.row(i)
        other, other_scores = second.row(i)
        depth = settings.depth
        rows.append(fuse(items[:depth], scores[:depth], other[:depth], other_scores[:depth], settings))
    return Ranking.from_rows(rows)


@dataclass
class Comparison:
    """Every configuration on the same dev queries: ``names`` (``maxsim``, ``bm25``, then the
    fusions), their mean ``metrics`` ({name: {metric: value}}) and the chosen metric per query
    (``values``, (C, Q) float64, rows in ``names``' order)."""

    metric: str
    names: list[str]
    settings: dict[str, Hybrid]
    metrics: dict[str, dict[str, float]]
    values: np.ndarray

    def best_fusion(self) -> str:
        """The fusion with the best mean of :attr:`metric` (the first listed among equals)."""
        fused = [n for n in self.names if n in self.settings]
        return max(fused, key=lambda n: (self.metrics[n][self.metric], -fused.index(n)))

    def row(self) -> dict:
        """What a metrics row adds beside the model's own figures: BM25's, and the best fusion's
        and its name (``bm25_ndcg@10``, ``fusion_ndcg@10``, ``fusion``)."""
        best = self.best_fusion()
        return {**{f"bm25_{k}": v for k, v in self.metrics["bm25"].items()},
                **{f"fusion_{k}": v for k, v in self.metrics[best].items()}, "fusion": best}


def compare(query_ids: Sequence[str], doc_ids: Sequence[str], qrels: dict[str, dict[str, float]],
            model: Ranking, bm25: Ranking, metric: str = "ndcg@10") -> Comparison:
    """Score the model alone, BM25 alone and every fusion of the two on the dev queries
    (``query_ids``, row i of each ranking; ``doc_ids`` names the rankings' corpus positions)."""
    runs = {"maxsim": model, "bm25": bm25}
    settings = dict(fusions())
    runs.update({name: fused_ranking(model, bm25, s) for name, s in settings.items()})
    asked = set(query_ids)
    judged = {q: docs for q, docs in qrels.items() if q in asked}
    names, metrics, values = list(runs), {}, []
    for name in names:
        run = run_from_ranking(query_ids, doc_ids, runs[name], k=DEPTH)
        by_metric = {m: per_query(judged, run, m) for m in dict.fromkeys((*REPORTED, metric))}
        metrics[name] = {m: sum(v.values()) / max(1, len(v)) for m, v in by_metric.items()}  # (as evaluate_run)
        values.append(np.array([by_metric[metric][q] for q in sorted(by_metric[metric])], dtype=np.float64))
    return Comparison(metric, names, settings, metrics, np.stack(values))


def paired_p_value(gains: np.ndarray, permutations: int = PERMUTATIONS, seed: int = SEED) -> float:
    """One-sided p-value that the best of several configurations beats a baseline by chance:
    ``gains`` (F, Q) per-query differences from the baseline; each permutation flips the sign
    of every query's differences at once (the same flip for all F) and takes the largest mean,
    and the p-value is the share of permutations at least as large as the observed largest mean.

    >>> paired_p_value(np.full((1, 30), 0.1)) < 0.001, paired_p_value(np.zeros((2, 30)))
    (True, 1.0)
    """
    observed = gains.mean(axis=1).max()
    if observed <= 0:
        return 1.0
    rng = np.random.default_rng(seed)
    at_least, block = 0, 1000
    for start in range(0, permutations, block):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(min(block, permutations - start), gains.shape[1]))
        largest = ((signs @ gains.T) / gains.shape[1]).max(axis=1)
        at_least += int((largest >= observed - 1e-12).sum())
    return (at_least + 1) / (permutations + 1)


def choose(comparison: Comparison, alpha: float = ALPHA, chosen_on: dict | None = None) -> SearchChoice:
    """The configuration to search with: the best fusion when the paired test
    (:func:`paired_p_value` over every fusion against the model alone) gives p below ``alpha``,
    else the model alone; with the dev figures that justify it."""
    names, values, metric = comparison.names, comparison.values, comparison.metric
    fused = [i for i, n in enumerate(names) if n in comparison.settings]
    model_row = names.index("maxsim")
    p_value = paired_p_value(values[fused] - values[model_row])
    best = comparison.best_fusion()
    hybrid = comparison.settings[best] if p_value < alpha else None
    model_value, bm25_value = comparison.metrics["maxsim"][metric], comparison.metrics["bm25"][metric]
    dev = {"queries": int(values.shape[1]), "metric": metric, "maxsim": comparison.metrics["maxsim"],
           "bm25": comparison.metrics["bm25"], "best_fusion": {"name": best, **comparison.metrics[best]},
           "every": {n: comparison.metrics[n][metric] for n in names},
           "model_worse_than_bm25": bool(model_value < bm25_value)}
    test = {"test": "paired sign-flip permutation test of the per-query gain over MaxSim alone, the maximum over "
                    f"the {len(fused)} fusions tried, one-sided", "permutations": PERMUTATIONS, "alpha": alpha,
            "p_value": round(p_value, 5), "gain": round(comparison.metrics[best][metric] - model_value, 5)}
    return SearchChoice(search="hybrid" if hybrid is not None else "maxsim", hybrid=hybrid,
                        chosen_on=chosen_on or {}, dev=dev, test=test)


def report(choice: SearchChoice, start: dict | None = None) -> list[str]:
    """The lines that tell a user what the dev set says: the model alone, BM25 and the best
    fusion (with ``start``'s figures, the model before training, beside them), the choice and
    why, and plainly when the model alone is worse than BM25."""
    dev, metric = choice.dev, choice.dev["metric"]
    best = dev["best_fusion"]
    before = start or {}
    lines = [f"dev {metric} on {dev['queries']} queries: MaxSim alone {dev['maxsim'][metric]:.4f}"
             + (f" (step 0: {before['maxsim']:.4f})" if "maxsim" in before else "")
             + f", BM25 {dev['bm25'][metric]:.4f}, best fusion ({best['name']}) {best[metric]:.4f}"
             + (f" (step 0: {before['fusion']:.4f})" if "fusion" in before else ""),
             f"search configuration: {choice.summary()} (paired test p = {choice.test['p_value']:.4f}, "
             f"{'below' if choice.search == 'hybrid' else 'not below'} {choice.test['alpha']}); "
             f"written to search.json, used by index, search, serve, eval --index and Retriever"]
    if dev["model_worse_than_bm25"]:
        lines.append(f"the model alone is WORSE than BM25 on this dev set ({dev['maxsim'][metric]:.4f} against "
                     f"{dev['bm25'][metric]:.4f}): search with {describe(choice.settings())}"
                     + ("" if choice.search == "hybrid" else " only if BM25 is not an option; BM25 or a fusion "
                        "may serve better (the dev set was too small for the test to tell)"))
    return lines


def tune(model: str | Path, data: str | Path, split: str = "dev", metric: str = "ndcg@10", batch_size: int = 64,
         device: str = "auto", language: str = DEFAULT_LANGUAGE, progress: bool = False) -> SearchChoice:
    """The search configuration of ``model`` (a model folder) chosen on a BEIR split: its exact
    MaxSim ranking and BM25's over the split's corpus, compared and chosen as in training
    (:func:`compare`, :func:`choose`). Nothing is written; :func:`~maxsim.search_config.write_choice` does."""
    from maxsim.data.mining import BM25Miner
    from maxsim.data.training_folder import read_beir_split
    from maxsim.exact_search import exact_search
    from maxsim.model import ColBERT

    queries, corpus, qrels = read_beir_split(Path(data), split)
    colbert = ColBERT.from_pretrained(model, device=device)
    logger.info("%d queries of %s, split %s, over %d documents: exact MaxSim and BM25 (%s)", len(queries.ids), data,
                split, len(corpus), language)
    ranking = exact_search(colbert, queries.texts, colbert.tokenize_documents(corpus.texts), DEPTH, batch_size,
                           progress)
    bm25 = BM25Miner(corpus.texts, language).rank(queries.texts, DEPTH)
    comparison = compare(queries.ids, corpus.ids, qrels, ranking, bm25, metric)
    return choose(comparison, chosen_on={"by": "maxsim tune-search", "dev": f"{Path(data).name}, split {split}",
                                         "documents": len(corpus)})
