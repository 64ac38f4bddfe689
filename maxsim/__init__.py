"""maxsim: train ColBERT late-interaction retrievers on your own data and put them to work."""

from maxsim.data.errors import DataError
from maxsim.data.prepare import prepare_training_data
from maxsim.model import ColBERT, ColBERTSettings, ModelLoadError, default_base_model
from maxsim.retriever import Hit, Retriever
from maxsim.scoring import maxsim
from maxsim.training import TrainConfig, Trainer

__all__ = [
    "ColBERT",
    "ColBERTSettings",
    "DataError",
    "Hit",
    "ModelLoadError",
    "Retriever",
    "TrainConfig",
    "Trainer",
    "default_base_model",
    "maxsim",
    "prepare_training_data",
]
__version__ = "0.1.0"
