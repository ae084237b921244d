"""Review s18 of ddpm and its samplers: defects found on cases no other test names
(tabular data with no examples, ...). Tiny networks, closed-form checks, fast on a CPU."""

from __future__ import annotations

import pytest
import torch

import deepgen
from deepgen.data.dataset import DataSpec


@pytest.mark.parametrize("shape", [(2,), (3, 4)])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm-solver++"])
def test_tabular_data_samples_scores_and_encodes_no_examples(shape, sampler):
    """The contract's empty batch on the MLP denoiser (tables, vectors): its flattening was
    x.reshape(0, -1), which torch refuses as ambiguous, so sample(0) raised a RuntimeError
    on real data while images (the U-Net) returned (0, *shape)."""
    spec = DataSpec(shape, "real", num_classes=3)
    model = deepgen.create_model("ddpm", spec, conditional=True, hidden=(8,), timesteps=20, steps=3, sampler=sampler)
    none = torch.zeros(0, dtype=torch.long)
    assert model.sample(0).shape == (0, *shape)
    assert model.sample(0, cond=none).shape == (0, *shape)
    assert model.log_prob(torch.zeros(0, *shape), cond=none).shape == (0,)
    assert model.decode(model.encode(torch.zeros(0, *shape))).shape == (0, *shape)
