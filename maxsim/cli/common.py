"""What every command shares: the app, the options several commands take, and turning the errors
a user can fix into one line."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from maxsim.cli.options import option_for
from maxsim.fusion import Hybrid
from maxsim.inputs import SearchSettings

app = typer.Typer(
    help="Train ColBERT late-interaction retrievers on your own data, then search with them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


#: where a command's model runs: one option, the same for every command that loads a model
Device = Annotated[str, typer.Option(help="Where the model runs: auto (a CUDA GPU where one is visible, in bf16 "
                                     "autocast; else the CPU), cpu, cuda or cuda:N.")]

#: how a command encodes queries on a CPU (:attr:`maxsim.text_encoder.TextEncoder.query_precision`)
QueryPrecision = Annotated[str, typer.Option(help="Query encoding on a CPU: auto (bf16 where the CPU computes it natively, else float32), float32, bf16 or int8 (dynamic quantisation of the linear layers).")]

HybridFlag = Annotated[bool | None, typer.Option("--hybrid/--no-hybrid", help="Fuse MaxSim's ranking with BM25's over the texts (the index's BM25 side), or not; any of the next options implies --hybrid [default: what the model's search.json chose on dev; MaxSim alone without one].", show_default=False)]
Fusion = option_for(Hybrid, "fusion")
FusionWeight = option_for(Hybrid, "weight", "--fusion-weight")
RrfK = option_for(Hybrid, "rrf_k")
HybridDepth = option_for(Hybrid, "depth", "--hybrid-depth")

#: maxsim search's options of one search (:class:`~maxsim.inputs.SearchSettings`)
K = option_for(SearchSettings, "k", "-k", "--k")
Ncells = option_for(SearchSettings, "ncells")
CentroidScoreThreshold = option_for(SearchSettings, "centroid_score_threshold")
Ndocs = option_for(SearchSettings, "ndocs")

QdrantTarget = Annotated[str | None, typer.Option("--qdrant", help="A Qdrant server's URL (http://host:6333), or a folder for Qdrant's local mode.", show_default=False)]
QdrantCollection = Annotated[str | None, typer.Option("--collection", help="The Qdrant collection.", show_default=False)]
QdrantStorage = Annotated[str, typer.Option("--qdrant-storage", help="Token vectors in Qdrant: float16, or int8 (scalar quantisation).")]
NoMuvera = Annotated[bool, typer.Option("--no-muvera", help="No MUVERA first-stage vector: every search scores every point by MaxSim.")]


def hybrid_from(hybrid: bool | None, fusion: str | None, weight: float | None, rrf_k: int | None,
                depth: int | None):
    """What the options ask for, as ``Retriever.search`` takes it: None (nothing asked: the model's
    own choice), False (``--no-hybrid``: MaxSim alone), True (``--hybrid`` alone: the model's
    fusion, else the default one) or the hybrid settings the fusion options give."""
    from maxsim.fusion import hybrid_settings

    given = {name: value for name, value in (("fusion", fusion), ("weight", weight), ("rrf_k", rrf_k),
                                             ("depth", depth)) if value is not None}
    if hybrid is False and given:
        fail(f"--no-hybrid searches with MaxSim alone: leave out {', '.join('--' + k for k in given)}")
    if not given:
        return hybrid
    return hybrid_settings(given)


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def one_line_errors():
    """Turn the errors a user can fix (every :class:`~maxsim.errors.MaxsimError`: bad input, a bad
    setting, a locked output, a folder in the way) and the system's own (a full disk, a missing
    permission) into one ``error: ...`` line and exit status 2. Anything else is a bug and keeps
    its traceback."""
    from maxsim.errors import MaxsimError
    from maxsim.files import no_space_message

    try:
        yield
    except MaxsimError as err:
        fail(str(err))
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        fail(no_space_message(err) or f"{where}{err.strerror or err}")


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        typer.echo(f"maxsim {version('maxsim')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print maxsim's version and exit.")] = False,
) -> None:
    """maxsim: prepare data, train, index, search and evaluate ColBERT retrievers."""


def warn_if_others_can_read(path: Path) -> None:
    """Warn, as ssh does of a private key, when users other than the owner may read a secret."""
    import stat

    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        typer.echo(f"warning: --api-key-file {path} can be read by other users (mode {mode:04o}): anyone on this "
                   f"machine can use the key. Fix: chmod 600 {path}", err=True)


def quiet_libraries() -> None:
    """Show maxsim's own progress; hide Hugging Face's per-file progress bars."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    for handler in logging.getLogger().handlers:  # (bm25s sets its own logger to DEBUG when imported)
        handler.addFilter(lambda record: not record.name.startswith("bm25s") or record.levelno >= logging.WARNING)
    hf_logging.set_verbosity_error()
    logging.getLogger("faiss").setLevel(logging.WARNING)  # (its loader logs each CPU feature it tries, as INFO)
