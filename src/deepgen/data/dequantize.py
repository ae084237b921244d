"""Uniform dequantization: the one convention, used by training and evaluation alike.

Quantised data holds levels k in 0..L-1; deepgen's model space shows them as k / (L - 1)
in [0, 1] (``continuous``) or as the integers k (``discrete``). A density model of such
data is trained and scored on

    y = (k + u) / L in [0, 1),   u ~ U[0, 1)^D,

the convention of the flow papers (Dinh et al. 2017; Kingma & Dhariwal 2018; Theis et al.
2016, sec. 3.1), so that level k owns the bin [k / L, (k + 1) / L) of width
``DataSpec.bin_width`` = 1 / L and

    -log P(k) <= E_u[-log p(y)] - D log(1 / L),
    bits/dim = (NLL / D + ln L) / ln 2,

which is the figure of the published tables (BENCHMARKS.md: ln 256 for 8-bit images). Every
y stays inside [0, 1), so a density on [0, 1] (a flow's logit transform) is finite there.
"""

from __future__ import annotations

import torch

from .dataset import DataSpec


def levels_of(x: torch.Tensor, spec: DataSpec) -> torch.Tensor:
    """The integer levels k (float, same shape) of quantised model-space values ``x``."""
    if spec.num_levels is None:
        raise ValueError(f"{spec.name or 'this data'!r} has no quantisation levels")
    if spec.kind == "discrete":
        return x.round()
    return (x * (spec.num_levels - 1)).round()


def dequantize(x: torch.Tensor, spec: DataSpec, generator: torch.Generator | None = None) -> torch.Tensor:
    """Quantised model-space values x (B, *shape) -> y = (k + u) / L, u ~ U[0, 1): in [0, 1)
    exactly, in [0, 1] in float32, which rounds (L - 1 + u) / L to 1.0 for u within about
    3e-8 of 1 (quantize still gives the top level back; the flows' logit is exact there).

    ``generator`` (on x's device) draws u; None uses torch's global generator (graph-safe,
    so a captured training step draws new noise at every replay). Data without levels
    (``spec.bin_width`` None) is returned unchanged.
    """
    if spec.bin_width is None:
        return x
    k = levels_of(x, spec)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype if x.dtype.is_floating_point else torch.float32)
    return (k + u) * spec.bin_width


def nearest_level(x: torch.Tensor, spec: DataSpec) -> torch.Tensor:
    """Continuous values ``x`` in [0, 1] put on the nearest level k / (L - 1) of quantised
    data (8-bit images); other data unchanged. What a sampler whose output lands anywhere in
    [0, 1] (diffusion, a GAN's tanh) returns, so that samples are values of the data.

    Half-precision input (a bf16 or float16 model's output) comes back in float32: bfloat16
    cannot hold k / 255 (it rounds by up to half a level), so in the model's own dtype the
    "levels" would not be the data's values."""
    if spec.kind != "continuous" or not spec.num_levels:
        return x
    if x.is_floating_point() and torch.finfo(x.dtype).bits < 32:
        x = x.float()
    return levels_of(x, spec) / (spec.num_levels - 1)


def quantize(y: torch.Tensor, spec: DataSpec) -> torch.Tensor:
    """The inverse: y in [0, 1) -> model-space values of level floor(y * L) (clamped to 0..L-1)."""
    if spec.num_levels is None:
        return y
    k = (y * spec.num_levels).floor().clamp(0, spec.num_levels - 1)
    return k if spec.kind == "discrete" else k / (spec.num_levels - 1)
