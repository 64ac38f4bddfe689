"""How long a run trains: the learning-rate schedule, a wall-clock budget (``--max-time``) that
sets the schedule from the first steps' pace, and early stopping on the dev metric
(``--early-stopping-patience``).

- The schedule is linear warmup then linear decay to 0 at the run's last step, as Hugging Face's
  ``get_linear_schedule_with_warmup``; :class:`LinearSchedule` holds its two lengths as plain
  values, so that a budget can set them once the pace is known and a checkpoint restores them.
- With a budget, the run's length is the steps that fit: after :data:`PACE_STEPS` steps (the
  first, which warms caches, not counted) the remaining time, less a dev evaluation's cost every
  ``eval_every`` steps and the final one, divided by a step's time. The run also stops when the
  budget is spent, whatever the plan said. The time of earlier attempts of a resumed run counts.
- Early stopping follows Hugging Face's ``EarlyStoppingCallback``: the run stops after
  ``patience`` dev evaluations in a row that fail to beat the best by more than ``threshold``.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass

from maxsim.data.batches import global_batches
from maxsim.durations import describe
from maxsim.errors import SettingsError
from maxsim.training import checkpoints, distributed
from maxsim.training.config import TrainConfig

logger = logging.getLogger(__name__)

#: steps timed (after the first) before a budget sets the run's length
PACE_STEPS = 5

class LinearSchedule:
    """The learning-rate factor at a step: ``step / warmup`` during warmup, then falling linearly
    to 0 at ``total`` (the same values as Hugging Face's ``get_linear_schedule_with_warmup``).
    A callable object, not a function, so that ``LambdaLR.state_dict`` saves ``warmup`` and
    ``total`` and a resumed run gets the lengths its schedule was set to."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return float(step) / float(max(1, self.warmup))
        return max(0.0, float(self.total - step) / float(max(1, self.total - self.warmup)))


def warmup_for(total: int, warmup_steps: int | str) -> int:
    """Warmup steps of a run of ``total`` steps: ``"auto"`` is 10% of them."""
    return round(0.1 * total) if warmup_steps == "auto" else int(warmup_steps)


@dataclass
class Budget:
    """A wall-clock budget of ``max_time`` seconds (None: none), of which earlier attempts of the
    run spent ``spent_before``; this attempt's clock starts when the object is made."""

    max_time: float | None
    spent_before: float = 0.0
    started: float | None = None

    #: the clock (seconds); a test may replace it
    clock = staticmethod(time.monotonic)

    def __post_init__(self) -> None:
        if self.started is None:
            self.started = self.clock()

    def spent(self) -> float:
        """Seconds of the budget spent so far, earlier attempts included."""
        return self.spent_before + self.clock() - self.started

    def over(self) -> bool:
        return self.max_time is not None and self.spent() >= self.max_time


def steps_that_fit(budget: Budget, done: int, step_s: float, eval_s: float, eval_every: int | None,
                   cap: int) -> int:
    """The run's length, in optimizer steps, that a budget allows: ``done`` steps so far, then as
    many steps of ``step_s`` seconds as the time left holds, after the final dev evaluation
    (``eval_s`` seconds; 0 without a dev set) and one every ``eval_every`` steps; at least
    ``done + 1`` and at most ``cap``.

    >>> steps_that_fit(Budget(100.0, spent_before=20.0, started=time.monotonic()), 5, 1.0, 10.0, 10, 10_000)
    39
    """
    left = budget.max_time - budget.spent() - eval_s
    per_step = step_s + (eval_s / eval_every if eval_every else 0.0)
    return max(done + 1, min(cap, done + int(left / max(per_step, 1e-9))))


def improved(value: float, best: float | None, threshold: float) -> bool:
    """Whether a dev value beats the best so far by more than ``threshold`` (for early stopping;
    the first evaluation always does)."""
    return best is None or value > best + threshold


@dataclass(frozen=True)
class Schedule:
    """How long a run is: optimizer steps per epoch, in all, the epochs that takes, and warmup;
    ``known`` is false while a time budget has yet to set the length (``total_steps`` is then
    the most it may be)."""

    steps_per_epoch: int
    total_steps: int
    epochs: int
    warmup: int
    known: bool = True

    @classmethod
    def of_run(cls, cfg: TrainConfig, n_examples: int, world_size: int) -> Schedule:
        """``max_steps``, when given, is the number of steps, as in Hugging Face's Trainer: the
        data is repeated (fresh shuffles) as often as needed, and it overrides ``epochs``.
        Otherwise the run is ``epochs`` passes. Warmup ``auto`` is 10% of the steps. With
        ``max_time``, the steps that fit the budget, at most ``max_steps`` (``epochs`` does not
        cap it), set once the first steps' pace is known (:func:`fit_to_budget`)."""
        steps_per_epoch = len(global_batches(range(n_examples), cfg.batch_size, world_size))
        if cfg.max_time is not None:
            total = cfg.max_steps or UNBOUNDED_STEPS
            return cls(steps_per_epoch, total, math.ceil(total / steps_per_epoch), warmup_for(total, cfg.warmup_steps),
                       known=False)
        if cfg.max_steps is None:
            total, epochs = cfg.epochs * steps_per_epoch, cfg.epochs
        else:
            total, epochs = cfg.max_steps, math.ceil(cfg.max_steps / steps_per_epoch)
            logger.info("max_steps %d at %d steps per epoch: %d epoch%s%s", cfg.max_steps, steps_per_epoch, epochs,
                        "" if epochs == 1 else "s", f" (max_steps overrides epochs={cfg.epochs})" if
                        cfg.epochs not in (1, epochs) else "")
        return cls(steps_per_epoch, total, epochs, warmup_for(total, cfg.warmup_steps))


#: the most steps a run with a time budget and no --max-steps may plan
UNBOUNDED_STEPS = 10**9


def fit_to_budget(ctx: distributed.Context, cfg: TrainConfig, budget: Budget, position: checkpoints.Position,
                  schedule: LinearSchedule, step_times: list[float], cap: int, progress) -> int | None:
    """Set the run's length to the steps the time budget holds: roughly after the first step of
    this attempt (from its time), then for good after :data:`PACE_STEPS` more (from their mean),
    which is logged and kept in ``position.planned_steps``. Returns the length, or None between
    those steps. The schedule's warmup and decay follow the length."""
    done = len(step_times)
    if done not in (1, 1 + PACE_STEPS):
        return None
    pace = step_times[0] if done == 1 else statistics.fmean(step_times[1:])
    evals = cfg.eval_every if position.eval_s else None
    total = distributed.broadcast_object(ctx, steps_that_fit(budget, position.step, pace, position.eval_s, evals,
                                                             cap))
    schedule.total, schedule.warmup = total, warmup_for(total, cfg.warmup_steps)
    progress.total = total
    if done == 1 + PACE_STEPS or total <= position.step + PACE_STEPS:
        position.planned_steps = total
        reserve = f", reserving {position.eval_s:.0f} s for each dev evaluation" if position.eval_s else ""
        logger.info("--max-time %s: %d steps at %.2f s a step fit in the %s left%s; the schedule is set for %d steps "
                    "(warmup %d)%s", describe(cfg.max_time), done, pace, describe(cfg.max_time - budget.spent()),
                    reserve, total, schedule.warmup, " (the --max-steps cap)" if total == cap else "")
    return total


def out_of_time(ctx: distributed.Context, budget: Budget, position: checkpoints.Position) -> bool:
    """Whether the time budget is spent (rank 0 decides for all); marks the run as stopped."""
    if budget.max_time is None or not distributed.broadcast_object(ctx, budget.over()):
        return False
    position.stopped = "time budget"
    logger.info("the time budget (%s) is spent at step %d: ending the run", describe(budget.max_time), position.step)
    return True


def check_stopping(cfg: TrainConfig, dev) -> None:
    """Refuse early stopping that could never stop (no dev set, no evaluation during the run), and
    say that ``epochs`` does not cap a run with a time budget."""
    if cfg.early_stopping_patience is not None and dev is None:
        raise SettingsError("--early-stopping-patience stops on the dev metric, and the run has no dev set. Fix: "
                            "give --dev-fraction or --dev-data (or prepare a DATA/dev), or leave out "
                            "--early-stopping-patience")
    if cfg.early_stopping_patience is not None and cfg.eval_every is None:
        raise SettingsError("--early-stopping-patience counts dev evaluations during the run, and without "
                            "--eval-every there is only the final one. Fix: give --eval-every N")
    if cfg.max_time is not None and cfg.max_steps is None and cfg.epochs != 1:
        logger.warning("--epochs %d does not cap a run with --max-time (it trains as long as the budget allows); "
                       "give --max-steps to cap it", cfg.epochs)
