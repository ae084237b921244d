"""One ELBO convention everywhere (issue 16): for one checkpoint and split, the example
script, ``deepgen eval`` and the HTML report print the same -ELBO, in nats, with the same
sign, beside ``nll``; the training printout labels its own figures as what they are."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from helpers import load_script

from deepgen.cli import main
from deepgen.metrics import eval_figures, format_table
from deepgen.report import build_report, read_run

ROOT = Path(__file__).resolve().parents[1]
NEG_ELBO = "-elbo (nats, upper bound on -log p(x))"


def load_example(name: str):  # type: ignore[no-untyped-def]
    return load_script("examples", name, "example")


def printed(table: str, label: str) -> str:
    """The value printed beside ``label`` in a format_table text."""
    for line in table.splitlines():
        if line.startswith(label + " "):
            return line[len(label):].strip()
    raise AssertionError(f"{label!r} not printed in:\n{table}")


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The example script run as a user runs it (1 epoch: 26 steps), and what it printed."""
    example = load_example("train_vae")
    out = tmp_path_factory.mktemp("elbo") / "run"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        example.main(["--epochs", "1", "--out", str(out)])
    return out, buf.getvalue()


def test_example_eval_and_report_print_the_same_neg_elbo(example_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    run, example_out = example_run
    example = load_example("train_vae")

    # The example script: its function and its printout.
    figures = example.held_out_figures(str(run))
    neg_elbo, nll = figures[NEG_ELBO], figures["nll (nats)"]
    assert math.isfinite(neg_elbo) and neg_elbo > 0  # -ELBO in positive nats (the run is young: no density above 1 yet)
    assert printed(example_out, NEG_ELBO) == printed(format_table(figures), NEG_ELBO)

    # deepgen eval on the same checkpoint and split (its defaults: the whole test split, seed 0).
    capsys.readouterr()
    assert main(["eval", str(run), "--metrics", "elbo,nll", "--device", "cpu", "--quiet"]) == 0
    eval_out = capsys.readouterr().out
    assert printed(eval_out, NEG_ELBO) == printed(example_out, NEG_ELBO) == f"{neg_elbo:.4f}"
    assert printed(eval_out, "nll (nats)") == f"{nll:.4f}"
    assert not re.search(r"^elbo(?! time)", eval_out, re.M)  # no ELBO of the other sign beside it
    assert "upper bound on -log p(x)" in printed(eval_out, "nll_note") and "lower bound" not in eval_out

    # eval.json keeps the raw bound (the ELBO itself), the very number negated.
    saved = json.loads((run / "eval.json").read_text())
    assert saved["elbo"]["test"]["values"]["elbo"] == -neg_elbo

    # The report: its data and its page.
    summary = read_run(run)
    (fig,) = [f for f in summary.figures if f.metric == "elbo"]
    assert fig.split == "test" and fig.printed()[NEG_ELBO] == neg_elbo
    page = build_report([run], run / "report.html").read_text()
    evaluation = page[page.index("Evaluation (eval.json)") : page.index("Where the figures came from")]
    assert f"<th>{NEG_ELBO}</th>" in evaluation.replace("&gt;", ">")
    assert f"<td>{neg_elbo:.4f}</td>" in evaluation and f"<td>{-neg_elbo:.4f}</td>" not in evaluation
    assert f"<td>{nll:.4f}</td>" in evaluation


def test_training_figures_say_where_they_come_from(example_run: tuple[Path, str]) -> None:
    run, example_out = example_run
    line = next(ln for ln in example_out.splitlines() if ln.startswith("trained "))
    assert "loss (-ELBO)" in line and re.search(r"loss \(-ELBO\) [-0-9.e+]+ nats", line)
    assert "val_loss (-ELBO)" in line and " elbo " not in line  # printed once, as the loss
    legend = example_out[example_out.index(line) + len(line) :]
    assert "means over the training batches" in legend and "the first 180 test examples" in legend
    assert "not `deepgen eval`'s" in legend  # the test split's val_loss is not eval's -elbo
    # The report's last logged values: the same labels, the same sign.
    page = (run / "report.html").read_text() if (run / "report.html").exists() else build_report([run], run / "r.html").read_text()
    last = page[page.index("Last logged values") :]
    last = last[: last.index("</table>")]  # that table alone (the settings below it may hold the word, e.g. objective=elbo)
    assert "<td>loss (-ELBO)</td>" in last and "<td>val_loss (-ELBO)</td>" in last and "<td>elbo</td>" not in last


def test_eval_figures_turn_only_the_elbo_round() -> None:
    raw = {"split": "test", "n": 10, "elbo": -90.5, "elbo_sem": 0.5, "elbo_bpd": 0.2, "nll": 85.0, "nll_bpd": 0.19,
           "nll_note": "IWAE bound, k=5 importance samples (a lower bound on log p(x))", "elbo_seconds": 0.1}
    shown = eval_figures(raw)
    assert shown[NEG_ELBO] == 90.5 and shown["-elbo sem (nats)"] == 0.5 and shown["-elbo (bits/dim)"] == 0.2
    assert shown["nll (nats)"] == 85.0 and shown["elbo time (s)"] == 0.1
    assert shown["nll_note"] == "IWAE bound, k=5 importance samples (nll is an upper bound on -log p(x))"
    assert "note" not in shown
    dense = eval_figures({"elbo": 3.0, "nll": -4.0})  # a density above 1: negative nats
    assert dense[NEG_ELBO] == -3.0 and "can exceed 1" in dense["note"]
