"""One-class anomaly detection: the ``normal_class`` data setting, the AUROC function
against scikit-learn's, and the ``auroc`` metric through the evaluator and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sklearn.metrics import roc_auc_score

import deepgen
from deepgen.cli import main
from deepgen.errors import UserError
from deepgen.metrics import evaluate
from deepgen.metrics.anomaly import auroc
from deepgen.models.base import GenerativeModel, Likelihood, ModelConfig


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_equals_scikit_learns_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (300,), generator=g).double()  # many ties
    labels = torch.rand(300, generator=g) < 0.3
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels.numpy(), scores.numpy()), abs=1e-12)
    assert auroc(torch.arange(10.0), torch.arange(10) >= 5) == 1.0 and auroc(-torch.arange(10.0), torch.arange(10) >= 5) == 0.0
    with pytest.raises(ValueError, match="both classes"):
        auroc(scores, torch.ones(300, dtype=torch.bool))


def test_normal_class_keeps_one_class_for_training_and_every_class_for_testing():
    full = deepgen.load_dataset("digits")
    one = deepgen.load_dataset("digits", normal_class=3, validation=20)
    # Filtered first, then split: the validation split is the last 20 threes, all of them
    # normal and exactly 20, and the training split the other threes.
    threes = torch.nonzero(full.train.y == 3).flatten()
    assert len(one.val) == 20 and set(one.val.y.tolist()) == {3} and set(one.train.y.tolist()) == {3}
    assert torch.equal(one.val.x, full.train.x[threes[-20:]]) and torch.equal(one.train.x, full.train.x[threes[:-20]])
    with pytest.raises(UserError, match="validation=.* would hold out every training example"):
        deepgen.load_dataset("digits", normal_class=3, validation=len(threes))
    assert torch.equal(one.test.y, full.test.y)
    with pytest.raises(UserError, match="normal_class must be one of the classes 0..9"):
        deepgen.load_dataset("digits", normal_class=10)
    with pytest.raises(UserError, match="needs labelled data"):
        deepgen.load_dataset({"x": torch.randn(50, 3).numpy()}, normal_class=0)


class _Oracle(GenerativeModel):
    """log_prob(x) = minus the distance to a centre: normal when close (a stand-in model)."""

    def __init__(self, spec, centre: torch.Tensor) -> None:
        super().__init__(ModelConfig(), spec)
        self.centre = centre
        self.p = torch.nn.Parameter(torch.zeros(()))

    def likelihood_info(self) -> Likelihood:
        return Likelihood("exact", True, "exact (test stand-in)")

    def log_prob(self, x, *, cond=None):
        return -(x.reshape(len(x), -1) - self.centre).norm(dim=1)

    def sample(self, n, *, generator=None, cond=None):
        return self.centre.expand(n, -1).reshape(n, *self.spec.shape)


def test_the_auroc_metric_scores_normal_examples_above_the_others():
    ds = deepgen.load_dataset("digits", normal_class=0)
    centre = ds.convert(ds.train.x).reshape(len(ds.train), -1).mean(0)  # the mean zero
    r = evaluate(_Oracle(ds.spec, centre), ds, ["auroc"])
    expected = roc_auc_score((ds.test.y == 0).numpy(), (-(ds.convert(ds.test.x).reshape(len(ds.test), -1) - centre).norm(dim=1)).numpy())
    assert r["auroc"] == pytest.approx(expected, abs=1e-9) and r["auroc"] > 0.9
    assert r["auroc_score"] == "log_prob" and r["auroc_normal"] == int((ds.test.y == 0).sum())
    with pytest.raises(UserError, match="needs a normal class"):
        evaluate(_Oracle(ds.spec, centre), deepgen.load_dataset("digits"), ["auroc"])


def test_cli_trains_on_one_class_and_evaluates_the_auroc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "ae", "--data", "digits", "--set", "normal_class=3", "--epochs", "3", "--set", "hidden=32",
                 "--set", "progress=false", "--set", "tensorboard=false", "--out", str(run)]) == 0
    assert main(["eval", str(run), "--metrics", "auroc", "--device", "cpu"]) == 0
    entry = json.loads((run / "eval.json").read_text())["auroc"]["test"]["values"]
    assert entry["auroc_normal_class"] == 3 and entry["auroc_score"] == "reconstruction" and 0.0 <= entry["auroc"] <= 1.0
    assert main(["eval", str(run), "--metrics", "auroc", "--set", "normal_class=5", "--device", "cpu"]) == 0
    assert json.loads((run / "eval.json").read_text())["auroc"]["test"]["values"]["auroc_normal_class"] == 5
    capsys.readouterr()
    assert main(["eval", str(run), "--metrics", "auroc", "--set", "normal_class=12", "--device", "cpu"]) == 2
    assert "normal_class must be one of the classes" in capsys.readouterr().err


class _LabelReader(_Oracle):
    """A conditional stand-in whose score reads only the label it is given: it would score
    AUROC 1 if the metric handed it each example's own label."""

    def __init__(self, spec) -> None:
        GenerativeModel.__init__(self, ModelConfig(), spec, conditional=True)
        self.p = torch.nn.Parameter(torch.zeros(()))

    def log_prob(self, x, *, cond=None):
        return -(cond != 0).double()


def test_a_conditional_model_is_scored_given_the_normal_class_not_the_answer():
    ds = deepgen.load_dataset("digits", normal_class=0)
    r = evaluate(_LabelReader(ds.spec), ds, ["auroc"])
    assert r["auroc"] == pytest.approx(0.5)  # every example gets label 0: one score for all, chance
