"""Every training setting in one typed object, saved as ``config.yaml`` with each run."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class TrainConfig(BaseModel):
    """The settings of a training run. Defaults follow RAGatouille's ``train()``.

    ``maxsim train --config run/config.yaml`` repeats a run; flags given beside it win.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # where
    data: Path = Field(description="training-data folder (queries.jsonl, corpus.jsonl, triples.jsonl)")
    output: Path = Field(description="output folder for checkpoints, metrics and plots")
    base_model: str | None = Field(
        None, description="model folder to start from; default: the bundled all-MiniLM-L6-v2"
    )
    # model
    dim: int = Field(128, gt=0, description="size of each token vector")
    query_maxlen: int = Field(32, ge=3, description="query length in tokens, padded with [MASK]")
    doc_maxlen: int = Field(256, ge=3, description="documents are truncated at this many tokens")
    attend_to_expansion_tokens: bool = Field(
        False, description="let the encoder attend to the query's [MASK] padding"
    )
    # objective
    nway: int = Field(2, ge=1, description="documents per query: one positive and nway-1 negatives")
    use_ib_negatives: bool = Field(True, description="other queries' documents are negatives too")
    temperature: float = Field(1.0, gt=0, description="scores are divided by this in the loss")
    # optimisation
    batch_size: int = Field(32, gt=0, description="global batch: queries per optimizer step")
    accumulation_steps: int = Field(1, gt=0, description="micro-batches per optimizer step")
    learning_rate: float = Field(5e-6, gt=0)
    weight_decay: float = Field(0.01, ge=0, description="not applied to biases and LayerNorm")
    warmup_steps: int | Literal["auto"] = Field(
        "auto", description="linear warmup steps; auto = 10% of all optimizer steps"
    )
    max_grad_norm: float = Field(2.0, gt=0, description="gradient-norm clipping")
    epochs: int = Field(1, gt=0)
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps")
    seed: int = 42
    # checkpoints and validation
    save_every: int | None = Field(None, gt=0, description="checkpoint every N steps (and at the end)")
    keep_checkpoints: int = Field(3, gt=0, description="newest checkpoints kept (best/ is extra)")
    eval_every: int | None = Field(None, gt=0, description="validate every N steps (and at the end)")
    dev_data: Path | None = Field(
        None, description="BEIR folder with the dev queries and qrels; default: DATA/dev when maxsim prepare wrote one"
    )
    dev_split: str = Field("dev", description="qrels split of dev_data")
    dev_fraction: float | None = Field(
        None, gt=0, lt=1, description="hold out this share of training queries for validation"
    )
    metric: Literal["ndcg@10", "mrr@10"] = Field("ndcg@10", description="chooses best/")
    eval_batch_size: int = Field(64, gt=0)
    # machine
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = Field(1, gt=0)
    progress_bar: bool = True

    @field_validator("warmup_steps", mode="before")
    @classmethod
    def _warmup(cls, value):
        if isinstance(value, str) and value != "auto":
            return int(value)
        return value

    @model_validator(mode="after")
    def _one_dev_source(self) -> TrainConfig:
        if self.dev_data is not None and self.dev_fraction is not None:
            raise ValueError("give dev_data or dev_fraction, not both")
        return self

    @model_validator(mode="after")
    def _some_negative(self) -> TrainConfig:
        if self.nway == 1 and (not self.use_ib_negatives or self.batch_size == 1):
            raise ValueError("nway=1 with no in-batch negatives (or a batch of 1) leaves each query no negative "
                             "to score against, so the loss is 0 and nothing is learned: use nway 2 or more, or "
                             "keep in-batch negatives with a batch of 2 or more")
        return self

    def resume_changes(self, saved: TrainConfig) -> tuple[list[str], list[str]]:
        """What differs from the settings a run was started with, as ``name: old -> new`` lines.

        Returns (allowed, refused): allowed changes (:data:`FREE_ON_RESUME`) decide what is logged,
        saved and checked, not what is trained; any other change would make the resumed run
        differ from the one it continues, so a resume refuses it. The output folder is not
        compared (a run may be moved).
        """
        allowed, refused = [], []
        for name in type(self).model_fields:
            old, new = getattr(saved, name), getattr(self, name)
            if name == "output" or old == new or (isinstance(old, Path) and Path(old).resolve() == Path(new).resolve()):
                continue
            (allowed if name in FREE_ON_RESUME else refused).append(f"{name}: {old} -> {new}")
        return allowed, refused

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> TrainConfig:
        """Read a config.yaml; keyword arguments that are not None replace its values."""
        values = yaml.safe_load(Path(path).read_text()) or {}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


#: settings a resumed run may change: they decide what is logged, saved and checked, not what is
#: trained (``device`` continues the same run, though not bit for bit)
FREE_ON_RESUME = frozenset({"save_every", "keep_checkpoints", "eval_every", "eval_batch_size", "log_every",
                            "progress_bar", "device"})
