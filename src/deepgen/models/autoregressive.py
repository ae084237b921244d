"""Autoregressive models: MADE, the Gated PixelCNN and a decoder-only Transformer.

An autoregressive model factorises p(x) = prod_i p(x_{o(i)} | x_{o(<i)}) in an order o
and computes every conditional with one network pass whose output i sees only the inputs
before i: masked weights (MADE), masked convolutions (PixelCNN) or causal attention (the
Transformer). The log-likelihood is exact and sampling is sequential, one position (or,
for the PixelCNN, one pixel's channels) at a time.

The chapter, top to bottom:

1. configs: :class:`AutoregressiveConfig` (what all three share: conditioning, the output
   distribution, the sampling knobs ``temperature`` and ``top_k``), then one per model;
2. :class:`Autoregressive` (not registered): the part the three share: the exact
   ``log_prob``, the loss, sampling and completion by position, tempering, the contract's
   ``ordering`` / ``position_outputs``; each model supplies its network's outputs;
3. :class:`MADEModel` (``made``, Germain et al. 2015): masked MLP, several connectivity
   masks cycled during training and averaged at evaluation;
4. :class:`GatedPixelCNN` (``pixelcnn``, van den Oord et al. 2016): vertical and horizontal
   stacks of gated masked convolutions (no blind spot), mask A then B, class-conditional;
5. :class:`TransformerModel` (``transformer``): nanoGPT's decoder-only Transformer over
   characters or pixel tokens, weight decay on matrices only, decoding with a
   preallocated key/value cache.

Outputs. MADE and the PixelCNN give the parameters of a likelihood head of
:mod:`deepgen.nn.likelihoods` for every element, laid out (N, P, *shape): Bernoulli logits
for binary data, a categorical over the levels (or token ids), or the PixelCNN++ logistic
mixture; every one is a probability of discrete values, so ``log_prob`` is exact and needs
no dequantization. The Transformer works on integer ids and a softmax over them.

Shapes: ``N`` batch, ``D`` elements of one example, ``T`` positions, ``P`` head parameters
per element, ``V`` values per position, ``C`` classes, ``E`` Transformer width.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..data.dataset import Batch, DataSpec, Kind
from ..errors import UserError
from ..nn.likelihoods import (
    HEADS,
    Bernoulli,
    Categorical,
    LikelihoodHead,
    at_least_float32,
    make_head,
)
from ..nn.masked import MADE
from ..nn.transformer import Block, KVCache, init_gpt_weights
from ..optim import OptimizerSpec, decay_groups
from ..registry import register
from .base import GenerativeModel, Likelihood, LossOutput, ModelConfig, Phase

# -- 1. configs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AutoregressiveConfig(ModelConfig):
    """Settings every autoregressive model has. ``temperature`` and ``top_k`` are sampling
    knobs (overridable when a run is loaded: ``deepgen sample RUN --set temperature=0.8``)."""

    load_time: ClassVar[frozenset[str]] = frozenset({"temperature", "top_k"})
    sampling: ClassVar[frozenset[str]] = frozenset({"temperature", "top_k"})
    conditional: bool = False  # class-conditional: p(x | y)
    likelihood: str = "auto"  # output distribution: auto = bernoulli (binary) or categorical (levels, tokens)
    components: int = 5  # mixture components of the "logistic-mixture" output
    temperature: float = 1.0  # sampling: logits divided by it (1 = the model's own distribution)
    top_k: int = 0  # sampling: draw among the k most likely values only (0 = all)

    def validate(self) -> None:
        self.check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        self.check(
            self.likelihood in ("auto", "bernoulli", "categorical", "logistic-mixture"),
            f"unknown likelihood {self.likelihood!r} for an autoregressive model. Accepted: auto, bernoulli, categorical, logistic-mixture.",
        )
        self.check(self.components >= 1, f"components must be >= 1, got {self.components}")
        self.check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        self.check(self.top_k >= 0, f"top_k must be >= 0 (0 = all), got {self.top_k}")


@dataclass(frozen=True)
class MADEConfig(AutoregressiveConfig):
    """Settings of ``made``."""

    hidden: tuple[int, ...] = (500,)  # masked hidden layers (Germain et al.'s MNIST model: one of 500)
    num_masks: int = 1  # connectivity masks cycled during training, averaged at evaluation (32 in the paper)
    order_agnostic: bool = False  # masks after the first also draw a random input order

    def validate(self) -> None:
        super().validate()
        self.check(len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden), f"hidden must be one or more sizes >= 1, got {self.hidden}")
        self.check(self.num_masks >= 1, f"num_masks must be >= 1, got {self.num_masks}")


@dataclass(frozen=True)
class PixelCNNConfig(AutoregressiveConfig):
    """Settings of ``pixelcnn``."""

    channels: int = 64  # feature maps of each stack (the paper: 128 on CIFAR)
    layers: int = 8  # gated layers: the first with mask A, the others mask B
    kernel: int = 3  # kernel of the mask-B layers (odd)
    first_kernel: int = 7  # kernel of the mask-A layer (odd)
    out_hidden: int = 256  # width of the 1x1 output network
    dropout: float = 0.0  # on each gated layer's horizontal output before its 1x1 conv, in training (PixelCNN++ uses 0.5)

    def validate(self) -> None:
        super().validate()
        self.check(self.channels >= 1 and self.layers >= 1 and self.out_hidden >= 1, "channels, layers and out_hidden must be >= 1")
        self.check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        self.check(self.kernel % 2 == 1 and self.first_kernel % 2 == 1, f"kernels must be odd, got {self.kernel} and {self.first_kernel}")
        # Mask A takes the current row out of a 1x1 vertical kernel and the current pixel out
        # of a 1x1 horizontal one: nothing is left, and the network would ignore its input.
        self.check(self.first_kernel >= 3, f"first_kernel (the mask-A layer's) must be an odd number >= 3, got {self.first_kernel}")


@dataclass(frozen=True)
class TransformerConfig(AutoregressiveConfig):
    """Settings of ``transformer`` (defaults: nanoGPT's shakespeare_char model)."""

    load_time: ClassVar[frozenset[str]] = AutoregressiveConfig.load_time | {"decode_graph"}
    sampling: ClassVar[frozenset[str]] = AutoregressiveConfig.sampling | {"decode_graph"}
    lr: float = 1e-3
    layers: int = 6
    heads: int = 6
    width: int = 384
    dropout: float = 0.2
    bias: bool = False  # biases in linear layers and layer norms (nanoGPT: False is a little better and faster)
    weight_decay: float = 0.1  # AdamW, on matrices and embeddings only (nanoGPT's split)
    betas: tuple[float, ...] = (0.9, 0.99)
    levels: int = 0  # pixel tokens: quantise each pixel's levels to this many ids (0 = all)
    decode_graph: bool = True  # on CUDA, sampling replays the one-position decoding step as a CUDA graph

    def validate(self) -> None:
        super().validate()
        self.check(self.layers >= 1 and self.heads >= 1 and self.width >= 1, "layers, heads and width must be >= 1")
        self.check(self.width % self.heads == 0, f"width ({self.width}) must be a multiple of heads ({self.heads})")
        self.check(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        self.check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        self.check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"betas must be two numbers in [0, 1), got {self.betas}")
        self.check(self.levels == 0 or self.levels >= 2, f"levels must be 0 (all) or >= 2, got {self.levels}")


# -- 2. what the three models share ----------------------------------------------------------


def _temper(logits: torch.Tensor, temperature: float, top_k: int, dim: int) -> torch.Tensor:
    """Logits for sampling: divided by ``temperature``; with ``top_k`` > 0 everything below
    the k-th largest along ``dim`` set to -inf (Fan et al. 2018)."""
    if temperature != 1.0:
        # The largest logit subtracted first (the softmax is the same): at a tiny temperature
        # the quotients would overflow to +inf, and every +inf would tie as the most likely.
        logits = (logits - logits.amax(dim=dim, keepdim=True)) / temperature
    if top_k and top_k < logits.shape[dim]:
        kth = logits.topk(top_k, dim=dim).values.narrow(dim, top_k - 1, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits


def _temper_bernoulli(logits: torch.Tensor, temperature: float, top_k: int) -> torch.Tensor:
    """:func:`_temper` for Bernoulli logits l (any shape): l is the two-way categorical's
    (0, l), so l / temperature, and ``top_k`` = 1 keeps the more likely value only (l to
    +-inf; a tie keeps both); ``top_k`` >= 2 keeps both values."""
    if temperature != 1.0:
        logits = logits / temperature  # +-inf at a tiny temperature: the sigmoid saturates, as it should
    if top_k == 1:
        inf = torch.full_like(logits, float("inf"))
        logits = torch.where(logits > 0, inf, torch.where(logits < 0, -inf, logits))
    return logits


def _value_dtype(spec: DataSpec, model_dtype: torch.dtype) -> torch.dtype:
    """The dtype of sampled or completed data: int64 ids for tokens, else the model's
    floating dtype but at least float32 (bfloat16 cannot hold k / 255: a bf16 model's
    samples would sit up to half a level off the data's own values)."""
    return torch.long if spec.kind == "tokens" else torch.promote_types(model_dtype, torch.float32)


class Autoregressive(GenerativeModel):
    """Shared part of the autoregressive models (not registered).

    A subclass provides :meth:`head_params` (the head parameters (N, P, *shape) of every
    element, each depending only on earlier positions) and :meth:`steps` (the sampling
    order as groups of flat element indices; the elements of one group are conditionally
    independent given the earlier groups). Everything else follows: the exact log-likelihood,
    the loss, sampling and completion, and the contract's autoregressive capability.
    """

    config: AutoregressiveConfig
    data_kinds: ClassVar[tuple[Kind, ...]] = ("binary", "continuous", "discrete", "tokens")
    #: Every sample is a draw, position by position (there is no mean without drawing the earlier positions).
    output_mean: ClassVar[bool] = False

    def __init__(self, config: AutoregressiveConfig, spec: DataSpec) -> None:
        super().__init__(config, spec, conditional=config.conditional)

    def _make_head(self) -> LikelihoodHead:
        """The output distribution for this data: probabilities of its discrete values only."""
        spec, name = self.spec, self.config.likelihood
        if spec.kind == "continuous" and spec.num_levels is None:
            raise UserError(
                f"the {self.registered_name} models discrete values, but {spec.name or 'this dataset'!r} is continuous "
                "without quantisation levels. Use quantised data (8-bit images, binary pixels)."
            )
        if name == "auto":
            name = "bernoulli" if spec.kind == "binary" else "categorical"
        if name not in HEADS:
            raise UserError(f"unknown likelihood {name!r}")
        head = make_head(name, spec, components=self.config.components)
        if not head.discrete:
            raise UserError(f"likelihood {name!r} is not a probability of discrete values: {self.registered_name} needs one.")
        return head

    # -- the network's outputs (subclasses) ----------------------------------------------------
    def head_params(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """Head parameters (N, P, *shape) for x (N, *shape) and one-hot labels c (N, C) or None."""
        raise NotImplementedError

    def steps(self) -> list[torch.Tensor]:
        """The sampling order: groups of flat element indices (int64), first to last."""
        raise NotImplementedError

    # -- likelihood and loss --------------------------------------------------------------
    def likelihood_info(self) -> Likelihood:
        return Likelihood("exact", True, "exact")

    def log_prob(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x) per example (N,), exact, in nats (a probability of the data's discrete values)."""
        return -self._nll(self.head_params(x, self.one_hot(cond, len(x))), x)

    def _nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The head's NLL (N,) from parameters upcast to float32: a bf16 model's per-element
        terms summed in bf16 are off by several nats over a few hundred elements (autocast
        upcasts cross-entropy itself; a model converted with ``.bfloat16()`` does not)."""
        return self.head.nll(at_least_float32(params), x)

    def loss(self, batch: Batch, phase: str = "main") -> LossOutput:
        """Mean NLL over the batch (nats per example); logs ``nll`` and ``bits_per_dim``."""
        c = self.one_hot(batch.y, len(batch.x), checked=False)
        nll = self._nll(self.head_params(batch.x, c), batch.x).mean()
        return LossOutput(nll, {"nll": nll.detach(), "bits_per_dim": nll.detach() / (self.spec.dim * math.log(2))})

    # -- the contract's autoregressive capability ------------------------------------------------
    def ordering(self) -> torch.Tensor:
        """Flat element index of each position, (T,) with T = D."""
        return torch.cat(self.steps())

    def position_outputs(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Head parameters of each position in the order: (N, T, P)."""
        params = self.head_params(x, self.one_hot(cond, len(x)))
        flat = params.reshape(len(x), params.shape[1], -1)  # (N, P, D)
        return flat[:, :, self.ordering()].transpose(1, 2)

    # -- sampling and completion ------------------------------------------------------------------
    def _draw(self, params: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One draw of every element from tempered head parameters (N, P, *shape) -> (N, *shape)."""
        cfg = self.config
        # Drawn in float32 at least: Gumbel-max in bfloat16 ties often (8-bit mantissa) and
        # argmax breaks ties towards the first values, which biases a bf16 model's samples.
        params = at_least_float32(params)
        if isinstance(self.head, Categorical):
            params = _temper(params, cfg.temperature, cfg.top_k, dim=1)
        elif isinstance(self.head, Bernoulli):
            params = _temper_bernoulli(params, cfg.temperature, cfg.top_k)
        elif cfg.temperature != 1.0 or cfg.top_k:
            raise UserError("temperature and top_k apply to bernoulli and categorical outputs only; set temperature=1 top_k=0.")
        return self.head.sample(params, generator)

    @torch.no_grad()
    def complete(
        self, x: torch.Tensor, known: torch.Tensor, *, generator: torch.Generator | None = None, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Fill the elements where ``known`` is False, group by group in the model's order,
        each drawn given everything before it: x (N, *shape), known bool (N, *shape) or
        (*shape) -> (N, *shape); known elements are returned unchanged. One network pass
        per group (D for MADE; the PixelCNN overrides this with its cached sampler)."""
        return self._complete(x, known, self.one_hot(cond, len(x)), self.head_params, self.steps(), generator)

    def _complete(
        self, x: torch.Tensor, known: torch.Tensor, c: torch.Tensor | None, params, groups: list[torch.Tensor],
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """:meth:`complete` with the network ``params(x, c) -> (N, P, *shape)`` and the
        sampling ``groups`` given (MADE draws each mask's examples in that mask's order)."""
        n = len(x)
        known = known.to(torch.bool).expand(x.shape).reshape(n, -1)
        out = x.clone()
        flat = out.view(n, -1)
        partly_known = bool(known.any())  # one sync; sampling (nothing known) then needs no other
        for group in groups:
            todo = ~known[:, group]  # (N, |group|)
            if partly_known and not bool(todo.any()):
                continue
            drawn = self._draw(params(out, c), generator).reshape(n, -1)[:, group].to(out.dtype)
            flat[:, group] = torch.where(todo, drawn, flat[:, group])
        return out

    @torch.no_grad()
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, cond: torch.Tensor | int | None = None, mean: bool = False
    ) -> torch.Tensor:
        """``n`` examples (n, *shape) drawn position by position. ``mean`` is not used: an
        autoregressive model has no mean to return without sampling earlier positions."""
        x = torch.zeros((n, *self.spec.shape), device=self.device, dtype=_value_dtype(self.spec, self.dtype))
        return self.complete(x, torch.zeros_like(x, dtype=torch.bool), generator=generator, cond=cond)


def _as_inputs(x: torch.Tensor, spec: DataSpec) -> torch.Tensor:
    """What the networks see: discrete levels and token ids scaled to [0, 1] (float)."""
    if spec.kind == "discrete" and spec.num_levels:
        return x.float() / (spec.num_levels - 1)
    if spec.kind == "tokens" and spec.vocab_size:
        return x.float() / (spec.vocab_size - 1)
    return x


# -- 3. MADE -------------------------------------------------------------------------------------


@register("made")
class MADEModel(Autoregressive):
    """MADE (Germain et al. 2015): a masked MLP, connectivity-agnostic training, an ensemble over masks.

    With ``num_masks`` K > 1 training cycles through K connectivity masks (and, with
    ``order_agnostic``, K input orders), one per step, and ``log_prob`` is the ensemble
    log (1/K) sum_k p_k(x), which ``sample`` draws from exactly (each sample picks a mask
    uniformly). The contract's ``ordering``/``position_outputs`` describe mask 0.
    """

    config_class = MADEConfig
    config: MADEConfig

    def __init__(self, config: MADEConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        self.head = self._make_head()
        d = spec.dim
        self.made = MADE(
            d, config.hidden, self.head.num_params, context=self.num_classes or 0,
            num_masks=config.num_masks, order_agnostic=config.order_agnostic, seed=0,
        )

    def _params(self, x: torch.Tensor, c: torch.Tensor | None, index: torch.Tensor | None) -> torch.Tensor:
        out = self.made(_as_inputs(x, self.spec).reshape(len(x), -1).to(self.dtype), c, index)  # (N, D, P)
        return out.transpose(1, 2).reshape(len(x), -1, *self.spec.shape)  # (N, P, *shape)

    def head_params(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """Head parameters with mask 0 (N, P, *shape)."""
        return self._params(x, c, torch.zeros((), dtype=torch.long, device=x.device))

    def steps(self) -> list[torch.Tensor]:
        return list(self.made.order(0).to(self.device).split(1))

    def loss(self, batch: Batch, phase: str = "main") -> LossOutput:
        """In training, the NLL under the mask in use, then the next mask (connectivity-agnostic
        training, sec. 3.2); in eval mode, the NLL of the K-mask ensemble (:meth:`log_prob`'s)."""
        c = self.one_hot(batch.y, len(batch.x), checked=False)
        if self.training:
            nll = self._nll(self._params(batch.x, c, None), batch.x).mean()
            self.made.next_mask()
        else:
            # Evaluation (the trainer's validation loss, model selection, early stopping)
            # scores the model that log_prob and sample use, the ensemble of the K masks,
            # not whichever single mask the training steps happened to stop at.
            nll = -self._ensemble_log_prob(batch.x, c).mean()
        return LossOutput(nll, {"nll": nll.detach(), "bits_per_dim": nll.detach() / (self.spec.dim * math.log(2))})

    def likelihood_info(self) -> Likelihood:
        k = self.config.num_masks
        return Likelihood("exact", True, "exact" if k == 1 else f"exact (ensemble of {k} masks)")

    def log_prob(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        """log (1/K) sum_k p_k(x) over the K masks (Germain et al. 2015, sec. 3.2): (N,) nats."""
        return self._ensemble_log_prob(x, self.one_hot(cond, len(x)))

    def _ensemble_log_prob(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        lps = [-self._nll(self._params(x, c, torch.tensor(k, device=x.device)), x) for k in range(self.config.num_masks)]
        return torch.logsumexp(torch.stack(lps), dim=0) - math.log(len(lps))

    @torch.no_grad()
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, cond: torch.Tensor | int | None = None, mean: bool = False
    ) -> torch.Tensor:
        """Draw from the ensemble: each sample picks one of the K masks uniformly, then its
        elements in that mask's order."""
        labels = self.labels(cond, n)
        k = self.config.num_masks
        pick = torch.randint(k, (n,), generator=generator, device=self.device) if k > 1 else torch.zeros(n, dtype=torch.long, device=self.device)
        out = torch.zeros((n, *self.spec.shape), device=self.device, dtype=_value_dtype(self.spec, self.dtype))
        c = self.one_hot(labels, n) if labels is not None else None
        for mask in range(k):
            rows = (pick == mask).nonzero().reshape(-1)
            if len(rows) == 0:
                continue
            index = torch.tensor(mask, device=self.device)
            part = out[rows]
            out[rows] = self._complete(
                part, torch.zeros_like(part, dtype=torch.bool), None if c is None else c[rows],
                lambda x_, c_, i=index: self._params(x_, c_, i), list(self.made.order(mask).to(self.device).split(1)), generator,
            )
        return out


# -- 4. the Gated PixelCNN -------------------------------------------------------------------------


class GatedLayer(nn.Module):
    """One gated layer of van den Oord et al. 2016 (sec. 2.2, fig. 2): vertical and
    horizontal stacks, y = tanh(W_f * x + V_f h) * sigmoid(W_g * x + V_g h).

    The vertical stack is a (k//2 + 1) x k convolution over rows above and the current
    row, cropped so that output row i sees input rows <= i; the horizontal stack a
    1 x (k//2 + 1) convolution over the current row up to the current column. Mask A
    (the first layer) removes the current row from the vertical kernel and the current
    column from the horizontal one, so that nothing sees the current pixel; afterwards the
    vertical stack only ever holds rows above, and the vertical-to-horizontal link
    (a 1x1 conv) adds it to the horizontal stack without a blind spot. Maps: (N, F, H, W).
    ``dropout``: on the gated horizontal features before their 1x1 conv, in training only
    (elementwise, so no position sees another; the cached sampler runs in eval mode).
    """

    def __init__(self, features: int, kernel: int, mask_a: bool, cond_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.mask_a = mask_a
        self.drop = nn.Dropout(dropout)
        half = kernel // 2
        self.vertical = nn.Conv2d(features, 2 * features, (half + 1, kernel), padding=(half, half))
        self.horizontal = nn.Conv2d(features, 2 * features, (1, half + 1), padding=(0, half))
        self.v_to_h = nn.Conv2d(2 * features, 2 * features, 1)
        self.h_out = nn.Conv2d(features, features, 1)
        self.cond = nn.Linear(cond_dim, 2 * features, bias=False) if cond_dim else None
        if mask_a:
            # Mask A: the vertical kernel's last row (the current row) and the horizontal
            # kernel's last column (the current pixel) are never used.
            vmask = torch.ones_like(self.vertical.weight)
            vmask[:, :, -1] = 0
            hmask = torch.ones_like(self.horizontal.weight)
            hmask[:, :, :, -1] = 0
            self.register_buffer("vmask", vmask)
            self.register_buffer("hmask", hmask)

    @staticmethod
    def _gate(a: torch.Tensor) -> torch.Tensor:
        f, g = a.chunk(2, dim=1)
        return torch.tanh(f) * torch.sigmoid(g)

    def forward(self, v: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = v.shape[-2:]
        if self.mask_a:
            v_pre = F.conv2d(v, self.vertical.weight * self.vmask, self.vertical.bias, padding=self.vertical.padding)
            h_pre = F.conv2d(h, self.horizontal.weight * self.hmask, self.horizontal.bias, padding=self.horizontal.padding)
        else:
            v_pre, h_pre = self.vertical(v), self.horizontal(h)
        v_pre = v_pre[:, :, :height]  # output row i: input rows i - k//2 .. i (.. i - 1 under mask A)
        h_pre = h_pre[:, :, :, :width]  # output column j: input columns j - k//2 .. j (.. j - 1 under mask A)
        bias = 0 if self.cond is None or c is None else self.cond(c)[:, :, None, None]  # (N, 2F, 1, 1)
        v_out = self._gate(v_pre + bias)
        h_gated = self._gate(h_pre + self.v_to_h(v_pre) + bias)
        # The residual would carry the current pixel into layer A's output: only from layer B on.
        h_gated = self.drop(h_gated)
        h_out = self.h_out(h_gated) if self.mask_a else h + self.h_out(h_gated)
        return v_out, h_out


@register("pixelcnn")
class GatedPixelCNN(Autoregressive):
    """Gated PixelCNN (van den Oord et al. 2016): vertical/horizontal stacks without a blind spot, class-conditional.

    Images (C, H, W) in raster order. The channels of one pixel are conditionally
    independent given the pixels before it (a valid, exact factorisation; PixelCNN++'s
    within-pixel channel conditioning is not implemented), so sampling takes one network
    pass per pixel. Outputs any discrete likelihood head: Bernoulli for binary pixels,
    a 256-way categorical or the discretized logistic mixture for 8-bit images.
    """

    config_class = PixelCNNConfig
    config: PixelCNNConfig
    data_kinds: ClassVar[tuple[Kind, ...]] = ("binary", "continuous", "discrete")

    @classmethod
    def variants(cls, spec: DataSpec) -> list[dict[str, object]]:
        """A small network of the same architecture (both mask types, both kernels)."""
        return [{"channels": 16, "layers": 3, "out_hidden": 32}]

    def __init__(self, config: PixelCNNConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        if len(spec.shape) != 3:
            raise UserError(f"the pixelcnn models images (C, H, W); {spec.name or 'this dataset'!r} has shape {spec.shape}. Use made or transformer.")
        self.head = self._make_head()
        c_in, f = spec.shape[0], config.channels
        self.embed = nn.Conv2d(c_in, f, 1)  # mixes one pixel's channels only: mask A hides the whole pixel
        k = self.num_classes or 0
        self.gated = nn.ModuleList(
            GatedLayer(f, config.first_kernel if i == 0 else config.kernel, i == 0, k, config.dropout) for i in range(config.layers)
        )
        self.out = nn.Sequential(
            nn.ReLU(), nn.Conv2d(f, config.out_hidden, 1), nn.ReLU(), nn.Conv2d(config.out_hidden, self.head.num_params * c_in, 1)
        )

    def head_params(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        n, ch, h, w = x.shape
        v = hz = self.embed(_as_inputs(x, self.spec).to(self.dtype))
        for layer in self.gated:
            v, hz = layer(v, hz, c)
        return self.out(hz).reshape(n, self.head.num_params, ch, h, w)  # (N, P, C, H, W)

    def steps(self) -> list[torch.Tensor]:
        """One group per pixel in raster order: its C channels (flat indices c * H * W + pixel)."""
        ch, h, w = self.spec.shape
        pixels = torch.arange(h * w, device=self.device)
        return list((pixels[:, None] + h * w * torch.arange(ch, device=self.device)[None, :]).unbind(0))

    # -- the cached sampler (Ramachandran et al. 2017) -----------------------------------------------
    # The naive sampler re-runs the whole network for each of the H*W pixels. Here every
    # layer's activations are kept in buffers and only what a new pixel changes is computed:
    # at the start of row i the vertical stack's row i of every layer (it sees rows < i of
    # the input only), then for each pixel (i, j) the horizontal stack at that one position
    # in every layer, and the output network there. Each layer's work over a whole image is
    # then done once instead of H*W times (Ramachandran et al. 2017, "Fast generation for
    # convolutional autoregressive models", sec. 3), and the figures are the same.

    @torch.no_grad()
    def _cached_pass(self, x: torch.Tensor, c: torch.Tensor | None, pixel_done) -> None:
        """Walk the pixels of x (N, C, H, W) in raster order with cached activations. At each
        pixel (i, j), ``pixel_done(i, j, params)`` gets its head parameters (N, P, C), which
        depend on the pixels before it only, and may write pixel (i, j) of ``x`` (a draw)
        before the walk reads it."""
        n, ch, height, width = x.shape
        f, layers = self.config.channels, list(self.gated)
        pad = max(layer.vertical.kernel_size[1] // 2 for layer in layers)  # zero border: every slice is a view
        dt = self.dtype

        def buffer() -> torch.Tensor:
            return x.new_zeros((n, f, height + pad, width + 2 * pad), dtype=dt)

        def at(buf: torch.Tensor, i: int, j: int) -> torch.Tensor:  # buf's value at pixel (i, j): (N, F)
            return buf[:, :, pad + i, pad + j]

        def embed(i: int, j: int) -> torch.Tensor:  # the 1x1 embedding of pixel (i, j): (N, F)
            return F.linear(_as_inputs(x[:, :, i, j], self.spec).to(dt), self.embed.weight[:, :, 0, 0], self.embed.bias)

        # Layer l's inputs: v_in[l], h_in[l]; layer 0 reads the embedding in both stacks.
        emb = buffer()
        v_in = [emb] + [buffer() for _ in layers[1:]]
        h_in = [emb] + [buffer() for _ in layers[1:]] + [buffer()]
        weights = []
        for layer in layers:
            wv = layer.vertical.weight * layer.vmask if layer.mask_a else layer.vertical.weight
            wh = layer.horizontal.weight * layer.hmask if layer.mask_a else layer.horizontal.weight
            bias = 0 if layer.cond is None or c is None else layer.cond(c)[:, :, None]  # (N, 2F, 1)
            weights.append((wv, wh.reshape(2 * f, -1), bias))
        out1, out2 = self.out[1], self.out[3]
        vh_rows: list[torch.Tensor] = []
        for i in range(height):
            # The vertical stacks' row i, layer by layer: input rows i - k//2 .. i (zero rows
            # above the image; mask A's kernel ignores row i).
            vh_rows = []
            for l_, (layer, (wv, _, bias)) in enumerate(zip(layers, weights)):
                half = layer.vertical.kernel_size[1] // 2
                rows = v_in[l_][:, :, pad + i - half : pad + i + 1, pad - half : pad + width + half]
                v_pre = F.conv2d(rows, wv, layer.vertical.bias)[:, :, 0]  # (N, 2F, W)
                if l_ + 1 < len(layers):
                    v_in[l_ + 1][:, :, pad + i, pad : pad + width] = layer._gate(v_pre + bias)
                vh_rows.append(F.conv1d(v_pre, layer.v_to_h.weight[:, :, 0], layer.v_to_h.bias) + bias)  # (N, 2F, W)
            for j in range(width):
                h = None
                for l_, (layer, (_, wh, _)) in enumerate(zip(layers, weights)):
                    half = layer.horizontal.kernel_size[1] - 1
                    window = h_in[l_][:, :, pad + i, pad + j - half : pad + j + 1]  # (N, F, half + 1)
                    gated = layer._gate(F.linear(window.flatten(1), wh, layer.horizontal.bias) + vh_rows[l_][:, :, j])
                    h = F.linear(gated, layer.h_out.weight[:, :, 0, 0], layer.h_out.bias)
                    if not layer.mask_a:
                        h = h + at(h_in[l_], i, j)
                    h_in[l_ + 1][:, :, pad + i, pad + j] = h
                params = F.linear(F.relu(F.linear(F.relu(h), out1.weight[:, :, 0, 0], out1.bias)), out2.weight[:, :, 0, 0], out2.bias)
                pixel_done(i, j, params.reshape(n, self.head.num_params, ch))
                emb[:, :, pad + i, pad + j] = embed(i, j)

    @torch.no_grad()
    def cached_head_params(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`head_params` computed pixel by pixel through the sampler's caches:
        x (N, C, H, W) -> (N, P, C, H, W) (the check that the cached sampler is exact)."""
        n, ch, height, width = x.shape
        out = x.new_zeros((n, self.head.num_params, ch, height, width), dtype=self.dtype)

        def keep(i: int, j: int, params: torch.Tensor) -> None:
            out[:, :, :, i, j] = params

        self._cached_pass(x, self.one_hot(cond, n), keep)
        return out

    @torch.no_grad()
    def complete(
        self, x: torch.Tensor, known: torch.Tensor, *, generator: torch.Generator | None = None, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Fill the pixels where ``known`` is False in raster order with the cached sampler
        (a pixel's channels drawn together): x (N, C, H, W), known (N, C, H, W) or (C, H, W)
        -> (N, C, H, W); known elements are returned unchanged."""
        n = len(x)
        known = known.to(torch.bool).expand(x.shape)
        out = x.clone()

        def draw(i: int, j: int, params: torch.Tensor) -> None:
            todo = ~known[:, :, i, j]  # (N, C)
            if bool(todo.any()):
                drawn = self._draw(params[..., None, None], generator)[..., 0, 0].to(out.dtype)  # (N, C)
                out[:, :, i, j] = torch.where(todo, drawn, out[:, :, i, j])

        self._cached_pass(out, self.one_hot(cond, n), draw)
        return out


# -- 5. the Transformer ------------------------------------------------------------------------------


class StepDecoder:
    """The Transformer's one-position decoding step at fixed shapes, replayed as a CUDA graph.

    Calling it with the ids at position ``pos - 1`` (N, 1) returns the logits (N, V) of
    position ``pos`` and writes that position's keys/values into :attr:`cache`; position 0
    reads the start embeddings ``first`` (N, E) instead of an id. The position is a 0-d
    device tensor and attention covers the whole cache under a mask (see
    :class:`~deepgen.nn.transformer.CausalSelfAttention`), so one capture serves every
    position: a token then costs one graph launch instead of a few launches per layer (the
    sampler is launch-bound at these sizes). ``graph=False`` runs the same step eagerly.
    Positions may be prefilled through :meth:`TransformerModel._cached_step` into the same
    cache; the capture happens at construction, before any prefill, because its warm-up
    writes slot 0. The returned logits are the graph's output buffer: read them before
    the next call.
    """

    def __init__(self, model: TransformerModel, first: torch.Tensor, graph: bool) -> None:
        n = len(first)
        self.model = model
        self.cache = model.new_cache(n)
        self.prev = torch.zeros(n, 1, dtype=torch.long, device=model.device)
        self.pos = torch.zeros((), dtype=torch.long, device=model.device)
        self.first = first.detach().clone()
        self.graph: torch.cuda.CUDAGraph | None = None
        if graph:
            # On the model's device (not the current one), on a side stream; thread-local
            # capture, as the trainer's, so that other threads (a loader's pin-memory
            # thread) may use CUDA meanwhile; no autocast inside (the weights' dtype).
            with torch.cuda.device(model.device), torch.autocast("cuda", enabled=False):
                side = torch.cuda.Stream(model.device)
                side.wait_stream(torch.cuda.current_stream(model.device))
                with torch.cuda.stream(side):
                    for _ in range(2):  # warm-up outside the capture: kernel selection, allocations
                        self._step()
                torch.cuda.current_stream(model.device).wait_stream(side)
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph, stream=side, capture_error_mode="thread_local"):
                    self.out = self._step()

    def _step(self) -> torch.Tensor:
        m = self.model
        h = torch.where(self.pos == 0, self.first[:, None], m.tok(self.prev)) + m.pos(self.pos.reshape(1))  # (N, 1, E)
        for i, block in enumerate(m.blocks):
            h = block(h, self.cache, i, self.pos)
        return m._logits(h)[:, 0]

    def __call__(self, prev: torch.Tensor, pos: int) -> torch.Tensor:
        self.prev.copy_(prev)
        self.pos.fill_(pos)
        if self.graph is None:
            return self._step()
        self.graph.replay()
        return self.out


@register("transformer")
class TransformerModel(GenerativeModel):
    """Decoder-only Transformer (nanoGPT / GPT-2 blocks) over characters or pixel tokens, with a KV-cached sampler.

    A sequence x_1..x_T (text windows, or an image's pixels in raster order as ids) is
    modelled as p(x) = prod_t p(x_t | x_<t) by feeding [start, x_1, ..., x_{T-1}] through
    causal self-attention; the start token is learned (one per class for a conditional
    model, which is how the label enters). Pixel ids: binary pixels are 0/1, levels k of
    quantised pixels are k, or with ``levels`` = M < L, floor(k M / L): the model is then
    uniform inside each of the M bins, and ``log_prob`` is the exact probability of the
    L-level data under that model (each bin's mass split evenly over its L / M levels).
    """

    config_class = TransformerConfig
    config: TransformerConfig
    data_kinds: ClassVar[tuple[Kind, ...]] = ("tokens", "binary", "continuous", "discrete")
    output_mean: ClassVar[bool] = False  # every sample is a draw, token by token

    @classmethod
    def variants(cls, spec: DataSpec) -> list[dict[str, object]]:
        """A 2-layer, 64-wide model: the same blocks as the 10.7M-parameter default."""
        return [{"layers": 2, "heads": 2, "width": 64}]

    def __init__(self, config: TransformerConfig, spec: DataSpec) -> None:
        super().__init__(config, spec, conditional=config.conditional)
        self.length = spec.dim  # T: positions per example
        self.values, self.fine = self._vocabulary(spec, config.levels)  # V ids; L fine levels per id group
        e = config.width
        self.tok = nn.Embedding(self.values, e)
        self.pos = nn.Embedding(self.length, e)
        self.start = nn.Parameter(torch.zeros(max(1, self.num_classes or 0), e))
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(e, config.heads, config.dropout, config.bias) for _ in range(config.layers))
        self.ln = nn.LayerNorm(e, bias=config.bias)
        init_gpt_weights(self, config.layers)
        nn.init.normal_(self.start, 0.0, 0.02)

    def _vocabulary(self, spec: DataSpec, levels: int) -> tuple[int, int]:
        """(V ids, L levels of the data) for this spec and the ``levels`` setting."""
        if spec.kind == "tokens":
            if levels:
                raise UserError("levels applies to pixel data; token data keeps its vocabulary.")
            return int(spec.vocab_size or 0), int(spec.vocab_size or 0)
        if spec.kind == "binary":
            return 2, 2
        if spec.num_levels is None:
            raise UserError(
                f"the transformer models discrete values, but {spec.name or 'this dataset'!r} is continuous without "
                "quantisation levels. Use quantised data (8-bit images, binary pixels) or text."
            )
        fine = spec.num_levels
        if levels and (levels > fine or fine % levels):
            divisors = [d for d in range(2, fine + 1) if fine % d == 0]
            raise UserError(f"levels={levels} must divide the data's {fine} levels: one of {', '.join(map(str, divisors[:8]))} (or 0: all).")
        return (levels or fine), fine

    # -- ids <-> data --------------------------------------------------------------------------
    def to_ids(self, x: torch.Tensor) -> torch.Tensor:
        """Data (N, *shape) -> ids (N, T) int64."""
        flat = x.reshape(len(x), self.length)
        if self.spec.kind in ("tokens", "binary", "discrete"):
            k = flat.round().long() if flat.dtype.is_floating_point else flat.long()
        else:
            k = (flat * (self.fine - 1)).round().long()
        return k // (self.fine // self.values) if self.spec.kind != "tokens" else k

    def from_ids(self, ids: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ids (N, T) -> data (N, *shape); with coarse ids each draws a level uniformly inside its bin."""
        if self.spec.kind == "tokens":
            return ids.reshape(len(ids), *self.spec.shape)
        width = self.fine // self.values
        k = ids * width
        if width > 1:
            k = k + torch.randint(width, ids.shape, generator=generator, device=ids.device)
        x = k.to(_value_dtype(self.spec, self.dtype))  # float32 at least: bf16 cannot hold k / 255
        if self.spec.kind == "continuous":
            x = x / (self.fine - 1)
        return x.reshape(len(ids), *self.spec.shape)

    # -- the network ------------------------------------------------------------------------------
    def _starts(self, labels: torch.Tensor | None, n: int) -> torch.Tensor:
        """The start embedding of each example (N, E): its class's, or the one start token."""
        if labels is None:
            return self.start[0].expand(n, -1)
        return self.start[labels.clamp_min(0)]

    def _embed(self, ids_in: torch.Tensor, start: int, first: torch.Tensor | None) -> torch.Tensor:
        """Embeddings of input ids (N, t) at positions start..start+t-1; the position-0 input
        is the start embedding ``first`` (N, E) instead of an id."""
        n, t = ids_in.shape
        h = self.tok(ids_in)  # (N, t, E)
        if first is not None and start == 0:
            h = torch.cat([first[:, None], h[:, 1:]], dim=1)
        return self.drop(h + self.pos(torch.arange(start, start + t, device=ids_in.device)))

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and the output layer, tied to the token embedding (Press & Wolf 2017): (N, t, V)."""
        return F.linear(self.ln(h), self.tok.weight)

    def logits(self, x: torch.Tensor, *, cond: torch.Tensor | None = None, checked: bool = True) -> torch.Tensor:
        """Logits of every position (N, T, V): position t sees the start token and x_<t."""
        ids = self.to_ids(x)
        labels = self.labels(cond, len(x)) if checked else (None if self.num_classes is None else cond)
        inp = torch.cat([ids.new_zeros(len(x), 1), ids[:, :-1]], dim=1)  # shifted right; slot 0 replaced by start
        h = self._embed(inp, 0, self._starts(labels, len(x)))
        for block in self.blocks:
            h = block(h)
        return self._logits(h)

    def phases(self) -> list[Phase]:
        c = self.config
        return [Phase("main", decay_groups(self, c.weight_decay), OptimizerSpec(name="adamw", lr=c.lr, betas=c.betas, weight_decay=c.weight_decay))]

    def _log_prob_ids(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Sum over positions of log softmax at the ids, minus the within-bin split for coarse ids: (N,).
        In float32 at least: a bf16 model's per-token terms summed in bf16 are off by nats."""
        lp = -F.cross_entropy(at_least_float32(logits).transpose(1, 2), ids, reduction="none").sum(dim=1)
        width = self.fine // self.values if self.spec.kind != "tokens" else 1
        return lp - self.length * math.log(width) if width > 1 else lp

    def loss(self, batch: Batch, phase: str = "main") -> LossOutput:
        """Mean NLL per example (nats); logs it per position (``nll_per_token``, nats: nanoGPT's loss) too."""
        if batch.y is None and self.num_classes is not None:
            self.labels(None, len(batch.x))  # one UserError: a conditional model needs labels
        logits = self.logits(batch.x, cond=batch.y, checked=False)
        nll = -self._log_prob_ids(logits, self.to_ids(batch.x)).mean()
        return LossOutput(nll, {"nll": nll.detach(), "nll_per_token": nll.detach() / self.length})

    def likelihood_info(self) -> Likelihood:
        note = "exact" if self.values == self.fine else f"exact, {self.values} bins of {self.fine // self.values} levels each, uniform inside a bin"
        return Likelihood("exact", True, note)

    def log_prob(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x) per example (N,), exact, in nats."""
        return self._log_prob_ids(self.logits(x, cond=cond), self.to_ids(x))

    # -- the contract's autoregressive capability ------------------------------------------------
    def ordering(self) -> torch.Tensor:
        return torch.arange(self.length, device=self.device)

    def position_outputs(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits(x, cond=cond)

    def new_cache(self, n: int) -> KVCache:
        c = self.config
        return KVCache(c.layers, n, c.heads, self.length, c.width // c.heads, self.device, self.dtype)

    def decoder(self, first: torch.Tensor) -> StepDecoder:
        """A :class:`StepDecoder` for start embeddings ``first`` (N, E): CUDA-graphed on a
        CUDA device in eval mode with ``decode_graph`` (dropout would be frozen into a
        graph), eager otherwise."""
        graph = self.config.decode_graph and self.device.type == "cuda" and not self.training
        return StepDecoder(self, first, graph)

    def _draw_ids(self, logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One id per row from logits (N, V), tempered: (N,)."""
        probs = F.softmax(_temper(logits.float(), self.config.temperature, self.config.top_k, dim=-1), dim=-1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]

    def _cached_step(self, cache: KVCache, ids_in: torch.Tensor, start: int, first: torch.Tensor) -> torch.Tensor:
        """Logits (N, t, V) of positions start..start+t-1, their keys/values written into the cache."""
        h = self._embed(ids_in, start, first)
        for i, block in enumerate(self.blocks):
            h = block(h, cache, i, start)
        return self._logits(h)

    @torch.no_grad()
    def cached_position_outputs(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The logits of :meth:`logits`, computed one position at a time through the cache."""
        ids = self.to_ids(x)
        first = self._starts(self.labels(cond, len(x)), len(x))
        cache = self.new_cache(len(x))
        inp = torch.cat([ids.new_zeros(len(x), 1), ids[:, :-1]], dim=1)
        return torch.cat([self._cached_step(cache, inp[:, t : t + 1], t, first) for t in range(self.length)], dim=1)

    # -- sampling and completion ------------------------------------------------------------------
    @torch.no_grad()
    def complete(
        self, x: torch.Tensor, known: torch.Tensor, *, generator: torch.Generator | None = None, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Fill the positions where ``known`` is False, left to right, with the cache: the
        longest prefix known in every example is read in one pass, then one position per
        pass. x (N, *shape), known (N, *shape) or (*shape) -> (N, *shape); known positions
        are returned unchanged. Runs in eval mode whatever the model's mode (as ``sample``):
        the draws are the model's, without dropout, and repeat with the same generator."""
        with self.modes(train=False):
            return self._complete_ids(x, known, generator, cond)

    def _complete_ids(
        self, x: torch.Tensor, known: torch.Tensor, generator: torch.Generator | None, cond: torch.Tensor | None
    ) -> torch.Tensor:
        n = len(x)
        known = known.to(torch.bool).expand(x.shape).reshape(n, self.length)  # not -1: n may be 0
        ids = self.to_ids(x).clone()
        first = self._starts(self.labels(cond, n), n)
        step = self.decoder(first)
        all_known = known.all(dim=0)
        prefix = int(all_known.long().cumprod(0).sum())  # positions 0..prefix-1 known everywhere
        prefix = min(prefix, self.length - 1)
        inp = torch.cat([ids.new_zeros(n, 1), ids[:, :-1]], dim=1)
        logits = self._cached_step(step.cache, inp[:, : prefix + 1], 0, first)[:, -1]  # position `prefix`
        for t in range(prefix, self.length):
            if t > prefix:
                logits = step(ids[:, t - 1 : t], t)
            todo = ~known[:, t]
            if bool(todo.any()):
                ids[:, t] = torch.where(todo, self._draw_ids(logits, generator), ids[:, t])
        out = self.from_ids(ids, generator)
        return torch.where(known.reshape(x.shape), x.to(out.dtype), out)

    @torch.no_grad()
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, cond: torch.Tensor | int | None = None, mean: bool = False
    ) -> torch.Tensor:
        """``n`` sequences (n, *shape) drawn with the cache, one position per network pass."""
        x = torch.zeros((n, *self.spec.shape), device=self.device, dtype=_value_dtype(self.spec, self.dtype))
        return self.complete(x, torch.zeros_like(x, dtype=torch.bool), generator=generator, cond=cond)

    @torch.no_grad()
    def generate_ids(
        self, prompt: torch.Tensor, length: int, *, generator: torch.Generator | None = None, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Continue token ids ``prompt`` (N, P), P >= 0, to ``length`` ids (N, length), past
        the model's context T by a sliding window: the model reads [start, window ids]
        with at most T inputs; when the window is full it restarts from the last T/2 ids
        (learned positions cannot shift, so the cache is refilled), which costs about one
        pass per id plus one prefill per T/2 ids. The prompt is kept as the first P ids
        (``length`` >= P); runs in eval mode whatever the model's mode (as ``sample``)."""
        self._check_prompt(prompt, length)
        with self.modes(train=False):
            return self._generate_ids(prompt, operator.index(length), generator, cond)

    def _check_prompt(self, prompt: torch.Tensor, length: int) -> None:
        """One :class:`UserError` for a prompt that is not (N, P) integer ids in 0..V-1 or a
        ``length`` that is not a whole number >= P (instead of an unpacking or index error
        deep inside, or a float prompt truncated to ids, or a prompt cut short silently)."""
        v = self.values
        if not isinstance(prompt, torch.Tensor) or prompt.dim() != 2:
            got = tuple(prompt.shape) if isinstance(prompt, torch.Tensor) else f"a {type(prompt).__name__}"
            raise UserError(f"transformer.generate_ids takes prompt as a tensor of ids (N, P), P >= 0 (prompt[None] for one); got {got}.")
        if prompt.dtype.is_floating_point or prompt.dtype.is_complex or prompt.dtype == torch.bool:
            raise UserError(f"transformer.generate_ids takes prompt as integer ids 0..{v - 1}; got a {prompt.dtype} tensor.")
        if prompt.numel() and (int(prompt.min()) < 0 or int(prompt.max()) >= v):
            raise UserError(
                f"transformer.generate_ids: prompt ids must be in 0..{v - 1} (the model's {v} values); "
                f"got values from {int(prompt.min())} to {int(prompt.max())}."
            )
        try:
            whole = not isinstance(length, bool) and operator.index(length) >= prompt.shape[1]
        except TypeError:
            whole = False
        if not whole:
            raise UserError(
                f"transformer.generate_ids takes length, the ids returned including the prompt's {prompt.shape[1]}, "
                f"as a whole number >= {prompt.shape[1]}; got {length!r}."
            )

    def _generate_ids(
        self, prompt: torch.Tensor, length: int, generator: torch.Generator | None, cond: torch.Tensor | None
    ) -> torch.Tensor:
        n, p = prompt.shape
        ids = torch.zeros(n, length, dtype=torch.long, device=self.device)
        ids[:, :p] = prompt.to(self.device)
        first = self._starts(self.labels(cond, n), n)
        t_max, pos, window, step = self.length, p, 0, None
        while pos < length:
            if step is None or pos - window + 1 > t_max:
                # (Re)fill: inputs [start, ids[window:pos]], at most T of them, into the same
                # cache (slots past the window's end are masked until rewritten).
                window = max(0, pos - (t_max - 1)) if step is None else pos - t_max // 2
                step = step or self.decoder(first)
                inp = torch.cat([ids.new_zeros(n, 1), ids[:, window:pos]], dim=1)
                logits = self._cached_step(step.cache, inp, 0, first)[:, -1]
            else:  # ids[pos - 1] is input position pos - window of the window
                logits = step(ids[:, pos - 1 : pos], pos - window)
            ids[:, pos] = self._draw_ids(logits, generator)
            pos += 1
        return ids


__all__ = [
    "Autoregressive",
    "StepDecoder",
    "AutoregressiveConfig",
    "GatedPixelCNN",
    "MADEConfig",
    "MADEModel",
    "PixelCNNConfig",
    "TransformerConfig",
    "TransformerModel",
]

