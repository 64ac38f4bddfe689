"""Other libraries' ColBERT checkpoints: Stanford colbert-ai's and PyLate's, read and written.

A folder's format is known by its files (:func:`detect_format`):

- ``maxsim``: ``maxsim_config.json`` (:mod:`maxsim.model.checkpoint`);
- ``stanford`` (colbert-ai, RAGatouille; colbert-ir/colbertv2.0): ``artifact.metadata`` (JSON
  with the ColBERTConfig) or ``config.json`` naming ``HF_ColBERT``; the encoder under its
  ``base_model_prefix`` (``bert.*``) and ``linear.weight`` in ``model.safetensors`` (older:
  ``pytorch_model.bin``);
- ``pylate`` (lightonai/GTE-ModernColBERT-v1): ``modules.json`` (a sentence-transformers
  Transformer and a ``pylate.models.Dense.Dense``), ``1_Dense/``, and the ColBERT settings in
  ``config_sentence_transformers.json``.

Reading returns what changes encoding as :class:`ColBERTSettings` fields and the projection; a
setting the model cannot honour (colbert-ai's ``similarity: l2``, a Dense layer with a bias or an
activation, ...) is a :class:`ModelLoadError` that names it. Writing produces the folder each
library loads as its own (checked against the real libraries: ``bench/interop_check.py``).
"""

from __future__ import annotations

import copy
import json
import logging
import string
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from maxsim.files import json_object
from maxsim.model.settings import SETTINGS_FILE, ColBERTSettings
from maxsim.model.tokenization import ModelLoadError

logger = logging.getLogger(__name__)

FORMATS = ("maxsim", "stanford", "pylate")
STANFORD_METADATA = "artifact.metadata"
PYLATE_CONFIG = "config_sentence_transformers.json"
PYLATE_DENSE = "pylate.models.Dense.Dense"
ST_TRANSFORMER = "sentence_transformers.models.Transformer"


def detect_format(path: Path) -> str | None:
    """``maxsim``, ``stanford``, ``pylate``, or None for a plain encoder (or not a folder)."""
    path = Path(path)
    if (path / SETTINGS_FILE).is_file():
        return "maxsim"
    if _json(path / PYLATE_CONFIG).get("model_type") == "ColBERT" or any(
            "pylate" in str(module.get("type", "")) for module in _modules(path)):
        return "pylate"  # (a sentence-transformers folder without PyLate's modules is a plain encoder)
    if (path / STANFORD_METADATA).is_file() or "HF_ColBERT" in (_json(path / "config.json").get("architectures") or []):
        return "stanford"
    return None


