"""maxsim: train ColBERT late-interaction retrievers on your own data and put them to work.

The names below load on first use, so that ``import maxsim.index`` (say) loads the index and
what it stands on, never data preparation or training (see ``tests/test_layers.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from maxsim.lazy import lazy_exports

if TYPE_CHECKING:
    from maxsim.data.errors import DataError
    from maxsim.data.prepare import prepare_training_data
    from maxsim.errors import LockedError, MaxsimError, OutputExistsError, SettingsError, UnknownIdError
    from maxsim.index.manifest import IndexLoadError
    from maxsim.model import ColBERT, ColBERTSettings, ModelLoadError, default_base_model
    from maxsim.ranking import Hit, Ranking
    from maxsim.retriever import Retriever
    from maxsim.scoring import maxsim
    from maxsim.training import TrainConfig, Trainer

def _version() -> str:
    """The version, declared once in pyproject.toml (as installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("maxsim")
    except PackageNotFoundError:  # (run from a folder that was never installed)
        return "unknown"


__version__ = _version()

#: public name -> the module that defines it
_EXPORTS = {
    "ColBERT": "maxsim.model",
    "ColBERTSettings": "maxsim.model",
    "DataError": "maxsim.data.errors",
    "Hit": "maxsim.ranking",
    "IndexLoadError": "maxsim.index.manifest",
    "LockedError": "maxsim.errors",
    "OutputExistsError": "maxsim.errors",
    "SettingsError": "maxsim.errors",
    "UnknownIdError": "maxsim.errors",
    "MaxsimError": "maxsim.errors",
    "ModelLoadError": "maxsim.model",
    "Ranking": "maxsim.ranking",
    "Retriever": "maxsim.retriever",
    "TrainConfig": "maxsim.training",
    "Trainer": "maxsim.training",
    "default_base_model": "maxsim.model",
    "maxsim": "maxsim.scoring",
    "prepare_training_data": "maxsim.data.prepare",
}
__all__ = [
    "ColBERT",
    "ColBERTSettings",
    "DataError",
    "Hit",
    "IndexLoadError",
    "LockedError",
    "MaxsimError",
    "ModelLoadError",
    "OutputExistsError",
    "Ranking",
    "Retriever",
    "SettingsError",
    "TrainConfig",
    "Trainer",
    "UnknownIdError",
    "default_base_model",
    "maxsim",
    "prepare_training_data",
]


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
