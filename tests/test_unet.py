"""The denoising networks of the diffusion family (deepgen.nn.unet), on tiny widths:

* output shapes for several U-Net configurations and timestep forms;
* the zero-initialised output (a fresh network returns exactly 0) and, once every
  parameter is perturbed, the dependence on x, t and the class (null class included);
* the attention block against a naive per-head softmax(QK^T / sqrt(d)) V;
* batch independence in float64, gradients to every parameter, bf16 autocast and
  channels_last;
* the sinusoidal embedding, and every ValueError of the settings and the inputs.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import perturb as _perturb
from torch import nn

from deepgen.nn import unet as un

NOISE = 0.1  # std of the noise added to every parameter


def perturb(module: nn.Module, std: float = NOISE, seed: int = 0) -> nn.Module:
    """:func:`helpers.perturb` with this file's noise level."""
    return _perturb(module, std, seed)


def tiny_unet(in_channels: int = 1, **kw) -> un.UNet:
    settings = dict(channels=8, channel_mult=(1, 2, 2), res_blocks=1, attention=(1,), heads=2, groups=4)
    settings.update(kw)
    torch.manual_seed(0)
    return un.UNet(in_channels, **settings)


def images(n: int, c: int = 1, size: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(seed))


# -- shapes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_channels", "size", "kw"),
    [
        (1, 28, dict(channel_mult=(1, 2, 2))),
        (3, 32, dict(channel_mult=(1, 2, 2, 2), attention=(1, 3), res_blocks=2)),
        (3, 16, dict(out_channels=6, num_classes=5)),
        (1, 8, dict(channel_mult=(1,), attention=(0,))),
    ],
)
def test_unet_output_shapes(in_channels: int, size: int, kw: dict) -> None:
    net = tiny_unet(in_channels, **kw)
    out_channels = kw.get("out_channels", in_channels)
    x = torch.randn(3, in_channels, size, size)
    cond = torch.tensor([0, 4, 5]) if kw.get("num_classes") else None
    for t in (torch.tensor([0, 10, 999]), torch.tensor([0.5, 1.25, 700.0]), torch.tensor(3), 7, 0.25):
        assert net(x, t, cond).shape == (3, out_channels, size, size)
    assert net(x[:1], torch.tensor([5])).shape == (1, out_channels, size, size)  # a batch of 1


def test_unet_structure_follows_settings() -> None:
    net = tiny_unet(channel_mult=(1, 2, 2), res_blocks=2, attention=(1,))
    res = [m for m in net.modules() if isinstance(m, un.ResBlock)]
    attn = [m for m in net.modules() if isinstance(m, un.AttentionBlock)]
    # 3 levels x 2 down, 3 x 3 up, 2 in the middle; attention after the level-1 blocks
    # (2 down, 3 up) and in the middle.
    assert len(res) == 3 * 2 + 3 * 3 + 2
    assert len(attn) == 2 + 3 + 1
    assert [len(level.steps) for level in net.down] == [2, 2, 2]
    assert [len(level.steps) for level in net.up] == [3, 3, 3]
    assert [s.attn is not None for level in net.down for s in level.steps] == [False, False, True, True, False, False]
    assert net.time_embed.mlp[2].out_features == 4 * 8


def test_parameter_count_of_the_reference_configuration() -> None:
    """UNet(1) at 64-128-128 with attention at level 1: diffusers' UNet2DModel of that shape
    has 6,469,889 parameters with additive embeddings; the scale-shift projections add
    256 * C + C per residual block (1856 channels over the 17 blocks)."""
    net = un.UNet(1, channels=64, channel_mult=(1, 2, 2), res_blocks=2, attention=(1,))
    assert sum(p.numel() for p in net.parameters()) == 6_469_889 + 257 * 1856


# -- zero output, dependence on the inputs -------------------------------------------------------


