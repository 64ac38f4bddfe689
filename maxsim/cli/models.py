"""``maxsim export`` and ``maxsim push``: a checkpoint in another library's format, and on the hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from maxsim.cli.common import app, one_line_errors, quiet_libraries


@app.command()
def export(
    checkpoint: Annotated[str, typer.Argument(help="A model: a maxsim, Stanford (colbert-ai) or PyLate checkpoint folder, or a hub name.", show_default=False)],
    format: Annotated[str, typer.Option("--format", help="pylate (loads as pylate.models.ColBERT), stanford (colbert-ai's Checkpoint, RAGatouille) or maxsim.")],
    output: Annotated[Path, typer.Option(help="Folder to write (new or empty, or a model of that format to replace).")],
) -> None:
    """Write a checkpoint in another library's format; prints the folder.

    A model that library would encode differently (a tokenizer without [CLS], say) is refused
    with the reason, rather than written wrong. The search configuration chosen on dev
    (search.json) goes with it.
    """
    from maxsim.model import ColBERT
    from maxsim.model.card import load_training
    from maxsim.search_config import read_choice, write_choice

    quiet_libraries()
    with one_line_errors():
        model = ColBERT.from_pretrained(None if checkpoint == "base" else checkpoint)
        source = None if checkpoint == "base" else Path(checkpoint)
        model.save(output, format=format, training=load_training(source) if source and source.is_dir() else None)
        choice = read_choice(source)
        if choice is not None:
            write_choice(output, choice)
    typer.echo(str(output))


@app.command()
def push(
    folder: Annotated[Path, typer.Argument(help="A model folder with its model card: best/, a checkpoint, or what maxsim export wrote.", show_default=False)],
    repo: Annotated[str, typer.Option(help="Hub repository, USER/NAME (made if it does not exist).", show_default=False)],
    private: Annotated[bool, typer.Option("--private", help="Make a new repository private.")] = False,
    revision: Annotated[str | None, typer.Option(help="Branch to push to (made if new) [default: main].")] = None,
) -> None:
    """Upload a model folder to the Hugging Face hub; prints the commit's URL.

    The token comes from HF_TOKEN or the huggingface_hub login. A checkpoint's training state
    (optimizer, position, settings for a resume) is not uploaded."""
    from maxsim.model.hub import push as push_folder

    with one_line_errors():
        typer.echo(push_folder(folder, repo, private=private, revision=revision))
