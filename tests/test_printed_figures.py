"""Units on every printed figure (issue 16), and the evaluator's helpers that ``deepgen
encode`` / ``deepgen score`` use being public parts of ``deepgen.metrics``."""

from __future__ import annotations

import ast
import inspect
import math
from pathlib import Path

import pytest

import deepgen.metrics as metrics
from deepgen.cli import main
from deepgen.metrics.units import (
    adversarial_game,
    format_logged,
    logged_figures,
    logged_unit,
    split_key,
)

ROOT = Path(__file__).resolve().parents[1]
TINY_GAN = ["--epochs", "1", "--set", "max_steps=12", "--set", "progress=false", "--set", "tensorboard=false",
            "--set", "g_hidden=16", "--set", "d_hidden=16"]


def units(last: dict[str, float]) -> dict[str, str]:
    return {f.key: f.unit for f in logged_figures(last)}


def test_split_key() -> None:
    assert split_key("loss") == ("", "", "loss")
    assert split_key("val_loss") == ("", "val_", "loss")
    assert split_key("critic/val_loss") == ("critic", "val_", "loss")
    assert split_key("val/critic/loss") == ("critic", "val_", "loss")
    assert split_key("discriminator/loss_osc") == ("discriminator", "", "loss_osc")


def test_cross_entropy_gan_figures_are_nats_and_probabilities() -> None:
    last = {"discriminator/loss": 1.3, "discriminator/d_real": 0.52, "discriminator/d_fake": 0.47,
            "discriminator/grad_norm": 0.5, "generator/loss": 0.75, "generator/d_fake": 0.47,
            "discriminator/val_loss": 1.27, "generator/val_loss": 0.76, "discriminator/loss_osc": 0.02}
    u = units(last)
    assert adversarial_game(last) == "probability"
    assert u["discriminator/loss"] == u["generator/loss"] == u["discriminator/val_loss"] == u["discriminator/loss_osc"] == "nats"
    assert u["discriminator/d_real"] == u["generator/d_fake"] == "prob." and u["discriminator/grad_norm"] == ""
    text = format_logged(last)
    assert "discriminator/loss 1.3 nats" in text and "2 ln 2 = 1.386" in text and "*_osc" in text
    assert "can exceed 1" not in text  # GAN losses are not densities
    minimax = format_logged({**last, "generator/loss": -0.6})
    assert "minimax" in minimax and "<= 0 by construction" in minimax and "can exceed 1" not in minimax


def test_wasserstein_figures_are_critic_units() -> None:
    last = {"critic/loss": 0.24, "critic/d_real": -0.02, "critic/d_fake": -0.17, "critic/wasserstein": 0.15,
            "critic/gp": 0.39, "generator/loss": 0.19, "generator/d_fake": -0.19, "critic/val_loss": -0.12}
    u = units(last)
    assert adversarial_game(last) == "wasserstein"
    assert {u[k] for k in last} == {"critic units"}
    text = format_logged(last)
    assert "critic/wasserstein 0.15 critic units" in text and "arbitrary" in text and "nats" not in text


def test_hinge_and_least_squares_figures_are_dimensionless() -> None:
    last = {"discriminator/loss": 1.8, "discriminator/score_real": 0.05, "discriminator/score_fake": -0.13,
            "generator/loss": 0.14, "generator/score_fake": -0.14}
    u = units(last)
    assert u["discriminator/loss"] == u["generator/loss"] == "dimensionless" and u["generator/score_fake"] == "raw D score"
    assert "dimensionless: hinge / least-squares" in format_logged(last)


def test_feature_matching_and_the_adversarial_autoencoder() -> None:
    fm = units({"discriminator/loss": 1.3, "discriminator/d_real": 0.5, "generator/loss": 0.4, "generator/adversarial": 0.7})
    assert fm["generator/loss"] == "squared D-feature units" and fm["generator/adversarial"] == "nats"
    aae = units({"reconstruction/loss": 450.0, "reconstruction/recon": 450.0, "discriminator/loss": 1.3,
                 "discriminator/d_prior": 0.52, "regularization/loss": 0.74, "regularization/d_code": 0.48})
    assert aae["reconstruction/loss"] == aae["discriminator/loss"] == aae["regularization/loss"] == "nats"
    assert aae["discriminator/d_prior"] == "prob."


