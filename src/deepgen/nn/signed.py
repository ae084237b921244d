"""The centred data space of the GANs and of diffusion: images on [-1, 1].

Both families work on centred values (DCGAN's tanh convention, Radford et al. 2016; DDPM's
data scaling, Ho et al. 2020 sec. 4): images (binary, continuous in [0, 1], or discrete
levels 0..L-1) are mapped linearly to [-1, 1]; ``real`` data (tables, 2-D points, already
standardised) is used as it is. :func:`from_signed` maps back to the data's own kind.
"""

from __future__ import annotations

import torch

from ..data.dataset import DataSpec


def to_signed(x: torch.Tensor, spec: DataSpec) -> torch.Tensor:
    """Data (N, *shape) of ``spec``'s kind -> the centred space: [-1, 1] for images
    (level k of L -> -1 + 2k / (L - 1)), unchanged for real data."""
    if spec.kind == "real":
        return x
    if spec.kind == "discrete":
        x = x / (spec.num_levels - 1)
    return 2 * x - 1


def from_signed(a: torch.Tensor, spec: DataSpec, generator: torch.Generator | None = None, mean: bool = False) -> torch.Tensor:
    """Centred values (N, *shape) in [-1, 1] -> data of ``spec``'s kind, u = (a + 1) / 2:
    continuous data gets u; binary data a Bernoulli draw of probability u (the 0.5
    threshold with ``mean=True``); discrete data the nearest level; real data is unchanged.
    Values outside [-1, 1] are clamped first (a diffusion sample may overshoot)."""
    kind = spec.kind
    if kind == "real":
        return a
    u = ((a + 1) / 2).clamp(0.0, 1.0)
    if kind == "binary":
        return (u > 0.5).to(u.dtype) if mean else torch.bernoulli(u, generator=generator)
    if kind == "discrete":
        return torch.round(u * (spec.num_levels - 1))
    return u
