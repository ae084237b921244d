"""Masked layers for autoregressive networks: MADE (Germain et al. 2015), shared by the
autoregressive family's ``made`` and the flow family's MAF (Papamakarios et al. 2017).

MADE makes an MLP autoregressive by masking its weights. Every input dimension d gets a
degree m(d) in 1..D (its position in the order); every hidden unit k of layer l a degree
m_l(k) in [min_{l-1}, D - 1]; a weight from unit j to hidden unit k is kept when
m_l(k) >= m_{l-1}(j), and a weight from hidden unit k to output d when m(d) > m_L(k)
(Germain et al. 2015, eqs. 12-13). Output d then depends only on inputs of smaller degree,
that is on the inputs before d in the order. A context vector (class labels) may feed every
hidden layer unmasked: it is not part of x. The first dimension in the order has no hidden
unit below it, so it sees the context only through ``context_output`` (on by default): an
unmasked linear map from the context to every output as well. Without it a conditional
model's first dimension would ignore the condition (p(x_1 | y) = p(x_1)); an inverse
autoregressive flow needs it too (Kingma et al. 2016: every dimension's shift and gate
depend on the encoder's h).

Connectivity-agnostic training (sec. 3.2): :class:`MADE` holds ``num_masks`` mask sets
(orders and hidden degrees drawn from one seed each) as buffers, and
:meth:`MADE.next_mask` moves to the next set in place on the device, so a captured training
step can cycle through them. Shapes: ``N`` batch, ``D`` dimensions, ``P`` outputs per
dimension, ``C`` context width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class MaskedLinear(nn.Linear):
    """``y = x (W * M)^T + b`` with a fixed 0/1 mask ``M`` (out, in) chosen per call from a
    stack of masks (K, out, in) by a 0-d device index (no host sync)."""

    def __init__(self, in_features: int, out_features: int, masks: torch.Tensor, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        if masks.shape[1:] != (out_features, in_features):
            raise ValueError(f"masks {tuple(masks.shape)} do not fit a {in_features} -> {out_features} layer")
        self.register_buffer("masks", masks.to(self.weight.dtype))

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, in) -> (N, out); ``index`` picks the mask set (0-d int64 tensor; None: 0)."""
        mask = self.masks[0] if index is None else self.masks.index_select(0, index.reshape(1))[0]
        return F.linear(x, self.weight * mask, self.bias)


def made_degrees(
    d: int, hidden: Sequence[int], generator: torch.Generator, *, order: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """Degrees of the input and hidden units of one MADE mask set.

    Input degrees: position + 1 of each dimension in ``order`` (a permutation of 0..D-1;
    None: a random one from ``generator``). Hidden degrees: uniform in
    [min degree of the layer below, D - 1] (Germain et al. 2015, sec. 4), so no unit is
    disconnected. Returns [input (D,), hidden_1 (H1,), ...], int64.
    """
    if order is None:
        order = torch.randperm(d, generator=generator)
    degrees = [torch.empty(d, dtype=torch.long)]
    degrees[0][order] = torch.arange(1, d + 1)
    low = 1
    for h in hidden:
        high = max(low, d - 1)
        deg = torch.randint(low, high + 1, (h,), generator=generator) if d > 1 else torch.ones(h, dtype=torch.long)
        degrees.append(deg)
        low = int(deg.min())
    return degrees


def made_masks(degrees: list[torch.Tensor], out_per_dim: int) -> list[torch.Tensor]:
    """Masks (out, in) of each layer from :func:`made_degrees`: hidden layers keep
    m_l(k) >= m_{l-1}(j); the output layer (D * P units, dimension-major: unit d * P + p)
    keeps m(d) > m_L(k)."""
    masks = [(degrees[i + 1][:, None] >= degrees[i][None, :]).float() for i in range(len(degrees) - 1)]
    out_deg = degrees[0].repeat_interleave(out_per_dim)  # (D * P,)
    masks.append((out_deg[:, None] > degrees[-1][None, :]).float())
    return masks


class MADE(nn.Module):
    """A masked autoencoder for distribution estimation: x (N, D) [+ context (N, C)] ->
    outputs (N, D, P), output d depending only on the inputs before d in the order.

    ``num_masks`` mask sets (seeded by ``seed``; set 0 uses ``natural_order`` when asked,
    the identity order) are kept as buffers; :attr:`mask_index` (a 0-d buffer) says which
    is in use. ``order_agnostic=False`` keeps every set's order the identity and varies only
    the hidden connectivity. ``context_output`` (default True): the context (N, C) also
    reaches the outputs directly (unmasked), so that output 1 depends on it too.
    """

    def __init__(
        self,
        d: int,
        hidden: Sequence[int],
        out_per_dim: int = 1,
        *,
        context: int = 0,
        num_masks: int = 1,
        order_agnostic: bool = False,
        seed: int = 0,
        activation: type[nn.Module] = nn.ReLU,
        context_output: bool = True,
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("MADE needs at least one hidden layer")
        self.d, self.out_per_dim, self.num_masks = d, out_per_dim, num_masks
        gen = torch.Generator().manual_seed(seed)
        sets, orders = [], []
        for k in range(num_masks):
            order = torch.randperm(d, generator=gen) if order_agnostic and k > 0 else torch.arange(d)
            degrees = made_degrees(d, hidden, gen, order=order)
            sets.append(made_masks(degrees, out_per_dim))
            orders.append(order)
        sizes = [d, *hidden, d * out_per_dim]
        self.layers = nn.ModuleList(
            MaskedLinear(sizes[i], sizes[i + 1], torch.stack([s[i] for s in sets])) for i in range(len(sizes) - 1)
        )
        # The context reaches every hidden layer, unmasked (it is not part of x).
        self.context = nn.ModuleList(nn.Linear(context, h, bias=False) for h in hidden) if context else None
        # ... and, when asked, every output too (the first dimension's only way to see it).
        self.context_out = nn.Linear(context, d * out_per_dim, bias=False) if context and context_output else None
        self.act = activation()
        self.register_buffer("orders", torch.stack(orders))  # (K, D): order k's position -> dimension
        self.register_buffer("mask_index", torch.zeros((), dtype=torch.long))

    def order(self, k: int | None = None) -> torch.Tensor:
        """The order (D,) of mask set ``k`` (None: the one in use): position i -> dimension."""
        return self.orders[int(self.mask_index) if k is None else k]

    @torch.no_grad()
    def next_mask(self) -> None:
        """Move to the next mask set, in place on the device (graph-safe)."""
        if self.num_masks > 1:
            self.mask_index.add_(1).remainder_(self.num_masks)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, index: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, D) -> (N, D, P) with mask set ``index`` (0-d tensor; None: :attr:`mask_index`)."""
        index = self.mask_index if index is None else index
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h, index)
            if i < len(self.layers) - 1:
                if self.context is not None and context is not None:
                    h = h + self.context[i](context)
                h = self.act(h)
        if self.context_out is not None and context is not None:
            h = h + self.context_out(context)
        return h.reshape(len(x), self.d, self.out_per_dim)
