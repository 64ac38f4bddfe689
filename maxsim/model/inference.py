"""Encoding without training: a frozen, faster copy of a model's forward for the CPU.

:class:`InferenceForward` keeps the weights in bf16 where the CPU multiplies bf16 natively and
traces fixed-shape inputs (queries); :func:`autocast` is the precision every other forward
without gradients runs in (bf16 autocast on CUDA, float32 elsewhere).
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from maxsim.errors import SettingsError

logger = logging.getLogger(__name__)


#: ``1`` or ``0`` in this environment variable says whether to treat the CPU as computing bf16
#: natively, instead of asking it: ``0`` keeps a bf16 CPU in float32 (exact vectors), ``1`` takes
#: the bf16 paths anywhere (slow where emulated: for tests and comparisons)
CPU_BF16_ENV = "MAXSIM_CPU_BF16"


def cpu_computes_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AMX or AVX512-BF16), or what
    :data:`CPU_BF16_ENV` says."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise SettingsError(f"{CPU_BF16_ENV}={forced!r}: set it to 1 (use bf16), 0 (float32) or leave it unset "
                            "(ask the CPU)")
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class FrozenForward(nn.Module):
    """An encoder and its projection: (B, L) ids and mask -> (B, L, dim) float32 unit vectors."""

    def __init__(self, encoder: nn.Module, linear: nn.Linear) -> None:
        super().__init__()
        self.encoder, self.linear = encoder, linear

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(self.linear(hidden).float(), p=2, dim=-1)


class PackedLinear(nn.Module):
    """A float32 ``nn.Linear`` through MKL's packed GEMM: the weight is reordered once for inputs
    of exactly ``rows`` rows (all leading dimensions together), which saves the per-call packing
    that dominates small products. One query (32 rows) encodes about 1.4x faster on a 2-core
    AVX-512 CPU, with the same results. Shares the layer's weight and bias."""

    def __init__(self, linear: nn.Linear, rows: int) -> None:
        super().__init__()
        self.rows, self.weight, self.bias = rows, linear.weight, linear.bias
        self.register_buffer("packed", torch.ops.mkl._mkl_reorder_linear_weight(linear.weight.detach(), rows),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = torch.ops.mkl._mkl_linear(x.reshape(-1, x.shape[-1]), self.packed, self.weight, self.bias, self.rows)
        return flat.reshape(x.shape[:-1] + flat.shape[-1:])


def packed_copy(module: nn.Module, rows: int) -> nn.Module | None:
    """A copy of ``module`` (sharing its parameters) whose linear layers are :class:`PackedLinear`
    for ``rows`` rows; None where this torch has no MKL or the weights are not float32."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not (torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear") and linears
            and all(m.weight.dtype == torch.float32 for m in linears)):
        return None
    shared = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    packed = copy.deepcopy(module, memo=shared)
    for parent in list(packed.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, PackedLinear(child, rows))
    return packed.eval()


#: inputs of up to this many rows get a trace of their own shape; more rows share one
TRACE_MAX_ROWS = 1
#: the precisions a frozen copy encodes in (:meth:`InferenceForward.for_precision`)
PRECISIONS = ("auto", "float32", "bf16", "int8")


class InferenceForward:
    """A frozen copy of a model's forward for encoding without training, on a CPU.

    Two things make it faster than the model itself: the weights are kept in bf16 where the CPU
    multiplies bf16 natively (AMX / AVX512-BF16: about 3x the document throughput of float32,
    token vectors within cosine 0.9995 of it), and inputs of a fixed shape (queries, always
    ``query_maxlen`` long) run a TorchScript trace made once per shape, which drops Python
    overhead, through ``torch.jit.optimize_for_inference`` (linear layers with pre-transposed
    weights; a one-query encode about 2x faster than untraced). Up to ``TRACE_MAX_ROWS`` rows,
    each shape has its own trace; more rows share one trace per length, kept only if it also
    agrees on a single row (the encoder's graph does not depend on the number of rows: a batch
    of 12 to 16 queries about 13% faster than untraced). A trace is checked against the
    untraced copy and not used if they disagree (then the plain frozen trace is tried).
    Training later does not change this copy: make a new one from the updated model.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype | None = None, trace: bool = True,
                 max_traces: int = 8, int8: bool = False) -> None:
        if dtype is None:
            dtype = torch.bfloat16 if model.device.type == "cpu" and cpu_computes_bf16() and not int8 else torch.float32
        if int8 and dtype != torch.float32:
            raise SettingsError(f"int8 quantisation starts from float32 weights, not {dtype}")
        self.dtype, self.int8 = dtype, int8
        self.module = FrozenForward(copy.deepcopy(model.encoder), copy.deepcopy(model.linear)).to(dtype).eval()
        if int8:  # linear layers' weights in int8 (a scale per output channel), activations quantised per call
            quantization = torch.ao.quantization
            with warnings.catch_warnings():  # torch's note that its quantised tensor types will move
                warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
                self.module = quantization.quantize_dynamic(
                    self.module, {nn.Linear: quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8)
        self.trace, self.max_traces = trace, max_traces
        self._traces: dict[tuple[int, ...], Callable] = {}

    @classmethod
    def for_precision(cls, model: nn.Module, precision: str) -> InferenceForward:
        """A copy in one of :data:`PRECISIONS`: ``auto`` (bf16 where the CPU computes it natively,
        else float32), ``float32``, ``bf16`` (emulated, and slow, where not native) or ``int8``."""
        if precision not in PRECISIONS:
            raise SettingsError(f"query precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        dtype = {"auto": None, "float32": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32}[precision]
        return cls(model, dtype, int8=precision == "int8")

    @property
    def precision(self) -> str:
        """``float32``, ``bf16`` or ``int8``: what this copy computes in."""
        return "int8" if self.int8 else ("bf16" if self.dtype == torch.bfloat16 else "float32")

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 fixed_shape: bool = False) -> torch.Tensor:
        """(B, L) ids and attention mask -> (B, L, dim) float32 unit vectors."""
        with torch.inference_mode():
            if not (fixed_shape and self.trace):
                return self.module(input_ids, attention_mask)
            # a few rows: a trace of each shape; more: one of any number of rows a length
            key = tuple(input_ids.shape) if len(input_ids) <= TRACE_MAX_ROWS else ("rows", input_ids.shape[1])
            if key not in self._traces and len(self._traces) < self.max_traces:
                self._traces[key] = self._make_trace(input_ids, attention_mask, any_rows=key[0] == "rows")
            return self._traces.get(key, self.module)(input_ids, attention_mask)

    def _make_trace(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, any_rows: bool = False) -> Callable:
        # trace with a mask that has padding, so that no "mask is all ones" shortcut is baked in
        example_mask = torch.ones_like(attention_mask)
        example_mask[:, -1] = 0
        hf_logger = logging.getLogger("transformers")
        level = hf_logger.level
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                hf_logger.setLevel(logging.ERROR)  # tracing reads config attributes that it warns about
                def frozen(module=self.module):
                    return torch.jit.freeze(torch.jit.trace(module, (input_ids, example_mask), check_trace=False))

                # one query: MKL's packed GEMM first (about 1.4x optimize_for_inference, which is
                # about 1.3x the plain frozen trace); its packed weights are kept for one shape only
                makers = [lambda: torch.jit.optimize_for_inference(frozen()), frozen]
                packed = packed_copy(self.module, input_ids.numel()) if len(input_ids) == 1 and not self.int8 else None
                if packed is not None:
                    makers.insert(0, lambda: frozen(packed))
                checks = [(input_ids, example_mask), (input_ids, attention_mask)]
                if any_rows:  # and on another number of rows
                    checks.append((input_ids[:1], attention_mask[:1]))
                for make in makers:
                    try:
                        traced = make()
                        if all(_agree(traced, self.module, ids, m) for ids, m in checks):
                            return traced
                    except Exception as err:  # noqa: BLE001 - try the next way, else run untraced
                        logger.debug("a trace for shape %s failed: %s", tuple(input_ids.shape), err)
            raise RuntimeError("no trace agrees with the model")
        except Exception as err:  # noqa: BLE001 - any failure means: run untraced
            logger.debug("not tracing the forward for shape %s: %s", tuple(input_ids.shape), err)
            return self.module
        finally:
            hf_logger.setLevel(level)


def _agree(traced: Callable, module: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> bool:
    return (traced(input_ids, mask) - module(input_ids, mask)).abs().max().item() <= 1e-3


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


#: the config attributes that hold an encoder's attention-probability dropout, by architecture
ATTENTION_DROPOUT_ATTRIBUTES = ("attention_probs_dropout_prob", "attention_dropout")


def attention_dropout_of(encoder: nn.Module) -> float:
    """The dropout an encoder's config puts on its attention probabilities (0 if it names none)."""
    config = getattr(encoder, "config", None)
    return next((float(getattr(config, name)) for name in ATTENTION_DROPOUT_ATTRIBUTES
                 if isinstance(getattr(config, name, None), float)), 0.0)


def set_attention_dropout(encoder: nn.Module, p: float) -> int:
    """Set the dropout on an encoder's attention probabilities to ``p`` while it trains: its config
    (BERT's ``attention_probs_dropout_prob``, ModernBERT's ``attention_dropout``) and every
    attention module's dropout. Returns how many modules changed (0: none was found).

    At 0 a CPU runs attention through PyTorch's fused kernel in training too, instead of
    materialising every attention matrix to drop out of it: 2-4x the training pace on a CPU.
    """
    config = getattr(encoder, "config", None)
    for name in ATTENTION_DROPOUT_ATTRIBUTES:
        if config is not None and isinstance(getattr(config, name, None), float):
            setattr(config, name, p)
    changed = 0
    for module in encoder.modules():
        if "attention" not in type(module).__name__.lower():
            continue
        for name in ("dropout_prob", "attention_dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, p)
                changed += 1
        if isinstance(getattr(module, "dropout", None), nn.Dropout):
            module.dropout.p = p
            changed += 1
    return changed
