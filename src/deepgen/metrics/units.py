"""Printed figures: one name, one sign and one unit wherever a figure is printed.

The training summary (``deepgen train``), ``deepgen eval``, the HTML report and the
example scripts print figures through these functions, so one run's figure reads the same
everywhere. The convention:

* Likelihood figures are losses in nats per example (summed over its dimensions) or
  bits/dim. ``nll`` is -log p(x) (or the upper bound on it that the model states); the
  ELBO is printed as **-ELBO, an upper bound on -log p(x)**, in positive nats beside
  ``nll``. The evaluator's results and ``eval.json`` keep the raw key ``elbo``, the bound
  on log p(x) itself (usually negative): :func:`eval_figures` turns it round.
* A density on continuous data can exceed 1, so a -log of it can be below 0; where a
  printed likelihood figure is negative, one line says so (:data:`NEGATIVE_NOTE`).
* GAN figures say what they are: ``nats`` for the cross-entropy games (minimax,
  non-saturating, the adversarial autoencoder), ``critic units`` for the Wasserstein
  critic's loss and estimate (its scale is arbitrary), ``dimensionless`` for the hinge and
  least-squares games on raw scores, ``prob.`` for D's mean output probability; a legend
  line says each once (:func:`logged_legend`).
* Logged training figures are means over the training batches since the previous log
  point, with their own binarization, dequantization and z draws; ``val_*`` ones are the
  first ``val_limit`` test examples with the trainer's own draws. Neither is the figure of
  ``deepgen eval`` (the test split with the evaluation seed), and the labels say so.

The units of a logged figure are read from the logged keys alone (no model needed): a
VAE logs ``elbo``, ``recon`` and ``kl``; a Wasserstein GAN's critic phase is called
``critic``; the hinge and least-squares games log ``score_real`` / ``score_fake``; the
cross-entropy games ``d_real`` / ``d_fake`` (``d_prior`` / ``d_code`` for the adversarial
autoencoder).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

NEGATIVE_NOTE = "negative: a density on continuous data can exceed 1, so its -log can be below 0"

NATS = "nats"
CRITIC = "critic units"
DIMENSIONLESS = "dimensionless"
PROB = "prob."

# -- deepgen eval's figures ---------------------------------------------------------------------

#: Printed labels of the evaluator's raw keys (the values of ``elbo`` are negated: -ELBO).
EVAL_LABELS: dict[str, str] = {
    "recon_mse": "recon_mse (per element)",
    "recon_mse_sem": "recon_mse sem",
    "recon_sse": "recon_sse (per example)",
    "recon_psnr": "recon_psnr (dB)",
    "recon_bce": "recon_bce (nats)",
    "recon_nll": "recon_nll (nats, -log p(x|code))",
    "elbo": "-elbo (nats, upper bound on -log p(x))",
    "elbo_sem": "-elbo sem (nats)",
    "elbo_bpd": "-elbo (bits/dim)",
    "elbo_bin_width": "-elbo bin width",
    "nll": "nll (nats)",
    "nll_sem": "nll sem (nats)",
    "nll_bpd": "nll (bits/dim)",
    "nll_bin_width": "nll bin width",
    "nll_original_units": "nll (nats, the table's own units)",
    "kl": "kl (nats)",
    "reverse_kl": "reverse_kl (nats)",
    "hq_percent": "hq_percent (%)",
}
#: The label of ``elbo`` when the model's likelihood is not normalised (``elbo_note`` set).
NOT_NORMALISED_ELBO = "-elbo (nats, a loss: not normalised, no bound on -log p(x))"
#: Raw keys whose printed value is the negated raw value.
NEGATED = frozenset({"elbo"})
# The likelihood note of a bound, said beside an NLL: the bound on the NLL, not on log p(x).
_NOTE_FIXES = (("(a lower bound on log p(x))", "(nll is an upper bound on -log p(x))"),)


def neg_elbo(results: Mapping[str, Any]) -> float:
    """The printed -ELBO (nats per example) of evaluator results holding the raw ``elbo``."""
    return -float(results["elbo"])


def eval_figures(results: Mapping[str, Any]) -> dict[str, Any]:
    """Evaluator results (or ``eval.json`` values) as printed: ``{label: value}``.

    Labels carry the unit (:data:`EVAL_LABELS`; other keys keep their name), ``elbo`` is
    printed as -ELBO (the value negated), notes about a bound say it bounds -log p(x),
    ``<metric>_seconds`` becomes ``<metric> time (s)``, and when a likelihood figure in
    nats is negative a ``note`` entry says why. The values are the results', so
    ``eval_figures(r)["-elbo (nats, upper bound on -log p(x))"] == -r["elbo"]`` (with
    :data:`NOT_NORMALISED_ELBO` as the label where ``r`` holds an ``elbo_note``).
    """
    out: dict[str, Any] = {}
    negative = False
    # A likelihood that is not normalised (a Bernoulli decoder on grey values; the evaluator
    # adds elbo_note) bounds nothing: its -ELBO is a loss, and the label must not call it one.
    loose = "elbo_note" in results
    for k, v in results.items():
        if k.endswith("_seconds"):
            out[f"{k.removesuffix('_seconds')} time (s)"] = v
            continue
        if k in NEGATED and _number(v):
            v = -v
        if isinstance(v, str):
            for old, new in _NOTE_FIXES:
                v = v.replace(old, new)
        label = NOT_NORMALISED_ELBO if loose and k == "elbo" else EVAL_LABELS.get(k, k)
        negative |= label.split(" ", 1)[0] in ("-elbo", "nll", "recon_nll") and "(nats" in label and _number(v) and v < 0
        out[label] = v
    if negative:
        out["note"] = NEGATIVE_NOTE
    return out


# -- logged training figures --------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One printed logged figure: ``key`` as logged, ``label`` as printed, ``value`` with
    the sign convention applied (``-elbo`` for a logged ``elbo``), ``unit`` ("" for none)."""

    key: str
    label: str
    value: float
    unit: str

    def text(self) -> str:
        """``"loss (-ELBO) 137.9 nats"``."""
        value = f"{self.value:.4g}" if math.isfinite(self.value) else str(self.value)
        return f"{self.label} {value}" + (f" {self.unit}" if self.unit else "")


