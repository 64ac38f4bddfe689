"""Experiment tracking: every ``metrics.jsonl`` row also goes to TensorBoard, W&B, MLflow or trackio.

``maxsim train --report-to NAME`` (repeatable, as Hugging Face's ``report_to``) opens one
:class:`Tracker` per name on rank 0. Each gets the run's settings as hyperparameters when it
starts, every metrics row (losses, rates, dev metrics) at its step, and the best dev metrics as
the run's summary when it ends. Each library is an optional extra, imported only when asked for;
a missing one is an error before training starts.

Where each writes: TensorBoard event files in ``OUTPUT/tensorboard/``; W&B under ``OUTPUT/wandb/``
(project ``$WANDB_PROJECT`` or ``maxsim``; ``WANDB_MODE=offline`` keeps it on disk); MLflow to
``$MLFLOW_TRACKING_URI`` or the SQLite store ``OUTPUT/mlflow.db`` (MLflow's local store; its
file store is deprecated), experiment ``$MLFLOW_EXPERIMENT_NAME``
or ``maxsim`` (MLflow refuses ``@`` in a metric name: ``dev_ndcg@10`` is ``dev_ndcg_at_10``
there); trackio to its local store (``$TRACKIO_DIR``), project ``$TRACKIO_PROJECT`` or ``maxsim``.

A resumed run continues the same tracked run: the W&B run id, the MLflow run id and the trackio
run name are kept in ``OUTPUT/trackers.json``, and TensorBoard appends to the same folder. The
steps a killed attempt logged after its last checkpoint are logged again by the resumed one;
MLflow and TensorBoard keep both values of such a step, W&B keeps the first (it ignores a step
it has already passed).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import time
from pathlib import Path

from maxsim.errors import SettingsError
from maxsim.files import atomic_write_text
from maxsim.training.config import TRACKERS, TrainConfig

#: the module each tracker imports, and what to install for it
MODULES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
           "mlflow": ("mlflow", "mlflow-skinny"), "trackio": ("trackio", "trackio")}

#: the run ids a resumed run continues, in the output folder
STATE_FILE = "trackers.json"


def check_trackers(names: tuple[str, ...]) -> None:
    """Refuse, before any work, a tracker whose library is not installed (saying what to install)."""
    for name in names:
        if name not in TRACKERS:
            raise SettingsError(f"--report-to {name!r} is not one of {', '.join(TRACKERS)} (or none)")
        module, package = MODULES[name]
        if importlib.util.find_spec(module) is None:
            raise SettingsError(f"--report-to {name}: the {module} package is not installed. Fix: pip install "
                                f"'maxsim[{name}]' (or pip install {package}), or leave {name} out of --report-to")


def numeric(row: dict) -> dict[str, float]:
    """A metrics row's finite numbers, without its step: what a tracker plots."""
    return {k: float(v) for k, v in row.items() if k != "step" and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(float(v))}


def flat_settings(cfg: TrainConfig) -> dict[str, str | int | float | bool]:
    """The run's settings as flat hyperparameters (lists and paths as text; None as "none")."""
    out: dict[str, str | int | float | bool] = {}
    for key, value in cfg.model_dump(mode="json").items():
        out[key] = value if isinstance(value, (bool, int, float, str)) else ("none" if value is None else
                                                                              json.dumps(value))
    return out