def test_fresh_unet_outputs_exactly_zero() -> None:
    net = tiny_unet(num_classes=3, out_channels=2)
    out = net(images(2), torch.tensor([1, 500]), torch.tensor([0, 3]))
    assert torch.equal(out, torch.zeros(2, 2, 12, 12))


def test_fresh_blocks_are_the_identity() -> None:
    x = images(2, c=8, size=4)
    block = un.ResBlock(8, 8, emb_dim=16, groups=4)
    assert torch.equal(block(x, torch.randn(2, 16)), x)
    assert torch.equal(un.AttentionBlock(8, heads=2, groups=4)(x), x)


def test_unet_depends_on_x_t_and_cond() -> None:
    net = perturb(tiny_unet(num_classes=3)).eval()
    x, t, cond = images(2), torch.tensor([10, 10]), torch.tensor([1, 1])
    out = net(x, t, cond)
    assert out.abs().max() > 0
    assert not torch.allclose(net(x, torch.tensor([11, 10]), cond)[0], out[0])
    assert torch.allclose(net(x, torch.tensor([11, 10]), cond)[1], out[1])
    assert not torch.allclose(net(x, t, torch.tensor([2, 1]))[0], out[0])
    null = torch.tensor([3, 3])  # index num_classes: the null class
    assert not torch.allclose(net(x, t, null), out)
    assert torch.equal(net(x, t, None), net(x, t, null))
    assert not torch.allclose(net(x + 0.1, t, cond), out)
    # A scalar t is every example's t.
    assert torch.allclose(net(x, torch.tensor(10), cond), out)
    assert torch.allclose(net(x, 10, cond), out)