def _modules(path: Path) -> list[dict]:
    try:
        value = json.loads((path / "modules.json").read_text())
    except (OSError, ValueError):
        return []
    return [m for m in value if isinstance(m, dict)] if isinstance(value, list) else []


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _read_json(path: Path) -> dict:
    try:
        return json_object(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{path} cannot be read as a JSON object ({err})") from None


def read_tensor(folder: Path, name: str) -> torch.Tensor:
    """One tensor from ``model.safetensors``, or an older ``pytorch_model.bin`` (loaded with
    ``weights_only=True``: tensors only, never arbitrary objects)."""
    safetensors = folder / "model.safetensors"
    if safetensors.is_file():
        with safe_open(str(safetensors), "pt") as handle:
            if name in handle.keys():
                return handle.get_tensor(name)
        raise ModelLoadError(f"{safetensors} holds no {name!r}: this is not a complete checkpoint")
    pickle_file = folder / "pytorch_model.bin"
    if pickle_file.is_file():
        try:
            state = torch.load(pickle_file, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - weights_only refuses anything but tensors
            raise ModelLoadError(f"{pickle_file} cannot be read as plain tensors ({type(err).__name__}: "
                                 f"{str(err)[:200]}); it is not loaded, since that could run code") from None
        if name in state:
            return state[name]
        raise ModelLoadError(f"{pickle_file} holds no {name!r}: this is not a complete checkpoint")
    raise ModelLoadError(f"{folder} has neither model.safetensors nor pytorch_model.bin")


def projection_from(weight: torch.Tensor) -> nn.Linear:
    """A bias-free projection holding ``weight`` (out x in), in float32."""
    projection = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        projection.weight.copy_(weight.float())
    return projection


# ----------------------------------------------------------------------------- Stanford
def read_stanford(path: Path) -> tuple[dict, nn.Linear]:
    """Settings (as ColBERTSettings fields) and projection of a colbert-ai checkpoint."""
    meta_path = path / STANFORD_METADATA
    meta = _read_json(meta_path) if meta_path.is_file() else {}
    if not meta:
        logger.warning("%s has no %s: using colbert-ai's defaults (markers [unused0]/[unused1], query_maxlen 32, "
                       "doc_maxlen 220)", path, STANFORD_METADATA)
    if meta.get("similarity", "cosine") != "cosine":
        raise ModelLoadError(f"{meta_path}: similarity {meta['similarity']!r} is not supported (maxsim scores by "
                             "cosine MaxSim, the dot product of unit vectors): it cannot be used as trained")
    if meta.get("interaction", "colbert") != "colbert":
        raise ModelLoadError(f"{meta_path}: interaction {meta['interaction']!r} is not supported (only 'colbert')")
    projection = projection_from(read_tensor(path, "linear.weight"))
    dim = meta.get("dim", projection.out_features)
    if dim != projection.out_features:
        raise ModelLoadError(f"{meta_path} says dim {dim} but linear.weight has {projection.out_features} rows")
    settings = {
        "dim": projection.out_features,
        "query_maxlen": meta.get("query_maxlen", 32),
        "doc_maxlen": meta.get("doc_maxlen", 220),
        "attend_to_expansion_tokens": bool(meta.get("attend_to_mask_tokens", False)),
        "mask_punctuation": bool(meta.get("mask_punctuation", True)),
        "query_marker": meta.get("query_token_id", "[unused0]"),
        "document_marker": meta.get("doc_token_id", "[unused1]"),
        "marker_position": "index_1",
        "skiplist": "colbert-ai",
    }
    return settings, projection


def stanford_metadata(settings: ColBERTSettings) -> dict:
    """``artifact.metadata`` for a model: the ColBERTConfig fields that decide encoding."""
    return {
        "query_token_id": settings.query_marker, "doc_token_id": settings.document_marker,
        "query_token": "[Q]", "doc_token": "[D]",
        "similarity": "cosine", "interaction": "colbert",
        "query_maxlen": settings.query_maxlen, "doc_maxlen": settings.doc_maxlen, "dim": settings.dim,
        "mask_punctuation": settings.mask_punctuation,
        "attend_to_mask_tokens": settings.attend_to_expansion_tokens,
        "checkpoint": None, "model_name": None,
        "meta": {"written_by": "maxsim", "base_model": settings.base_model},
    }


def write_stanford(folder: Path, encoder: nn.Module, tokenizer, projection: nn.Linear,
                   settings: ColBERTSettings) -> None:
    """A colbert-ai checkpoint folder: config.json naming HF_ColBERT, the encoder's weights
    under its ``base_model_prefix`` and ``linear.weight`` in model.safetensors, the tokenizer,
    and ``artifact.metadata``."""
    check_stanford_conventions(tokenizer, settings)
    prefix = getattr(encoder, "base_model_prefix", "") or "bert"
    state = {f"{prefix}.{k}": v.detach().to("cpu", torch.float32).contiguous()
             for k, v in encoder.state_dict().items()}
    state["linear.weight"] = projection.weight.detach().to("cpu", torch.float32).contiguous()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = encoder.config.to_dict()
    config["architectures"] = ["HF_ColBERT"]
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    stanford_tokenizer(tokenizer).save_pretrained(folder)
    (folder / STANFORD_METADATA).write_text(json.dumps(stanford_metadata(settings), indent=4) + "\n")


def stanford_tokenizer(tokenizer):
    """The tokenizer as colbert-ai needs it: its query encoder zeroes every position whose id is
    the pad token's, so a pad token equal to [MASK] (as PyLate saves it) would zero the query
    expansion; such a tokenizer gets [PAD] back as its pad token (padding is never attended to,
    so no vector changes)."""
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id != tokenizer.mask_token_id:
        return tokenizer
    fixed = copy.deepcopy(tokenizer)
    fixed.pad_token = "[PAD]"
    return fixed


def _marker_moves(tokenizer, settings: ColBERTSettings) -> bool:
    """Whether colbert-ai and PyLate (marker always at index 1) would put the marker elsewhere
    than this model does (after the first token only when it is [CLS]/<s>)."""
    from maxsim.model.tokenization import ColBERTTokenizer

    start = tokenizer("", add_special_tokens=True)["input_ids"][:1]
    return settings.marker_position != "index_1" and not (start and start[0] in ColBERTTokenizer.starts(tokenizer))


def check_stanford_conventions(tokenizer, settings: ColBERTSettings) -> None:
    """Refuse a model that colbert-ai would encode differently from maxsim."""
    problems = []
    if not settings.query_marker or not settings.document_marker:
        problems.append("colbert-ai always inserts a marker, and this model has none")
    if not settings.do_query_expansion:
        problems.append("colbert-ai always pads queries with [MASK] (this model has query expansion off)")
    if tokenizer.mask_token_id is None:
        problems.append("colbert-ai pads queries with [MASK], which this tokenizer lacks")
    elif tokenizer.pad_token_id == tokenizer.mask_token_id and tokenizer.convert_tokens_to_ids("[PAD]") in (
            None, tokenizer.unk_token_id):
        problems.append("the pad token is [MASK] and there is no [PAD] to use instead: colbert-ai would zero "
                        "the query expansion")
    if _marker_moves(tokenizer, settings):
        problems.append("this tokenizer starts without [CLS]/<s>, so colbert-ai would put the marker elsewhere")
    if settings.mask_punctuation:
        from maxsim.model.tokenization import skiplist_ids

        theirs = skiplist_ids(tokenizer, settings.model_copy(update={"skiplist": "colbert-ai"}))
        if skiplist_ids(tokenizer, settings) != theirs:
            problems.append("colbert-ai's punctuation skiplist (the first id of each symbol) differs from this "
                            "model's on this vocabulary")
    if problems:
        raise ModelLoadError("cannot write this model in colbert-ai's format without changing what it computes: "
                             + "; ".join(problems) + ". Export it as maxsim or pylate instead")


# ----------------------------------------------------------------------------- PyLate
def read_pylate(path: Path) -> tuple[dict, nn.Linear, Path]:
    """Settings (as ColBERTSettings fields), the projection and the encoder's folder of a PyLate
    checkpoint."""
    modules = _read_json_list(path / "modules.json") if (path / "modules.json").is_file() else [
        {"path": "", "type": ST_TRANSFORMER}, {"path": "1_Dense", "type": PYLATE_DENSE}]
    transformers = [m for m in modules if m.get("type") == ST_TRANSFORMER]
    dense = [m for m in modules if m.get("type", "").endswith("Dense")]
    others = [m.get("type") for m in modules if m not in transformers and m not in dense]
    if len(transformers) != 1 or len(dense) != 1 or others:
        raise ModelLoadError(f"{path / 'modules.json'}: maxsim reads a Transformer followed by one Dense layer; "
                             f"this model has {[m.get('type') for m in modules]}")
    dense_path = path / dense[0].get("path", "1_Dense")
    dense_config = _read_json(dense_path / "config.json")
    activation = dense_config.get("activation_function", "torch.nn.modules.linear.Identity")
    if dense_config.get("bias") or dense_config.get("use_residual") or not activation.endswith("Identity"):
        raise ModelLoadError(f"{dense_path / 'config.json'}: a Dense layer with bias={dense_config.get('bias')}, "
                             f"use_residual={dense_config.get('use_residual')}, activation {activation} is not "
                             "supported (maxsim's projection is linear without bias)")
    projection = projection_from(read_tensor(dense_path, "linear.weight"))
    config = _read_json(path / PYLATE_CONFIG) if (path / PYLATE_CONFIG).is_file() else {}
    similarity = config.get("similarity_fn_name", "MaxSim")
    if similarity not in ("MaxSim", None):
        raise ModelLoadError(f"{path / PYLATE_CONFIG}: similarity_fn_name {similarity!r} is not supported (MaxSim)")
    prompts = {k: v for k, v in (config.get("prompts") or {}).items() if v}
    if prompts:
        raise ModelLoadError(f"{path / PYLATE_CONFIG}: prompts {prompts} are not supported (maxsim adds no prompt "
                             "text): remove them, or encode with PyLate")
    words = config.get("skiplist_words", list(string.punctuation))
    settings = {
        "dim": projection.out_features,
        "query_maxlen": config.get("query_length", 32),
        "doc_maxlen": config.get("document_length", 180),
        "attend_to_expansion_tokens": bool(config.get("attend_to_expansion_tokens", False)),
        "mask_punctuation": bool(words),
        "query_marker": config.get("query_prefix", "[Q] "),
        "document_marker": config.get("document_prefix", "[D] "),
        "marker_position": "index_1",
        "skiplist": "pylate",
        "skiplist_words": list(words),
        "do_query_expansion": bool(config.get("do_query_expansion", True)),
    }
    return settings, projection, path / transformers[0].get("path", "")


def _read_json_list(path: Path) -> list[dict]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{path} cannot be read as JSON ({err})") from None
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise ModelLoadError(f"{path} is not a list of modules")
    return value


def write_pylate(folder: Path, encoder: nn.Module, tokenizer, projection: nn.Linear,
                 settings: ColBERTSettings, pylate_version: str = "1.6.0") -> None:
    """A PyLate checkpoint folder: the encoder at the root, ``1_Dense/``, ``modules.json`` and
    ``config_sentence_transformers.json`` with the ColBERT settings."""
    from maxsim.model.tokenization import skiplist_ids

    check_pylate_conventions(tokenizer, settings)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in encoder.state_dict().items()}
    encoder.save_pretrained(folder, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": ST_TRANSFORMER},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": PYLATE_DENSE}], indent=2) + "\n")
    (folder / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": max(settings.query_maxlen, settings.doc_maxlen), "do_lower_case": False}, indent=2) + "\n")
    dense = folder / "1_Dense"
    dense.mkdir(exist_ok=True)
    (dense / "config.json").write_text(json.dumps({
        "in_features": projection.in_features, "out_features": projection.out_features, "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity", "use_residual": False}, indent=4) + "\n")
    save_file({"linear.weight": projection.weight.detach().to("cpu", torch.float32).contiguous()},
              str(dense / "model.safetensors"), metadata={"format": "pt"})
    ids = sorted(skiplist_ids(tokenizer, settings)) if settings.mask_punctuation else []
    (folder / PYLATE_CONFIG).write_text(json.dumps({
        "model_type": "ColBERT",
        "__version__": {"pylate": pylate_version, "written_by": "maxsim"},
        "prompts": {"query": "", "document": ""}, "default_prompt_name": None,
        "similarity_fn_name": "MaxSim",
        "query_prefix": settings.query_marker, "document_prefix": settings.document_marker,
        "query_length": settings.query_maxlen, "document_length": settings.doc_maxlen,
        "attend_to_expansion_tokens": settings.attend_to_expansion_tokens,
        # the very tokens this model skips, as vocabulary entries: PyLate maps them back to these ids
        "skiplist_words": tokenizer.convert_ids_to_tokens(ids),
        "do_query_expansion": settings.do_query_expansion,
    }, indent=2) + "\n")


def check_pylate_conventions(tokenizer, settings: ColBERTSettings) -> None:
    """Refuse a model that PyLate would encode differently from maxsim."""
    problems = []
    if _marker_moves(tokenizer, settings):
        problems.append("this tokenizer starts without [CLS]/<s>, so PyLate would put the marker elsewhere")
    if settings.do_query_expansion and tokenizer.mask_token_id is None:
        problems.append("PyLate pads queries with [MASK] (else the end token), which this tokenizer lacks")
    if problems:
        raise ModelLoadError("cannot write this model in PyLate's format without changing what it computes: "
                             + "; ".join(problems) + ". Export it as maxsim instead")
