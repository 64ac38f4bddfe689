"""The training loop, top to bottom: data, model, optimizer, schedule, step, validation, checkpoints.

Runs the same in one process (CPU or GPU), from a notebook (no child processes), and under
torchrun, where each rank trains on its own shard of every global batch and in-batch negatives
are gathered across ranks with their gradients.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from pathlib import Path

import torch

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
from maxsim.model.inference import attention_dropout_of, set_attention_dropout
from maxsim.progress import progress as progress_bar
from maxsim.scoring import maxsim
from maxsim.training import checkpoints, distributed, grad_cache, precision
from maxsim.training.budget import Budget, LinearSchedule, Schedule, check_stopping, fit_to_budget, out_of_time
from maxsim.training.cards import run_training
from maxsim.training.config import TrainConfig
from maxsim.training.report import MetricsLog, plot_training
from maxsim.training.run_folder import open_output
from maxsim.training.stats import StepStats
from maxsim.training.tracking import Trackers
from maxsim.training.validation import (
    dev_digest,
    dev_set,
    evaluate_start,
    report_search,
    validate,
    warn_if_worse_than_start,
)

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
        budget = Budget(cfg.max_time)  # (the clock of --max-time starts here)

        # ---- data: everything is checked before a model is loaded ---------------------------
        data = TrainingData.load(cfg.data, cfg.nway)
        objective = choose_objective(cfg, data)
        data, dev = dev_set(cfg, data)
        check_world_size(cfg, data, ctx), check_stopping(cfg, dev)
        digests = checkpoints.Digests(data_digest(cfg.data), dev_digest(cfg))
        resume_from, trackers = open_run(ctx, cfg, resume, digests, held)

        # ---- model, tokenised data -------------------------------------------------------------
        torch.manual_seed(cfg.seed)
        model = load_model(cfg, resume_from, ctx.device)
        cache, positives_of = TokenCache(model, data), data.positives_of()  # every text tokenised once, here
        dev_tokens = model.tokenize_documents(dev.corpus.texts) if dev and ctx.is_main else None

        # ---- optimizer and schedule -------------------------------------------------------------
        plan = Schedule.of_run(cfg, len(data.examples), ctx.world_size)
        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(parameters, cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule := LinearSchedule(plan.warmup,
                                                                                          plan.total_steps))
        metrics_log = MetricsLog(out / "metrics.jsonl", also=trackers.log)
        position = start_position(ctx, resume_from, optimizer, scheduler, digests, metrics_log)
        budget.spent_before, total_steps = position.spent_s, position.planned_steps or plan.total_steps
        known = plan.known or position.planned_steps is not None
        logger.info("%d examples, %d steps per epoch, %s, world size %d; training in %s", len(data.examples),
                    plan.steps_per_epoch, f"{total_steps} steps, {schedule.warmup} warmup" if known else
                    "steps and warmup set by --max-time", ctx.world_size, precision.describe(ctx.device))
        if dev is not None and position.step == 0:  # the model before training: what best/ must beat
            evaluate_start(ctx, cfg, model, dev, dev_tokens, metrics_log, position)

        def save(pos: checkpoints.Position) -> int:
            pos.spent_s = budget.spent()
            if ctx.is_main:
                checkpoints.save_checkpoint(out, model, optimizer, scheduler, pos, cfg.keep_checkpoints, cfg.to_yaml(),
                                            run_training(cfg, pos.step))
                plot_training(metrics_log.rows(), out / "training.png", cfg.metric)
            distributed.barrier(ctx)
            return pos.step

        # ---- the loop ----------------------------------------------------------------------------
        progress = progress_bar(total_steps if known else None, "training", "step",
                                enabled=ctx.is_main and cfg.progress_bar, initial=position.step)
        model.train()
        on_gpu, ahead = ctx.device.type == "cuda", builds_ahead(ctx)
        last_saved, first_step, step_times = None, position.step, []
        epoch, start_batch = position.epoch, position.batch
        ending = position.stopped is not None or position.step >= total_steps
        while not ending and epoch < plan.epochs:
            batches = global_batches(epoch_order(len(data.examples), cfg.seed, epoch),
                                     cfg.batch_size, ctx.world_size)
            steps = range(start_batch, min(len(batches), start_batch + total_steps - position.step))
            build = functools.partial(build_batch, model, data, cache, positives_of, nway=cfg.nway, seed=cfg.seed,
                                      epoch=epoch)
            inputs_of_steps = step_batches(build, batches, steps, cfg.accumulation_steps, ctx.rank, ctx.world_size,
                                           pin=on_gpu)
            started = time.perf_counter()  # a step's time: getting its batches, forward, backward, update
            for batch_index, inputs in prefetched(inputs_of_steps) if ahead else inputs_of_steps:  # (ahead: on a GPU
                # the host pads the next steps' batches while the GPU runs this one)
                batch = batches[batch_index]
                optimizer.zero_grad(set_to_none=True)
                stats = StepStats()
                for tb, offset in inputs:
                    stats += forward_backward(model, tb, ctx, cfg, offset, len(batch), objective)
                grad_norm = apply_gradients(ctx, parameters, optimizer, scheduler, cfg.max_grad_norm)
                stats = stats.summed(ctx)
                elapsed = time.perf_counter() - started
                position.advance(epoch, batch_index, len(batches))
                progress.update(1)
                step_times.append(elapsed)
                if cfg.max_time is not None and position.planned_steps is None:  # the pace sets the length
                    total_steps = fit_to_budget(ctx, cfg, budget, position, schedule, step_times, plan.total_steps,
                                                progress) or total_steps

                row = {} if position.step % cfg.log_every and position.step != total_steps else step_row(
                    stats, position.step, epoch + (batch_index + 1) / len(batches), len(batch),
                    scheduler.get_last_lr()[0], float(grad_norm), elapsed, progress)
                ending = position.step >= total_steps or out_of_time(ctx, budget, position)
                if dev is not None and (ending or (cfg.eval_every and position.step % cfg.eval_every == 0)):
                    row = with_dev(row, position.step, validate(ctx, cfg, model, dev, dev_tokens, position))
                    ending = ending or position.stopped is not None
                if row and ctx.is_main:
                    metrics_log.append(row)
                if ending or (cfg.save_every is not None and position.step % cfg.save_every == 0):
                    last_saved = save(position)
                if ending:
                    break
                started = time.perf_counter()
            epoch, start_batch = epoch + 1, 0
        progress.close()

        # ---- what the run leaves ----------------------------------------------------------------
        if position.step not in (last_saved, 0) and not checkpoints.checkpoint_dir(out, position.step).is_dir():
            save(position)
        trackers.close(checkpoints.best_metrics(out) if dev is not None else {})  # (the best dev metrics as summary)
        return chosen_checkpoint(cfg, dev is not None, position, first_step)


def step_row(stats: StepStats, step: int, epoch: float, batch_size: int, lr: float, grad_norm: float,
             seconds: float, progress) -> dict:
    """A step's ``metrics.jsonl`` row (:meth:`StepStats.row`), also shown beside the progress bar."""
    row = stats.row(step, epoch, batch_size, lr, grad_norm, seconds)
    progress.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", trip_s=f"{row['triplets_per_s']:.1f}")
    return row


