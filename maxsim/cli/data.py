"""``maxsim prepare`` and ``maxsim score``: training folders from the user's data, and a teacher's scores."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from maxsim.cli.common import Device, app, one_line_errors, quiet_libraries
from maxsim.cli.options import options_from, parameter, with_options
from maxsim.data.settings import PrepareSettings


@app.command()
@with_options(
    parameter("inputs", Annotated[list[Path], typer.Argument(help="Files (.jsonl, .csv, .tsv, .parquet) of pairs, labelled pairs or triplets, and/or BEIR folders (or a BEIR dataset's name, fetched by maxsim download).", show_default=False, metavar="INPUT")], positional=True),
    parameter("output", Annotated[Path, typer.Option(help="Training-data folder to write (queries.jsonl, corpus.jsonl, triples.jsonl, manifest.json).")]),
    parameter("corpus", Annotated[list[Path] | None, typer.Option(help="Extra documents (a corpus.jsonl, a table with a 'text' column, or a BEIR folder), only candidates for negatives. Repeatable.", metavar="<path>")], None),
    parameter("queries", Annotated[Path | None, typer.Option(help="colbert-ai's queries.tsv, for inputs that are colbert-ai triples ([qid, pid, ...] or [qid, [pid, score], ...] lines).")], None),
    parameter("collection", Annotated[Path | None, typer.Option(help="colbert-ai's collection.tsv, for inputs that are colbert-ai triples.")], None),
    parameter("device", Device, "auto"),
    *options_from(PrepareSettings, flags={"positive_labels": "positive_label", "negative_labels": "negative_label"}),
)
def prepare(inputs: list[Path], output: Path, corpus: list[Path] | None, queries: Path | None,
            collection: Path | None, device: str, **settings) -> None:
    """Turn pairs, labelled pairs, triplets or a BEIR folder into a checked training folder."""
    from maxsim.data.datasets import resolve
    from maxsim.data.prepare import prepare_training_data

    quiet_libraries()
    with one_line_errors():
        options = PrepareSettings.checked(**{k: v for k, v in settings.items() if v is not None}).model_dump()
        inputs = [resolve(path) for path in inputs]  # (a dataset's name: its folder in the cache)
        manifest = prepare_training_data(inputs, output, corpus=list(corpus or []), colbert_queries=queries,
                                         colbert_collection=collection, device=device, **options)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # (under torchrun rank 0 writes and reports)
    counts = manifest["counts"]
    typer.echo(", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()), err=True)
    for what, section in (("dropped", manifest["dropped"]), ("merged", manifest["merged"])):
        if section:
            typer.echo(f"{what}: " + ", ".join(f"{v} {k}" for k, v in section.items()), err=True)
    for note in manifest["mining"]["notes"]:
        typer.echo(f"note: {note}", err=True)
    typer.echo(str(output))


@app.command()
def score(
    data: Annotated[Path, typer.Argument(help="Training-data folder (queries.jsonl, corpus.jsonl, triples.jsonl).", show_default=False)],
    teacher: Annotated[str, typer.Option(help="bm25, a ColBERT checkpoint (maxsim, colbert-ai or PyLate format) or a Hugging Face sequence-classification cross-encoder (its relevance logit).")],
    output: Annotated[Path, typer.Option(help="New training folder: the same queries and corpus, triples.jsonl with \"scores\".")],
    candidates: Annotated[int | None, typer.Option(help="Score the teacher's top N of the corpus (BM25's for a cross-encoder), known positives always included [default: each line's own positives and negatives].")] = None,
    batch_size: Annotated[int, typer.Option(help="Encoding batch size.")] = 32,
    device: Device = "auto",
    chunk_lines: Annotated[int, typer.Option(min=1, help="Lines scored and written at a time (the unit a resume keeps, and that torchrun's ranks share out).")] = 64,
) -> None:
    """Score a training folder with a teacher, for distillation; prints the new folder.

    Scores are written in chunks as they are computed: run the same command again after a kill
    and it goes on where it stopped. Under torchrun the ranks share the chunks out, each on its
    own device, and the folder is the same as one process writes.
    """
    from maxsim.data.teacher import score_training_folder

    quiet_libraries()
    with one_line_errors():
        score_training_folder(data, teacher, output, candidates, batch_size, chunk_lines, device=device)
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(str(output))


@app.command()
def download(
    name: Annotated[str, typer.Argument(help="A BEIR dataset's name: scifact, nfcorpus, fiqa, arguana, msmarco, ...", show_default=False)],
    source: Annotated[Path | None, typer.Option("--from", help="Import this local copy (a BEIR folder, or its zip) instead of downloading.", show_default=False)] = None,
) -> None:
    """Fetch a BEIR dataset into the cache (checked against BEIR's md5) and print its folder;
    then prepare, train --dev-data and eval --data take its name."""
    from maxsim.data.datasets import download as fetch

    quiet_libraries()
    with one_line_errors():
        typer.echo(str(fetch(name, source)))
