"""The training loop, top to bottom: data, model, optimizer, schedule, step, validation, checkpoints.

Runs the same in one process (CPU or GPU), from a notebook (no child processes), and under
torchrun, where each rank trains on its own shard of every global batch and in-batch negatives
are gathered across ranks with their gradients.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import get_linear_schedule_with_warmup

from maxsim.background import prefetched
from maxsim.data.batches import (
    TokenCache,
    TrainBatch,
    build_batch,
    epoch_order,
    global_batches,
    step_batches,
)
from maxsim.data.errors import DataError
from maxsim.data.training_folder import TrainingData, data_digest
from maxsim.errors import SettingsError
from maxsim.losses import candidate_mask_for_batch, contrastive_loss, distillation_loss
from maxsim.model import ColBERT
from maxsim.progress import progress as progress_bar
from maxsim.scoring import maxsim
from maxsim.training import checkpoints, distributed, grad_cache
from maxsim.training.cards import run_training
from maxsim.training.config import TrainConfig
from maxsim.training.report import MetricsLog, plot_training
from maxsim.training.run_folder import open_output
from maxsim.training.stats import StepStats
from maxsim.training.tracking import Trackers
from maxsim.training.validation import dev_digest, dev_set, evaluate_start, validate, warn_if_worse_than_start

logger = logging.getLogger(__name__)



class Trainer:
    """Train a ColBERT model as ``config`` says; ``train()`` returns the checkpoint to use."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def train(self, resume: bool = False) -> Path:
        """Run training; with ``resume``, continue from the newest complete checkpoint.

        Returns ``OUTPUT/best`` when there is a dev set, else the last checkpoint.
        """
        context = distributed.setup(self.config.device)
        completed = False
        try:
            with contextlib.ExitStack() as held:
                result = self._train(context, resume, held)
            completed = True
            return result
        finally:
            distributed.teardown(context, completed)

    def _train(self, ctx: distributed.Context, resume: bool, held: contextlib.ExitStack) -> Path:
        cfg = self.config
        out = Path(cfg.output)

        # ---- data: everything is checked before a model is loaded ---------------------------
        data = TrainingData.load(cfg.data, cfg.nway)
        objective = choose_objective(cfg, data)
        data, dev = dev_set(cfg, data)
        check_world_size(cfg, data, ctx)
        digests = checkpoints.Digests(data_digest(cfg.data), dev_digest(cfg))
        resume_from, trackers = open_run(ctx, cfg, resume, digests, held)

        # ---- model, tokenised data -------------------------------------------------------------
        torch.manual_seed(cfg.seed)
        model = load_model(cfg, resume_from, ctx.device)
        cache = TokenCache(model, data)  # every text tokenised once, here
        positives_of = data.positives_of()
        dev_tokens = model.tokenize_documents(dev.corpus.texts) if dev and ctx.is_main else None

        # ---- optimizer and schedule -------------------------------------------------------------
        plan = Schedule.of_run(cfg, len(data.examples), ctx.world_size)
        total_steps, epochs = plan.total_steps, plan.epochs
        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(parameters, cfg)
        scheduler = get_linear_schedule_with_warmup(optimizer, plan.warmup, total_steps)
        metrics_log = MetricsLog(out / "metrics.jsonl", also=trackers.log)
        position = start_position(ctx, resume_from, optimizer, scheduler, digests, metrics_log)
        logger.info("%d examples, %d steps per epoch, %d steps, %d warmup, world size %d",
                    len(data.examples), plan.steps_per_epoch, total_steps, plan.warmup, ctx.world_size)
        if dev is not None and position.step == 0:  # the model before training: what best/ must beat
            position.start_value = evaluate_start(ctx, cfg, model, dev, dev_tokens, metrics_log)

        def save(pos: checkpoints.Position) -> None:
            if ctx.is_main:
                checkpoints.save_checkpoint(out, model, optimizer, scheduler, pos, cfg.keep_checkpoints, cfg.to_yaml(),
                                            run_training(cfg, pos.step))
                plot_training(metrics_log.rows(), out / "training.png", cfg.metric)
            distributed.barrier(ctx)

        # ---- the loop ----------------------------------------------------------------------------
        progress = progress_bar(total_steps, "training", "step", enabled=ctx.is_main and cfg.progress_bar,
                                initial=position.step)
        model.train()
        on_gpu, ahead = ctx.device.type == "cuda", builds_ahead(ctx)
        last_saved = None
        epoch, start_batch = position.epoch, position.batch
        while position.step < total_steps and epoch < epochs:
            batches = global_batches(epoch_order(len(data.examples), cfg.seed, epoch),
                                     cfg.batch_size, ctx.world_size)
            steps = range(start_batch, min(len(batches), start_batch + total_steps - position.step))
            build = functools.partial(build_batch, model, data, cache, positives_of, nway=cfg.nway, seed=cfg.seed,
                                      epoch=epoch)
            inputs_of_steps = step_batches(build, batches, steps, cfg.accumulation_steps, ctx.rank, ctx.world_size,
                                           pin=on_gpu)
            # on a GPU the host pads the next steps' batches while the GPU runs this one
            started = time.perf_counter()  # a step's time: getting its batches, forward, backward, update
            for batch_index, inputs in prefetched(inputs_of_steps) if ahead else inputs_of_steps:
                batch = batches[batch_index]
                optimizer.zero_grad(set_to_none=True)
                stats = StepStats()
                for tb, offset in inputs:
                    stats += forward_backward(model, tb, ctx, cfg, offset, len(batch), objective)
                grad_norm = apply_gradients(ctx, parameters, optimizer, scheduler, cfg.max_grad_norm)
                stats = stats.summed(ctx)
                elapsed = time.perf_counter() - started
                position.step += 1
                position.epoch, position.batch = epoch, batch_index + 1
                if position.batch == len(batches):
                    position.epoch, position.batch = epoch + 1, 0
                progress.update(1)

                row = {}
                if position.step % cfg.log_every == 0 or position.step == total_steps:
                    row = stats.row(position.step, epoch + (batch_index + 1) / len(batches), len(batch),
                                    scheduler.get_last_lr()[0], float(grad_norm), elapsed)
                    progress.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}",
                                         trip_s=f"{row['triplets_per_s']:.1f}")
                due_eval = dev is not None and (
                    position.step == total_steps
                    or (cfg.eval_every is not None and position.step % cfg.eval_every == 0))
                if due_eval:
                    scores = validate(ctx, cfg, model, dev, dev_tokens, position)
                    if scores:
                        row.setdefault("step", position.step)
                        row.update({f"dev_{k}": v for k, v in scores.items()})
                if row and ctx.is_main:
                    metrics_log.append(row)
                if (cfg.save_every is not None and position.step % cfg.save_every == 0) or (
                        position.step == total_steps):
                    save(position)
                    last_saved = position.step
                started = time.perf_counter()
            epoch, start_batch = epoch + 1, 0
        progress.close()

        # ---- what the run leaves ----------------------------------------------------------------
        if position.step not in (last_saved, 0) and not checkpoints.checkpoint_dir(out, position.step).is_dir():
            save(position)
        trackers.close(checkpoints.best_metrics(out) if dev is not None else {})  # (the best dev metrics as summary)
        return chosen_checkpoint(cfg, dev is not None, position)


