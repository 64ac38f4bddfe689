"""What a ColBERT model is, besides its weights: :class:`ColBERTSettings`, saved with every model."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SETTINGS_FILE = "maxsim_config.json"


class ColBERTSettings(BaseModel):
    """Every ColBERT setting; saved as ``maxsim_config.json`` beside the weights.

    Lengths are in tokens, markers included; ``dim`` is the size of each token vector. The last
    four say whose conventions the model was trained with (maxsim's by default; a checkpoint
    read from colbert-ai or PyLate keeps its library's, so that it encodes as it did there).
    """

    model_config = ConfigDict(extra="forbid")

    dim: int = Field(128, ge=1, le=1 << 16)
    #: (3 at least: the start token, the marker and the end token)
    query_maxlen: int = Field(32, ge=3, le=1 << 20)
    doc_maxlen: int = Field(256, ge=3, le=1 << 20)
    attend_to_expansion_tokens: bool = False
    mask_punctuation: bool = True
    #: marker token strings inserted before the text; "" for none (PyLate allows it)
    query_marker: str = "[unused0]"
    document_marker: str = "[unused1]"
    base_model: str = ""
    #: where the marker goes: after the first token when it is [CLS]/<s> (maxsim), or at
    #: index 1 whatever the first token is (colbert-ai and PyLate)
    marker_position: Literal["after_start_token", "index_1"] = "after_start_token"
    #: which document tokens are not scored (with mask_punctuation): maxsim's (the ids of each
    #: punctuation symbol, alone or after a space, that are one token), colbert-ai's (the first
    #: id of each symbol) or PyLate's (the ids of ``skiplist_words`` as vocabulary entries)
    skiplist: Literal["maxsim", "colbert-ai", "pylate"] = "maxsim"
    skiplist_words: list[str] | None = None
    #: pad queries with [MASK] to query_maxlen and score every position (off: PyLate's
    #: ``do_query_expansion: false``, only the query's own tokens)
    do_query_expansion: bool = True

    def identity_json(self) -> str:
        """The settings as :meth:`ColBERT.digest` hashes them: the fields added for other
        libraries' conventions count only when they differ from maxsim's, so a model's identity
        (recorded in its indexes) is the same as before they existed."""
        later = {"marker_position", "skiplist", "skiplist_words", "do_query_expansion"}
        defaults = {name: field.default for name, field in type(self).model_fields.items()}
        return self.model_dump_json(exclude={n for n in later if getattr(self, n) == defaults[n]})
