"""The precision a training step computes in: bf16 autocast on CUDA and on CPUs that multiply
bf16 natively (AMX or AVX512-BF16; :func:`~maxsim.model.inference.cpu_computes_bf16`, which
``MAXSIM_CPU_BF16=0/1`` overrides), float32 elsewhere. The weights, their gradients and the
optimizer state stay float32 either way (autocast computes matrix products in bf16 and keeps
the master weights); the loss and the MaxSim sums are float32."""

from __future__ import annotations

import contextlib
import os

import torch

from maxsim.model.inference import CPU_BF16_ENV, cpu_computes_bf16


def uses_bf16(device: torch.device) -> bool:
    """Whether training on ``device`` runs under bf16 autocast."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_computes_bf16())


def training_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast a training forward runs under on ``device`` (off where :func:`uses_bf16` is false)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(device))


def describe(device: torch.device) -> str:
    """The training precision on ``device``, for the log."""
    if device.type == "cuda":
        return "bf16 autocast (CUDA), float32 weights and optimizer state"
    forced = os.environ.get(CPU_BF16_ENV, "").strip() in ("0", "1")
    if uses_bf16(device):
        why = f"as {CPU_BF16_ENV}=1 asks" if forced else f"native bf16 here; {CPU_BF16_ENV}=0 for float32"
        return f"bf16 autocast ({why}), float32 weights and optimizer state"
    why = f"as {CPU_BF16_ENV}=0 asks" if forced else f"this CPU has no native bf16; {CPU_BF16_ENV}=1 forces bf16"
    return f"float32 ({why})"
