"""Every training setting in one typed object, saved as ``config.yaml`` with each run."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from maxsim.inputs import lowercase_choices


class TrainConfig(BaseModel):
    """The settings of a training run. Defaults follow RAGatouille's ``train()``.

    ``maxsim train --config run/config.yaml`` repeats a run; flags given beside it win. The
    command line's options, defaults and help are made from these fields (``maxsim.cli``).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _choices_in_any_case(cls, values):
        return lowercase_choices(cls, values)

    # where
    data: Path = Field(description="Training-data folder: queries.jsonl, corpus.jsonl, triples.jsonl.")
    output: Path = Field(description="Output folder: checkpoints/, best/, metrics.jsonl, training.png, config.yaml.")
    base_model: str | None = Field(
        None, description="Model folder to start from [default: the bundled all-MiniLM-L6-v2].")
    # model: None keeps a checkpoint's own value (a new ColBERT gets the value in brackets)
    dim: int | None = Field(None, gt=0, description="Token vector size [default: a checkpoint's own; 128 for a new "
                            "ColBERT].")
    query_maxlen: int | None = Field(None, ge=3, description="Query length in tokens, padded with [MASK] [default: a "
                                     "checkpoint's own; 32 for a new ColBERT].")
    doc_maxlen: int | None = Field(None, ge=3, description="Document length cap in tokens [default: a checkpoint's "
                                   "own; 256 for a new ColBERT].")
    attend_to_expansion_tokens: bool | None = Field(
        None, description="Let the encoder attend to the query's [MASK] padding [default: a checkpoint's own; off "
        "for a new ColBERT].")
    # objective
    nway: int = Field(2, ge=1, description="Documents per query: 1 positive + nway-1 negatives.")
    use_ib_negatives: bool = Field(True, description="Use other queries' documents as negatives.")
    temperature: float = Field(1.0, gt=0, description="Scores are divided by this in the loss.")
    loss: Literal["contrastive", "distillation", "combined"] | None = Field(
        None, description="contrastive, distillation (KL to the teacher scores in triples.jsonl) or combined "
        "(contrastive + --distillation-weight x distillation) [default: distillation when the data has scores, "
        "else contrastive].")
    teacher_temperature: float = Field(
        1.0, gt=0, description="Teacher scores are divided by this before their softmax (colbert-ai's "
        "distillation_alpha is 1 / this).")
    distillation_weight: float = Field(1.0, ge=0, description="Weight of the distillation term in --loss combined.")
    grad_cache_chunk: int | None = Field(
        None, gt=0, description="GradCache: encode each micro-batch this many sequences at a time and back-propagate "
        "chunk by chunk, so memory stops growing with the batch; the gradients are the same [default: off].")
    attention_dropout: float | None = Field(
        None, ge=0, lt=1, description="Dropout on the encoder's attention probabilities while training [default: the "
        "base model's own, 0.1 for MiniLM]. 0 lets a CPU run attention through its fused kernel: 2-4x the triplets "
        "a second on a CPU, with a lighter regularisation (compare on dev).")
    # optimisation
    batch_size: int = Field(32, gt=0, description="Global batch size (queries per step, over all processes).")
    accumulation_steps: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(5e-6, gt=0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay, not applied to biases and LayerNorm.")
    warmup_steps: int | Literal["auto"] = Field(
        "auto", description="Linear warmup steps, or 'auto' for 10% of all steps.")
    max_grad_norm: float = Field(2.0, gt=0, description="Gradient-norm clipping.")
    epochs: int = Field(1, gt=0, description="Passes over the training examples (--max-steps overrides it).")
    max_steps: int | None = Field(
        None, gt=0, description="Number of optimizer steps; the data repeats as needed, and it overrides --epochs.")
    max_time: float | str | None = Field(  # (str as given: seconds after validation)
        None, description="Wall-clock budget for the whole run: seconds, or 90m, 1h30m, HH:MM:SS. The schedule is "
        "set for the steps the first steps' pace allows (up to --max-steps when given; --epochs does not cap it), "
        "and the run stops when the budget is spent [default: none].")
    seed: int = Field(42, description="Seed for shuffling, sampling and initialisation.")
    # checkpoints and validation
    save_every: int | None = Field(None, gt=0, description="Checkpoint every N steps (always at the end).")
    keep_checkpoints: int = Field(3, gt=0, description="Newest checkpoints to keep; best/ is kept besides.")
    eval_every: int | None = Field(
        None, gt=0, description="Validate every N steps (always at the end, when there is a dev set).")
    dev_data: Path | None = Field(
        None, description="BEIR folder (or a BEIR dataset's name) whose --dev-split queries validate the run "
        "[default: DATA/dev when maxsim prepare wrote one].")
    dev_split: str = Field("dev", description="qrels split of --dev-data.")
    dev_fraction: float | None = Field(
        None, gt=0, lt=1, description="Hold out this share of training queries (chosen by --seed) for validation.")
    dev_max_documents: int | None = Field(
        None, gt=0, description="Validate on at most this many documents: every judged one, then the dev queries' "
        "BM25 best ones (hard distractors), as NanoBEIR cuts BEIR; faster, not comparable with full-corpus figures "
        "[default: the whole corpus].")
    early_stopping_patience: int | None = Field(
        None, gt=0, description="Stop after this many dev evaluations in a row fail to beat the best (as Hugging "
        "Face's EarlyStoppingCallback); needs a dev set [default: off].")
    early_stopping_threshold: float = Field(
        0.0, ge=0, description="An evaluation counts as better only when it beats the best by more than this.")
    metric: Literal["ndcg@10", "mrr@10"] = Field(
        "ndcg@10", description="Dev metric that picks best/: ndcg@10 or mrr@10.")
    eval_batch_size: int = Field(64, gt=0, description="Encoding batch size of the dev evaluation.")
    # machine
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto, cpu or cuda.")
    log_every: int = Field(1, gt=0, description="Write metrics.jsonl every N steps.")
    progress_bar: bool = Field(True, description="Show a progress bar (log lines when not on a terminal).")
    report_to: tuple[Literal["tensorboard", "wandb", "mlflow", "trackio"], ...] = Field(
        (), description="Also send every metrics row, the settings and the best dev metrics to a tracker: "
        "tensorboard, wandb, mlflow or trackio (repeatable, or comma-separated; none for none). Each needs its "
        "package (pip install 'maxsim[NAME]').")

    @field_validator("warmup_steps", mode="before")
    @classmethod
    def _warmup(cls, value):
        if isinstance(value, str) and value != "auto":
            return int(value)
        return value

    @field_validator("max_time", mode="before")
    @classmethod
    def _duration(cls, value):
        from maxsim.durations import parse_duration

        return None if value is None else parse_duration(value)

    @field_validator("report_to", mode="before")
    @classmethod
    def _trackers(cls, value):
        """As Hugging Face's ``report_to``: a name, a list, or comma-separated; "none" for none."""
        if value is None:
            return ()
        names = [value] if isinstance(value, str) else list(value)
        names = [n.strip() for name in names for n in str(name).split(",") if n.strip()]
        return tuple(dict.fromkeys(n for n in names if n != "none"))

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
                            "progress_bar", "device", "report_to"})

#: the trackers ``report_to`` may name (:mod:`maxsim.training.tracking`)
TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
