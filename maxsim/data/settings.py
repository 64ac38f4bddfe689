"""Every setting of ``maxsim prepare`` in one typed object, saved in each ``manifest.json``.

The command line's options, defaults and help are made from these fields (``maxsim.cli``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from maxsim.errors import SettingsError, validation_message
from maxsim.inputs import lowercase_choices
from maxsim.lexical import BM25_LANGUAGES, DEFAULT_LANGUAGE

Kind = Literal["pairs", "labelled", "triplets", "scored"]
KINDS = ("pairs", "labelled", "triplets", "scored")


class PrepareSettings(BaseModel):
    """The settings of a preparation run (saved in the manifest); checked when made."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _choices_in_any_case(cls, values):
        return lowercase_choices(cls, values)

    kind: Kind | None = Field(
        None, description="Force the input kind: pairs, labelled, triplets or scored (PyLate's distillation rows: "
        "query, documents, scores) [default: read from the columns].")
    split: str = Field("train", description="qrels split of BEIR folders.")
    mine: Literal["bm25", "dense", "none"] = Field(
        "bm25", description="Negative mining: bm25, dense (needs --miner-model) or none (random).")
    miner_model: str | None = Field(None, description="maxsim checkpoint or base model folder for --mine dense.")
    dense_search: Literal["auto", "exact", "index"] = Field(
        "auto", description="How --mine dense ranks: exact (MaxSim with every document), index (through a "
        "temporary compressed index, for large corpora) or auto (index above 50,000 documents).")
    negatives: int = Field(10, ge=0, description="Negatives mined per query.")
    min_rank: int = Field(
        10, ge=1, description="Best (1-based) rank a mined negative may have; skips likely false negatives at the top.")
    max_rank: int = Field(100, ge=1, description="Worst rank a mined negative may have.")
    false_negative_margin: float | None = Field(
        None, gt=0, description="Drop candidates scoring above this times the query's lowest positive score.")
    max_lines_per_query: int | None = Field(
        None, gt=0, description="Write at most this many triples lines (training examples) per query: a query with "
        "more positives spreads them over that many lines, each line training on one of its share every epoch, so "
        "that a query with 1,000 judged positives weighs as much as N queries rather than 1,000 [default: one line "
        "per positive, as colbert-ai].")
    dev_fraction: float | None = Field(
        None, ge=0, lt=1, description="Hold out this share of queries as dev/ (BEIR style), used by maxsim train "
        "for validation.")
    seed: int = Field(42, description="Seed for sampling negatives and the dev split.")
    positive_labels: tuple[str | int | float, ...] = Field(
        ("1",), min_length=1, description="Label value that marks a positive in labelled pairs. Repeatable.")
    negative_labels: tuple[str | int | float, ...] = Field(
        ("0",), min_length=1, description="Label value that marks a negative in labelled pairs. Repeatable.")
    skip_invalid: bool = Field(False, description="Skip bad rows (counted in the manifest) instead of stopping.")
    export: tuple[Literal["colbert"], ...] = Field(
        (), description="Also write other formats: colbert (colbert-ai / RAGatouille files in colbert/).")
    batch_size: int = Field(64, gt=0, description="Encoding batch size of --mine dense.")
    workers: int | None = Field(
        None, gt=0, description="Threads that rank --mine bm25's queries [default: every CPU this "
        "process may use].")
    bm25_language: str = Field(DEFAULT_LANGUAGE, description="Language of --mine bm25's stop words and stemmer "
                               "(ISO 639-1: en, fr, de, es, ...).")

    @model_validator(mode="after")
    def _consistent(self) -> PrepareSettings:
        if self.mine == "dense" and not self.miner_model:
            raise ValueError("--mine dense needs --miner-model DIR (a maxsim checkpoint or a base model folder)")
        if self.mine == "bm25" and self.bm25_language not in BM25_LANGUAGES:
            raise ValueError(f"--bm25-language {self.bm25_language!r} has no stemmer: use one of "
                             f"{', '.join(sorted(BM25_LANGUAGES))}, or --mine dense with a model for that language")
        if self.max_rank < self.min_rank:
            raise ValueError(f"rank window [{self.min_rank}, {self.max_rank}] is empty: need 1 <= min-rank <= "
                             "max-rank")
        return self

    @classmethod
    def checked(cls, **options) -> PrepareSettings:
        """The settings, or a :class:`~maxsim.errors.SettingsError` that names each bad one."""
        try:
            return cls(**options)
        except ValidationError as err:
            raise SettingsError(f"invalid prepare settings: {validation_message(err)}") from None

    def manifest_entry(self) -> dict:
        """The settings as the manifest records them (JSON values, field order)."""
        return self.model_dump(mode="json")
