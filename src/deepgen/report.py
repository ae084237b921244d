"""``deepgen report``: one self-contained HTML page about one run or a comparison of several.

What a page holds, per run folder: what was trained (model, data, steps, epochs, time),
the figures of ``eval.json`` (every metric and split evaluated) with where each came from
(the checkpoint step, "stale" when the run has trained past it, the examples, the feature
network, the likelihood's note such as the IWAE k, the ``--set`` settings, the seed),
training curves drawn from ``metrics.jsonl`` (one panel per logged value: losses and
diagnostics such as ``lr``, ``grad_norm``, ``samples_per_s``; a validation value shares
the panel of its training value, ``val_loss`` beside ``loss``, so overfitting shows), and
every picture the run wrote (samples, reconstructions, latent scatter, manifold, ...),
a token run's text samples (``samples.txt``, its only samples), with a strip of the
sample pictures written during training (``samples/``: on 2-D data, mode hopping shows
from frame to frame). A NaN figure reads "undefined (NaN)". The
legend of the ``val_*`` values names the split they read: the validation examples held
out from training (``data.validation=N``) or the test split.
With several runs, a table first compares them: the settings that differ between them
(model, trainer and data; :data:`COSMETIC_SETTINGS`, which change nothing that is trained,
are left out), their evaluation figures, and an overlay of the curves they share.

The page has no external assets: pictures are embedded as base64 PNGs, so it can be
mailed or archived alone. It is written atomically (a temporary file, then a rename).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import UserError
from .io import atomic_path
from .metrics.evaluate import format_value
from .metrics.units import display_key, eval_figures, logged_figures, logged_legend, logged_unit
from .training.checkpoint import (
    EVAL,
    INTERPOLATION,
    LATENT,
    MANIFOLD,
    METRICS,
    RECONSTRUCTIONS,
    SAMPLES,
    SAMPLES_DIR,
    SAMPLES_TEXT,
    current_checkpoint,
    read_run_config,
)
from .training.config import MODEL_DEFAULTED, TrainConfig
from .version import __version__

# Picture files first in this order (the rest of a run's PNGs follow, sorted by name).
PICTURE_ORDER = (SAMPLES, RECONSTRUCTIONS, MANIFOLD, LATENT, INTERPOLATION)
_NOT_CURVES = {"step", "epoch", "seconds"}
MAX_OVERLAY_KEYS = 8
MAX_FRAMES = 8  # pictures of samples/ shown as a strip (how the samples moved during training)
MAX_TEXT_CHARS = 20_000  # samples.txt (text samples of token data) shown up to this many characters

# Settings (flattened as RunSummary.settings names them) that change nothing that is
# trained: display, logging cadence, checkpoint bookkeeping, loader workers, where files
# are looked for. "Settings that differ" leaves them out (a muted line names the ones
# that differ); "All settings" of each run still lists them. (keep_best and best_mode are
# not here: early_stop watches the keep_best figure, so they can change where training stops.)
COSMETIC_SETTINGS = frozenset({
    "train.progress",  # the tqdm bar
    "train.tensorboard",  # TensorBoard event files
    "train.log_every",  # how often logged values are read (the curves' resolution)
    "train.osc_window",  # the window of the logged <key>_osc measure
    "train.sample_every",  # how often sample pictures are drawn
    "train.picture_samples",  # examples per sample picture
    "train.checkpoint_every",  # how often checkpoints are written
    "train.keep_checkpoints",  # how many are kept
    "train.threads",  # CPU threads
    "data.workers",  # DataLoader worker processes
    "data.max_resident_mb",  # decoded pixels in memory or streamed: the same examples
    "data.data_dir",  # where the dataset is looked for first
    "data.download",  # whether a missing dataset may be fetched
})

# Prefixes of a validation value: val_loss, val/loss and val/<phase>/loss pair with
# loss and <phase>/loss (<phase>/val_loss too) in one panel of the curves.
_VAL_PREFIXES = ("val_", "val/")


def train_key_of(key: str) -> str | None:
    """The training value a logged validation value is the counterpart of (None when
    ``key`` is no validation value): ``val_loss`` and ``val/loss`` -> ``loss``,
    ``val/d/loss`` and ``d/val_loss`` -> ``d/loss``."""
    head, sep, tail = key.rpartition("/")
    for prefix in _VAL_PREFIXES:
        if key.startswith(prefix) and len(key) > len(prefix):
            return key[len(prefix):]
        if sep and tail.startswith(prefix) and len(tail) > len(prefix):
            return f"{head}/{tail[len(prefix):]}"
    return None


def curve_panels(keys: Sequence[str]) -> list[list[str]]:
    """The panels of the curves: one per key, in ``keys``' order, except that a
    validation value whose training value is in ``keys`` is drawn in that value's panel
    (``[["loss", "val_loss"], ["kl"], ["lr"], ...]``: the training value first)."""
    present = set(keys)
    panels: dict[str, list[str]] = {}
    for key in keys:
        train = train_key_of(key)
        if train is not None and train in present:
            panels.setdefault(train, [train]).append(key)
        else:
            panels.setdefault(key, [key])
    return list(panels.values())


@dataclass
class EvalFigures:
    """One entry of ``eval.json``: a metric's figures on one split and where they came
    from. ``step``: the checkpoint step they were computed at (None when eval.json does
    not say); ``current_step``: the run's current checkpoint step when the report was
    written (None when unknown)."""

    metric: str
    split: str
    values: dict[str, Any]
    n: Any = None
    step: int | None = None
    current_step: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    seed: Any = None
    date: str | None = None
    command: str | None = None
    checkpoint: Any = None  # which checkpoint `deepgen eval --checkpoint` chose, when recorded

    @property
    def label(self) -> str:
        return f"{self.metric} ({self.split})"

    @property
    def stale(self) -> bool:
        """True when the run's current checkpoint is later than the figures' step."""
        return self.step is not None and self.current_step is not None and self.current_step > self.step

    def state(self) -> str:
        """``step 120``, ``step 120, stale: the run is at step 240 now`` or ``step unknown``."""
        if self.step is None:
            return "step unknown"
        text = f"step {self.step}"
        if self.stale:
            text += f", stale: the run's current checkpoint is at step {self.current_step}"
            if self.checkpoint not in (None, "latest"):
                text += f" (computed at checkpoint {self.checkpoint} by choice)"
        return text

    def examples(self) -> str:
        """How many examples: ``n`` and the metric's own counts (``quality_n``, ``modes_samples``)."""
        parts = [str(self.n)] if self.n is not None else []
        parts += [f"{k} {v}" for k, v in self.values.items() if _is_count_key(k) and v != self.n]
        return ", ".join(parts) or "-"

    def features(self) -> str:
        """The feature network of a sample-quality figure (fid, kid, pr, dc, floor)."""
        return "; ".join(str(v) for k, v in self.values.items() if k == "features" or k.endswith("_features")) or "-"

    def notes(self) -> str:
        """The likelihood's note (``nll_note``: exact, or the IWAE bound and its k) and any
        other note, worded as ``deepgen eval`` prints them (:func:`~deepgen.metrics.units.eval_figures`)."""
        shown = eval_figures({k: v for k, v in self.values.items() if k.endswith("_note")})
        return "; ".join(f"{k.removesuffix('_note')}: {v}" for k, v in shown.items() if k.endswith("_note")) or "-"

    def printed(self) -> dict[str, Any]:
        """The figures as ``deepgen eval`` prints them: labels with units, -ELBO for the raw
        ``elbo`` (:func:`~deepgen.metrics.units.eval_figures`); counts of examples left out."""
        return eval_figures({k: v for k, v in self.values.items() if not _is_count_key(k)})

    def settings_text(self) -> str:
        return ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(self.settings.items())) if self.settings else "saved settings"


