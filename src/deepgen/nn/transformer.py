"""A decoder-only Transformer block with a preallocated key/value cache.

nanoGPT's block (Radford et al. 2019, GPT-2): pre-norm, ``x + attn(ln(x))`` then
``x + mlp(ln(x))``, causal multi-head self-attention through
``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels on
the GPU), a 4x GELU MLP. Decoding reuses the keys and values of earlier positions: a
:class:`KVCache` holds them for every layer, preallocated to the maximum length, so
sampling one position costs one pass over one token (Pope et al. 2022; nanoGPT itself
never merged a cache and re-runs the whole context per token).

Shapes: ``B`` batch, ``T`` positions in this call, ``E`` width, ``H`` heads, ``hd = E / H``,
``S`` cache length.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class KVCache:
    """Keys and values of every layer: (L, B, H, S, hd) each, filled position by position."""

    def __init__(self, layers: int, batch: int, heads: int, length: int, head_dim: int, device: torch.device, dtype: torch.dtype) -> None:
        shape = (layers, batch, heads, length, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = length


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: (B, T, E) -> (B, T, E)."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be a multiple of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=bias)
        self.proj = nn.Linear(width, width, bias=bias)
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, start: int | torch.Tensor = 0) -> torch.Tensor:
        """Without a cache: causal attention over the T positions of x. With one: x holds
        positions start..start+T-1; their keys/values are written into ``cache`` (layer
        ``layer``) and each query attends to every cached position up to its own.

        ``start`` as a 0-d int64 tensor (one position, T = 1) is the fixed-shape decoding
        step: the key/value go to that cache slot and the query attends to the whole cache
        under a mask of the slots <= start, so the shapes, and a CUDA graph of the step, do
        not depend on the position."""
        b, t, e = x.shape
        q, k, v = self.qkv(x).split(e, dim=2)
        q, k, v = (z.view(b, t, self.heads, e // self.heads).transpose(1, 2) for z in (q, k, v))  # (B, H, T, hd)
        p = self.dropout if self.training else 0.0
        if isinstance(start, torch.Tensor):
            if cache is None or t != 1:
                raise ValueError("a tensor start is the one-position cached step: pass a cache and one position")
            slot = start.reshape(1)
            cache.k[layer, :b].index_copy_(2, slot, k.to(cache.k.dtype))  # under autocast k is bf16, the cache the model's dtype
            cache.v[layer, :b].index_copy_(2, slot, v.to(cache.v.dtype))
            allowed = torch.arange(cache.length, device=x.device) <= start  # (S,): the slots written so far
            y = F.scaled_dot_product_attention(q, cache.k[layer, :b], cache.v[layer, :b], attn_mask=allowed.view(1, 1, 1, -1))
        elif cache is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            if start + t > cache.length or b > cache.k.shape[1]:
                # A slice past the end would be cut short and fail as a shape mismatch (or,
                # for a larger batch, write only part of it): say what does not fit.
                raise ValueError(
                    f"positions {start}..{start + t - 1} of {b} sequences do not fit a cache of "
                    f"{cache.length} positions for {cache.k.shape[1]} sequences"
                )
            cache.k[layer, :b, :, start : start + t] = k
            cache.v[layer, :b, :, start : start + t] = v
            keys, values = cache.k[layer, :b, :, : start + t], cache.v[layer, :b, :, : start + t]  # (B, H, start+T, hd)
            if t == 1:
                y = F.scaled_dot_product_attention(q, keys, values)  # one query sees every cached key
            else:
                # Query i (absolute start + i) sees keys j <= start + i.
                allowed = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(start)
                y = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed)
        y = y.transpose(1, 2).contiguous().view(b, t, e)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(ln1(x)), then + mlp(ln2(x)); (B, T, E) -> (B, T, E)."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width, bias=bias)
        self.attn = CausalSelfAttention(width, heads, dropout, bias)
        self.ln2 = nn.LayerNorm(width, bias=bias)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width, bias=bias), nn.GELU(), nn.Linear(4 * width, width, bias=bias), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, start: int | torch.Tensor = 0) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache, layer, start)
        return x + self.mlp(self.ln2(x))


def init_gpt_weights(module: nn.Module, layers: int) -> None:
    """GPT-2's initialisation (nanoGPT's ``_init_weights``): N(0, 0.02) for linear and
    embedding weights, zero biases, and N(0, 0.02 / sqrt(2 L)) for the residual projections
    (attention ``proj`` and the MLP's last linear), which keeps the residual stream's
    variance from growing with depth."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)
    for name, p in module.named_parameters():
        if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
            nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * layers))
