"""Sequential composition: W = W₀ + Σ_i U_i V_iᵀ, one matrix product per parameter.

Factors of all edits on a parameter are concatenated to U (d_out, R) and
V (d_in, R); the sum is formed in float32 on the chosen device and cast back to
the base dtype once. Conv1D weights are stored (in, out), so they take V Uᵀ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import DeviceError
from ..model.checkpoint import CONV1D
from ..model.delta import Factors


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; ``cuda`` without a GPU is a :class:`DeviceError`."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for, but CUDA is not available on this machine")
    if resolved.type not in ("cpu", "cuda"):
        raise DeviceError(f"unsupported device {device!r}; use auto, cpu or cuda")
    return resolved


def concat_factors(factors: Sequence[Factors]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the factors of several edits of one parameter: U (d_out, R), V (d_in, R)."""
    if len(factors) == 1:
        return factors[0].U.float(), factors[0].V.float()
    U = torch.cat([f.U.float() for f in factors], dim=1)  # (d_out, R)
    V = torch.cat([f.V.float() for f in factors], dim=1)  # (d_in, R)
    return U, V


def apply_factors(
    weight: torch.Tensor,
    factors: Sequence[Factors],
    *,
    orientation: str,
    device: torch.device,
    consume: bool = False,
) -> torch.Tensor:
    """``weight`` plus the sum of the factors' U Vᵀ, in the weight's own layout, dtype and device.

    ``consume``: ``weight`` is the caller's to give away, so a float32 weight on ``device``
    is updated in place instead of copied.
    """
    if not factors:
        return weight
    U, V = concat_factors(factors)
    w = weight.to(device=device, dtype=torch.float32)  # copies when dtype or device change
    if w.data_ptr() == weight.data_ptr() and not consume:
        w = w.clone()
    U, V = U.to(device), V.to(device)
    if orientation == CONV1D:
        w.addmm_(V, U.T)  # stored (in, out)
    else:
        w.addmm_(U, V.T)  # stored (out, in)
    return w.to(device=weight.device, dtype=weight.dtype)
