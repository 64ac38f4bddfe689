"""What a run reports: ``metrics.jsonl`` (one JSON object per logged step) and ``training.png``."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from maxsim.files import atomic_write_text


class MetricsLog:
    """Append-only JSON Lines log of training metrics; ``truncate`` drops rows after a step.
    ``also`` is given each row once it is written (the experiment trackers)."""

    def __init__(self, path: str | Path, also: Callable[[dict], None] | None = None) -> None:
        self.path = Path(path)
        self.also = also

    def append(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.also is not None:
            self.also(row)

    def rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
        return out

    def truncate(self, step: int) -> None:
        """Keep only rows up to ``step`` (used when a run resumes from that step)."""
        kept = [row for row in self.rows() if row.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(row) + "\n" for row in kept))


def plot_training(rows: list[dict], path: str | Path, metric: str) -> None:
    """Loss against steps and, where present, the dev metric against steps, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r[f"dev_{metric}"]) for r in rows if f"dev_{metric}" in r]
    fig, ax_loss = plt.subplots(figsize=(8, 4.5), dpi=100)
    if losses:
        steps, values = zip(*losses)
        ax_loss.plot(steps, values, color="tab:blue", linewidth=0.8, label="loss")
        if len(values) >= 20:
            window = max(5, len(values) // 20)
            smooth = [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
                      for i in range(len(values))]
            ax_loss.plot(steps, smooth, color="navy", linewidth=1.5, label=f"loss ({window}-step mean)")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("training loss", color="tab:blue")
    handles, labels = ax_loss.get_legend_handles_labels()
    if evals:
        ax_dev = ax_loss.twinx()
        steps, values = zip(*evals)
        ax_dev.plot(steps, values, "o-", color="tab:orange", label=f"dev {metric}")
        ax_dev.set_ylabel(f"dev {metric}", color="tab:orange")
        more = ax_dev.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    if handles:
        ax_loss.legend(handles, labels, loc="best")
    ax_loss.set_title("maxsim training")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def finite(value: float) -> float | None:
    """JSON-safe float: None for NaN or infinity."""
    return value if math.isfinite(value) else None
