"""The model card of a checkpoint a run writes: what the run knows, as :class:`maxsim.model.card.Training`."""

from __future__ import annotations

import json
from pathlib import Path

from maxsim.model.card import Training
from maxsim.training.config import TrainConfig
from maxsim.training.report import MetricsLog

#: the training folder's record of what went in (written by ``maxsim prepare``)
MANIFEST_FILE = "manifest.json"


def run_training(cfg: TrainConfig, step: int, best: bool = False,
                 dev_metrics: dict[str, float] | None = None, search: dict | None = None) -> Training:
    """What the card of the weights at ``step`` says: the settings, ``prepare``'s manifest when the
    training folder has one, and the dev curve so far (``metrics.jsonl``'s dev rows, with
    ``dev_metrics`` as the row of ``step`` when it is not written yet; without ``dev_metrics``,
    those of the row of ``step``, if it was evaluated); ``search``: the search configuration chosen
    on dev (``search.json``'s content)."""
    curve = [{k: v for k, v in row.items() if k == "step" or k.startswith("dev_")}
             for row in MetricsLog(Path(cfg.output) / "metrics.jsonl").rows()
             if any(k.startswith("dev_") for k in row)]
    curve = [row for row in curve if row["step"] <= step]
    if dev_metrics and not any(row["step"] == step for row in curve):
        curve.append({"step": step, **{f"dev_{k}": v for k, v in dev_metrics.items()}})
    if not dev_metrics:
        dev_metrics = {k.removeprefix("dev_"): v for row in curve if row["step"] == step
                       for k, v in row.items() if k != "step" and isinstance(v, float)
                       and not k.startswith(("dev_bm25_", "dev_fusion"))}  # (the model's own figures)
    manifest = None
    path = Path(cfg.data) / MANIFEST_FILE
    if path.is_file():
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            manifest = None
    return Training(step=step, best=best, metric=cfg.metric, dev_metrics=dict(dev_metrics or {}), curve=curve,
                    settings=cfg.model_dump(mode="json"), manifest=manifest, search=search)
