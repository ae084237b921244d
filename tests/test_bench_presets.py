"""Every registered model has a `deepgen bench` preset, and every preset's settings are
valid settings of its model (checked on the config, without building the networks)."""

from __future__ import annotations

from deepgen import bench
from deepgen.models import model_class, model_names


def test_every_model_has_a_preset_with_valid_settings():
    for presets in bench.PRESETS.values():
        assert {p.model for p in presets} >= set(model_names()), sorted(set(model_names()) - {p.model for p in presets})
        for p in presets:
            model_class(p.model).config_class(**p.settings)  # a wrong name or value raises
        assert len({p.label for p in presets}) == len(presets)


def test_every_preset_is_sized_for_its_budget():
    """On 8-bit 28x28 images no preset is a 100M-parameter network (an MLP decoder with a
    256-way output per pixel was one): each stays under 20M parameters."""
    import deepgen
    from deepgen.data.dataset import DataSpec

    spec = DataSpec((1, 28, 28), "continuous", num_levels=256, num_classes=10, name="mnist")  # what load_dataset("mnist") gives
    for p in bench.IMAGE_PRESETS:
        n = sum(q.numel() for q in deepgen.create_model(p.model, spec, **p.settings).parameters())
        assert n < 20_000_000, f"{p.label}: {n:,} parameters"
