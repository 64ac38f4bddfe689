"""``maxsim index`` (build, compact, verify, add-bm25), ``maxsim add``, ``maxsim delete`` and
``maxsim export-index``: making, keeping and changing an index from the shell."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from maxsim.cli.common import (
    Device,
    NoMuvera,
    QdrantCollection,
    QdrantStorage,
    QdrantTarget,
    app,
    fail,
    one_line_errors,
    quiet_libraries,
)
from maxsim.cli.options import option_for
from maxsim.index_settings import DEFAULT_BM25_LANGUAGE, IndexSettings, default
from maxsim.inputs import checked_ids

#: ``maxsim index --compact IX`` and the like, as they were spelled before the subcommands
FORMER_FLAGS = {"--compact": "compact", "--verify": "verify", "--add-bm25": "add-bm25"}


class IndexCommands(TyperGroup):
    """``maxsim index``'s subcommands, which also take the spellings of before them for one
    release (with a warning): ``maxsim index CORPUS ...`` is ``maxsim index build CORPUS ...``,
    ``maxsim index --compact IX`` is ``maxsim index compact IX``, and so on."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = self.new_spelling(list(args))
        return super().parse_args(ctx, args)

    @staticmethod
    def new_spelling(args: list[str]) -> list[str]:
        """The subcommand spelling of a former ``maxsim index`` command line.

        >>> IndexCommands.new_spelling(["--verify", "ix"])
        ['verify', 'ix']
        >>> IndexCommands.new_spelling(["corpus.jsonl", "--model", "m"])
        ['build', 'corpus.jsonl', '--model', 'm']
        """
        for flag, command in FORMER_FLAGS.items():
            if flag in args:
                at = args.index(flag)
                new = [command, *args[at + 1 : at + 2], *args[:at], *args[at + 2 :]]
                break
        else:
            new = ["build", *args]
        typer.echo(f"warning: `maxsim index {' '.join(args)}` is spelled `maxsim index {' '.join(new)}` now; the "
                   "former spelling is kept for one release", err=True)
        return new


index_app = typer.Typer(cls=IndexCommands, no_args_is_help=True, rich_markup_mode=None,
                        help="Build an index (build), or keep one: compact, verify, add-bm25.")
app.add_typer(index_app, name="index")

IndexFolder = Annotated[Path, typer.Argument(help="Index folder made by maxsim index build.", show_default=False)]


@index_app.command("build")
def build(
    corpus: Annotated[Path, typer.Argument(help="A corpus.jsonl (_id, title, text, metadata), a BEIR folder, or a BEIR dataset's name (fetched by maxsim download).", show_default=False)],
    model: Annotated[str, typer.Option(help="maxsim checkpoint folder (or 'base' for the untrained bundled MiniLM).", show_default=False)],
    output: Annotated[Path | None, typer.Option(help="Index folder to write.", show_default=False)] = None,
    nbits: option_for(IndexSettings, "nbits") = None,
    max_document_tokens: option_for(IndexSettings, "max_document_tokens") = None,
    no_split: Annotated[bool, typer.Option("--no-split", help="Truncate long documents instead of splitting them.")] = False,
    batch_size: Annotated[int, typer.Option(help="Encoding batch size.")] = 64,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the index already in --output (a folder holding anything else is never replaced).")] = False,
    device: Device = "auto",
    pool_factor: option_for(IndexSettings, "pool_factor") = default("pool_factor"),
    language: Annotated[str, typer.Option(help="Language of the BM25 side kept for hybrid search (its stop words and stemmer; ISO 639-1: en, fr, de, ...).")] = DEFAULT_BM25_LANGUAGE,
    no_bm25: Annotated[bool, typer.Option("--no-bm25", help="Keep no BM25 side (no hybrid search).")] = False,
    qdrant: QdrantTarget = None,
    collection: QdrantCollection = None,
    qdrant_storage: QdrantStorage = "float16",
    no_muvera: NoMuvera = False,
) -> None:
    """Build a compressed (PLAID-style) index of a corpus, with a BM25 side for hybrid search
    (or, with --qdrant and --collection, a Qdrant collection); prints the index folder."""
    if qdrant is not None or collection is not None:
        _index_into_qdrant(corpus, model, output, qdrant, collection, qdrant_storage, no_muvera, overwrite,
                           max_document_tokens, no_split, batch_size, device)
        return
    if output is None:
        fail("give --output, the index folder to write (or --qdrant and --collection)")
    from maxsim import process_group
    from maxsim.files import check_replaceable
    from maxsim.index import is_index
    from maxsim.indexing import check_build_settings
    from maxsim.model import pick_device
    from maxsim.retriever import Retriever

    quiet_libraries()
    with one_line_errors():
        check_build_settings(nbits, pool_factor, None if no_bm25 else language)  # before any work
        check_replaceable(output, is_index, "maxsim index", overwrite)
        if pick_device(device).type == "cuda" and process_group.launched():  # under torchrun: each rank its own GPU
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        docs = _corpus(corpus)
        retriever = Retriever.from_pretrained(None if model == "base" else model, device=device)
        retriever.index_records(docs, path=output, nbits=nbits, overwrite=overwrite, split_documents=not no_split,
                                max_document_tokens=max_document_tokens, batch_size=batch_size, show_progress=True,
                                pool_factor=pool_factor, bm25_language=None if no_bm25 else language)
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(str(output))