def test_likelihood_models() -> None:
    vae = logged_figures({"loss": 130.0, "elbo": -130.0, "recon": 129.0, "kl": 1.0, "val_loss": 128.0, "lr": 1e-3,
                          "samples_per_s": 900.0})
    assert [(f.label, f.unit) for f in vae] == [("loss (-ELBO)", "nats"), ("recon", "nats"), ("kl", "nats"),
                                                ("val_loss (-ELBO)", "nats"), ("lr", ""), ("samples_per_s", "examples/s")]
    beta = logged_figures({"loss": 140.0, "elbo": -130.0, "recon": 129.0, "kl": 1.0})  # beta != 1: two figures
    assert [(f.label, f.value) for f in beta][:2] == [("loss", 140.0), ("-elbo", 130.0)]
    made = units({"loss": 90.0, "nll": 90.0, "bits_per_dim": 0.16})
    assert made == {"loss": "nats", "nll": "nats", "bits_per_dim": "bits/dim"}
    sparse = units({"loss": 100.0, "recon": 99.0, "penalty": 1.0})
    assert sparse["loss"] == "nats + penalty" and sparse["recon"] == "nats"
    assert logged_unit("elbo", ["loss", "elbo"]) == "nats" and logged_unit("critic/loss", ["critic/loss"]) == "critic units"
    negative = format_logged({"loss": -14.1, "elbo": 14.1, "recon": -21.4, "kl": 7.3})
    assert negative.startswith("loss (-ELBO) -14.1 nats, recon -21.4 nats, kl 7.3 nats") and "can exceed 1" in negative


@pytest.mark.parametrize(
    "model,extra,expect",
    [
        ("wgan-gp", [], ["critic/wasserstein", "critic units", "critic units: the scale of the critic's output"]),
        ("gan", [], ["discriminator/loss", " nats", "prob.", "D's cross-entropy"]),
        ("gan", ["--set", "g_loss=hinge"], ["dimensionless", "raw D score"]),
    ],
)
def test_train_summary_of_a_gan_has_units(tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str,
                                          extra: list[str], expect: list[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", model, "--data", "ring8", "--out", str(run), *TINY_GAN, *extra]) == 0
    out = capsys.readouterr().out
    summary = out[out.index("last losses:") : out.index("files:")]
    for text in expect:
        assert text in summary, summary
    first = summary.splitlines()[0].removeprefix("last losses: ")
    for figure in first.split(", "):
        name, value, *unit = figure.split(" ")
        assert math.isfinite(float(value))
        assert unit or name.endswith("grad_norm"), f"{figure!r} has no unit"  # a gradient norm has none
    page = (tmp_path / "r.html")
    assert main(["report", str(run), "--out", str(page)]) == 0
    last = page.read_text()[page.read_text().index("Last logged values") :]
    assert ("<td>critic units</td>" if model == "wgan-gp" else "<td>prob.</td>" if not extra else "<td>dimensionless</td>") in last


# -- the evaluator's helpers are public ---------------------------------------------------------------


def test_nothing_outside_metrics_imports_a_private_name_from_it() -> None:
    offenders = []
    for path in [*(ROOT / "src" / "deepgen").rglob("*.py"), *(ROOT / "examples").rglob("*.py")]:
        if "metrics" in path.relative_to(ROOT / "src" / "deepgen" if "src" in path.parts else ROOT).parts[:1]:
            continue  # metrics/ itself
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and "metrics" in node.module.split("."):
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {a.name}" for a in node.names if a.name.startswith("_")]
    assert not offenders, offenders


@pytest.mark.parametrize("name", ["EvalContext", "label_kwargs", "scored_inputs", "likelihood_of", "dequantization_width",
                                  "conditional_classes", "sample_labels", "bits_per_dim", "eval_figures", "format_logged",
                                  "format_value"])
def test_the_helpers_are_public_and_documented(name: str) -> None:
    assert name in metrics.__all__
    doc = inspect.getdoc(getattr(metrics, name)) or ""
    assert len(doc) > 40, name
    if name in ("label_kwargs", "scored_inputs", "sample_labels"):
        assert "(B," in doc or "(n," in doc, f"{name}'s docstring gives no tensor shapes"
