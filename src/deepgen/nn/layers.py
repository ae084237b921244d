"""MLP and convolutional encoder/decoder networks shared by the families.

Encoders map data (N, *shape) to features (N, out_dim); decoders map codes (N, in_dim) to
``P`` output maps per data element, (N, P, *shape), the layout the likelihood heads take.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import UserError, did_you_mean

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise UserError(f"unknown activation {name!r}. {did_you_mean(name, list(ACTIVATIONS))}")
    return ACTIVATIONS[name]()


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, act: str = "relu") -> nn.Sequential:
    """Linear -> act -> ... -> Linear: (N, in_dim) -> (N, out_dim), no final activation."""
    dims = [in_dim, *hidden]
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), activation(act)]
    layers.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """(N, *shape) [+ (N, c) condition] -> (N, out_dim) through an MLP."""

    def __init__(self, shape: Sequence[int], hidden: Sequence[int], out_dim: int, act: str = "relu", cond_dim: int = 0) -> None:
        super().__init__()
        self.net = mlp(math.prod(shape) + cond_dim, hidden, out_dim, act)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (N, *shape), ``cond`` (N, c) or None -> (N, out_dim)."""
        h = x.reshape(len(x), -1)
        if cond is not None:
            h = torch.cat([h, cond], dim=1)
        return self.net(h)


class MLPDecoder(nn.Module):
    """(N, in_dim) [+ (N, c) condition] -> (N, P, *shape) through an MLP."""

    def __init__(self, in_dim: int, hidden: Sequence[int], shape: Sequence[int], num_params: int = 1, act: str = "relu", cond_dim: int = 0) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.num_params = num_params
        self.net = mlp(in_dim + cond_dim, hidden, num_params * math.prod(shape), act)

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``z`` (N, in_dim), ``cond`` (N, c) or None -> (N, P, *shape) head parameters."""
        if cond is not None:
            z = torch.cat([z, cond], dim=1)
        return self.net(z).reshape(len(z), self.num_params, *self.shape)


def _conv_size(n: int, layers: int) -> int:
    for _ in range(layers):
        n = n // 2  # Conv2d(kernel 4, stride 2, padding 1) halves and floors
    return n


class ConvEncoder(nn.Module):
    """(N, C, H, W) [+ condition] -> (N, out_dim): stride-2 4x4 convs, then a linear layer.

    A condition (N, c) is broadcast as c extra constant input channels.
    """

    def __init__(self, shape: Sequence[int], channels: Sequence[int], out_dim: int, act: str = "relu", cond_dim: int = 0) -> None:
        super().__init__()
        c, h, w = shape
        if min(h, w) < 2 ** len(channels):
            raise UserError(f"images of {h}x{w} are too small for {len(channels)} stride-2 conv layers; use fewer channels entries.")
        layers: list[nn.Module] = []
        prev = c + cond_dim
        for ch in channels:
            layers += [nn.Conv2d(prev, ch, 4, stride=2, padding=1), activation(act)]
            prev = ch
        self.convs = nn.Sequential(*layers)
        flat = prev * _conv_size(h, len(channels)) * _conv_size(w, len(channels))
        self.head = nn.Linear(flat, out_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (N, C, H, W), ``cond`` (N, c) or None -> (N, out_dim)."""
        if cond is not None:
            x = torch.cat([x, cond[:, :, None, None].expand(-1, -1, *x.shape[2:])], dim=1)
        return self.head(self.convs(x).flatten(1))


class ConvDecoder(nn.Module):
    """(N, in_dim) [+ condition] -> (N, P, C, H, W): a linear layer, then stride-2 4x4
    transposed convs; the output is cropped to (H, W), so any image size works."""

    def __init__(self, in_dim: int, channels: Sequence[int], shape: Sequence[int], num_params: int = 1, act: str = "relu", cond_dim: int = 0) -> None:
        super().__init__()
        c, h, w = shape
        n_up = len(channels)
        self.shape = (c, h, w)
        self.num_params = num_params
        self.h0, self.w0 = math.ceil(h / 2**n_up), math.ceil(w / 2**n_up)
        chans = list(reversed(channels))  # widest first
        self.c0 = chans[0]
        self.fc = nn.Sequential(nn.Linear(in_dim + cond_dim, self.c0 * self.h0 * self.w0), activation(act))
        layers: list[nn.Module] = []
        for i in range(n_up):
            out = chans[i + 1] if i + 1 < n_up else num_params * c
            layers.append(nn.ConvTranspose2d(chans[i], out, 4, stride=2, padding=1))
            if i + 1 < n_up:
                layers.append(activation(act))
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``z`` (N, in_dim), ``cond`` (N, c) or None -> (N, P, C, H, W) head parameters."""
        if cond is not None:
            z = torch.cat([z, cond], dim=1)
        c, h, w = self.shape
        out = self.deconvs(self.fc(z).reshape(len(z), self.c0, self.h0, self.w0))
        return out[:, :, :h, :w].reshape(len(z), self.num_params, c, h, w)


def make_encoder(network: str, shape: Sequence[int], hidden: Sequence[int], channels: Sequence[int], out_dim: int, act: str, cond_dim: int = 0) -> nn.Module:
    """``network="mlp"`` (any shape) or ``"conv"`` (images (C, H, W) only)."""
    if network == "conv":
        if len(shape) != 3:
            raise UserError(f"network='conv' needs image data (C, H, W); this data has shape {tuple(shape)}. Use network=mlp.")
        return ConvEncoder(shape, channels, out_dim, act, cond_dim)
    return MLPEncoder(shape, hidden, out_dim, act, cond_dim)


def make_decoder(network: str, in_dim: int, hidden: Sequence[int], channels: Sequence[int], shape: Sequence[int], num_params: int, act: str, cond_dim: int = 0) -> nn.Module:
    """The mirror of :func:`make_encoder`: (N, in_dim) -> (N, num_params, *shape)."""
    if network == "conv":
        if len(shape) != 3:
            raise UserError(f"network='conv' needs image data (C, H, W); this data has shape {tuple(shape)}. Use network=mlp.")
        return ConvDecoder(in_dim, channels, shape, num_params, act, cond_dim)
    return MLPDecoder(in_dim, list(reversed(hidden)), shape, num_params, act, cond_dim)
