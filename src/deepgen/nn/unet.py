"""Denoising networks of the diffusion family: (x_t, t, cond) -> a tensor of x_t's shape.

The network predicts whatever the diffusion process trains it on (epsilon, x0 or v); it
does not know which, and holds no noise schedule (the split of lucidrains'
denoising-diffusion-pytorch and of diffusers).

* :func:`timestep_embedding`: the sinusoidal embedding of DDPM (Ho et al. 2020, taken from
  the Transformer's positional encoding, Vaswani et al. 2017), [cos | sin] halves.
* :class:`UNet`: the DDPM U-Net (Ho et al. 2020, appendix B) with the changes of Improved
  DDPM (Nichol & Dhariwal 2021) and ADM (Dhariwal & Nichol 2021): multi-head attention,
  scale-shift conditioning in the residual blocks, zero-initialised residual branches.
* :class:`MLPDenoiser`: an MLP for tables and 2-D points, the embedding added to every
  hidden layer.

Conditioning: ``num_classes > 0`` adds a learned class embedding to the time embedding.
It has ``num_classes + 1`` rows; the last, index ``num_classes``, is the "no label" (null)
class of classifier-free guidance (Ho & Salimans 2022), which the caller passes for dropped
labels; ``cond=None`` means the null class for every example.

Every forward is free of host syncs and of branches on tensor values (it is captured in
CUDA graphs and compiled), and works under bf16 autocast and on channels_last inputs.

Shapes: ``N`` batch, ``C`` channels, ``H, W`` image size, ``D`` features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _frequencies(half: int, max_period: float, device: torch.device | None = None) -> torch.Tensor:
    """(half,) float32: max_period ** (-i / half), i = 0..half-1 (the ADM / diffusers spacing)."""
    return torch.exp(-math.log(max_period) * torch.arange(half, device=device, dtype=torch.float32) / max(half, 1))


def _sinusoid(t: torch.Tensor, freqs: torch.Tensor, dim: int) -> torch.Tensor:
    """t (N,) -> (N, dim) in freqs' dtype: [cos(t f) | sin(t f)], a zero column when dim is odd.
    t is taken at full precision (a bf16 t would round 999 to 1000)."""
    args = t.to(freqs.dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """The sinusoidal timestep embedding of DDPM: t (N,) int or float -> (N, dim) float32.

    Column j < dim // 2 is cos(t f_j) and column dim // 2 + j is sin(t f_j), with
    f_j = max_period ** (-j / (dim // 2)): the cos half first, as ADM's
    ``timestep_embedding`` and diffusers' ``flip_sin_to_cos=True``. An odd ``dim`` gets one
    zero column at the end. Fractional timesteps are allowed (continuous-time samplers).
    """
    if dim < 1:
        raise ValueError(f"timestep_embedding: dim must be >= 1, got {dim}")
    if t.dim() != 1:
        raise ValueError(f"timestep_embedding: t must have shape (N,), got {tuple(t.shape)}")
    return _sinusoid(t, _frequencies(dim // 2, max_period, t.device), dim)


def norm_groups(channels: int, groups: int) -> int:
    """GroupNorm's group count for ``channels``: ``min(groups, channels)``, lowered to the
    nearest divisor of ``channels`` (32 groups as in DDPM where the width allows; tiny test
    widths get fewer, e.g. 24 channels -> 24, 48 -> 24, 12 -> 12)."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


class TimeEmbedding(nn.Module):
    """t (N,) [+ class labels (N,)] -> (N, out_dim): sinusoid(t, freq_dim) -> Linear -> SiLU
    -> Linear (DDPM), plus a class embedding with a null row when ``num_classes > 0``.

    The frequencies sit in a non-persistent buffer: they follow ``.to(device)`` and
    ``.double()`` without a per-call tensor creation, and stay out of the state_dict.
    """

    def __init__(self, freq_dim: int, out_dim: int, num_classes: int = 0, max_period: float = 10000.0) -> None:
        super().__init__()
        self.freq_dim, self.num_classes = freq_dim, num_classes
        self.register_buffer("freqs", _frequencies(freq_dim // 2, max_period), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
        self.label = nn.Embedding(num_classes + 1, out_dim) if num_classes > 0 else None
        self.max_period = max_period

    def _apply(self, fn, recurse: bool = True):
        """After a conversion (``.to``, ``.half()``, ``.bfloat16()``), the frequencies are
        recomputed in float32 (float64 for ``.double()``): in bf16 they would carry 3
        digits, and t = 990..999 would land on a handful of embeddings."""
        super()._apply(fn, recurse)
        dt = self.freqs.dtype if self.freqs.dtype in (torch.float32, torch.float64) else torch.float32
        self.freqs = _frequencies(self.freq_dim // 2, self.max_period, self.freqs.device).to(dt)
        return self

    def forward(self, t: torch.Tensor | float, cond: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
        """``t`` (n,), (1,), 0-d or a number; ``cond`` (n,) long in 0..num_classes or None."""
        if isinstance(t, torch.Tensor):
            if t.dim() > 1 or t.numel() not in (1, n):
                raise ValueError(f"t must be a scalar or have shape ({n},), got {tuple(t.shape)}")
            t = t.reshape(-1).expand(n)
        else:
            t = torch.full((n,), t, device=device)  # made on the device: no host-to-device copy
        emb = self.mlp(_sinusoid(t, self.freqs, self.freq_dim).to(self.mlp[0].weight.dtype))  # a bf16 / half model's own dtype
        if self.label is None:
            if cond is not None:
                raise ValueError("cond was given but the network has num_classes=0 (unconditional)")
            return emb
        if cond is None:
            return emb + self.label.weight[self.num_classes]  # the null class, broadcast over the batch
        if cond.shape != (n,):
            raise ValueError(f"cond must be class indices of shape ({n},), got {tuple(cond.shape)}")
        return emb + self.label(cond)


def _zero(module: nn.Module) -> nn.Module:
    """Zero every parameter (ADM's ``zero_module``): a residual branch ending in it starts at 0."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """ADM's residual block with scale-shift conditioning: (N, C_in, H, W), emb (N, E) ->
    (N, C_out, H, W).

    h = conv1(SiLU(GN(x))); (scale, shift) = Linear(SiLU(emb));
    h = conv2(dropout(SiLU(GN(h) * (1 + scale) + shift))); out = skip(x) + h.
    conv2 is zero-initialised, so the block starts as (the projection of) the identity;
    ``skip`` is a 1x1 conv where the channel counts differ. ``scale_shift=False``: DDPM's
    additive form instead, h = GN(h + Linear(SiLU(emb))) (Ho et al.'s code, diffusers'
    default), with half the embedding projection's parameters.
    """

    def __init__(
        self, in_channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0, groups: int = 32, scale_shift: bool = True
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = nn.GroupNorm(norm_groups(in_channels, groups), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, (2 if scale_shift else 1) * out_channels))
        self.norm2 = nn.GroupNorm(norm_groups(out_channels, groups), out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb(emb)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        return self.skip(x) + self.conv2(self.dropout(F.silu(h)))


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the pixels (Improved DDPM / ADM): (N, C, H, W) -> same.

    x + proj(attention(qkv(GN(x)))), with softmax(q k^T / sqrt(d)) v per head through
    ``scaled_dot_product_attention`` on (N, heads, H W, d), d = C / heads. The qkv channels
    are [q | k | v], each split into heads of d consecutive channels. ``proj`` is
    zero-initialised, so the block starts as the identity.
    """

    def __init__(self, channels: int, heads: int = 4, groups: int = 32) -> None:
        super().__init__()
        if heads < 1 or channels % heads:
            raise ValueError(f"heads={heads} must be >= 1 and divide the attention width {channels}")
        self.heads = heads
        self.norm = nn.GroupNorm(norm_groups(channels, groups), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        # (N, 3C, H, W) -> (3, N, heads, HW, d). Channels-last first: then these are views,
        # and d stays the contiguous last dimension SDPA wants. An NCHW qkv (the default
        # layout) is copied to (N, H, W, 3C) once: with d strided by H*W, the CPU's SDPA ran
        # 5.5x slower (387 against 70 ms at (256, 4, 196, 4)). A no-op for a channels-last
        # qkv; a plain .contiguous(), as torch.func.vmap (the anomaly app's scoring) takes it
        # and not .contiguous(memory_format=...).
        qkv = self.qkv(self.norm(x)).permute(0, 2, 3, 1).contiguous()
        qkv = qkv.reshape(n, h * w, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)  # (N, heads, HW, d)
        y = y.transpose(1, 2).reshape(n, h, w, c).permute(0, 3, 1, 2)
        return x + self.proj(y)


class _Step(nn.Module):
    """A residual block, followed by self-attention at the attention levels."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None) -> None:
        super().__init__()
        self.res, self.attn = res, attn

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return x if self.attn is None else self.attn(x)


class _Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv (DDPM): (N, C, H, W) -> (N, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level of one path: its steps, then the resampling (None at the end)."""

    def __init__(self, steps: Sequence[_Step], resample: nn.Module | None) -> None:
        super().__init__()
        self.steps = nn.ModuleList(steps)
        self.resample = resample


class UNet(nn.Module):
    """The DDPM / ADM U-Net: x (N, in_channels, H, W), t (N,) -> (N, out_channels, H, W).

    Settings:

    * ``channel_mult``: one entry per resolution level; level i works at
      ``channels * channel_mult[i]`` channels and at 1 / 2**i of the input size. Between
      levels a stride-2 3x3 conv on the way down, nearest x2 + 3x3 conv on the way up.
      H and W must be divisible by 2**(len(channel_mult) - 1) (28x28 with (1, 2, 2):
      28 -> 14 -> 7).
    * ``res_blocks``: residual blocks per level on the way down; the way up has
      ``res_blocks + 1`` per level, each taking the concatenation of its input and one skip
      (the output of the input conv, of every down block and of every downsample), as in
      the DDPM code.
    * ``attention``: the level indices (0 = full resolution) whose residual blocks are each
      followed by self-attention with ``heads`` heads; the middle is res, attention, res.
    * ``groups``: GroupNorm groups, lowered per width by :func:`norm_groups`.
    * ``num_classes``: class conditioning with a null class (see the module docstring).
    * ``image_size``: (H, W) to check against ``channel_mult`` at construction.
    * ``scale_shift``: ADM's scale-shift time conditioning in every residual block (True)
      or DDPM's additive one (False; see :class:`ResBlock`).

    The time embedding is :class:`TimeEmbedding`: sinusoid of ``channels`` dimensions ->
    4 * ``channels`` (DDPM). The output head GN -> SiLU -> 3x3 conv is zero-initialised,
    so a fresh network outputs exactly 0.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        res_blocks: int = 2,
        attention: Sequence[int] = (1,),
        heads: int = 4,
        dropout: float = 0.1,
        groups: int = 32,
        num_classes: int = 0,
        image_size: tuple[int, int] | None = None,
        scale_shift: bool = True,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        channel_mult, attention = tuple(channel_mult), tuple(attention)
        _check_settings(in_channels, out_channels, channels, channel_mult, res_blocks, attention, heads, dropout, groups, num_classes)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.channel_mult, self.attention = channel_mult, attention
        self.factor = 2 ** (len(channel_mult) - 1)
        if image_size is not None:
            self._check_size(*image_size)

        emb_dim = 4 * channels
        self.time_embed = TimeEmbedding(channels, emb_dim, num_classes)
        widths = [channels * m for m in channel_mult]
        last = len(widths) - 1

        def step(cin: int, cout: int, level: int) -> _Step:
            attn = AttentionBlock(cout, heads, groups) if level in attention else None
            return _Step(ResBlock(cin, cout, emb_dim, dropout, groups, scale_shift), attn)

        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        skips = [widths[0]]  # channels of every tensor the up path will concatenate
        ch = widths[0]
        down = []
        for level, width in enumerate(widths):
            steps = []
            for _ in range(res_blocks):
                steps.append(step(ch, width, level))
                ch = width
                skips.append(ch)
            resample = nn.Conv2d(ch, ch, 3, stride=2, padding=1) if level < last else None
            if resample is not None:
                skips.append(ch)
            down.append(_Level(steps, resample))
        self.down = nn.ModuleList(down)

        self.mid1 = ResBlock(ch, ch, emb_dim, dropout, groups, scale_shift)
        self.mid_attn = AttentionBlock(ch, heads, groups)
        self.mid2 = ResBlock(ch, ch, emb_dim, dropout, groups, scale_shift)

        up = []
        for level in reversed(range(len(widths))):
            steps = []
            for _ in range(res_blocks + 1):
                steps.append(step(ch + skips.pop(), widths[level], level))
                ch = widths[level]
            up.append(_Level(steps, _Upsample(ch) if level > 0 else None))
        self.up = nn.ModuleList(up)

        self.norm_out = nn.GroupNorm(norm_groups(ch, groups), ch)
        self.conv_out = _zero(nn.Conv2d(ch, out_channels, 3, padding=1))

    def _check_size(self, h: int, w: int) -> None:
        if h % self.factor == 0 and w % self.factor == 0 and h > 0 and w > 0:
            return
        # The deepest U-Net this size allows: as many halvings as both H and W take.
        halvings = min((n & -n).bit_length() - 1 if n > 0 else 0 for n in (h, w))
        fits = tuple(self.channel_mult[: halvings + 1])
        # The attention levels must exist in the shorter channel_mult too (else the
        # suggestion itself is refused, by _check_settings).
        attention = tuple(a for a in self.attention if a < len(fits))
        also = f" and attention={attention}" if attention != self.attention else ""
        raise ValueError(
            f"image size {h}x{w} does not fit channel_mult={self.channel_mult}: H and W must be "
            f"divisible by 2**(len(channel_mult) - 1) = {self.factor} (e.g. {self.factor * 7}, "
            f"{self.factor * 8}); for {h}x{w} use len(channel_mult) <= {halvings + 1}, e.g. "
            f"channel_mult={fits}{also}, or pad the images"
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, in_channels, H, W); t (N,) int or float, or a scalar for the whole batch;
        cond (N,) long class indices in 0..num_classes (num_classes = null) or None
        -> (N, out_channels, H, W)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects x of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        self._check_size(x.shape[2], x.shape[3])
        emb = self.time_embed(t, cond, x.shape[0], x.device)

        h = self.conv_in(x)
        skips = [h]
        for level in self.down:
            for s in level.steps:
                h = s(h, emb)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)
                skips.append(h)

        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)

        for level in self.up:
            for s in level.steps:
                h = s(torch.cat([h, skips.pop()], dim=1), emb)
            if level.resample is not None:
                h = level.resample(h)

        return self.conv_out(F.silu(self.norm_out(h)))


def _check_settings(
    in_channels: int,
    out_channels: int,
    channels: int,
    channel_mult: tuple[int, ...],
    res_blocks: int,
    attention: tuple[int, ...],
    heads: int,
    dropout: float,
    groups: int,
    num_classes: int,
) -> None:
    """The ValueErrors of :class:`UNet`'s settings, each naming the setting."""
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}")
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if not channel_mult or min(channel_mult) < 1:
        raise ValueError(f"channel_mult must be a non-empty sequence of positive integers, got {channel_mult}")
    if res_blocks < 1:
        raise ValueError(f"res_blocks must be >= 1, got {res_blocks}")
    bad = [a for a in attention if not 0 <= a < len(channel_mult)]
    if bad:
        raise ValueError(
            f"attention levels {bad} out of range: channel_mult={channel_mult} has levels 0..{len(channel_mult) - 1}"
        )
    if heads < 1:
        raise ValueError(f"heads must be >= 1, got {heads}")
    # The middle attends at the last level's width.
    for level in sorted({*attention, len(channel_mult) - 1}):
        width = channels * channel_mult[level]
        if width % heads:
            raise ValueError(f"heads={heads} does not divide the {width} channels of attention level {level}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")


class MLPDenoiser(nn.Module):
    """A denoiser for vectors (tables, 2-D points): x (N, dim), t (N,) -> (N, dim).

    h_0 = x; h_i = SiLU(W_i h_{i-1} + P_i SiLU(e)) for each hidden width; out = W_out h_L,
    with e the :class:`TimeEmbedding` of t (+ class, null row included) at ``temb_dim``.
    Each layer gets its own projection P_i of the embedding, added to its pre-activation:
    the per-block conditioning of the DDPM U-Net's residual blocks (Ho et al. 2020, and
    ADM's SiLU before each projection) carried over to an MLP. The P_i are one Linear
    split by layer (one matmul per call). W_out is zero-initialised: the network starts at
    output 0, like :class:`UNet`.
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (256, 256, 256), *, num_classes: int = 0, temb_dim: int = 128) -> None:
        super().__init__()
        hidden = tuple(hidden)
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if not hidden or min(hidden) < 1:
            raise ValueError(f"hidden must be a non-empty sequence of positive widths, got {hidden}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if temb_dim < 1:
            raise ValueError(f"temb_dim must be >= 1, got {temb_dim}")
        self.dim, self.hidden = dim, hidden
        self.time_embed = TimeEmbedding(temb_dim, temb_dim, num_classes)
        self.emb_proj = nn.Linear(temb_dim, sum(hidden))
        widths = [dim, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.out = _zero(nn.Linear(hidden[-1], dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, dim); t (N,) or a scalar; cond (N,) long in 0..num_classes or None -> (N, dim)."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLPDenoiser expects x of shape (N, {self.dim}), got {tuple(x.shape)}")
        emb = self.time_embed(t, cond, x.shape[0], x.device)
        shifts = self.emb_proj(F.silu(emb)).split(self.hidden, dim=1)
        h = x
        for layer, shift in zip(self.layers, shifts):
            h = F.silu(layer(h) + shift)
        return self.out(h)
