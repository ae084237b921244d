"""Session 17's fixes of reported defects, each a case that had no test:

* an actnorm initialised on a batch where a column is constant scaled it by 1 / eps = 1e6
  (and put log 1e6 per such column into every later log-determinant);
* a bf16 (or float16) model's samples of 8-bit data were rounded to levels in the model's
  own dtype, which cannot hold k / 255: the "levels" were off the data's values.
"""

from __future__ import annotations

import pytest
import torch

import deepgen
from deepgen.data.dataset import DataSpec
from deepgen.data.dequantize import nearest_level
from deepgen.nn import flows as fl


def test_actnorm_leaves_a_constant_column_at_scale_one_and_normalises_the_others():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g, dtype=torch.float64) * torch.tensor([2.0, 1.0, 0.5, 3.0], dtype=torch.float64) + 5
    x[:, 1] = 0.0  # all zeros on this batch (a sparse binary column)
    x[:, 2] = 7.25  # a constant far from zero
    layer = fl.ActNorm(4).double()
    layer.initialize(x)
    z, log_det = layer(x)
    assert layer.log_scale[1] == 0 and layer.log_scale[2] == 0
    assert torch.allclose(z[:, [1, 2]], torch.zeros(64, 2, dtype=torch.float64))
    for j in (0, 3):
        assert float(z[:, j].mean()) == pytest.approx(0.0, abs=1e-9) and float(z[:, j].std(unbiased=False)) == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(log_det, layer.log_scale.sum().expand(64)) and float(log_det.abs().max()) < 5
    # a later batch where the column varies maps finitely and inverts
    y = torch.randn(8, 4, generator=g, dtype=torch.float64)
    assert torch.allclose(layer.inverse(layer(y)[0]), y, atol=1e-12)


def test_actnorm_on_images_with_a_blank_channel():
    x = torch.rand(16, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    x[:, 0] = 0.5
    layer = fl.ActNorm(3, image=True)
    layer.initialize(x)
    assert layer.log_scale[0] == 0 and bool(torch.isfinite(layer(x)[1]).all())
    assert float(layer.log_scale[1:].abs().max()) > 0.5  # the varying channels are scaled (std about 0.29)


def test_a_tiny_but_real_spread_is_still_normalised():
    x = 1e-3 * torch.randn(256, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    layer = fl.ActNorm(1).double()
    layer.initialize(x)
    assert float(layer(x)[0].std(unbiased=False)) == pytest.approx(1.0, abs=2e-3)  # (eps = 1e-6 of a 1e-3 spread)


EIGHT_BIT = DataSpec((1, 8, 8), "continuous", num_levels=256, name="mnist-like")
LEVELS = torch.arange(256, dtype=torch.float32) / 255


def _on_levels(s: torch.Tensor) -> bool:
    return s.dtype == torch.float32 and torch.equal(s, LEVELS[(s * 255).round().long()])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_nearest_level_of_half_precision_values_is_float32_on_the_datas_levels(dtype):
    x = torch.rand(1000, generator=torch.Generator().manual_seed(3)).to(dtype)
    out = nearest_level(x, EIGHT_BIT)
    assert _on_levels(out)
    assert torch.equal(out, nearest_level(x.float(), EIGHT_BIT))  # the same levels as the float32 values give
    other = DataSpec((1, 8, 8), "continuous", name="no-levels")
    assert nearest_level(x, other).dtype == dtype  # data without levels: untouched


@pytest.mark.parametrize("name", ["dcgan", "ddpm"])
def test_a_bf16_models_samples_of_8_bit_data_are_the_datas_values(name):
    small = {"dcgan": {"noise_dim": 4, "conv_width": 4}, "ddpm": {"channels": 8, "channel_mult": (1, 2), "res_blocks": 1, "heads": 2,
                                                                 "attention": (), "timesteps": 20, "steps": 3}}[name]
    torch.manual_seed(0)
    model = deepgen.create_model(name, EIGHT_BIT, **small).bfloat16().eval()
    s = model.sample(8, generator=torch.Generator().manual_seed(0))
    assert s.shape == (8, 1, 8, 8) and _on_levels(s)
