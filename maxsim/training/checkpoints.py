"""Checkpoints: ``checkpoints/step-N/`` (model + training state) and ``best/``.

A checkpoint folder is written under a temporary name and renamed into place, so a folder named
``step-N`` is always complete; a run killed mid-write leaves only a hidden ``.tmp-*`` folder,
removed on the next start.
"""

from __future__ import annotations

import errno
import json
import pickle
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from maxsim.errors import MaxsimError
from maxsim.files import atomic_directory, atomic_write_text, recover_directory, remove_stale_temps
from maxsim.model import ColBERT
from maxsim.model.card import Training
from maxsim.search_config import SearchChoice, write_choice

STATE_FILE = "trainer_state.pt"
POSITION_FILE = "training_state.json"
CONFIG_FILE = "config.yaml"
BEST_FILE = "best.json"


class CheckpointError(MaxsimError, ValueError):
    """A checkpoint that cannot be resumed from, with the reason and the fix."""


_STEP = re.compile(r"^step-(\d+)$")


@dataclass
class Position:
    """Where a run stands: optimizer steps done, and the next batch to train on."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    best_value: float | None = None
    best_step: int | None = None
    #: sha256 of the training data the run reads (queries, corpus, triples)
    data_digest: str | None = None
    #: sha256 of the dev set's files (None: held out of the training data, or none)
    dev_digest: str | None = None
    #: the dev metric of the model before training (step 0), which best/ is compared with
    start_value: float | None = None
    #: the run's length in steps once a time budget has set it (None: no budget, or not set yet)
    planned_steps: int | None = None
    #: seconds of the run so far, earlier attempts included (what a time budget counts)
    spent_s: float = 0.0
    #: seconds one dev evaluation took (what a time budget reserves for each)
    eval_s: float = 0.0
    #: dev evaluations in a row that failed to beat the best (early stopping's count)
    bad_evals: int = 0
    #: why the run ended before its last step ("early stopping", "time budget"), or None
    stopped: str | None = None

    def advance(self, epoch: int, batch_index: int, batches: int) -> None:
        """One optimizer step done, on batch ``batch_index`` of ``batches`` of ``epoch``."""
        self.step += 1
        self.epoch, self.batch = (epoch, batch_index + 1) if batch_index + 1 < batches else (epoch + 1, 0)


@dataclass(frozen=True)
class Digests:
    """sha256 of what a run reads: its training data, and its dev set (None: held out of the
    training data, or none)."""

    data: str
    dev: str | None


def checkpoint_dir(output: Path, step: int) -> Path:
    return output / "checkpoints" / f"step-{step}"


def list_checkpoints(output: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    folder = output / "checkpoints"
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = _STEP.match(child.name)
        if match and (child / POSITION_FILE).is_file() and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(output: Path) -> Path | None:
    found = list_checkpoints(output)
    return found[-1][1] if found else None


def clean_interrupted_writes(output: Path) -> None:
    """Remove half-written temporary folders and restore a best/ whose swap was cut short."""
    remove_stale_temps(output / "checkpoints")
    remove_stale_temps(output)
    recover_directory(output / "best")


def save_checkpoint(
    output: Path,
    model: ColBERT,
    optimizer: torch.optim.Optimizer,
    scheduler,
    position: Position,
    keep: int,
    config_yaml: str = "",
    training: Training | None = None,
) -> Path:
    """Write ``checkpoints/step-N`` atomically, then delete all but the newest ``keep``.

    The training state holds tensors and plain values only, so it loads with
    ``torch.load(weights_only=True)``, which cannot run code. ``config_yaml`` (the run's
    settings) is saved beside it, for a resume to compare against; with ``training``, the
    model card (README.md) too.
    """
    path = checkpoint_dir(output, position.step)
    try:
        with atomic_directory(path) as tmp:
            model.save_to(tmp, training=training)
            torch.save(
                {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng_cpu": torch.get_rng_state(),
                    "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                },
                tmp / STATE_FILE,
            )
            (tmp / POSITION_FILE).write_text(json.dumps(asdict(position), indent=2) + "\n")
            if config_yaml:
                (tmp / CONFIG_FILE).write_text(config_yaml)
    except RuntimeError as err:  # torch reports a full disk as "unexpected pos ..."
        if shutil.disk_usage(path.parent).free < 256 << 20:
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from err
        raise
    for _, old in list_checkpoints(output)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(path: Path, optimizer: torch.optim.Optimizer, scheduler) -> Position:
    """Restore optimizer, scheduler and RNG states from a checkpoint; return its position.

    The state is read with ``weights_only=True``: a file holding anything but tensors and plain
    values (which could run code when unpickled) is refused, not loaded. The model weights are
    loaded separately, with ``ColBERT.from_pretrained(path)``.
    """
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path / STATE_FILE} holds objects other than tensors and plain values, which maxsim never "
            f"writes, so it was not loaded (unpickling it could run code): {str(err).splitlines()[0]}. Fix: "
            "resume only from checkpoints you trust, or delete this one to resume from an earlier step") from None
    except (OSError, RuntimeError, EOFError) as err:
        raise CheckpointError(f"{path / STATE_FILE} cannot be read ({err}). Fix: delete {path} to resume from "
                              "an earlier checkpoint") from None
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return read_position(path)


def read_position(path: Path) -> Position:
    """The position a checkpoint was saved at (without loading anything else)."""
    return Position(**json.loads((path / POSITION_FILE).read_text()))


def best_metrics(output: Path) -> dict[str, float]:
    """The dev metrics of ``best/`` (from its ``best.json``), or none when there is no best/."""
    path = output / "best" / BEST_FILE
    return json.loads(path.read_text())["metrics"] if path.is_file() else {}


def save_best(output: Path, model: ColBERT, info: dict, training: Training | None = None,
              search: SearchChoice | None = None) -> Path:
    """Replace ``best/`` with the current model, a ``best.json`` saying which step it is and,
    with ``training``, its model card (README.md); with ``search``, the search configuration
    chosen on dev (``search.json``)."""
    path = output / "best"
    with atomic_directory(path) as tmp:
        model.save_to(tmp, training=training)
        atomic_write_text(tmp / BEST_FILE, json.dumps(info, indent=2) + "\n")
        if search is not None:
            write_choice(tmp, search)
    return path