def builds_ahead(ctx: distributed.Context) -> bool:
    """Whether a background thread pads the next steps' batches while this one runs: on a GPU,
    where the host would otherwise idle; not on a CPU, whose cores the step itself uses."""
    return ctx.device.type == "cuda"


def choose_objective(cfg: TrainConfig, data: TrainingData) -> str:
    """The loss the run trains with: ``cfg.loss``, or distillation when the data carries teacher
    scores and contrastive when it does not. Logged either way."""
    objective = cfg.loss or ("distillation" if data.has_scores else "contrastive")
    if objective != "contrastive" and not data.has_scores:
        raise DataError(Path(cfg.data) / "triples.jsonl", None, f"--loss {objective} needs teacher scores, and the "
                        'lines have no "scores"', "add scores (maxsim score writes them) or use --loss contrastive")
    how = "as asked" if cfg.loss else ("the data has teacher scores" if data.has_scores else "the default")
    logger.info("loss: %s (%s)%s", objective, how, "" if objective == "contrastive" else
                f", teacher temperature {cfg.teacher_temperature}, over each query's {cfg.nway} documents")
    return objective


def check_world_size(cfg: TrainConfig, data: TrainingData, ctx: distributed.Context) -> None:
    """Every rank needs an example of each batch, and each micro-batch one per rank."""
    if len(data.examples) < ctx.world_size:
        raise DataError(cfg.data / "triples.jsonl", None,
                        f"{len(data.examples)} examples cannot feed {ctx.world_size} processes",
                        "use fewer processes or more data")
    if cfg.batch_size < ctx.world_size * cfg.accumulation_steps:
        raise SettingsError(f"batch_size {cfg.batch_size} must be at least world size "
                         f"({ctx.world_size}) x accumulation_steps ({cfg.accumulation_steps})")


