"""``maxsim eval``: a BEIR split's metrics, for exact MaxSim, an index or BM25; ``maxsim tune-search``:
a model's search configuration chosen on a dev split."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from maxsim.cli.common import (
    Device,
    Fusion,
    FusionWeight,
    HybridDepth,
    HybridFlag,
    RrfK,
    app,
    fail,
    hybrid_from,
    one_line_errors,
    quiet_libraries,
)
from maxsim.index_settings import DEFAULT_BM25_LANGUAGE

logger = logging.getLogger("maxsim")


@app.command("eval")
def evaluate(
    data: Annotated[Path, typer.Option(help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), or a BEIR dataset's name (fetched by maxsim download).")],
    model: Annotated[str | None, typer.Option(help="A maxsim checkpoint folder, a base model folder, 'base' (the untrained bundled MiniLM) or 'bm25' (the BM25 baseline) [default: with --index, the model that built it].")] = None,
    index: Annotated[Path | None, typer.Option(help="Search through this index (made by maxsim index from the same corpus) instead of exact MaxSim over every document.")] = None,
    split: Annotated[str, typer.Option(help="qrels split to evaluate.")] = "test",
    output: Annotated[Path | None, typer.Option(help="Folder for run.trec and metrics.json.")] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Documents retrieved per query.")] = 100,
    drop_self_hits: Annotated[bool, typer.Option("--drop-self-hits", help="Remove a document whose id equals the query id (ArguAna-style sets).")] = False,
    batch_size: Annotated[int, typer.Option(help="Encoding batch size.")] = 64,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse qrels that name documents the corpus lacks [default: warn, and count them as relevant and unretrievable, as BEIR does].")] = False,
    allow_model_mismatch: Annotated[bool, typer.Option("--allow-model-mismatch", help="With --index and --model: search the index with a model other than the one that built it.")] = False,
    device: Device = "auto",
    hybrid: HybridFlag = None,
    fusion: Fusion = None,
    fusion_weight: FusionWeight = None,
    rrf_k: RrfK = None,
    hybrid_depth: HybridDepth = None,
) -> None:
    """nDCG@10, MRR@10, Recall@100 and MAP (pytrec_eval) of exact MaxSim, an index (plain or --hybrid) or BM25 on a BEIR split.

    The last line printed is the metrics as one JSON object.
    """
    import json

    from maxsim.data.datasets import resolve
    from maxsim.evaluation import evaluate_beir, write_trec_run
    from maxsim.files import atomic_write_text

    if model is None and index is None:
        fail("give --model (a checkpoint, 'base' or 'bm25') or --index")
    if k < 1:
        fail(f"--k must be 1 or more, got {k}")
    if output is not None and output.exists() and not output.is_dir():
        fail(f"--output {output} is a file: choose a folder for run.trec and metrics.json")
    quiet_libraries()
    with one_line_errors():
        settings = hybrid_from(hybrid, fusion, fusion_weight, rrf_k, hybrid_depth)
        if settings not in (None, False) and index is None:
            fail("--hybrid searches an index: give --index (built by maxsim index, which keeps a BM25 side)")
        data = resolve(data)  # (a dataset's name: its folder in the cache)
        metrics, run = evaluate_beir(model, data, split, k, drop_self_hits, batch_size, progress=True, index=index,
                                     strict=strict, trec_output=output is not None,
                                     allow_model_mismatch=allow_model_mismatch, device=device, hybrid=settings)
    result = {"model": model, "data": str(data), "split": split, **{k_: round(v, 4) for k_, v in metrics.items()}}
    if index is not None:
        result.update(searched_with(index, model, settings))
    if output is not None:
        with one_line_errors():
            write_trec_run(run, output / "run.trec", tag="bm25" if model == "bm25" else "maxsim")
            atomic_write_text(output / "metrics.json", json.dumps(result, indent=2) + "\n")
    typer.echo(json.dumps(result))


def searched_with(index: Path, model: str | None, settings) -> dict:
    """What ``eval --index`` reports of its search: the index, the model (None: the one that built
    it) and the search configuration used (the hybrid settings, if fused, and the log's line)."""
    from maxsim.index import read_settings
    from maxsim.search_config import effective, read_choice

    built = read_settings(index)
    folder = model if model not in (None, "base") else built.model_path
    used = effective(settings, read_choice(folder), folder, built.bm25_language is not None)
    out = {"index": str(index), "model": model if model is not None else built.model_path, "search": used.line()}
    return out | ({"hybrid": used.hybrid.model_dump()} if used.hybrid is not None else {})


@app.command("tune-search")
def tune_search(
    model: Annotated[Path, typer.Option(help="A model folder (a maxsim checkpoint, or a PyLate or colbert-ai folder): search.json is written into it.")],
    data: Annotated[Path, typer.Option(help="BEIR folder whose split chooses (dev queries, never test), or a BEIR dataset's name.")],
    split: Annotated[str, typer.Option(help="qrels split to choose on.")] = "dev",
    metric: Annotated[str, typer.Option(help="Metric that chooses: ndcg@10 or mrr@10.")] = "ndcg@10",
    language: Annotated[str, typer.Option(help="BM25's language (ISO 639-1): the one the index's BM25 side uses.")] = DEFAULT_BM25_LANGUAGE,
    batch_size: Annotated[int, typer.Option(help="Encoding batch size.")] = 64,
    device: Device = "auto",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report the choice without writing search.json.")] = False,
) -> None:
    """Choose a model's search configuration on dev queries, as maxsim train does for best/: the model alone, or fused with BM25 (rrf, or weighted at 0.1 ... 0.9), kept only when a paired test says it beats the model alone.

    Writes MODEL/search.json, which index, search, serve, eval --index, Retriever and RAGPretrainedModel then use by default. The last line printed is the choice as one JSON object.
    """
    import json

    from maxsim.data.datasets import resolve
    from maxsim.lexical import check_language
    from maxsim.search_config import write_choice
    from maxsim.search_tuning import report, tune

    if metric not in ("ndcg@10", "mrr@10"):
        fail(f"--metric {metric}: choose ndcg@10 or mrr@10")
    if not model.is_dir():
        fail(f"--model {model} is not a folder here: tune-search writes search.json into the model's folder. Fix: "
             "give a local folder (a hub model: download it first, e.g. huggingface-cli download NAME --local-dir "
             "DIR)")
    if split == "test":
        logger.warning("choosing on the test split: its figures then no longer measure the choice honestly; "
                       "choose on a dev split and report test once")
    quiet_libraries()
    with one_line_errors():
        check_language(language, "pass one of them as --language")
        choice = tune(model, resolve(data), split, metric, batch_size, device, language, progress=True)
        for line in report(choice):
            logger.info("%s", line)
        if not dry_run:
            logger.info("wrote %s", write_choice(model, choice))
    typer.echo(json.dumps(choice.model_dump(mode="json")))