def test_attention_block_matches_naive_attention() -> None:
    torch.manual_seed(0)
    c, heads, groups = 8, 2, 4
    block = perturb(un.AttentionBlock(c, heads=heads, groups=groups), std=0.5).double()
    x = torch.randn(2, c, 3, 5, dtype=torch.float64)
    h = F.group_norm(x, groups, block.norm.weight, block.norm.bias, block.norm.eps)
    q, k, v = F.conv2d(h, block.qkv.weight, block.qkv.bias).flatten(2).chunk(3, dim=1)  # (N, C, HW) each
    d = c // heads
    outs = []
    for i in range(heads):
        qi, ki, vi = (z[:, i * d : (i + 1) * d].transpose(1, 2) for z in (q, k, v))  # (N, HW, d)
        weights = torch.softmax(qi @ ki.transpose(1, 2) / math.sqrt(d), dim=-1)  # (N, HW, HW)
        outs.append((weights @ vi).transpose(1, 2))  # (N, d, HW)
    y = torch.cat(outs, dim=1).reshape(x.shape)
    want = x + F.conv2d(y, block.proj.weight, block.proj.bias)
    assert torch.allclose(block(x), want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("train", [False, True])
def test_unet_batch_independence(train: bool) -> None:
    """Per-example normalisation: also in training mode (no dropout there), where a batch
    norm would mix the examples."""
    net = perturb(tiny_unet(num_classes=3, dropout=0.0 if train else 0.1)).double().train(train)
    x = images(4).double()
    t = torch.tensor([0.0, 3.5, 100.0, 999.0], dtype=torch.float64)
    cond = torch.tensor([0, 1, 2, 3])
    batch = net(x, t, cond)
    for i in range(4):
        alone = net(x[i : i + 1], t[i : i + 1], cond[i : i + 1])
        assert torch.allclose(batch[i : i + 1], alone, atol=1e-10, rtol=0)


def test_gradients_reach_every_parameter() -> None:
    net = perturb(tiny_unet(num_classes=3, channel_mult=(1, 2))).train()
    net(images(3, size=8), torch.tensor([1, 2, 3]), torch.tensor([0, 2, 3])).square().sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_bf16_autocast_is_close_to_fp32() -> None:
    net = perturb(tiny_unet(num_classes=3)).eval()
    x, t, cond = images(2), torch.tensor([3, 700]), torch.tensor([0, 3])
    want = net(x, t, cond)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = net(x, t, cond)
    assert got.shape == want.shape
    assert torch.isfinite(got).all()
    assert (got.float() - want).norm() / want.norm() < 0.05


def test_channels_last_equals_contiguous() -> None:
    net = perturb(tiny_unet(num_classes=3)).double().eval()
    x, t, cond = images(2).double(), torch.tensor([3, 700]), torch.tensor([1, 2])
    want = net(x, t, cond)
    got = net(x.to(memory_format=torch.channels_last), t, cond)
    assert torch.allclose(got, want, atol=1e-10, rtol=0)


def test_frequencies_are_a_non_persistent_buffer() -> None:
    net = tiny_unet()
    assert "time_embed.freqs" in dict(net.named_buffers())
    assert not any(k.endswith("freqs") for k in net.state_dict())
    assert net.double().time_embed.freqs.dtype == torch.float64


# -- timestep embedding ----------------------------------------------------------------------------


def test_timestep_embedding_values() -> None:
    t = torch.tensor([0, 1, 7, 999])
    emb = un.timestep_embedding(t, 16)
    assert emb.shape == (4, 16) and emb.dtype == torch.float32
    assert torch.equal(emb[0, :8], torch.ones(8)) and torch.equal(emb[0, 8:], torch.zeros(8))  # cos | sin
    freqs = 10000.0 ** (-torch.arange(8, dtype=torch.float64) / 8)
    args = t.double()[:, None] * freqs
    assert torch.allclose(emb.double(), torch.cat([args.cos(), args.sin()], dim=1), atol=1e-4)
    assert torch.allclose(emb[:, :8] ** 2 + emb[:, 8:] ** 2, torch.ones(4, 8), atol=1e-5)
    assert torch.cdist(emb, emb).add(torch.eye(4)).min() > 0.1  # distinct timesteps, distinct rows


def test_timestep_embedding_odd_dim_and_fractional_t() -> None:
    emb = un.timestep_embedding(torch.tensor([0.0, 0.5, 2.25]), 7)
    assert emb.shape == (3, 7)
    assert torch.equal(emb[:, 6], torch.zeros(3))
    assert torch.allclose(emb[1, 0], torch.tensor(math.cos(0.5))) and torch.allclose(emb[1, 3], torch.tensor(math.sin(0.5)))
    assert not torch.allclose(emb[1], un.timestep_embedding(torch.tensor([1.0]), 7)[0])
    assert un.timestep_embedding(torch.tensor([3]), 7, max_period=100.0).shape == (1, 7)


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(channels=0), "channels must be >= 1"),
        (dict(in_channels=0), "in_channels"),
        (dict(out_channels=0), "out_channels"),
        (dict(channel_mult=()), "channel_mult must be a non-empty"),
        (dict(channel_mult=(1, 0)), "channel_mult"),
        (dict(res_blocks=0), "res_blocks"),
        (dict(attention=(3,)), r"attention levels \[3\] out of range.*0\.\.2"),
        (dict(attention=(-1,)), "attention levels"),
        (dict(heads=3), "heads=3 does not divide the 16 channels"),
        (dict(heads=0), "heads must be >= 1"),
        (dict(dropout=1.0), "dropout"),
        (dict(groups=0), "groups"),
        (dict(num_classes=-1), "num_classes"),
        (dict(image_size=(30, 28)), r"image size 30x28 does not fit channel_mult=\(1, 2, 2\).*divisible by .* = 4.*len\(channel_mult\) <= 2"),
    ],
)
def test_unet_bad_settings(kw: dict, match: str) -> None:
    kw = dict(kw)
    with pytest.raises(ValueError, match=match):
        tiny_unet(kw.pop("in_channels", 1), **kw)


