"""``did_you_mean`` / ``closest_names``: the name a user meant comes first (issue 16).

The table uses the real setting names: a model's config, the trainer's and the data's, as
``deepgen train MODEL --set key=value`` routes them.
"""

from __future__ import annotations

import pytest

from deepgen.config import split_overrides
from deepgen.data import DataConfig
from deepgen.errors import UserError, closest_names, did_you_mean
from deepgen.models import model_class, model_names
from deepgen.training import TrainConfig


def settings(model: str) -> list[str]:
    """Every name ``--set`` accepts for ``model`` (its config, the trainer's, the data's)."""
    names = set(model_class(model).config_class.field_names()) | set(TrainConfig.field_names()) | set(DataConfig.field_names())
    return sorted(names - {"name"})


TYPOS = [
    # (model, typed, the first suggestion)
    ("gan", "latent_dim", "noise_dim"),  # another family's name for the same setting
    ("gan", "z_dim", "noise_dim"),
    ("wgan-gp", "latent_size", "noise_dim"),
    ("vae", "noise_dim", "latent_dim"),
    ("vae", "z_dim", "latent_dim"),
    ("vae", "lr_rate", "lr"),
    ("vae", "learning_rate", "lr"),
    ("gan", "learning_rate", "lr"),
    ("vae", "epoch", "epochs"),
    ("vae", "num_epochs", "epochs"),
    ("vae", "epohcs", "epochs"),  # a transposition
    ("vae", "hiden", "hidden"),
    ("vae", "Hidden", "hidden"),  # case
    ("vae", "batchsize", "batch_size"),  # the same ignoring "_"
    ("vae", "batch-size", "batch_size"),
    ("vae", "bs", "batch_size"),
    ("gan", "n_critic", "d_steps"),
    ("wgan-gp", "lambda_gp", "gp_weight"),
    ("vae", "activaton", "activation"),
    ("vae", "likelyhood", "likelihood"),
    ("vae", "kl_weight", "beta"),
    ("vae", "weightdecay", "weight_decay"),
    ("vae", "val_limits", "val_limit"),
    ("vae", "max_step", "max_steps"),
    ("vae", "iwaek", "iwae_k"),
    ("vae", "bf_16", "bf16"),
    ("vae", "channel", "channels"),
    ("gan", "gloss", "g_loss"),
    ("gan", "spectral", "spectral_norm"),
    ("gan", "minibatch-std", "minibatch_std"),
    ("gan", "dlr", "d_lr"),
    ("transformer", "learning_rate", "lr"),
]


@pytest.mark.parametrize("model,typed,expected", TYPOS, ids=[f"{m}:{t}" for m, t, _ in TYPOS])
def test_the_intended_setting_is_suggested_first(model: str, typed: str, expected: str) -> None:
    names = settings(model)
    assert expected in names, f"{expected!r} is not a setting of {model} (the table is stale)"
    assert closest_names(typed, names)[0] == expected


def test_gan_hidden_suggests_both_networks() -> None:
    assert closest_names("hidden", settings("gan"))[:2] == ["d_hidden", "g_hidden"]


@pytest.mark.parametrize("typed", ["nope", "xyz", "colour"])
def test_unrelated_names_get_no_suggestion(typed: str) -> None:
    assert closest_names(typed, settings("vae")) == []
    assert "Did you mean" not in did_you_mean(typed, settings("vae"))


@pytest.mark.parametrize(
    "typed,choices,expected",
    [
        ("vea", model_names(), "vae"),
        ("wgan_gp", model_names(), "wgan-gp"),
        ("WGAN-GP", model_names(), "wgan-gp"),
        ("mnsit", ["mnist", "fashion-mnist", "mnist-binarized", "digits"], "mnist"),
        ("widht", ["width", "rate", "name"], "width"),
    ],
)
def test_other_names_models_and_datasets(typed: str, choices: list[str], expected: str) -> None:
    assert closest_names(typed, choices)[0] == expected


def test_message_format_is_kept() -> None:
    msg = did_you_mean("latent_dim", ["noise_dim", "lr", "d_lr"])
    assert msg == "Accepted: d_lr, lr, noise_dim. Did you mean 'noise_dim'?"
    assert did_you_mean("lr_rate", ["unrolled_lr", "d_lr", "lr"]).endswith("Did you mean 'lr', 'd_lr'?")
    assert closest_names("x", []) == [] and did_you_mean("x", []) == "Accepted: ."


def test_routing_an_unknown_setting_suggests_the_closest() -> None:
    configs = {"model": model_class("gan").config_class(), "train": TrainConfig(), "data": DataConfig()}
    with pytest.raises(UserError, match=r"unknown setting 'latent_dim'\. Accepted: .* Did you mean 'noise_dim'"):
        split_overrides({"latent_dim": "8"}, configs)
    with pytest.raises(UserError, match=r"has no setting 'learning_rate'\. Accepted: .* Did you mean 'lr'"):
        configs["model"].with_overrides({"learning_rate": "1e-3"})
