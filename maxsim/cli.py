"""The ``maxsim`` command line."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

app = typer.Typer(
    help="Train ColBERT late-interaction retrievers on your own data, then search with them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def _one_line_errors():
    """Turn the errors a user can fix (bad input, a locked or full output, a file in the way) into
    one ``error: ...`` line and exit status 2, never a traceback."""
    from maxsim.data.errors import DataError
    from maxsim.files import LockedError, no_space_message
    from maxsim.index import IndexLoadError
    from maxsim.model import ModelLoadError

    try:
        yield
    except (DataError, ModelLoadError, IndexLoadError, LockedError, FileExistsError, ValueError) as err:
        _fail(str(err))
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        _fail(no_space_message(err) or f"{where}{err.strerror or err}")


@app.callback()
def _root() -> None:
    """maxsim: prepare data, train, index, search and evaluate ColBERT retrievers."""


@app.command()
def prepare(
    inputs: Annotated[list[Path], typer.Argument(help="Files (.jsonl, .csv, .tsv, .parquet) of pairs, labelled pairs or triplets, and/or BEIR folders.", show_default=False)],
    output: Annotated[Path, typer.Option(help="Training-data folder to write (queries.jsonl, corpus.jsonl, triples.jsonl, manifest.json).")],
    kind: Annotated[str | None, typer.Option(help="Force the input kind: pairs, labelled or triplets [default: read from the columns].")] = None,
    split: Annotated[str, typer.Option(help="qrels split of BEIR folders.")] = "train",
    corpus: Annotated[list[Path] | None, typer.Option(help="Extra documents (a corpus.jsonl, a table with a 'text' column, or a BEIR folder), only candidates for negatives. Repeatable.")] = None,
    mine: Annotated[str, typer.Option(help="Negative mining: bm25, dense (needs --miner-model) or none (random).")] = "bm25",
    miner_model: Annotated[str | None, typer.Option(help="maxsim checkpoint or base model folder for --mine dense.")] = None,
    dense_search: Annotated[str, typer.Option(help="How --mine dense ranks: exact (MaxSim with every document), index (through a temporary compressed index, for large corpora) or auto (index above 50,000 documents).")] = "auto",
    negatives: Annotated[int, typer.Option(help="Negatives mined per query.")] = 10,
    min_rank: Annotated[int, typer.Option(help="Best (1-based) rank a mined negative may have; skips likely false negatives at the top.")] = 10,
    max_rank: Annotated[int, typer.Option(help="Worst rank a mined negative may have.")] = 100,
    false_negative_margin: Annotated[float | None, typer.Option(help="Drop candidates scoring above this times the query's lowest positive score.")] = None,
    dev_fraction: Annotated[float | None, typer.Option(help="Hold out this share of queries as dev/ (BEIR style), used by maxsim train for validation.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for sampling negatives and the dev split.")] = 42,
    positive_label: Annotated[list[str] | None, typer.Option(help="Label value that marks a positive in labelled pairs [default: 1]. Repeatable.")] = None,
    negative_label: Annotated[list[str] | None, typer.Option(help="Label value that marks a negative in labelled pairs [default: 0]. Repeatable.")] = None,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Skip bad rows (counted in the manifest) instead of stopping.")] = False,
    export: Annotated[list[str] | None, typer.Option(help="Also write other formats: colbert (colbert-ai / RAGatouille files in colbert/).")] = None,
) -> None:
    """Turn pairs, labelled pairs, triplets or a BEIR folder into a checked training folder."""
    from maxsim.data.prepare import KINDS, prepare_training_data

    if kind is not None and kind not in KINDS:
        _fail(f"--kind must be one of {', '.join(KINDS)}")
    if mine not in ("bm25", "dense", "none"):
        _fail("--mine must be bm25, dense or none")
    if dense_search not in ("auto", "exact", "index"):
        _fail("--dense-search must be auto, exact or index")
    for name in export or []:
        if name != "colbert":
            _fail(f"--export {name}: the only export is colbert")
    _quiet_libraries()
    options = dict(kind=kind, split=split, mine=mine, miner_model=miner_model, dense_search=dense_search, negatives=negatives,
                   min_rank=min_rank, max_rank=max_rank, false_negative_margin=false_negative_margin,
                   dev_fraction=dev_fraction, seed=seed, skip_invalid=skip_invalid,
                   export=tuple(export or ()))
    if positive_label:
        options["positive_labels"] = tuple(positive_label)
    if negative_label:
        options["negative_labels"] = tuple(negative_label)
    with _one_line_errors():
        manifest = prepare_training_data(list(inputs), output, corpus=list(corpus or []), **options)
    counts = manifest["counts"]
    typer.echo(", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()), err=True)
    for what, section in (("dropped", manifest["dropped"]), ("merged", manifest["merged"])):
        if section:
            typer.echo(f"{what}: " + ", ".join(f"{v} {k}" for k, v in section.items()), err=True)
    for note in manifest["mining"]["notes"]:
        typer.echo(f"note: {note}", err=True)
    typer.echo(str(output))


@app.command()
def train(
    data: Annotated[Path | None, typer.Option(help="Training-data folder: queries.jsonl, corpus.jsonl, triples.jsonl.")] = None,
    output: Annotated[Path | None, typer.Option(help="Output folder: checkpoints/, best/, metrics.jsonl, training.png, config.yaml.")] = None,
    base_model: Annotated[str | None, typer.Option(help="Model folder to start from (default: the bundled all-MiniLM-L6-v2).")] = None,
    config: Annotated[Path | None, typer.Option(help="A config.yaml from an earlier run; flags given here override it.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Passes over the training examples [default: 1].")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Global batch size (queries per step, over all processes) [default: 32].")] = None,
    accumulation_steps: Annotated[int | None, typer.Option(help="Micro-batches per optimizer step [default: 1].")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Peak AdamW learning rate [default: 5e-6].")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay, not applied to biases and LayerNorm [default: 0.01].")] = None,
    warmup_steps: Annotated[str | None, typer.Option(help="Linear warmup steps, or 'auto' for 10% of all steps [default: auto].")] = None,
    max_grad_norm: Annotated[float | None, typer.Option(help="Gradient-norm clipping [default: 2.0].")] = None,
    nway: Annotated[int | None, typer.Option(help="Documents per query: 1 positive + nway-1 negatives [default: 2].")] = None,
    ib_negatives: Annotated[bool | None, typer.Option("--ib-negatives/--no-ib-negatives", help="Use other queries' documents as negatives [default: on].")] = None,
    temperature: Annotated[float | None, typer.Option(help="Scores are divided by this in the loss [default: 1.0].")] = None,
    doc_maxlen: Annotated[int | None, typer.Option(help="Document length cap in tokens [default: 256].")] = None,
    query_maxlen: Annotated[int | None, typer.Option(help="Query length in tokens, padded with [MASK] [default: 32].")] = None,
    dim: Annotated[int | None, typer.Option(help="Token vector size [default: 128; a maxsim checkpoint keeps its own].")] = None,
    attend_to_expansion_tokens: Annotated[bool | None, typer.Option("--attend-to-expansion-tokens/--no-attend-to-expansion-tokens", help="Let the encoder attend to query [MASK] padding [default: off].")] = None,
    save_every: Annotated[int | None, typer.Option(help="Checkpoint every N steps (always at the end).")] = None,
    keep_checkpoints: Annotated[int | None, typer.Option(help="Newest checkpoints to keep; best/ is kept besides [default: 3].")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Validate every N steps (always at the end, when there is a dev set).")] = None,
    dev_data: Annotated[Path | None, typer.Option(help="BEIR folder whose --dev-split queries validate the run.")] = None,
    dev_split: Annotated[str | None, typer.Option(help="qrels split of --dev-data [default: dev].")] = None,
    dev_fraction: Annotated[float | None, typer.Option(help="Hold out this share of training queries (chosen by --seed) for validation.")] = None,
    metric: Annotated[str | None, typer.Option(help="Dev metric that picks best/: ndcg@10 or mrr@10 [default: ndcg@10].")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for shuffling, sampling and initialisation [default: 42].")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda [default: auto].")] = None,
    log_every: Annotated[int | None, typer.Option(help="Write metrics.jsonl every N steps [default: 1].")] = None,
    progress_bar: Annotated[bool | None, typer.Option("--progress-bar/--no-progress-bar", help="Show a progress bar [default: on].")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest complete checkpoint in --output, with the run's saved settings (OUTPUT/config.yaml); a flag that would change what is trained is refused.")] = False,
) -> None:
    """Train a ColBERT model; the last line printed is the checkpoint to use (best/ with a dev set)."""
    from maxsim.training import TrainConfig, Trainer

    values = {
        "data": data, "output": output, "base_model": base_model, "max_steps": max_steps,
        "epochs": epochs, "batch_size": batch_size, "accumulation_steps": accumulation_steps,
        "learning_rate": learning_rate, "weight_decay": weight_decay, "warmup_steps": warmup_steps,
        "max_grad_norm": max_grad_norm, "nway": nway, "use_ib_negatives": ib_negatives,
        "temperature": temperature, "doc_maxlen": doc_maxlen, "query_maxlen": query_maxlen,
        "dim": dim, "attend_to_expansion_tokens": attend_to_expansion_tokens,
        "save_every": save_every, "keep_checkpoints": keep_checkpoints, "eval_every": eval_every,
        "dev_data": dev_data, "dev_split": dev_split, "dev_fraction": dev_fraction,
        "metric": metric, "seed": seed, "device": device, "log_every": log_every,
        "progress_bar": progress_bar,
    }
    if config is None and resume and output is not None and (output / "config.yaml").is_file():
        config = output / "config.yaml"  # a resume continues the run as it was set up
    try:
        if config is not None:
            if not config.is_file():
                _fail(f"--config {config}: file not found")
            cfg = TrainConfig.from_yaml(config, **values)
        else:
            if data is None or output is None:
                _fail("--data and --output are required (or --config FILE)")
            cfg = TrainConfig(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        _fail(f"invalid settings: {problems}")
    _quiet_libraries()
    with _one_line_errors():
        path = Trainer(cfg).train(resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(str(path))


@app.command("eval")
def evaluate(
    data: Annotated[Path, typer.Option(help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.")],
    model: Annotated[str | None, typer.Option(help="A maxsim checkpoint folder, a base model folder, 'base' (the untrained bundled MiniLM) or 'bm25' (the BM25 baseline) [default: with --index, the model that built it].")] = None,
    index: Annotated[Path | None, typer.Option(help="Search through this index (made by maxsim index from the same corpus) instead of exact MaxSim over every document.")] = None,
    split: Annotated[str, typer.Option(help="qrels split to evaluate.")] = "test",
    output: Annotated[Path | None, typer.Option(help="Folder for run.trec and metrics.json.")] = None,
    k: Annotated[int, typer.Option(help="Documents retrieved per query.")] = 100,
    drop_self_hits: Annotated[bool, typer.Option("--drop-self-hits", help="Remove a document whose id equals the query id (ArguAna-style sets).")] = False,
    batch_size: Annotated[int, typer.Option(help="Encoding batch size.")] = 64,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse qrels that name documents the corpus lacks [default: warn, and count them as relevant and unretrievable, as BEIR does].")] = False,
    allow_model_mismatch: Annotated[bool, typer.Option("--allow-model-mismatch", help="With --index and --model: search the index with a model other than the one that built it.")] = False,
) -> None:
    """nDCG@10, MRR@10, Recall@100 and MAP (pytrec_eval) of exact MaxSim, an index or BM25 on a BEIR split.

    The last line printed is the metrics as one JSON object.
    """
    import json

    from maxsim.evaluation import evaluate_beir, write_trec_run
    from maxsim.files import atomic_write_text

    if model is None and index is None:
        _fail("give --model (a checkpoint, 'base' or 'bm25') or --index")
    if k < 1:
        _fail(f"--k must be 1 or more, got {k}")
    if output is not None and output.exists() and not output.is_dir():
        _fail(f"--output {output} is a file: choose a folder for run.trec and metrics.json")
    _quiet_libraries()
    with _one_line_errors():
        metrics, run = evaluate_beir(model, data, split, k, drop_self_hits, batch_size, progress=True, index=index,
                                     strict=strict, trec_output=output is not None,
                                     allow_model_mismatch=allow_model_mismatch)
    result = {"model": model, "data": str(data), "split": split, **{k_: round(v, 4) for k_, v in metrics.items()}}
    if index is not None:
        result["index"] = str(index)
        if model is None:
            result["model"] = json.loads((index / "index.json").read_text()).get("model_path")
    if output is not None:
        with _one_line_errors():
            write_trec_run(run, output / "run.trec", tag="bm25" if model == "bm25" else "maxsim")
            atomic_write_text(output / "metrics.json", json.dumps(result, indent=2) + "\n")
    typer.echo(json.dumps(result))


@app.command("index")
def build_index(
    corpus: Annotated[Path, typer.Argument(help="A corpus.jsonl (_id, title, text) or a BEIR folder.", show_default=False)],
    model: Annotated[str, typer.Option(help="maxsim checkpoint folder (or 'base' for the untrained bundled MiniLM).")],
    output: Annotated[Path, typer.Option(help="Index folder to write.")],
    nbits: Annotated[int, typer.Option(help="Bits per dimension of each residual: 1, 2 or 4.")] = 2,
    max_document_tokens: Annotated[int | None, typer.Option(help="Split documents into chunks of at most this many tokens [default: the model's doc_maxlen].")] = None,
    no_split: Annotated[bool, typer.Option("--no-split", help="Truncate long documents instead of splitting them.")] = False,
    batch_size: Annotated[int, typer.Option(help="Encoding batch size.")] = 64,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the index already in --output (a folder holding anything else is never replaced).")] = False,
) -> None:
    """Build a compressed (PLAID-style) index of a corpus; prints the index folder."""
    from maxsim.data.errors import DataError
    from maxsim.data.training_folder import read_corpus
    from maxsim.files import check_replaceable
    from maxsim.index import is_index
    from maxsim.retriever import Retriever

    _quiet_libraries()
    path = corpus / "corpus.jsonl" if corpus.is_dir() else corpus
    with _one_line_errors():
        check_replaceable(output, is_index, "maxsim index", overwrite)  # before any work
        docs = read_corpus(path)
        if not len(docs):
            raise DataError(path, None, "no documents", "give a corpus.jsonl with one {\"_id\", \"text\"} per line")
        retriever = Retriever.from_pretrained(None if model == "base" else model)
        retriever.index(docs.texts, path=output, document_ids=docs.ids, nbits=nbits, overwrite=overwrite,
                        split_documents=not no_split, max_document_tokens=max_document_tokens, batch_size=batch_size)
    typer.echo(str(output))


@app.command()
def search(
    queries: Annotated[list[str], typer.Argument(help="One or more query texts.", show_default=False)],
    index: Annotated[Path, typer.Option(help="Index folder made by maxsim index.")],
    k: Annotated[int, typer.Option("-k", "--k", help="Hits per query.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of hits (a list of lists for several queries).")] = False,
    ncells: Annotated[int | None, typer.Option(help="Centroids probed per query token [default: size-aware].")] = None,
    centroid_score_threshold: Annotated[float | None, typer.Option(help="Centroids scoring under this are ignored in the first ranking.")] = None,
    ndocs: Annotated[int | None, typer.Option(help="Chunks decompressed and scored exactly [default: size-aware].")] = None,
    allow_model_mismatch: Annotated[bool, typer.Option("--allow-model-mismatch", help="Search even if the index's model folder now holds another model (its weights changed since indexing).")] = False,
) -> None:
    """Search an index; prints the hits (document_id, score, rank, content, metadata)."""
    import json

    from maxsim.retriever import Retriever

    if k < 1:
        _fail(f"-k must be 1 or more, got {k}")
    _quiet_libraries()
    with _one_line_errors():
        retriever = Retriever.from_index(index, allow_model_mismatch=allow_model_mismatch)
        results = retriever.search(list(queries), k=k, ncells=ncells, centroid_score_threshold=centroid_score_threshold,
                                   ndocs=ndocs)
    if as_json:
        payload = [[h.to_dict() for h in hits] for hits in results]
        typer.echo(json.dumps(payload[0] if len(payload) == 1 else payload, ensure_ascii=False))
        return
    for query, hits in zip(queries, results):
        typer.echo(f"# {query}")
        for h in hits:
            content = h.content if len(h.content) <= 100 else h.content[:97] + "..."
            typer.echo(f"{h.rank:3d}  {h.score:8.4f}  {h.document_id}  {content}")


def _quiet_libraries() -> None:
    """Show maxsim's own progress; hide Hugging Face's per-file progress bars."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    hf_logging.set_verbosity_error()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