class Tracker:
    """One tracking library: ``log`` a metrics row, ``close`` with the run's best dev metrics."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        raise NotImplementedError

    def close(self, summary: dict[str, float]) -> None:
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    def __init__(self, cfg: TrainConfig) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.settings = flat_settings(cfg)
        self.writer = SummaryWriter(log_dir=str(Path(cfg.output) / "tensorboard"))
        self.writer.add_text("settings", "\n".join(f"    {k}: {v}" for k, v in self.settings.items()))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self, summary: dict[str, float]) -> None:
        if summary:  # the settings as hyperparameters, against the best dev metrics (TensorBoard's HPARAMS)
            self.writer.add_hparams(self.settings, {f"best/{k}": v for k, v in summary.items()}, run_name=".")
        self.writer.close()


class WandbTracker(Tracker):
    def __init__(self, cfg: TrainConfig, run_id: str | None) -> None:
        import wandb

        folder = Path(cfg.output)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "maxsim"), name=folder.name, dir=str(folder),
                              config=cfg.model_dump(mode="json"), id=run_id, resume="allow")
        self.run_id = self.run.id

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def close(self, summary: dict[str, float]) -> None:
        self.run.summary.update({f"best/{k}": v for k, v in summary.items()})
        self.run.finish()


class MlflowTracker(Tracker):
    def __init__(self, cfg: TrainConfig, run_id: str | None) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        folder = Path(cfg.output).resolve()
        store = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        self.client = MlflowClient(tracking_uri=store)
        if run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "maxsim")
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            run_id = self.client.create_run(experiment_id, run_name=folder.name).info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in flat_settings(cfg).items()]
            self.client.log_batch(run_id, params=params)
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(mlflow_name(k), v, now, step) for k, v in metrics.items()])

    def close(self, summary: dict[str, float]) -> None:
        from mlflow.entities import Metric

        if summary:
            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(f"best_{mlflow_name(k)}", v, now, 0)
                                                        for k, v in summary.items()])
        self.client.set_terminated(self.run_id)


class TrackioTracker(Tracker):
    def __init__(self, cfg: TrainConfig, name: str | None) -> None:
        import trackio

        self.name = name or f"{Path(cfg.output).name}-{int(time.time())}"
        self.run = trackio.init(project=os.environ.get("TRACKIO_PROJECT", "maxsim"), name=self.name,
                                config=cfg.model_dump(mode="json"), resume="allow" if name else "never",
                                embed=False)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def close(self, summary: dict[str, float]) -> None:
        self.run.finish()


def mlflow_name(key: str) -> str:
    """A metric name MLflow accepts (letters, digits, ``_-. /``): ``dev_ndcg@10`` -> ``dev_ndcg_at_10``.

    >>> mlflow_name("dev_ndcg@10")
    'dev_ndcg_at_10'
    """
    return re.sub(r"[^\w\-. /]", "_", key.replace("@", "_at_"))


class Trackers:
    """The trackers ``cfg.report_to`` names, opened on rank 0 (the others get none), continuing the
    runs ``OUTPUT/trackers.json`` names when the run resumes."""

    def __init__(self, cfg: TrainConfig, resuming: bool, is_main: bool) -> None:
        check_trackers(cfg.report_to)  # (on every rank: each stops with the same error)
        self.trackers: list[Tracker] = []
        if not is_main or not cfg.report_to:
            return
        state_path = Path(cfg.output) / STATE_FILE
        state = json.loads(state_path.read_text()) if resuming and state_path.is_file() else {}
        for name in cfg.report_to:
            if name == "tensorboard":
                self.trackers.append(TensorBoardTracker(cfg))
            elif name == "wandb":
                tracker = WandbTracker(cfg, state.get("wandb"))
                state["wandb"] = tracker.run_id
                self.trackers.append(tracker)
            elif name == "mlflow":
                tracker = MlflowTracker(cfg, state.get("mlflow"))
                state["mlflow"] = tracker.run_id
                self.trackers.append(tracker)
            elif name == "trackio":
                tracker = TrackioTracker(cfg, state.get("trackio"))
                state["trackio"] = tracker.name
                self.trackers.append(tracker)
        atomic_write_text(state_path, json.dumps(state, indent=2) + "\n")

    def log(self, row: dict) -> None:
        """One ``metrics.jsonl`` row, at its step."""
        metrics = numeric(row)
        if metrics:
            for tracker in self.trackers:
                tracker.log(int(row.get("step", 0)), metrics)

    def close(self, summary: dict[str, float] | None = None) -> None:
        """End every tracked run (with the best dev metrics as its summary); then nothing is open."""
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close(summary or {})

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # (a run that fails still ends its tracked runs)