def split_key(key: str) -> tuple[str, str, str]:
    """A logged key as (phase, validation prefix, base name): ``loss`` -> ("", "", "loss"),
    ``critic/val_loss`` and ``val/critic/loss`` -> ("critic", "val_", "loss"),
    ``discriminator/loss_osc`` -> ("discriminator", "", "loss_osc")."""
    head, _, name = key.rpartition("/")
    val = head.startswith("val") and (head == "val" or head.startswith("val/"))
    phase = head.removeprefix("val").strip("/") if val else head
    if name.startswith("val_"):
        return phase, "val_", name[4:]
    return phase, ("val_" if val else ""), name


def adversarial_game(keys: Iterable[str]) -> str | None:
    """Which adversarial game logged ``keys``: ``"wasserstein"`` (a ``critic`` phase),
    ``"scores"`` (hinge / least-squares: raw scores), ``"probability"`` (minimax,
    non-saturating, the adversarial autoencoder: D's output is a probability) or None."""
    parts = [split_key(k) for k in keys]
    if any(phase == "critic" for phase, _, _ in parts):
        return "wasserstein"
    bases = {base for _, _, base in parts}
    if bases & {"score_real", "score_fake"}:
        return "scores"
    if bases & {"d_real", "d_fake", "d_prior", "d_code"}:
        return "probability"
    return None


_BASE_UNITS = {"recon": NATS, "kl": NATS, "nll": NATS, "nll_per_token": "nats/token", "bits_per_dim": "bits/dim",
               "samples_per_s": "examples/s"}
_LIKELIHOOD_BASES = frozenset({"recon", "nll", "-elbo"})