def test_unet_bad_inputs() -> None:
    net = tiny_unet(image_size=(28, 28))
    with pytest.raises(ValueError, match=r"image size 30x30 .*channel_mult=\(1, 2, 2\).*use len\(channel_mult\) <= 2, e.g. channel_mult=\(1, 2\)"):
        net(torch.randn(1, 1, 30, 30), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"image size 13x12.*len\(channel_mult\) <= 1"):
        net(torch.randn(1, 1, 13, 12), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"expects x of shape \(N, 1, H, W\)"):
        net(torch.randn(1, 3, 12, 12), torch.tensor([1]))
    with pytest.raises(ValueError, match="t must be a scalar or have shape"):
        net(torch.randn(2, 1, 12, 12), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="num_classes=0"):
        net(torch.randn(2, 1, 12, 12), torch.tensor([1, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="cond must be class indices"):
        tiny_unet(num_classes=3)(torch.randn(2, 1, 12, 12), torch.tensor([1, 2]), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="dim must be >= 1"):
        un.timestep_embedding(torch.tensor([1]), 0)
    with pytest.raises(ValueError, match=r"t must have shape \(N,\)"):
        un.timestep_embedding(torch.zeros(2, 1), 8)


def test_norm_groups() -> None:
    assert [un.norm_groups(c, 32) for c in (8, 12, 24, 48, 64, 96, 124)] == [8, 12, 24, 24, 32, 32, 31]
    assert un.norm_groups(7, 4) == 1


# -- MLP denoiser ----------------------------------------------------------------------------------


def tiny_mlp(**kw) -> un.MLPDenoiser:
    torch.manual_seed(0)
    return un.MLPDenoiser(3, (16, 12), temb_dim=8, **kw)


def test_mlp_shapes_and_zero_output() -> None:
    net = tiny_mlp(num_classes=2)
    x = torch.randn(5, 3)
    for t in (torch.arange(5), torch.linspace(0, 1, 5), torch.tensor(4), 2):
        out = net(x, t, torch.tensor([0, 1, 2, 0, 1]))
        assert out.shape == (5, 3)
        assert torch.equal(out, torch.zeros(5, 3))
    assert un.MLPDenoiser(2)(torch.randn(1, 2), torch.tensor([3])).shape == (1, 2)


def test_mlp_depends_on_x_t_and_cond() -> None:
    net = perturb(tiny_mlp(num_classes=2))
    x, t, cond = torch.randn(2, 3), torch.tensor([5, 5]), torch.tensor([0, 0])
    out = net(x, t, cond)
    assert out.abs().max() > 0
    assert not torch.allclose(net(x, torch.tensor([6, 5]), cond)[0], out[0])
    assert not torch.allclose(net(x, t, torch.tensor([1, 0]))[0], out[0])
    assert torch.equal(net(x, t, None), net(x, t, torch.tensor([2, 2])))
    assert not torch.allclose(net(x, t, None), out)
    assert not torch.allclose(net(x + 0.1, t, cond), out)


def test_mlp_batch_independence_and_gradients() -> None:
    net = perturb(tiny_mlp(num_classes=2)).double()
    x, t, cond = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0.0, 1.5, 10.0, 999.0]), torch.tensor([0, 1, 2, 1])
    batch = net(x, t, cond)
    for i in range(4):
        assert torch.allclose(batch[i : i + 1], net(x[i : i + 1], t[i : i + 1], cond[i : i + 1]), atol=1e-10, rtol=0)
    batch.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize(
    ("args", "kw", "match"),
    [
        ((0,), {}, "dim must be >= 1"),
        ((3, ()), {}, "hidden must be a non-empty"),
        ((3, (8, 0)), {}, "hidden"),
        ((3,), dict(num_classes=-2), "num_classes"),
        ((3,), dict(temb_dim=0), "temb_dim"),
    ],
)
def test_mlp_bad_settings(args: tuple, kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        un.MLPDenoiser(*args, **kw)


def test_mlp_bad_inputs() -> None:
    net = tiny_mlp()
    with pytest.raises(ValueError, match=r"expects x of shape \(N, 3\)"):
        net(torch.randn(2, 4), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="num_classes=0"):
        net(torch.randn(2, 3), torch.tensor([1, 2]), torch.tensor([0, 0]))