def _is_count_key(key: str) -> bool:
    return key.endswith("_n") or key.endswith("_samples")


def _step_or_none(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


@dataclass
class RunSummary:
    """What the report reads from one run folder."""

    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # "metric (split)" -> {key: value}
    figures: list[EvalFigures] = field(default_factory=list)  # the same entries, with where they came from
    current_step: int | None = None  # the run's current checkpoint step (None: no checkpoint, or unreadable)
    checkpoint_problem: str = ""  # why current_step is unknown, when reading the checkpoint failed
    pictures: list[Path] = field(default_factory=list)
    frames: list[Path] = field(default_factory=list)  # samples/ pictures written during training
    text_samples: str | None = None  # samples.txt of a token run (its samples: a token run has no samples.png)
    name: str = ""  # shown instead of the folder's name when set

    @property
    def label(self) -> str:
        return self.name or self.path.name or str(self.path)

    @property
    def last(self) -> dict[str, Any]:
        return self.records[-1] if self.records else {}

    def curve_keys(self) -> list[str]:
        """Logged numeric keys, in first-seen order (the oscillation measures included)."""
        keys: dict[str, None] = {}
        for r in self.records:
            for k, v in r.items():
                if k not in _NOT_CURVES and isinstance(v, (int, float)) and not isinstance(v, bool):
                    keys.setdefault(k)
        return list(keys)

    def last_values(self) -> dict[str, tuple[Any, Any]]:
        """Each logged key's last value and the step it was logged at (a value logged
        less often, such as ``val_loss`` once an epoch, is not in every record)."""
        out: dict[str, tuple[Any, Any]] = {}
        for r in self.records:
            for k, v in r.items():
                if k not in _NOT_CURVES:
                    out[k] = (v, r.get("step", "?"))
        return out

    def settings(self) -> dict[str, Any]:
        """Every setting, flattened: ``model.latent_dim``, ``train.lr``, ``data.name``, ..."""
        out: dict[str, Any] = {"model": self.config["model"]}
        # A trainer setting newer than the run (compile_mode in a run saved before it) is
        # the value the run trained with, the default, not a difference between runs.
        train = {k: v for k, v in TrainConfig().to_dict().items() if k not in MODEL_DEFAULTED}
        for part, values in (("model", self.config["model_config"]), ("train", {**train, **self.config["train"]}), ("data", self.config["data"])):
            for k, v in values.items():
                out[f"{part}.{k}"] = v
        return out


def _read_log(path: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` ([] without one). A bad last line (a run killed
    while writing it) is left out; a bad line before it is a corrupt log."""
    if not path.is_file():
        return []
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e}); the run folder is corrupt.") from None
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise UserError(f"{path}, line {i + 1}, is not valid JSON ({e}); the run folder is corrupt.") from None
    return records


def read_run(path: str | Path) -> RunSummary:
    """A run folder's config, logs, evaluation figures and pictures (a :class:`UserError`
    when the folder is not a run)."""
    path = Path(path)
    config = read_run_config(path)
    run = RunSummary(path, config, _read_log(path / METRICS))
    try:
        ck = current_checkpoint(path)
        run.current_step = ck.step if ck is not None else None
    except UserError as e:  # a corrupt manifest: the page is still written, and says so
        run.checkpoint_problem = str(e)
    eval_path = path / EVAL
    if eval_path.is_file():
        try:
            saved = json.loads(eval_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{eval_path} is not valid JSON ({e}); delete it or run `deepgen eval` again.") from None
        for metric, by_split in saved.items() if isinstance(saved, dict) else []:
            for split, entry in by_split.items() if isinstance(by_split, dict) else []:
                if isinstance(entry, dict) and isinstance(entry.get("values"), dict):
                    settings = entry.get("settings")
                    fig = EvalFigures(
                        str(metric), str(split), entry["values"], n=entry.get("n"), step=_step_or_none(entry.get("step")),
                        current_step=run.current_step, settings=settings if isinstance(settings, dict) else {},
                        seed=entry.get("seed"), date=entry.get("date"), command=entry.get("command"),
                        checkpoint=entry.get("checkpoint"),
                    )
                    run.figures.append(fig)
                    run.evals[fig.label] = fig.values
    pngs = {p.name: p for p in path.glob("*.png")}
    run.pictures = [pngs.pop(n) for n in PICTURE_ORDER if n in pngs] + [pngs[n] for n in sorted(pngs)]
    frames = sorted((path / SAMPLES_DIR).glob("*.png"))
    if len(frames) > MAX_FRAMES:  # evenly spaced, the first and the last kept
        frames = [frames[round(i * (len(frames) - 1) / (MAX_FRAMES - 1))] for i in range(MAX_FRAMES)]
    run.frames = frames
    text = path / SAMPLES_TEXT
    if text.is_file():
        run.text_samples = text.read_text(encoding="utf-8", errors="replace")
    return run


# -- pictures ----------------------------------------------------------------------------------


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def curves_png(runs: Sequence[RunSummary], keys: Sequence[str]) -> bytes | None:
    """One panel per logged key (scales differ: a KL of 0.1 beside a loss of 160), a line
    per run, against the step, four panels to a row; None when nothing was logged. A
    validation value shares its training value's panel (:func:`curve_panels`), dashed
    with markers, in the run's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not keys:
        return None
    panels = curve_panels(keys)
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    logged = set(keys) | set(runs[0].curve_keys())  # what the units are read from
    for ax, panel in zip(axes.flat, panels):
        for i, run in enumerate(runs):
            for j, key in enumerate(panel):
                name, sign = display_key(key)  # a logged elbo is drawn as -elbo, as it is printed
                pts = [(r["step"], sign * r[key]) for r in run.records if "step" in r and _finite(r.get(key))]
                if not pts:
                    continue
                steps, values = zip(*pts)
                label = run.label if len(panel) == 1 else (f"{run.label}: {name}" if len(runs) > 1 else name)
                style = {} if j == 0 else {"ls": "--", "marker": "o", "ms": 3}
                ax.plot(steps, values, label=label, lw=1.2, color=colours[i % len(colours)], **style)
        ax.set_title(" vs ".join(display_key(k)[0] for k in panel), fontsize=9)
        units = sorted({logged_unit(k, logged) for k in panel} - {""})
        if units:
            ax.set_ylabel(", ".join(units), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if (len(runs) > 1 or len(panel) > 1) and ax.lines:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes[-1][0].set_xlabel("step", fontsize=8)
    fig.tight_layout()
    return _figure_png(fig)


# -- HTML ---------------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(uri: str, alt: str, wide: bool = False) -> str:
    cls = ' class="wide"' if wide else ""
    return f'<figure{cls}><img src="{uri}" alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def _overview_rows(runs: Sequence[RunSummary]) -> list[list[Any]]:
    rows = []
    for run in runs:
        c = run.config
        last = run.last
        rows.append([run.label, c["model"], c["data"].get("name", "?"), last.get("step", 0), last.get("epoch", 0),
                     f"{last.get('seconds', 0):.1f} s" if _finite(last.get("seconds")) else "-"])
    return rows


def _eval_rows(runs: Sequence[RunSummary]) -> tuple[list[str], list[list[Any]]]:
    """(header, rows): one row per run and evaluated metric, its checkpoint step (and
    "stale"), every numeric figure a column, named, signed and with the unit as ``deepgen
    eval`` prints it (-ELBO in nats for the raw ``elbo``: :meth:`EvalFigures.printed`);
    counts of examples are in :func:`_source_rows`."""
    keys: dict[str, None] = {}
    for run in runs:
        for f in run.figures:
            for k, v in f.printed().items():
                if _is_number(v):  # a NaN figure too: its column says so rather than vanishing
                    keys.setdefault(k)
    rows = []
    for run in runs:
        for f in run.figures:
            shown = f.printed()  # numbers as `deepgen eval` prints them, to the digit
            rows.append([run.label, f.label, f.state(), *[_figure_cell(shown[k]) if k in shown else "-" for k in keys]])
    return ["run", "evaluation", "computed at", *keys], rows


def _figure_cell(v: Any) -> str:
    """One evaluation figure as ``deepgen eval`` prints it; a NaN (a diverged model, a
    figure with nothing to measure such as the reverse KL of samples in no mode) reads
    "undefined (NaN)", not as a number."""
    if isinstance(v, float) and math.isnan(v):
        return "undefined (NaN)"
    return format_value(v)


def _negative_note(runs: Sequence[RunSummary]) -> str | None:
    """``deepgen eval``'s note when a printed likelihood figure is negative, else None."""
    for run in runs:
        for f in run.figures:
            note = f.printed().get("note")
            if isinstance(note, str):
                return note
    return None


def _logged_rows(run: RunSummary) -> tuple[list[list[Any]], list[str]]:
    """The last logged values as the end of training prints them: [name, value, step,
    unit] rows, by key (:func:`~deepgen.metrics.units.logged_figures`: a logged ``elbo``
    as ``-elbo``, or once as ``loss (-ELBO)``), and the legend lines that say where they
    were computed and what their units are."""
    last = run.last_values()
    figures = logged_figures({k: v for k, (v, _) in last.items()})
    shown = {f.key for f in figures}
    rows = [[f.label, f.value, last[f.key][1], f.unit] for f in sorted(figures, key=lambda f: f.key)]
    rows += [[k, v, s, ""] for k, (v, s) in sorted(last.items()) if k not in shown and not _is_number(v)]
    val_limit = run.config.get("train", {}).get("val_limit")
    held_out = run.config.get("data", {}).get("validation")
    # data.validation=N holds out the last N training examples, and val_* read them, not the test split.
    if _is_number(held_out) and held_out > 0:
        where = f"the validation split held out from training (validation={held_out}" + (
            f"; its first val_limit={val_limit} examples at most)" if isinstance(val_limit, int) else ")")
    else:
        where = f"the test split (its first val_limit={val_limit} examples at most)" if isinstance(val_limit, int) else None
    return rows, logged_legend(figures, val_examples=where)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _source_rows(runs: Sequence[RunSummary]) -> list[list[Any]]:
    """Where each evaluation came from: examples, feature network, likelihood note, settings, seed, date, command."""
    return [[run.label, f.label, f.examples(), f.features(), f.notes(), f.settings_text(), _fmt(f.seed) if f.seed is not None else "-",
             f.date or "-", f.command or "-"] for run in runs for f in run.figures]


def _differing_keys(runs: Sequence[RunSummary]) -> tuple[list[list[Any]], list[str]]:
    """(rows, cosmetic): the settings whose values are not the same in every run,
    ``[key, value in run 1, ...]``, :data:`COSMETIC_SETTINGS` left out; and the names of
    the cosmetic ones that differ."""
    flat = [r.settings() for r in runs]
    keys = sorted(set().union(*flat))
    differ = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]
    rows = [[k, *[f.get(k, "-") for f in flat]] for k in differ if k not in COSMETIC_SETTINGS]
    return rows, [k for k in differ if k in COSMETIC_SETTINGS]


def _differing(runs: Sequence[RunSummary]) -> list[list[Any]]:
    """Settings that change what is trained whose values are not the same in every run:
    [key, value in run 1, ...] (:data:`COSMETIC_SETTINGS` left out)."""
    return _differing_keys(runs)[0]


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; } h3 { margin-top: 1.4em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; } th { background: #f3f3f3; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; }
figure img { max-width: 560px; image-rendering: pixelated; border: 1px solid #eee; }
figure.wide img { max-width: 100%; image-rendering: auto; }
figcaption { font-size: 0.8em; color: #666; } .muted { color: #777; font-size: 0.85em; }
pre.samples { background: #f7f7f7; border: 1px solid #eee; padding: 0.6em; white-space: pre-wrap; max-height: 40em; overflow: auto; }
"""


def build_report(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Write the HTML report of ``run_dirs`` to ``out`` (a ``.html`` path); return it.

    Every folder is read and checked before anything is written: a folder that is not a
    run, or a corrupt log, is one :class:`UserError` and leaves no file behind.
    """
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"the report is an HTML page: --out must end in .html, got {str(out)!r}.")
    if not run_dirs:
        raise UserError("report needs at least one run folder.")
    runs = [read_run(p) for p in run_dirs]
    names = [r.label for r in runs]
    for run in runs:  # folders of one name in different places are told apart by their path
        if names.count(run.label) > 1:
            run.name = str(run.path)
    labels = [r.label for r in runs]
    title = runs[0].label if len(runs) == 1 else f"{len(runs)} runs"
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>deepgen report: {html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>deepgen report: {html.escape(title)}</h1>",
        f"<p class='muted'>deepgen {html.escape(__version__)}, written {now}. Runs: "
        + ", ".join(html.escape(str(r.path)) for r in runs) + "</p>",
        "<h2>Overview</h2>",
        _table(["run", "model", "data", "steps", "epochs", "train time"], _overview_rows(runs)),
    ]
    header, rows = _eval_rows(runs)
    parts.append("<h3>Evaluation (eval.json)</h3>")
    parts.append(_table(header, rows) if rows else "<p class='muted'>No run has been evaluated yet: <code>deepgen eval RUN</code>.</p>")
    if rows:
        parts.append("<p class='muted'>Figures as <code>deepgen eval</code> prints them: likelihoods in nats per example "
                     "or bits/dim; -elbo is -ELBO, an upper bound on -log p(x) (eval.json keeps the ELBO itself).</p>")
        note = _negative_note(runs)
        if note:
            parts.append(f"<p class='muted'>{html.escape(note)}.</p>")
        if any(f.stale for r in runs for f in r.figures):
            parts.append("<p class='muted'>A <b>stale</b> figure was computed at an earlier checkpoint than the run's "
                         "current one: <code>deepgen eval RUN</code> again to bring it up to date.</p>")
        parts.append("<h3>Where the figures came from</h3>" + _table(
            ["run", "evaluation", "examples", "feature network", "likelihood", "settings (--set)", "seed", "date", "command"],
            _source_rows(runs)))
    for run in runs:
        if run.checkpoint_problem:
            parts.append(f"<p class='muted'>{html.escape(run.label)}: current checkpoint unknown ("
                         f"{html.escape(run.checkpoint_problem)}); no figure is marked stale.</p>")
    if len(runs) > 1:
        diff, cosmetic = _differing_keys(runs)
        parts.append("<h3>Settings that differ</h3>")
        parts.append(_table(["setting", *labels], diff) if diff else "<p class='muted'>Every setting is the same.</p>")
        if cosmetic:
            parts.append("<p class='muted'>Left out, as they change nothing that is trained: "
                         + html.escape(", ".join(cosmetic)) + ".</p>")
        shared = [k for k in runs[0].curve_keys() if not k.endswith("_osc") and all(k in r.curve_keys() for r in runs[1:])]
        panels = curve_panels(shared)[:MAX_OVERLAY_KEYS]  # a validation value rides in its training value's panel
        png = curves_png(runs, [k for panel in panels for k in panel])
        if png is not None:
            parts.append("<h3>Training curves, all runs</h3>" + _img(_data_uri(png), "curves of every run", wide=True))
    for run in runs:
        parts.append(f"<h2>{html.escape(run.label)}</h2>")
        parts.append(f"<p class='muted'>{html.escape(str(run.path))}: {html.escape(run.config['model'])} on "
                     f"{html.escape(str(run.config['data'].get('name', '?')))}, deepgen "
                     f"{html.escape(str(run.config.get('deepgen_version', '?')))}</p>")
        logged, legend = _logged_rows(run)
        if logged:
            parts.append("<h3>Last logged values</h3>" + _table(["value", "last", "at step", "unit"], logged)
                         + "".join(f"<p class='muted'>{html.escape(line)}.</p>" for line in legend))
        png = curves_png([run], run.curve_keys())
        if png is not None:
            parts.append("<h3>Training curves</h3>" + _img(_data_uri(png), f"{run.label}: logged values against the step", wide=True))
        if run.pictures:
            parts.append("<h3>Pictures</h3>" + "".join(_img(_data_uri(p.read_bytes()), p.name) for p in run.pictures))
        if run.text_samples is not None:
            shown = run.text_samples[:MAX_TEXT_CHARS]
            cut = (f" (the first {MAX_TEXT_CHARS:,} of its {len(run.text_samples):,} characters)"
                   if len(run.text_samples) > MAX_TEXT_CHARS else "")
            parts.append(f"<h3>Text samples</h3><p class='muted'>{SAMPLES_TEXT}{cut}</p>"
                         f"<pre class='samples'>{html.escape(shown)}</pre>")
        if run.frames:
            parts.append("<h3>Samples during training</h3>" + "".join(_img(_data_uri(p.read_bytes()), f"{SAMPLES_DIR}/{p.name}") for p in run.frames))
        settings = sorted(run.settings().items())
        parts.append("<details><summary>All settings</summary>" + _table(["setting", "value"], settings) + "</details>")
    parts.append("</body></html>")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            # backslashreplace: a folder name that is not valid UTF-8 still gets a page.
            tmp.write_text("\n".join(parts), encoding="utf-8", errors="backslashreplace")
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}. Choose another --out.") from None
    return out
