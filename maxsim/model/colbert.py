"""The ColBERT model: a Hugging Face encoder, a bias-free projection and L2-normalised tokens."""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from maxsim.background import prefetched
from maxsim.files import atomic_directory, check_replaceable
from maxsim.model.card import Training, save_training, write_model_card
from maxsim.model.checkpoint import (
    check_fits,
    default_base_model,
    load_encoder,
    pick_device,
    read_projection,
    read_settings,
    resolve_model_path,
    write_model_folder,
)
from maxsim.model.formats import FORMATS, detect_format, read_pylate, read_stanford, write_pylate, write_stanford
from maxsim.model.inference import InferenceForward, autocast
from maxsim.model.settings import ColBERTSettings
from maxsim.model.tokenization import Chunk, ColBERTTokenizer, ModelLoadError, TokenBatch, choose_markers

logger = logging.getLogger(__name__)

#: texts tokenised at a time, ahead of the encoding, when encoding on a GPU (:meth:`ColBERT._encode`)
TOKENIZE_WINDOW = 1024


class ColBERT(nn.Module):
    """Encoder + bias-free linear projection to ``dim`` + L2 normalisation, per token.

    Tokenisation is :attr:`tokens` (a :class:`~maxsim.model.tokenization.ColBERTTokenizer`);
    the ``tokenize_*`` and ``pad_*`` methods here are its shortcuts.
    """

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
        self.tokens = ColBERTTokenizer(tokenizer, settings)
        #: the folder (or hub name) the weights were loaded from; None for a model built in memory
        self.source: str | None = None
        #: whether its projection was made here, untrained (a plain encoder, or ``base``): its
        #: scores are near random until it is trained
        self.untrained = False
        self._told_untrained = False

    def warn_if_untrained(self, what: str) -> None:
        """Log once per model that ``what`` (searching, scoring) uses an untrained projection, and the fix."""
        if self.untrained and not self._told_untrained:
            self._told_untrained = True
            logger.warning("%s with %s, whose ColBERT projection is new and untrained: its rankings are near random. "
                           "Fix: train it first (maxsim train), or load a trained ColBERT checkpoint, such as "
                           "answerdotai/answerai-colbert-small-v1", what, self.source or "a model in memory")

    @property
    def query_marker_id(self) -> int:
        return self.tokens.query_marker_id

    @property
    def document_marker_id(self) -> int:
        return self.tokens.document_marker_id

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
        """Load a ColBERT checkpoint, or start from any Hugging Face encoder.

        ``name_or_path``: a folder or a hub name (found in the local Hugging Face cache, else
        downloaded); ``None`` or ``"base"`` loads the default base model (MiniLM-L6). A checkpoint in maxsim's,
        Stanford colbert-ai's or PyLate's format (:func:`~maxsim.model.formats.detect_format`)
        keeps its projection and every setting that changes encoding (lengths, markers, query
        expansion, skiplist); ``dim``, if given, must agree with it, and lengths given here
        replace the checkpoint's (logged). Any other encoder gets a new projection to ``dim``
        (default 128), initialised from ``seed``. ``device``: None keeps it on the CPU; ``auto``,
        ``cpu``, ``cuda`` or ``cuda:N`` as :func:`~maxsim.model.checkpoint.pick_device` reads them.
        """
        if name_or_path is not None and str(name_or_path) == "base" and not Path("base").exists():
            name_or_path = None  # (the command line's name for the bundled MiniLM)
        path = resolve_model_path(name_or_path) if name_or_path is not None else default_base_model()
        source = str(path.resolve()) if Path(name_or_path or path).is_dir() else str(name_or_path)
        overrides = {
            "query_maxlen": query_maxlen,
            "doc_maxlen": doc_maxlen,
            "attend_to_expansion_tokens": attend_to_expansion_tokens,
        }
        overrides = {k: v for k, v in overrides.items() if v is not None}
        found = detect_format(path)
        if found is None:
            encoder, tokenizer, settings, projection = _new_colbert(path, source, dim, overrides, seed)
        else:
            encoder, tokenizer, settings, projection = _read_colbert(path, found, source, dim, overrides)
        check_fits(path, settings, projection, encoder)
        model = cls(encoder, tokenizer, settings, projection)
        model.source, model.untrained = source, found is None
        if device is not None:
            model.to(pick_device(device))
        return model

    def digest(self) -> str:
        """sha256 of the settings and every weight (float32, in name order): the model's identity.

        Equal for the same weights wherever they were loaded from; an index records it so that a
        model folder replaced after indexing is noticed. About 0.2 s for MiniLM-L6 on a CPU.
        """
        digest = hashlib.sha256(self.settings.identity_json().encode())
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode() + b"\0")
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy())
        return digest.hexdigest()

    def save(self, path: str | Path, format: str = "maxsim", training: Training | None = None) -> Path:
        """Write a self-contained folder (weights, encoder config, tokenizer, settings, and a model
        card, README.md, which says how ``training`` went when it is given).

        ``format``: ``maxsim`` (this library's), ``pylate`` (loads as ``pylate.models.ColBERT``)
        or ``stanford`` (loads as colbert-ai's ``Checkpoint``, as RAGatouille does); a model that
        library would encode differently is refused with the reason. The folder is written
        beside ``path`` and renamed into place, so a crash leaves either the old folder or the
        new one; a folder holding anything but a model of that format is never replaced.
        """
        if format not in FORMATS:
            raise ModelLoadError(f"format {format!r} is not one of {', '.join(FORMATS)}")
        path = Path(path)
        check_replaceable(path, lambda p: detect_format(p) == format, f"{format} model")
        with atomic_directory(path) as tmp:
            self.save_to(tmp, format, training)
        return path

    def save_to(self, folder: Path, format: str = "maxsim", training: Training | None = None) -> None:
        """Write the model files and the model card into an existing folder (no atomicity of its own)."""
        if format == "stanford":
            write_stanford(folder, self.encoder, self.tokenizer, self.linear, self.settings)
        elif format == "pylate":
            write_pylate(folder, self.encoder, self.tokenizer, self.linear, self.settings)
        else:
            write_model_folder(folder, self.encoder, self.tokenizer, self.linear, self.settings)
        write_model_card(folder, self.settings, format, training)
        if training is not None:
            save_training(folder, training)

    # ------------------------------------------------------------------ tokenisation
    def tokenize_queries(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each query: first special token, query marker, text; unpadded."""
        return self.tokens.queries(texts)

    def tokenize_documents(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each document, marker inserted, truncated at ``doc_maxlen``."""
        return self.tokens.documents(texts)

    def tokenize_document_chunks(self, texts: Sequence[str], split: bool = True,
                                 max_tokens: int | None = None) -> list[list[Chunk]]:
        """See :meth:`~maxsim.model.tokenization.ColBERTTokenizer.document_chunks`."""
        return self.tokens.document_chunks(texts, split, max_tokens)

    def pad_queries(self, token_ids: Sequence[Sequence[int]]) -> TokenBatch:
        """Pad queries with the mask token to ``query_maxlen``; every position is scored."""
        return self.tokens.pad_queries(token_ids)

    def pad_documents(self, token_ids: Sequence[Sequence[int]]) -> TokenBatch:
        """Pad documents to the longest in the batch; padding and punctuation are not scored."""
        return self.tokens.pad_documents(token_ids)

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
        on_gpu = self.device.type == "cuda"

        def padded():  # on a GPU, padded (and pinned) ahead by a background thread while the GPU encodes
            for start in range(0, len(order), batch_size):
                positions = order[start : start + batch_size]
                batch = pad([token_ids[i] for i in positions])
                yield positions, batch.pin_memory() if on_gpu else batch

        try:
            with torch.inference_mode(), autocast(self.device):
                for positions, batch in prefetched(padded()) if on_gpu else padded():
                    batch = batch.to(self.device)
                    if forward is not None:
                        fixed = is_query and self.settings.do_query_expansion  # (always query_maxlen long)
                        vectors = forward(batch.input_ids, batch.attention_mask, fixed_shape=fixed)
                    else:
                        vectors = self(batch.input_ids, batch.attention_mask).float()
                    yield positions, vectors, batch.score_mask
        finally:
            if was_training and forward is None:
                self.train()

    def encode_token_ids(self, token_ids: Sequence[Sequence[int]], is_query: bool, batch_size: int = 64,
                         forward: InferenceForward | None = None) -> list[torch.Tensor]:
        """The scored token vectors of each id list, in order: (n_i, dim) float32 CPU tensors."""
        per_text: list[torch.Tensor] = [torch.zeros(0, self.settings.dim)] * len(token_ids)
        for positions, vectors, mask in self.encode_batches(token_ids, is_query, batch_size, forward):
            vectors, mask = vectors.cpu(), mask.cpu()  # one copy a batch, not one a text
            # one selection a batch, then views of it per text (not one selection a text)
            for i, text_vectors in zip(positions, torch.split(vectors[mask], mask.sum(dim=1).tolist())):
                per_text[i] = text_vectors
        return per_text

    def _encode(self, texts, is_query, batch_size, padded, forward=None):
        texts = [texts] if isinstance(texts, str) else list(texts)
        tokenize = self.tokenize_queries if is_query else self.tokenize_documents
        if self._tokenizes_ahead(len(texts)):
            # texts in windows, the next one tokenised by a background thread (the tokenizer lets
            # go of the GIL) while this one encodes; batches are length-sorted within a window
            per_text = []
            windows = (texts[start : start + TOKENIZE_WINDOW] for start in range(0, len(texts), TOKENIZE_WINDOW))
            for tokens in prefetched(tokenize(window) for window in windows):
                per_text += self.encode_token_ids(tokens, is_query, batch_size, forward)
        else:
            per_text = self.encode_token_ids(tokenize(texts), is_query, batch_size, forward)
        if not padded:
            return per_text
        length = max((t.shape[0] for t in per_text), default=1)
        out = torch.zeros(len(texts), length, self.settings.dim)
        mask = torch.zeros(len(texts), length, dtype=torch.bool)
        for i, t in enumerate(per_text):
            out[i, : t.shape[0]] = t
            mask[i, : t.shape[0]] = True
        return out, mask

    def _tokenizes_ahead(self, n_texts: int) -> bool:
        """Whether :meth:`_encode` tokenises in windows ahead of the encoding: on a GPU, where the
        host's tokenising would otherwise leave it idle, for more texts than one window."""
        return self.device.type == "cuda" and n_texts > TOKENIZE_WINDOW

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


def new_projection(hidden_size: int, dim: int, seed: int) -> nn.Linear:
    """A bias-free (hidden_size -> dim) projection, uniform in +-1/sqrt(hidden_size) from ``seed``."""
    projection = nn.Linear(hidden_size, dim, bias=False)
    generator = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(hidden_size)
    with torch.no_grad():
        projection.weight.uniform_(-bound, bound, generator=generator)
    return projection


def _new_colbert(path: Path, source: str, dim: int | None, overrides: dict, seed: int) -> tuple:
    """A new ColBERT on the encoder at ``path``: (encoder, tokenizer, settings, a new projection
    to ``dim`` (default 128) from ``seed``); lengths past the encoder's positions are cut to them."""
    encoder, tokenizer = load_encoder(path)
    longest = getattr(encoder.config, "max_position_embeddings", None)
    for name in ("query_maxlen", "doc_maxlen"):  # a default past the encoder's positions: its positions
        default = ColBERTSettings.model_fields[name].default
        if name not in overrides and isinstance(longest, int) and default > longest:
            logger.info("%s: %s %d (the encoder's positions) instead of the default %d", path, name, longest, default)
            overrides[name] = longest
    settings = ColBERTSettings(dim=dim or 128, base_model=source, **overrides)
    settings = choose_markers(tokenizer, encoder, settings)
    return encoder, tokenizer, settings, new_projection(encoder.config.hidden_size, settings.dim, seed)


def _read_colbert(path: Path, found: str, source: str, dim: int | None, overrides: dict) -> tuple:
    """A ColBERT checkpoint in ``found``'s format (maxsim, stanford, pylate): (encoder, tokenizer,
    its settings with ``overrides`` (logged), its projection); a ``dim`` other than its own is refused."""
    if found == "maxsim":
        settings, projection, encoder_path = read_settings(path), read_projection(path), path
    elif found == "stanford":
        fields, projection = read_stanford(path)
        settings, encoder_path = ColBERTSettings(base_model=source, **fields), path
    else:
        fields, projection, encoder_path = read_pylate(path)
        settings = ColBERTSettings(base_model=source, **fields)
    if dim is not None and dim != settings.dim:
        raise ModelLoadError(f"{path} ({found} format) was trained with dim={settings.dim}, but dim={dim} was asked "
                             f"for: leave --dim out to keep the checkpoint's (or pass --dim {settings.dim})")
    changed = {k: v for k, v in overrides.items() if getattr(settings, k) != v}
    if changed:
        logger.info("%s: using %s instead of the checkpoint's %s", path, changed,
                    {k: getattr(settings, k) for k in changed})
    settings = settings.model_copy(update=overrides)
    projection_key = {"linear.weight"} if found == "stanford" else ()  # beside the encoder's weights
    encoder, tokenizer = load_encoder(encoder_path, not_encoder=projection_key)
    if found != "maxsim":
        logger.info("%s: read a %s checkpoint (dim %d, query_maxlen %d, doc_maxlen %d, markers %r/%r)", path, found,
                    settings.dim, settings.query_maxlen, settings.doc_maxlen, settings.query_marker,
                    settings.document_marker)
    return encoder, tokenizer, settings, projection
