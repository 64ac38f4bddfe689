"""The ColBERT model, one concept per module.

- :mod:`~maxsim.model.settings`: :class:`ColBERTSettings`, what a model is besides its weights;
- :mod:`~maxsim.model.tokenization`: markers, lengths, padding, document chunks;
- :mod:`~maxsim.model.checkpoint`: maxsim's model folder and the encoders a model starts from;
- :mod:`~maxsim.model.inference`: the frozen, faster forward used to encode without training;
- :mod:`~maxsim.model.colbert`: :class:`ColBERT`, the module that ties them together.
"""

from maxsim.model.checkpoint import PROJECTION_FILE, default_base_model, pick_device
from maxsim.model.colbert import ColBERT
from maxsim.model.inference import InferenceForward, cpu_computes_bf16
from maxsim.model.settings import SETTINGS_FILE, ColBERTSettings
from maxsim.model.tokenization import ColBERTTokenizer, ModelLoadError, TokenBatch

__all__ = [
    "PROJECTION_FILE",
    "SETTINGS_FILE",
    "ColBERT",
    "ColBERTSettings",
    "ColBERTTokenizer",
    "InferenceForward",
    "ModelLoadError",
    "TokenBatch",
    "cpu_computes_bf16",
    "default_base_model",
    "pick_device",
]
