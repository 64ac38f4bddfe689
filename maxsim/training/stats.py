"""What one optimizer step measured: sums over its queries, turned into a ``metrics.jsonl`` row."""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

import torch

from maxsim.training import distributed
from maxsim.training.report import finite


@dataclass
class StepStats:
    """Sums over the queries of a step (all micro-batches; all ranks after :meth:`to_tensor` /
    :meth:`from_tensor` around an all-reduce). Scores are MaxSim sums; ``accuracy`` counts the
    queries whose positive outscored every negative; ``tokens`` counts the non-padding tokens
    encoded (queries and documents)."""

    loss: float = 0.0
    positive_term: float = 0.0
    logsumexp_term: float = 0.0
    positive_score: float = 0.0
    negative_score: float = 0.0
    accuracy: float = 0.0
    tokens: float = 0.0
    distillation: float = 0.0

    def __iadd__(self, other: StepStats) -> StepStats:
        """
        >>> total = StepStats(loss=1.0, tokens=10)
        >>> total += StepStats(loss=0.5, tokens=6)
        >>> total.loss, total.tokens
        (1.5, 16)
        """
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def to_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(8,) float64, in field order (for an all-reduce)."""
        return torch.tensor(astuple(self), dtype=torch.float64, device=device)

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> StepStats:
        return cls(*values.cpu().tolist())

    def summed(self, ctx: distributed.Context) -> StepStats:
        """The sums over every rank (itself in one process)."""
        if not ctx.distributed:
            return self
        return StepStats.from_tensor(distributed.all_sum(ctx, self.to_tensor(ctx.device)))

    def row(self, step: int, epoch: float, count: int, lr: float, grad_norm: float, elapsed: float) -> dict:
        """One metrics.jsonl row: the means over ``count`` queries, and rates over ``elapsed`` seconds.

        >>> row = StepStats(loss=2.0, accuracy=1.0, tokens=300).row(5, 0.5, 4, 1e-5, 1.5, 2.0)
        >>> row["loss"], row["accuracy"], row["triplets_per_s"], row["tokens_per_s"]
        (0.5, 0.25, 2.0, 150.0)
        """
        return {
            "step": step, "epoch": epoch,
            "loss": self.loss / count,
            "loss_positive_term": self.positive_term / count,
            "loss_logsumexp_term": self.logsumexp_term / count,
            "positive_score": self.positive_score / count,
            "negative_score": self.negative_score / count,
            "accuracy": self.accuracy / count,
            "loss_distillation": self.distillation / count,
            "lr": lr, "grad_norm": finite(grad_norm),
            "triplets_per_s": count / elapsed, "tokens_per_s": self.tokens / elapsed,
        }