def with_dev(row: dict, step: int, scores: dict[str, float]) -> dict:
    """A metrics row with a step's dev scores (``dev_`` + name) added, if any."""
    return {**row, "step": step, **{f"dev_{k}": v for k, v in scores.items()}} if scores else row


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


def chosen_checkpoint(cfg: TrainConfig, has_dev: bool, position: checkpoints.Position, first_step: int) -> Path:
    """``best/`` when there is a dev set, else the last checkpoint."""
    out = Path(cfg.output)
    if position.stopped is not None:
        logger.info("the run %s at step %d (%s)", "ended" if first_step < position.step else
                    "had already ended: nothing to continue;", position.step, position.stopped)
    if has_dev and position.best_step is not None:
        logger.info("best checkpoint: step %d, dev %s %.4f", position.best_step, cfg.metric, position.best_value)
        warn_if_worse_than_start(cfg, position)
        report_search(cfg)
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
    """The checkpoint to resume from, or the base model with a new projection (seeded); with
    ``cfg.attention_dropout``, that dropout on its attention probabilities."""
    if resume_from is not None:
        model = ColBERT.from_pretrained(resume_from, dim=cfg.dim, device=device)
    else:
        model = ColBERT.from_pretrained(
            cfg.base_model, dim=cfg.dim, query_maxlen=cfg.query_maxlen, doc_maxlen=cfg.doc_maxlen,
            attend_to_expansion_tokens=cfg.attend_to_expansion_tokens, seed=cfg.seed, device=device)
    if cfg.attention_dropout is None and device.type == "cpu" and attention_dropout_of(model.encoder):
        logger.info("attention dropout %g (the base model's): on a CPU, --attention-dropout 0 trains several times "
                    "faster (the fused attention kernel; BENCHMARKS.md); compare the two on dev",
                    attention_dropout_of(model.encoder))
    if cfg.attention_dropout is not None:
        if not set_attention_dropout(model.encoder, cfg.attention_dropout):
            raise SettingsError(f"--attention-dropout: no attention dropout was found in this encoder "
                                f"({type(model.encoder).__name__}) to set. Fix: leave out --attention-dropout")
        logger.info("attention dropout while training: %g (--attention-dropout)", cfg.attention_dropout)
    return model


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

    autocast = functools.partial(precision.training_autocast, ctx.device)

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