def start_position(ctx: distributed.Context, resume_from: Path | None, optimizer, scheduler,
                   digests: checkpoints.Digests, metrics_log: MetricsLog) -> checkpoints.Position:
    """Where the run starts: step 0, or the checkpoint's position with optimizer, schedule and RNG
    states restored. Metrics rows after it belong to an attempt being redone and are dropped."""
    position = checkpoints.Position(data_digest=digests.data, dev_digest=digests.dev)
    if resume_from is not None:
        position = checkpoints.load_checkpoint(resume_from, optimizer, scheduler)
        position.data_digest, position.dev_digest = digests.data, digests.dev
        logger.info("resumed from %s (step %d)", resume_from, position.step)
    if ctx.is_main:
        metrics_log.truncate(position.step)
    return position


def open_run(ctx: distributed.Context, cfg: TrainConfig, resume: bool, digests: checkpoints.Digests,
             held: contextlib.ExitStack) -> tuple[Path | None, Trackers]:
    """:func:`open_output` (the checkpoint to resume from, or None), then the experiment trackers
    (:mod:`maxsim.training.tracking`), closed with ``held``."""
    resume_from = open_output(ctx, cfg, resume, digests, held)
    return resume_from, held.enter_context(Trackers(cfg, resuming=resume_from is not None, is_main=ctx.is_main))


def chosen_checkpoint(cfg: TrainConfig, has_dev: bool, position: checkpoints.Position) -> Path:
    """``best/`` when there is a dev set, else the last checkpoint."""
    out = Path(cfg.output)
    if has_dev and position.best_step is not None:
        logger.info("best checkpoint: step %d, dev %s %.4f", position.best_step, cfg.metric, position.best_value)
        warn_if_worse_than_start(cfg, position)
        return out / "best"
    if not has_dev:
        logger.info("no dev set: returning the last checkpoint (pass --dev-fraction or "
                    "--dev-data to choose the best one)")
    return checkpoints.checkpoint_dir(out, position.step)


def apply_gradients(ctx: distributed.Context, parameters: list[torch.nn.Parameter], optimizer, scheduler,
                    max_grad_norm: float) -> torch.Tensor:
    """Average the gradients over ranks, clip them, and take an optimizer and a schedule step;
    returns the gradient norm before clipping."""
    distributed.average_gradients(ctx, parameters)
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    optimizer.step()
    scheduler.step()
    return grad_norm


def load_model(cfg: TrainConfig, resume_from: Path | None, device: torch.device) -> ColBERT:
    """The checkpoint to resume from, or the base model with a new projection (seeded)."""
    if resume_from is not None:
        return ColBERT.from_pretrained(resume_from, dim=cfg.dim, device=device)
    return ColBERT.from_pretrained(
        cfg.base_model, dim=cfg.dim, query_maxlen=cfg.query_maxlen, doc_maxlen=cfg.doc_maxlen,
        attend_to_expansion_tokens=cfg.attend_to_expansion_tokens, seed=cfg.seed, device=device)