def _corpus(corpus: Path):
    """The documents of a corpus.jsonl (or a BEIR folder's), every line checked now; the texts
    are read shard by shard as they are encoded."""
    from maxsim.data.corpus_file import CorpusFile
    from maxsim.data.datasets import resolve
    from maxsim.data.errors import DataError

    corpus = resolve(corpus)  # (a dataset's name: its folder in the cache)
    path = corpus / "corpus.jsonl" if corpus.is_dir() else corpus
    docs = CorpusFile(path)
    if not len(docs):
        raise DataError(path, None, "no documents", "give a corpus.jsonl with one {\"_id\", \"text\"} per line")
    return docs


def _index_into_qdrant(corpus, model, output, qdrant, collection, storage, no_muvera, overwrite, max_document_tokens,
                       no_split, batch_size, device) -> None:
    """``maxsim index build CORPUS --model M --qdrant URL_OR_PATH --collection NAME``."""
    from maxsim.retriever import Retriever

    if qdrant is None or collection is None or output is not None:
        fail("into Qdrant: give a CORPUS, --model, --qdrant URL_OR_PATH and --collection NAME (and no --output)")
    quiet_libraries()
    with one_line_errors():
        docs = _corpus(corpus)
        retriever = Retriever.from_pretrained(None if model == "base" else model, device=device)
        done = retriever.index_to_qdrant(docs, qdrant, collection, storage=storage, first_stage=not no_muvera,
                                         split_documents=not no_split, max_document_tokens=max_document_tokens,
                                         batch_size=batch_size, overwrite=overwrite, show_progress=True)
        typer.echo(f"{qdrant} {collection}: {done.document_count()} documents")


@index_app.command("compact")
def compact(index: IndexFolder) -> None:
    """Merge every segment of an index into one, without its deleted documents (every file is checked first)."""
    from maxsim.index import compact_index

    with one_line_errors():
        before, after = compact_index(index)
    typer.echo(f"{index}: {before['documents']} documents, {before['segments']} segments "
               f"({before['chunks']} chunks stored) -> {len(after.segments)} segment ({after.n_chunks} chunks)")


@index_app.command("verify")
def verify(index: IndexFolder) -> None:
    """Check every byte of an index (sha256 and values); exit 1 if anything is wrong."""
    from maxsim.index.compaction import verify_index

    with one_line_errors():
        problems = verify_index(index)
    for problem in problems:
        typer.echo(f"error: {problem}", err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{index}: every file checked, no problem found")


@index_app.command("add-bm25")
def add_bm25(
    index: IndexFolder,
    language: Annotated[str, typer.Option(help="Language of the BM25 side (its stop words and stemmer; ISO 639-1: en, fr, de, ...).")] = DEFAULT_BM25_LANGUAGE,
) -> None:
    """Give an index (built without one, or by an older maxsim) its BM25 side, without re-encoding."""
    from maxsim.index.writer import add_bm25 as give_bm25

    with one_line_errors():
        data = give_bm25(index, language)
    typer.echo(f"{index}: BM25 side in {language!r} for {data.n_documents} documents")


@app.command("add")
def add(
    index: IndexFolder,
    documents: Annotated[Path, typer.Argument(help="A corpus.jsonl (_id, title, text) of the documents to add.", show_default=False)],
    batch_size: Annotated[int, typer.Option(help="Encoding batch size.")] = 64,
    device: Device = "auto",
    allow_model_mismatch: Annotated[bool, typer.Option("--allow-model-mismatch", help="Encode with the index's model folder even if it now holds another model.")] = False,
) -> None:
    """Add documents to an index with the model that built it: one change, written whole or not at
    all (an id the index holds already is refused). Prints the index's document count."""
    from maxsim.retriever import Retriever

    quiet_libraries()
    with one_line_errors():
        records = _corpus(documents)[:]
        retriever = Retriever.from_index(index, device=device, allow_model_mismatch=allow_model_mismatch)
        retriever.add([r["content"] for r in records], [r["id"] for r in records], [r["metadata"] for r in records],
                      batch_size=batch_size)
    typer.echo(f"{index}: added {len(records)} documents, {retriever.document_count()} in all")


@app.command("delete")
def delete(
    index: IndexFolder,
    ids: Annotated[list[str], typer.Option("--id", help="A document id to delete; repeat for several.", show_default=False)],
) -> None:
    """Delete documents from an index by id (an id it does not hold is an error, and nothing
    changes). Prints the index's document count."""
    from maxsim.backends.local import LocalIndex

    with one_line_errors():  # (no model needed: a delete writes tombstones, under the writer lock)
        backend = LocalIndex.open(index)
        deleted = backend.delete(checked_ids(ids))
    typer.echo(f"{index}: deleted {deleted} documents, {backend.count()} in all")


@app.command("export-index")
def export_index(
    index: IndexFolder,
    qdrant: QdrantTarget = None,
    collection: QdrantCollection = None,
    qdrant_storage: QdrantStorage = "float16",
    no_muvera: NoMuvera = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a collection of that name.")] = False,
) -> None:
    """Copy an index into a Qdrant collection (its stored vectors; nothing is encoded again)."""
    from maxsim.index import IndexData
    from maxsim.qdrant import export_index as export

    if qdrant is None or collection is None:
        fail("give --qdrant URL_OR_PATH and --collection NAME")
    quiet_libraries()
    with one_line_errors():
        done = export(IndexData.load(index), qdrant, collection, storage=qdrant_storage, first_stage=not no_muvera,
                      overwrite=overwrite, show_progress=True)
        typer.echo(f"{qdrant} {collection}: {done.count()} documents")
