"""A user's own networks, for tests/test_custom_networks.py: importable as ``custom_nets``
(pytest puts tests/ on the import path; a subprocess gets it through PYTHONPATH), as a
user's package would be. Only torch: nothing from deepgen."""

from __future__ import annotations

import math

import torch
from torch import nn


class TinyEncoder(nn.Module):
    """x (N, *shape) [, c (N, C)] -> (N, out): flatten, one hidden layer of ``hidden`` units."""

    def __init__(self, shape: list[int], out: int, hidden: int = 32, cond: int = 0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(math.prod(shape) + cond, hidden), nn.Tanh(), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = x.flatten(1)
        return self.net(h if c is None else torch.cat([h, c], dim=1))


class TinyDecoder(nn.Module):
    """z (N, latent) [, c (N, C)] -> (N, params, *shape)."""

    def __init__(self, latent: int, shape: list[int], params: int = 1, hidden: int = 32, cond: int = 0) -> None:
        super().__init__()
        self.shape = (params, *shape)
        self.net = nn.Sequential(nn.Linear(latent + cond, hidden), nn.Tanh(), nn.Linear(hidden, math.prod(self.shape)))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = z if c is None else torch.cat([z, c], dim=1)
        return self.net(h).reshape(len(z), *self.shape)


class TinyGenerator(nn.Module):
    """z (N, noise) [, c (N, C)] -> (N, *shape) before the output activation, with a
    batch-norm layer (its running statistics are buffers, checkpointed with the weights)."""

    def __init__(self, noise: int, shape: list[int], hidden: int = 32, cond: int = 0) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.net = nn.Sequential(nn.Linear(noise + cond, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, math.prod(shape)))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = z if c is None else torch.cat([z, c], dim=1)
        return self.net(h).reshape(len(z), *self.shape)


class TinyDiscriminator(nn.Module):
    """x (N, *shape) [, c (N, C)] -> (logits (N,), features (N, hidden))."""

    def __init__(self, shape: list[int], hidden: int = 32, cond: int = 0) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(math.prod(shape) + cond, hidden), nn.LeakyReLU(0.2))
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = x.flatten(1)
        features = self.body(h if c is None else torch.cat([h, c], dim=1))
        return self.out(features).squeeze(1), features


class TinyDenoiser(nn.Module):
    """A diffusion denoiser: x_t (N, *shape), t (N,) float, cond (N,) int64 class indices
    0..C (C: no label) or None -> (N, *shape); the timestep and the class enter as inputs."""

    def __init__(self, shape: list[int], hidden: int = 32, classes: int = 0) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.embed = nn.Embedding(classes + 1, hidden) if classes else None
        self.inp = nn.Linear(math.prod(shape) + 1, hidden)
        self.out = nn.Linear(hidden, math.prod(shape))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.inp(torch.cat([x.flatten(1), t.reshape(-1, 1) / 1000], dim=1))
        if self.embed is not None and cond is not None:
            h = h + self.embed(cond)
        return self.out(torch.tanh(h)).reshape(len(x), *self.shape)


class Namespace:
    """Classes nested in a class are importable by their qualified name too."""

    class Encoder(TinyEncoder):
        pass
