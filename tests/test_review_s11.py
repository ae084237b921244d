"""Review s11: the autoregressive, flow and diffusion families through the CLI and the API.

Each test names the defect it pins: a wrong result, a traceback, a silently ignored
setting or a misleading message, found by using the families as a user would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import deepgen
from deepgen.cli import main
from deepgen.data.dataset import DataSpec
from deepgen.errors import UserError
from deepgen.io import file_sha256, read_tensors
from deepgen.models.autoregressive import _temper

QUIET = ["--set", "progress=false", "--set", "tensorboard=false"]
DIGITS = DataSpec((1, 8, 8), "continuous", num_levels=17, name="digits")


def _small(name: str, spec: DataSpec, **over) -> deepgen.GenerativeModel:
    cls = deepgen.create_model(name, spec).__class__
    torch.manual_seed(0)
    return deepgen.create_model(name, spec, **{**cls.variants(spec)[0], **over}).eval()


# -- flows: sample(mean=True), which every caller passes for images, gave n copies of z = 0 ----------


@pytest.mark.parametrize("name", ["realnvp", "glow"])
def test_image_flow_samples_with_mean_are_draws_and_temperature_zero_is_the_mode(name: str) -> None:
    model = _small(name, DIGITS)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    s = model.sample(4, generator=g(), mean=True)  # as the CLI, the training pictures and the report ask
    assert not torch.equal(s[0], s[1]), "mean=True must not collapse the draws to one image"
    assert torch.equal(s, model.sample(4, generator=g()))  # a flow has no output noise: mean changes nothing
    model.config = model.config.replace(temperature=0.0)  # the mode, Glow's T = 0 (was refused)
    mode = model.sample(3, generator=g())
    assert torch.equal(mode[0], mode[1]) and torch.equal(mode[1], mode[2])


def test_cli_flow_samples_differ_and_follow_the_temperature(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", "realnvp", "--data", "digits", "--set", "scales=2", "--set", "couplings=1", "--set", "channels=4",
                 "--set", "max_train=64", "--set", "max_steps=2", *QUIET, "--out", str(run)]) == 0
    arrays = {}
    for t in ("1", "0.5"):
        out = tmp_path / f"t{t}.npy"
        assert main(["sample", str(run), "--n", "4", "--set", f"temperature={t}", "--out", str(out)]) == 0
        arrays[t] = np.load(out)
        assert len({a.tobytes() for a in arrays[t]}) == 4, "four different samples"
    assert not np.array_equal(arrays["1"], arrays["0.5"]), "--set temperature was silently ignored"


# -- diffusion: samples of quantised data were not on the data's levels -------------------------


def test_ddpm_samples_of_quantised_data_are_on_its_levels() -> None:
    model = _small("ddpm", DIGITS)
    for mean in (True, False):
        s = model.sample(3, generator=torch.Generator().manual_seed(0), mean=mean)
        k = s * 16
        assert s.min() >= 0 and s.max() <= 1 and torch.equal(k, k.round()), "digits have 17 levels k / 16"


# -- autoregressive sampling knobs ---------------------------------------------------------------


def test_temper_at_a_tiny_temperature_keeps_the_most_likely_value() -> None:
    logits = torch.tensor([[0.5, 2.0, 1.0, -3.0]])
    probs = torch.softmax(_temper(logits, 1e-40, 0, dim=-1), dim=-1)  # (x / 1e-40) overflowed to +inf: every positive tied
    assert torch.equal(probs, torch.tensor([[0.0, 1.0, 0.0, 0.0]]))


def test_transformer_samples_at_a_tiny_temperature_without_a_traceback() -> None:
    model = _small("transformer", DataSpec((6,), "tokens", vocab_size=5), temperature=1e-40)
    greedy = _small("transformer", DataSpec((6,), "tokens", vocab_size=5), top_k=1)
    s = model.sample(3, generator=torch.Generator().manual_seed(0))  # was: multinomial of NaN probabilities
    assert torch.equal(s, greedy.sample(3, generator=torch.Generator().manual_seed(1)))
    assert model.sample(0).shape == (0, 6)  # was: a reshape error


def test_made_categorical_at_a_tiny_temperature_is_greedy_not_the_first_positive_logit() -> None:
    cold = _small("made", DIGITS, temperature=1e-40)
    greedy = _small("made", DIGITS, top_k=1)
    torch.testing.assert_close(cold.sample(2, generator=torch.Generator().manual_seed(0)),
                               greedy.sample(2, generator=torch.Generator().manual_seed(5)))


def test_made_bernoulli_top_k_one_is_greedy_not_ignored() -> None:
    spec = DataSpec((1, 3, 3), "binary")
    model = _small("made", spec, top_k=1)
    a = model.sample(4, generator=torch.Generator().manual_seed(0))
    b = model.sample(4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b), "top_k=1 takes the more likely value of every pixel"
    x = torch.zeros(1, *spec.shape)
    flat = x.view(1, -1)
    for i in model.ordering().tolist():  # greedy by hand: each pixel 1 where its logit is > 0
        flat[0, i] = float(model.head_params(x, None).reshape(1, -1)[0, i] > 0)
    assert torch.equal(a[0], x[0])


def test_transformer_levels_message_names_the_divisors_of_the_levels() -> None:
    with pytest.raises(UserError) as e:
        deepgen.create_model("transformer", DIGITS, levels=3)
    assert "e.g. )" not in str(e.value) and "one of 17" in str(e.value)


# -- files -----------------------------------------------------------------------------------------


def test_a_corrupt_checkpoint_file_is_described_once(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    sha = file_sha256(path)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(UserError) as e:
        read_tensors(path, sha256=sha)
    assert str(e.value).count("cannot read") == 1 and str(e.value).count("missing or corrupt") == 1, str(e.value)


def test_text_with_a_byte_order_mark_has_no_bom_character(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello notes, one line after another\n" * 40, encoding="utf-8-sig")  # as Notepad saves UTF-8
    ds = deepgen.load_dataset(str(path), block_size=8)
    assert "\ufeff" not in ds.meta["vocab"] and ds.meta["vocab"][0] == "\n"


def test_quadratic_spacing_message_says_which_timesteps_it_spaces() -> None:
    with pytest.raises(UserError) as e:
        deepgen.create_model("ddpm", DataSpec((2,), "real"), timesteps=50, steps=10, spacing="quadratic", hidden=(8,))
    assert "46 of the 50 timesteps" in str(e.value)


def test_score_refuses_text_whose_vocabulary_is_another_of_the_same_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("the quick brown fox jumps over the lazy dog, line after line\n" * 30, encoding="utf-8")
    run = tmp_path / "run"
    assert main(["train", "transformer", "--data", str(notes), "--set", "block_size=8", "--set", "layers=1", "--set", "heads=1",
                 "--set", "width=8", "--set", "max_steps=1", *QUIET, "--out", str(run)]) == 0
    other = tmp_path / "other.txt"  # as many characters, one of them another: every id after it would mean another character
    other.write_text(notes.read_text(encoding="utf-8").replace("z", "é"), encoding="utf-8")
    capsys.readouterr()
    out = tmp_path / "scores.csv"
    assert main(["score", str(run), "--data", str(other), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'é' are not among them" in err and "'z' are missing" in err and "Traceback" not in err
    assert not out.exists()


def test_training_a_logistic_mixture_pixelcnn_ends_without_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The end-of-training pictures drew temperatures.png, which that head refuses: exit 2 after a finished run.
    run = tmp_path / "run"
    assert main(["train", "pixelcnn", "--data", "digits", "--set", "likelihood=logistic-mixture", "--set", "channels=4",
                 "--set", "layers=1", "--set", "out_hidden=8", "--set", "max_steps=1", "--set", "max_train=64", *QUIET,
                 "--out", str(run)]) == 0
    assert "error" not in capsys.readouterr().err and (run / "samples.png").is_file() and not (run / "temperatures.png").exists()
