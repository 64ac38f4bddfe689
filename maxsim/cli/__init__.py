"""The ``maxsim`` command line: one module per group of commands, all on one typer app.

- :mod:`~maxsim.cli.data`: ``prepare``, ``score``;
- :mod:`~maxsim.cli.training`: ``train``;
- :mod:`~maxsim.cli.evaluate`: ``eval``;
- :mod:`~maxsim.cli.indexes`: ``index`` (build, compact, verify, add-bm25), ``add``, ``delete``, ``export-index``;
- :mod:`~maxsim.cli.searching`: ``search``;
- :mod:`~maxsim.cli.serving`: ``serve``;
- :mod:`~maxsim.cli.models`: ``export``, ``push``.

Options made from typed settings come from :mod:`~maxsim.cli.options`; what the commands share
(the app, errors as one line) from :mod:`~maxsim.cli.common`.
"""

from maxsim.cli import data, evaluate, indexes, models, searching, serving, training  # noqa: F401 - they register
from maxsim.cli.common import app
from maxsim.cli.training import TRAIN_FLAGS

__all__ = ["TRAIN_FLAGS", "app", "main"]


def main() -> None:
    app()
