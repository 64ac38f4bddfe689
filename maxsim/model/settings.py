"""What a ColBERT model is, besides its weights: :class:`ColBERTSettings`, saved with every model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

SETTINGS_FILE = "maxsim_config.json"


class ColBERTSettings(BaseModel):
    """Every ColBERT setting; saved as ``maxsim_config.json`` beside the weights.

    Lengths are in tokens, markers included; ``dim`` is the size of each token vector.
    """

    model_config = ConfigDict(extra="forbid")

    dim: int = 128
    query_maxlen: int = 32
    doc_maxlen: int = 256
    attend_to_expansion_tokens: bool = False
    mask_punctuation: bool = True
    query_marker: str = "[unused0]"
    document_marker: str = "[unused1]"
    base_model: str = ""
