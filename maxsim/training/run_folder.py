"""A training run's output folder: made ready and locked for one run, and a resume checked to
continue that run (the same settings that change what is trained, the same data and dev set)."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from pydantic import ValidationError

from maxsim.errors import OutputExistsError, SettingsError
from maxsim.files import LockedError, atomic_write_text, exclusive_lock
from maxsim.training import checkpoints, distributed
from maxsim.training.config import TrainConfig

logger = logging.getLogger(__name__)

LOCK_FILE = "train.lock"


def open_output(ctx: distributed.Context, cfg: TrainConfig, resume: bool, digests: checkpoints.Digests,
                held: contextlib.ExitStack) -> Path | None:
    """Make the output folder ready and lock it for this run; returns the checkpoint to resume from.

    Refuses an output that is a file, one another ``maxsim train`` is writing (the lock is held
    in ``held`` until the run ends), checkpoints without ``resume``, and a resume whose settings
    or data differ from the run's (:func:`check_resume`).
    """
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--output {out} is a file: choose a folder for the run")
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    held.enter_context(run_lock(ctx, out))
    resume_from = checkpoints.latest_checkpoint(out) if resume else None
    if not resume and checkpoints.latest_checkpoint(out) is not None:
        raise OutputExistsError(f"{out} already holds checkpoints: pass --resume to continue "
                              "that run, or choose another --output")
    if resume and resume_from is None:
        logger.info("no checkpoint in %s: starting from the beginning", out)
    if resume_from is not None:
        check_resume(cfg, resume_from, digests)
    if ctx.is_main:
        checkpoints.clean_interrupted_writes(out)
        atomic_write_text(out / "config.yaml", cfg.to_yaml())
    distributed.barrier(ctx)
    return resume_from


@contextlib.contextmanager
def run_lock(ctx: distributed.Context, out: Path):
    """One ``maxsim train`` at a time writes into an output folder: rank 0 holds ``train.lock``
    there for the whole run, and every rank stops if another run holds it."""
    with contextlib.ExitStack() as stack:
        error = None
        if ctx.is_main:
            try:
                stack.enter_context(exclusive_lock(out / LOCK_FILE, f"the training run in {out}", timeout=0))
            except LockedError as err:
                error = str(err)
        error = distributed.broadcast_object(ctx, error)
        if error:
            raise LockedError(error)
        yield


def check_resume(cfg: TrainConfig, checkpoint: Path, digests: checkpoints.Digests) -> None:
    """Refuse a resume that would not continue the same run: other settings (except those that
    do not change what is trained, which are logged) or other training data."""
    saved_file = checkpoint / checkpoints.CONFIG_FILE
    if not saved_file.is_file():
        saved_file = Path(cfg.output) / "config.yaml"
    try:
        saved = TrainConfig.from_yaml(saved_file)
    except (OSError, ValidationError, ValueError) as err:
        logger.warning("cannot read the settings the run was started with (%s): resuming without comparing", err)
    else:
        allowed, refused = cfg.resume_changes(saved)
        if refused:
            raise SettingsError(
                f"--resume would continue the run in {cfg.output} with other settings than it was trained with "
                f"({'; '.join(refused)}), and the result would be neither run. Fix: resume with the run's own "
                f"settings (maxsim train --output {cfg.output} --resume reads them from {saved_file}), or start a "
                f"new run from the checkpoint: --base-model {checkpoint} --output NEW_FOLDER")
        if allowed:
            logger.info("resuming with changed %s (these do not change what is trained)", "; ".join(allowed))
    position = checkpoints.read_position(checkpoint)
    if position.data_digest is not None and position.data_digest != digests.data:
        raise SettingsError(f"the training data in {cfg.data} is not the data {checkpoint} was trained on (its files "
                         "changed), so resuming would mix two runs. Fix: resume with the original data, or start a "
                         f"new run from the checkpoint: --base-model {checkpoint} --output NEW_FOLDER")
    recorded = json.loads((checkpoint / checkpoints.POSITION_FILE).read_text())
    if "dev_digest" not in recorded and digests.dev is not None:
        logger.warning("%s was saved by a maxsim that did not record its dev set: it cannot be checked that the dev "
                       "set is the one the run validated on", checkpoint)
    elif position.dev_digest != digests.dev:
        raise SettingsError(f"the dev set is not the one {checkpoint}'s run validated on (its files changed), so "
                            "best/ would be chosen by comparing scores on two dev sets. Fix: resume with the "
                            "original dev set, or start a new run from the checkpoint: --base-model "
                            f"{checkpoint} --output NEW_FOLDER")
