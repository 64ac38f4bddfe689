"""maxsim: train ColBERT late-interaction retrievers on your own data and put them to work.

The names below load on first use, so that ``import maxsim.index`` (say) loads the index and
what it stands on, never data preparation or training (see ``tests/test_layers.py``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from maxsim.data.errors import DataError
    from maxsim.data.prepare import prepare_training_data
    from maxsim.errors import MaxsimError
    from maxsim.model import ColBERT, ColBERTSettings, ModelLoadError, default_base_model
    from maxsim.ranking import Hit, Ranking
    from maxsim.retriever import Retriever
    from maxsim.scoring import maxsim
    from maxsim.training import TrainConfig, Trainer

#: public name -> the module that defines it
_EXPORTS = {
    "ColBERT": "maxsim.model",
    "ColBERTSettings": "maxsim.model",
    "DataError": "maxsim.data.errors",
    "Hit": "maxsim.ranking",
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
    "MaxsimError",
    "ModelLoadError",
    "Ranking",
    "Retriever",
    "TrainConfig",
    "Trainer",
    "default_base_model",
    "maxsim",
    "prepare_training_data",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'maxsim' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
