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
