"""The search configuration a model carries: ``search.json`` in its folder says whether its
searches should fuse MaxSim's ranking with BM25's, and how, with the dev figures that chose it.

``maxsim train`` writes it into ``best/`` (chosen on the run's dev set) and ``maxsim
tune-search`` into any model folder (:mod:`maxsim.search_tuning`). Everything that searches
with the model reads it: ``Retriever.search``, ``maxsim search``, ``serve``, ``eval --index``
and ``RAGPretrainedModel``. What a caller asks for explicitly (``hybrid=False`` or
``--no-hybrid`` for MaxSim alone, ``hybrid=...`` or ``--hybrid``, ``--fusion ...``) wins over
it; :func:`resolve` says which was used and where it came from, for the log.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from maxsim.errors import MaxsimError, validation_message
from maxsim.files import atomic_write_text
from maxsim.fusion import Hybrid, hybrid_settings

logger = logging.getLogger(__name__)

#: the file in a model folder that holds its search configuration
SEARCH_FILE = "search.json"


class SearchChoice(BaseModel):
    """What ``search.json`` holds: ``search`` is ``maxsim`` (the model alone) or ``hybrid`` (fused
    with BM25 as ``hybrid`` says); ``chosen_on``, ``dev`` and ``test`` say on what queries, with
    which figures and by which test the choice was made."""

    model_config = ConfigDict(extra="allow", frozen=True)

    search: Literal["maxsim", "hybrid"]
    hybrid: Hybrid | None = None
    chosen_on: dict = {}
    dev: dict = {}
    test: dict = {}

    def settings(self) -> Hybrid | None:
        """The hybrid settings to search with (None: MaxSim alone)."""
        return self.hybrid if self.search == "hybrid" else None

    def summary(self) -> str:
        """The configuration in a few words: ``MaxSim alone`` or ``hybrid: weighted fusion, weight 0.3``."""
        return describe(self.settings())


def describe(settings: Hybrid | None) -> str:
    """Hybrid settings in a few words (None: MaxSim alone).

    >>> describe(None), describe(Hybrid(fusion="rrf"))
    ('MaxSim alone', 'hybrid: rrf fusion with BM25 (rrf_k 60, depth 100)')
    """
    if settings is None:
        return "MaxSim alone"
    detail = f"weight {settings.weight:g}" if settings.fusion == "weighted" else f"rrf_k {settings.rrf_k}"
    return f"hybrid: {settings.fusion} fusion with BM25 ({detail}, depth {settings.depth})"


def read_choice(folder: str | Path | None) -> SearchChoice | None:
    """The choice in ``folder/search.json`` (None: no folder, or no such file). A file that cannot
    be read is logged as a warning and ignored, so the model still searches (with MaxSim alone)."""
    if folder is None or not Path(folder).is_dir():
        return None
    path = Path(folder) / SEARCH_FILE
    if not path.is_file():
        return None
    try:
        return SearchChoice.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as err:
        reason = validation_message(err) if isinstance(err, ValidationError) else str(err)
        logger.warning("%s cannot be read (%s): searching with MaxSim alone unless asked otherwise. Fix: run "
                       "maxsim tune-search --model %s again, or delete the file", path, reason, folder)
        return None


def write_choice(folder: str | Path, choice: SearchChoice) -> Path:
    """Write ``choice`` as ``folder/search.json`` (atomically); returns its path."""
    path = Path(folder) / SEARCH_FILE
    atomic_write_text(path, json.dumps(choice.model_dump(mode="json"), indent=2) + "\n")
    return path


@dataclass(frozen=True)
class SearchConfig:
    """The configuration a search uses (``hybrid`` None: MaxSim alone) and where it came from."""

    hybrid: Hybrid | None
    source: str

    def line(self) -> str:
        """For the log: ``search configuration: ... (source)``."""
        return f"search configuration: {describe(self.hybrid)} ({self.source})"


def resolve(requested, choice: SearchChoice | None, where: str | Path | None = None) -> SearchConfig:
    """The configuration a search uses: what the caller asked for (``requested``: what
    :func:`~maxsim.fusion.hybrid_settings` takes; False for MaxSim alone; True for the model's
    fusion, else the default one), else, when ``requested`` is None, the model's ``choice``
    (read from ``where``), else MaxSim alone.

    >>> resolve(None, SearchChoice(search="hybrid", hybrid=Hybrid(weight=0.3)), "run/best").source
    'chosen on dev, run/best/search.json'
    >>> resolve(False, SearchChoice(search="hybrid", hybrid=Hybrid()), "m").source
    "as asked, instead of the model's own choice (hybrid: weighted fusion with BM25 (weight 0.7, depth 100))"
    """
    if requested is None:
        if choice is None:
            return SearchConfig(None, "the default: the model has no search.json")
        return SearchConfig(choice.settings(), f"chosen on dev, {Path(where or '.') / SEARCH_FILE}")
    if requested is True and choice is not None and choice.settings() is not None:
        return SearchConfig(choice.settings(), f"hybrid as asked, with the fusion chosen on dev, "
                                               f"{Path(where or '.') / SEARCH_FILE}")
    settings = hybrid_settings(requested)
    if choice is not None and choice.settings() != settings:
        return SearchConfig(settings, f"as asked, instead of the model's own choice ({choice.summary()})")
    return SearchConfig(settings, "as asked")


def effective(requested, choice: SearchChoice | None, where: str | Path | None, has_bm25: bool) -> SearchConfig:
    """:func:`resolve` for a model's ``choice`` (read from ``where``) and an index that has a BM25
    side or not: the model's choice of hybrid search over an index without one falls back to
    MaxSim alone, and says so (what is asked for explicitly is refused by the index instead)."""
    config = resolve(requested, choice, where)
    if requested is None and config.hybrid is not None and not has_bm25:
        return SearchConfig(None, f"the model's search.json chose {describe(config.hybrid)}, which needs a BM25 "
                                  "side this index lacks; add one with maxsim index add-bm25")
    return config


class ModelSearch:
    """A model folder's ``search.json`` as the searches of one retriever use it: read once (the
    log says what it chose), then :meth:`config` for each search, saying once when an index
    without a BM25 side makes a hybrid choice fall back to MaxSim alone."""

    def __init__(self, model_folder: str | Path | None) -> None:
        self.folder = model_folder
        self.choice = read_choice(model_folder)
        self._fallback_said = False
        if self.choice is not None:
            logger.info("%s; hybrid=False (--no-hybrid) searches with MaxSim alone",
                        resolve(None, self.choice, model_folder).line())

    def config(self, requested, backend=None) -> SearchConfig:
        """The configuration a search asking for ``requested`` uses over ``backend`` (one with a
        BM25 side or not: :meth:`require_bm25` says)."""
        config = effective(requested, self.choice, self.folder, has_bm25(backend))  # (read once, not per search)
        if requested is None and self.choice is not None and self.choice.settings() is not None and \
                config.hybrid is None and not self._fallback_said:
            self._fallback_said = True
            logger.warning("searching with MaxSim alone: %s", config.source)
        return config

    def warn_without_bm25(self) -> None:
        """Say, at a build without a BM25 side, that the model's hybrid choice will not be followed."""
        if self.choice is not None and self.choice.settings() is not None:
            logger.warning("the model's search.json chose %s on dev, which needs the index's BM25 side; this index "
                           "gets none (--no-bm25), so its searches use MaxSim alone until one is added (maxsim index "
                           "add-bm25)", self.choice.summary())


def has_bm25(backend) -> bool:
    """Whether ``backend`` (None: none) can search BM25 (its ``require_bm25`` does not refuse)."""
    if backend is None:
        return False
    try:
        backend.require_bm25()
    except MaxsimError:
        return False
    return True
