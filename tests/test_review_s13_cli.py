"""Review s13: what ``deepgen sample`` and ``deepgen eval`` say about a run, and what they accept.

Each test names the defect it pins:

1. ``sample`` called every image sample "means of the output distribution", also for
   models whose samples are always draws (GANs, diffusion, flows, autoregressive models):
   now the model declares it (``GenerativeModel.output_mean`` / ``has_output_mean()``).
2. ``sample --set badname=1`` listed every field of the config as accepted, most of which
   a loaded run refuses; now the settings sampling reads (``ModelConfig.sampling``), and
   for ``eval`` the ones a loaded run takes (``load_time``, and the data's normal_class).
3. ``--cond -1`` (the null label: the unconditional model of classifier-free guidance) was
   refused; now it is accepted exactly by models that declare ``null_label`` (a ddpm
   trained with label dropout), and the others' refusal says why.
4. ``eval --metrics nll --set guidance=3`` on a conditional ddpm printed a bound without
   saying that it is the unguided bound of p(x | y), whatever the guidance.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import deepgen
import deepgen.analysis
import deepgen.cli
from deepgen.cli import main
from deepgen.data.dataset import DataSpec
from deepgen.errors import UserError
from deepgen.models import model_class, model_names
from deepgen.models.base import NULL_LABEL
from deepgen.training import load_run

QUIET = ["--set", "progress=false", "--set", "tensorboard=false", "--set", "max_train=64", "--set", "max_steps=2"]
SMALL_DDPM = ["--set", "channels=8", "--set", "channel_mult=1,2", "--set", "res_blocks=1", "--set", "timesteps=20", "--set", "steps=4"]
DIGITS = DataSpec((1, 8, 8), "continuous", num_levels=17, num_classes=10, name="digits")


pytestmark = pytest.mark.usefixtures("no_pictures")  # conftest: train draws no pictures here


def _train(root: Path, name: str, model: str, *settings: str, data: str = "digits") -> Path:
    run = root / name
    if not run.exists():
        assert main(["train", model, "--data", data, *settings, *QUIET, "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("s13-runs")


@pytest.fixture(scope="module")
def cddpm(runs: Path) -> Path:
    """A conditional ddpm trained with label dropout (p_uncond = 0.1, the default)."""
    return _train(runs, "cddpm", "ddpm", "--set", "conditional=true", *SMALL_DDPM)


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- 1. "means of the output distribution" only where the model has one ------------------------------


def _small(name: str, spec: DataSpec) -> deepgen.GenerativeModel:
    cls = model_class(name)
    torch.manual_seed(0)
    return deepgen.create_model(name, spec, **cls.variants(spec)[0]).eval()


@pytest.mark.parametrize("name", model_names())
def test_output_mean_is_declared_truly(name: str) -> None:
    """On [0, 1] images (no binary thresholding), ``mean=True`` changes the samples exactly
    when the model declares an output distribution given a code: its mean is then not a draw."""
    model = _small(name, DataSpec((1, 8, 8), "continuous", num_levels=17, name="digits"))
    with torch.no_grad():
        means = model.sample(4, generator=torch.Generator().manual_seed(1), mean=True)
        draws = model.sample(4, generator=torch.Generator().manual_seed(1), mean=False)
    assert isinstance(model.has_output_mean(), bool)
    assert (not torch.equal(means, draws)) == model.has_output_mean(), name


def test_families_that_have_an_output_mean() -> None:
    have = {n for n in model_names() if model_class(n).has_output_mean()}
    assert {"vae", "ae", "aae", "sparse-ae", "denoising-ae", "contractive-ae", "stacked-ae"} <= have
    assert not have & {"gan", "dcgan", "wgan", "wgan-gp", "ddpm", "realnvp", "glow", "maf", "nsf", "made", "pixelcnn", "transformer"}


@pytest.mark.parametrize(
    "model,settings,means",
    [
        ("vae", ["--set", "hidden=16", "--set", "latent_dim=2"], True),
        ("gan", ["--set", "g_hidden=16", "--set", "d_hidden=16"], False),
        ("ddpm", SMALL_DDPM, False),
        ("realnvp", ["--set", "scales=1", "--set", "couplings=1", "--set", "channels=4"], False),
        ("made", ["--set", "hidden=16"], False),
    ],
)
def test_sample_says_what_its_samples_are(
    runs: Path, capsys: pytest.CaptureFixture[str], model: str, settings: list[str], means: bool
) -> None:
    run = _train(runs, f"say-{model}", model, *settings)
    capsys.readouterr()
    assert main(["sample", str(run), "--n", "4", "--out", str(runs / f"{model}.png")]) == 0
    out = capsys.readouterr().out
    assert ("(means of the output distribution)" in out) == means and ("(draws)" in out) != means, out
    assert main(["sample", str(run), "--n", "4", "--draw", "--out", str(runs / f"{model}-draw.png")]) == 0
    assert "(draws)" in capsys.readouterr().out


def test_sample_help_says_which_models_write_means(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sample", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "unless --draw is given; every other model's samples are draws" in text
    assert "-1: no label (unconditional samples)" in text


# -- 2. --set names: the settings the command takes, not every field -----------------------------------


@pytest.mark.parametrize("name", model_names())
def test_sampling_settings_are_load_time_settings(name: str) -> None:
    config = model_class(name).config_class
    assert config.sampling <= config.load_time, name
    assert config.sampling <= set(config.field_names()), name


def test_sample_set_unknown_name_lists_the_sampling_settings(cddpm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = cddpm.parent / "never.png"
    capsys.readouterr()
    assert main(["sample", str(cddpm), "--set", "badname=1", "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert "'badname'" in line and "Sampling settings of a loaded ddpm run: clip_denoised, eta, guidance, sampler, spacing, steps" in line
    assert "bound_stride" in line and "evaluation" in line  # named apart: sampling does not read it
    for field in ("timesteps", "channels", "p_uncond", "schedule"):  # fields a loaded run refuses to change
        assert field not in line, line
    assert main(["sample", str(cddpm), "--set", "stesp=3", "--out", str(out)]) == 2
    assert "Did you mean 'steps'?" in _one_error_line(capsys)
    assert not out.exists()


def test_sample_set_on_a_model_without_sampling_settings(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _train(runs, "say-vae", "vae", "--set", "hidden=16", "--set", "latent_dim=2")
    capsys.readouterr()
    assert main(["sample", str(run), "--set", "temperature=0.5", "--out", str(runs / "never.png")]) == 2
    line = _one_error_line(capsys)
    assert "no sampling settings" in line and "iwae_chunk, iwae_k" in line and "latent_dim" not in line, line
    # An evaluation setting is a known field, but sampling never reads it: refused, not ignored.
    assert main(["sample", str(run), "--set", "iwae_k=7", "--out", str(runs / "never.png")]) == 2
    line = _one_error_line(capsys)
    assert "'iwae_k' is an evaluation setting" in line and "eval" in line, line
    assert not (runs / "never.png").exists()


def test_eval_set_unknown_name_lists_what_eval_takes(cddpm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["eval", str(cddpm), "--metrics", "nll", "--limit", "4", "--device", "cpu", "--set", "badname=1"]) == 2
    line = _one_error_line(capsys)
    assert "bound_stride" in line and "guidance" in line and "normal_class" in line, line
    assert "timesteps" not in line and "channels" not in line, line


# -- 3. --cond -1: the null label, where the model has one --------------------------------------------


def test_cond_minus_one_draws_the_unconditional_model(cddpm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = cddpm.parent / "uncond.npy"
    assert main(["sample", str(cddpm), "--n", "3", "--cond", "-1", "--seed", "5", "--out", str(out)]) == 0
    model = load_run(cddpm).model
    assert model.null_label
    with torch.no_grad():
        want = model.sample(3, generator=torch.Generator().manual_seed(5), cond=NULL_LABEL)
        unlabelled = model.sample(3, generator=torch.Generator().manual_seed(5))  # a null-label model's default
    assert np.array_equal(np.load(out), want.numpy()) and torch.equal(want, unlabelled)
    assert main(["sample", str(cddpm), "--n", "4", "--cond", "-1,3", "--out", str(out)]) == 0  # mixed
    capsys.readouterr()
    assert main(["sample", str(cddpm), "--cond", "10", "--out", str(out)]) == 2
    assert "0..9 or -1 (no label: unconditional samples)" in _one_error_line(capsys)


def test_cond_minus_one_in_a_table_has_no_label(runs: Path) -> None:
    run = _train(runs, "moons-ddpm", "ddpm", "--set", "conditional=true", "--set", "hidden=16,16", "--set", "timesteps=20",
                 "--set", "steps=4", data="moons")
    out = runs / "moons.csv"
    assert main(["sample", str(run), "--n", "4", "--cond", "-1,1", "--out", str(out)]) == 0
    rows = list(csv.reader(out.read_text().splitlines()))
    labels = [r[-1] for r in rows[1:]]
    assert labels[0] == labels[2] == "" and labels[1] == labels[3] != "", rows  # not the last class's name


@pytest.mark.parametrize(
    "model,settings",
    [
        ("vae", ["--set", "conditional=true", "--set", "hidden=16", "--set", "latent_dim=2"]),
        ("ddpm", ["--set", "conditional=true", "--set", "p_uncond=0", *SMALL_DDPM]),  # no label dropout: no null label
    ],
)
def test_cond_minus_one_is_refused_where_there_is_no_null_label(
    runs: Path, capsys: pytest.CaptureFixture[str], model: str, settings: list[str]
) -> None:
    run = _train(runs, f"nonull-{model}", model, *settings)
    assert not load_run(run).model.null_label
    capsys.readouterr()
    assert main(["sample", str(run), "--cond", "-1", "--out", str(runs / "never.png")]) == 2
    line = _one_error_line(capsys)
    assert "labels must be in 0..9" in line and "only by models trained with label dropout" in line, line


def test_ddpm_without_label_dropout_refuses_guidance() -> None:
    with pytest.raises(UserError, match=r"label dropout \(p_uncond > 0\)"):
        deepgen.create_model("ddpm", DIGITS, conditional=True, p_uncond=0.0, guidance=3.0)
    model = deepgen.create_model("ddpm", DIGITS, conditional=True, p_uncond=0.0, channels=8, channel_mult=(1,), attention=())
    assert not model.null_label
    with pytest.raises(UserError, match="pass labels"):
        model.sample(2)


# -- 4. the likelihood of a guided conditional ddpm ----------------------------------------------------


def test_eval_nll_of_a_guided_ddpm_is_the_unguided_conditional_bound_and_says_so(
    cddpm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["eval", str(cddpm), "--metrics", "nll", "--limit", "8", "--device", "cpu", "--quiet"]
    assert main(base) == 0
    plain = json.loads((cddpm / "eval.json").read_text())["nll"]["test"]["values"]
    capsys.readouterr()
    assert main([*base, "--set", "guidance=3"]) == 0
    printed = capsys.readouterr().out
    guided = json.loads((cddpm / "eval.json").read_text())["nll"]["test"]["values"]
    assert guided["nll"] == plain["nll"]  # the same bound: guidance defines no likelihood
    assert "p(x | y) at each example's label without guidance" in plain["nll_note"]
    note = guided["nll_note"]
    assert "p(x | y) at each example's label without guidance" in note and "guidance=3 applies to sampling only" in note
    assert "guidance=3 applies to sampling only" in printed


def test_unconditional_ddpm_note_says_nothing_of_labels() -> None:
    model = deepgen.create_model("ddpm", DataSpec((2,), "real"), hidden=(8,), timesteps=10, steps=5)
    assert "p(x | y)" not in model.likelihood_info().note