def _loss_unit(phase: str, keys: set[str], game: str | None) -> str:
    """The unit of ``<phase>/loss``."""
    bases_here = {b for p, _, b in map(split_key, keys) if p == phase}
    if phase == "reconstruction" or (phase == "" and game is None):  # a likelihood model's own loss
        if bases_here & {"elbo", "nll", "recon"}:
            return "nats + penalty" if "penalty" in bases_here else NATS
        return ""
    if game == "wasserstein":
        return CRITIC
    if game == "scores":
        return DIMENSIONLESS
    if game == "probability":
        if "adversarial" in bases_here:  # feature matching: G's loss is a distance of D's features
            return "squared D-feature units"
        return NATS
    return ""


def _unit(phase: str, base: str, keys: set[str], game: str | None) -> str:
    if base.endswith("_osc"):
        return _unit(phase, base.removesuffix("_osc"), keys, game)
    if base == "loss":
        return _loss_unit(phase, keys, game)
    if base in _BASE_UNITS:
        return _BASE_UNITS[base]
    if base in ("wasserstein", "gp"):
        return CRITIC
    if base in ("d_real", "d_fake", "d_prior", "d_code"):
        return CRITIC if game == "wasserstein" else PROB
    if base in ("score_real", "score_fake"):
        return "raw D score"
    if base == "adversarial":
        return {"wasserstein": CRITIC, "scores": DIMENSIONLESS, "probability": NATS}.get(game or "", "")
    return ""


def _is_close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


def logged_figures(last: Mapping[str, Any]) -> list[Figure]:
    """Logged values (a ``metrics.jsonl`` record, ``FitResult.last``) as printed figures,
    in their order: each with its unit; a logged ``elbo`` printed as ``-elbo`` (or left out
    where the loss beside it is that same -ELBO, which is then labelled ``loss (-ELBO)``);
    ``step``, ``epoch`` and ``seconds`` and non-numbers left out."""
    numbers = {k: float(v) for k, v in last.items() if _number(v) and k not in ("step", "epoch", "seconds")}
    keys = set(numbers)
    game = adversarial_game(keys)

    def loss_key(phase: str, pre: str) -> str | None:
        for k in keys:
            if split_key(k) == (phase, pre, "loss"):
                return k
        return None

    def is_neg_elbo(phase: str, pre: str, bound: str = "elbo") -> bool:
        """The loss of (phase, pre) equals -``bound`` (the ELBO at beta = 1, or the IWAE
        bound of objective=iwae), as logged together at training."""
        lk = loss_key(phase, pre)
        ek = next((k for k in keys if split_key(k) == (phase, "", bound)), None)
        if lk is None or ek is None:
            return False
        if pre == "":
            return _is_close(numbers[lk], -numbers[ek])
        train = loss_key(phase, "")  # val_loss is the same objective as loss, on other data
        return train is not None and _is_close(numbers[train], -numbers[ek])

    out = []
    for key, v in numbers.items():
        phase, pre, base = split_key(key)
        label, value = key, v
        if base in _BOUNDS:
            if is_neg_elbo(phase, pre, base):
                continue  # the loss beside it is this bound, negated: printed once, as "loss (-ELBO)"
            label, value, base = _negated_label(key), -v, "-" + base
        elif base == "loss" and (bound := next((b for b in _BOUNDS if is_neg_elbo(phase, pre, b)), None)):
            label = f"{key} ({_BOUNDS[bound]})"
        unit = NATS if base.removeprefix("-") in _BOUNDS else _unit(phase, base, keys, game)
        out.append(Figure(key, label, value, unit))
    return out


# Logged lower bounds on log p(x), printed negated as losses in nats (-> how "loss" reads
# when it is that bound): the ELBO, and the IWAE bound L_k of the VAE's objective=iwae.
_BOUNDS = {"elbo": "-ELBO", "iwae": "-IWAE bound"}