def make_optimizer(parameters: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW (eps 1e-8) with weight decay on matrices only, none on biases and LayerNorm; fused on a GPU."""
    return torch.optim.AdamW(
        [
            {"params": [p for p in parameters if p.ndim >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=cfg.learning_rate, eps=1e-8,
        fused=True if parameters and parameters[0].is_cuda else None,  # one kernel for all tensors on a GPU
    )


@dataclass(frozen=True)
class Schedule:
    """How long a run is: optimizer steps per epoch, in all, the epochs that takes, and warmup."""

    steps_per_epoch: int
    total_steps: int
    epochs: int
    warmup: int

    @classmethod
    def of_run(cls, cfg: TrainConfig, n_examples: int, world_size: int) -> Schedule:
        """``max_steps``, when given, is the number of steps, as in Hugging Face's Trainer: the
        data is repeated (fresh shuffles) as often as needed, and it overrides ``epochs``.
        Otherwise the run is ``epochs`` passes. Warmup ``auto`` is 10% of the steps."""
        steps_per_epoch = len(global_batches(range(n_examples), cfg.batch_size, world_size))
        if cfg.max_steps is None:
            total, epochs = cfg.epochs * steps_per_epoch, cfg.epochs
        else:
            total, epochs = cfg.max_steps, math.ceil(cfg.max_steps / steps_per_epoch)
            logger.info("max_steps %d at %d steps per epoch: %d epoch%s%s", cfg.max_steps, steps_per_epoch, epochs,
                        "" if epochs == 1 else "s", f" (max_steps overrides epochs={cfg.epochs})" if
                        cfg.epochs not in (1, epochs) else "")
        warmup = round(0.1 * total) if cfg.warmup_steps == "auto" else cfg.warmup_steps
        return cls(steps_per_epoch, total, epochs, warmup)


def forward_backward(
    model: ColBERT,
    batch: TrainBatch,
    ctx: distributed.Context,
    cfg: TrainConfig,
    offset: int,
    global_batch_size: int,
    objective: str = "contrastive",
) -> StepStats:
    """Loss and backward pass for this rank's share of one micro-batch.

    ``offset`` is the micro-batch position of this rank's first query. The loss is scaled so
    that, after gradients are averaged over ranks and accumulated over micro-batches, they
    equal those of the mean loss over the whole global batch in one process. ``objective``:
    contrastive, distillation (KL to ``batch.teacher_scores`` over each query's own ``nway``
    documents) or combined (contrastive + ``cfg.distillation_weight`` x distillation).

    Returns the sums over this rank's queries.
    """
    queries, documents = batch.queries.to(ctx.device), batch.documents.to(ctx.device)

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=ctx.device.type == "cuda")

    chunk = cfg.grad_cache_chunk
    with autocast():
        if chunk:  # vectors without graphs, made leaves: the loss back-propagates to them alone
            q_vectors, q_states = grad_cache.encode_without_graph(model, queries, chunk, autocast)
            d_local, d_states = grad_cache.encode_without_graph(model, documents, chunk, autocast)
            q_vectors, d_local = q_vectors.requires_grad_(), d_local.requires_grad_()
        else:
            q_vectors = model(queries.input_ids, queries.attention_mask)
            d_local = model(documents.input_ids, documents.attention_mask)
        d_vectors, d_mask, d_ids = distributed.gather_documents(
            ctx, d_local, documents.score_mask, batch.document_ids.to(ctx.device, non_blocking=True))
        scores = maxsim(q_vectors, queries.score_mask, d_vectors, d_mask)
    positive_column, candidates = candidate_mask_for_batch(
        d_ids, batch.positives, offset, cfg.nway, cfg.use_ib_negatives)
    normaliser = global_batch_size / ctx.world_size
    result = contrastive_loss(scores, positive_column, candidates, cfg.temperature, normaliser)
    distillation = None
    if objective != "contrastive":  # each query against its own nway documents, positive first
        own = scores.gather(1, positive_column[:, None] + torch.arange(cfg.nway, device=scores.device))
        distillation = distillation_loss(own, batch.teacher_scores.to(scores.device, non_blocking=True), None,
                                         cfg.teacher_temperature, normaliser)
    loss = result.loss if objective == "contrastive" else distillation if objective == "distillation" else \
        result.loss + cfg.distillation_weight * distillation
    loss.backward()
    if chunk:  # then each chunk again, with its graph and its dropout, back-propagating those gradients
        grad_cache.backward_through_chunks(model, queries, chunk, q_vectors.grad, q_states, autocast)
        grad_cache.backward_through_chunks(model, documents, chunk, d_local.grad, d_states, autocast)
    n = len(batch.positives)
    zero = torch.zeros((), device=loss.device)
    values = torch.stack([t.detach().float() for t in (
        loss, result.positive_term, result.logsumexp_term, result.positive_score, result.negative_score,
        result.accuracy, zero if distillation is None else distillation)]).tolist()  # one host sync
    mean_loss, positive_term, logsumexp_term, positive_score, negative_score, accuracy, distilled = values
    return StepStats(loss=mean_loss * normaliser, positive_term=positive_term * n, logsumexp_term=logsumexp_term * n,
                     positive_score=positive_score * n, negative_score=negative_score * n, accuracy=accuracy * n,
                     tokens=batch.n_tokens(), distillation=distilled * normaliser)