def _negated_label(key: str) -> str:
    """``elbo`` -> ``-elbo``, ``val_elbo`` -> ``-val_elbo``, ``main/elbo`` -> ``main/-elbo``."""
    head, sep, name = key.rpartition("/")
    return f"{head}{sep}-{name}"


def display_key(key: str) -> tuple[str, float]:
    """(printed name, sign) of a logged key for a table or a curve: (``-elbo``, -1) for an
    ``elbo``, (key, 1) for everything else."""
    _, _, base = split_key(key)
    return (_negated_label(key), -1.0) if base in _BOUNDS else (key, 1.0)


def logged_unit(key: str, keys: Iterable[str]) -> str:
    """The unit of logged ``key`` among the keys logged beside it ("" for none)."""
    keys = set(keys) | {key}
    phase, _, base = split_key(key)
    if base in _BOUNDS:
        return NATS
    return _unit(phase, base, keys, adversarial_game(keys))


def logged_legend(figures: Iterable[Figure], *, val_examples: int | str | None = None) -> list[str]:
    """One-line explanations of what the printed ``figures`` are: where they were computed
    (training batches, the test split for ``val_*``: ``val_examples`` says how many, as a
    count or in words), the adversarial units, the oscillation measure and, where a
    likelihood figure is negative, why."""
    figures = list(figures)
    keys = {f.key for f in figures}
    units = {f.unit for f in figures}
    lines = []
    has_val = any(split_key(k)[1] for k in keys)
    where = "train figures: means over the training batches since the last log point"
    if has_val:
        if isinstance(val_examples, str):
            first = val_examples
        else:
            first = f"the first {val_examples} test examples" if val_examples else "the test split"
        where += f"; val_*: {first} at the epoch's end"
        if _has_bound(figures):
            where += " (the trainer's noise draws, not `deepgen eval`'s: its -elbo differs by that noise)"
    lines.append(where)
    game = adversarial_game(keys)
    if game == "probability" and NATS in units:
        lines.append("nats: D's cross-entropy, real + fake terms (2 ln 2 = 1.386 when D says 1/2 to all), and G's "
                     "(ln 2 = 0.693 there); prob.: D's mean output probability")
    if game == "wasserstein":
        lines.append("critic units: the scale of the critic's output, arbitrary (set by the clipping or the gradient "
                     "penalty); wasserstein = E f(x) - E f(G(z)), compare it within one run")
    if game == "scores":
        lines.append("dimensionless: hinge / least-squares losses on D's raw scores (targets and margins at 0 and +-1)")
    if any(split_key(k)[2].endswith("_osc") for k in keys):
        lines.append("*_osc: half the range of that loss over the last osc_window log points, in its unit")
    for f in figures:
        phase, _, base = split_key(f.key)
        if base in ("loss", "adversarial") and phase == "generator" and f.unit == NATS and f.value < 0:
            lines.append("generator loss < 0: the minimax game's E log(1 - D(G(z))) is <= 0 by construction")
            break
    if any(f.unit.startswith(NATS) and _likelihood(f) and f.value < 0 for f in figures):
        lines.append(NEGATIVE_NOTE)
    return lines


def _has_bound(figures: list[Figure]) -> bool:
    return any("-ELBO" in f.label or "-elbo" in f.label for f in figures)


def _likelihood(f: Figure) -> bool:
    phase, _, base = split_key(f.key)
    if "-ELBO" in f.label or "elbo" in base:
        return True
    return base in _LIKELIHOOD_BASES or (base == "loss" and f.unit == NATS and phase in ("", "reconstruction"))


def format_logged(last: Mapping[str, Any], *, val_examples: int | str | None = None, indent: str = "  ") -> str:
    """The training summary's figures: one line of ``label value unit`` and the legend's
    lines below it, indented (:func:`logged_figures`, :func:`logged_legend`)."""
    figures = logged_figures(last)
    if not figures:
        return "(none logged)"
    lines = [", ".join(f.text() for f in figures)]
    lines += [indent + line for line in logged_legend(figures, val_examples=val_examples)]
    return "\n".join(lines)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
