"""``deepgen report``: one self-contained HTML page about one run or a comparison of several.

What a page holds, per run folder: what was trained (model, data, steps, epochs, time),
the figures of ``eval.json`` (every metric and split evaluated), training curves drawn
from ``metrics.jsonl`` (one panel per logged value: losses and diagnostics), and
every picture the run wrote (samples, reconstructions, latent scatter, manifold, ...)
with a strip of the sample pictures written during training (``samples/``: on 2-D data,
mode hopping shows from frame to frame).
With several runs, a table first compares them: the settings that differ between them
(model, trainer and data), their last logged values and their evaluation figures, and an
overlay of the curves they share.

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
from .training.checkpoint import (
    EVAL,
    INTERPOLATION,
    LATENT,
    MANIFOLD,
    METRICS,
    RECONSTRUCTIONS,
    SAMPLES,
    SAMPLES_DIR,
    read_run_config,
)
from .version import __version__

# Picture files first in this order (the rest of a run's PNGs follow, sorted by name).
PICTURE_ORDER = (SAMPLES, RECONSTRUCTIONS, MANIFOLD, LATENT, INTERPOLATION)
_NOT_CURVES = {"step", "epoch", "seconds"}
MAX_OVERLAY_KEYS = 8
MAX_FRAMES = 8  # pictures of samples/ shown as a strip (how the samples moved during training)


@dataclass
class RunSummary:
    """What the report reads from one run folder."""

    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # "metric (split)" -> {key: value}
    pictures: list[Path] = field(default_factory=list)
    frames: list[Path] = field(default_factory=list)  # samples/ pictures written during training
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

    def settings(self) -> dict[str, Any]:
        """Every setting, flattened: ``model.latent_dim``, ``train.lr``, ``data.name``, ..."""
        out: dict[str, Any] = {"model": self.config["model"]}
        for part, key in (("model", "model_config"), ("train", "train"), ("data", "data")):
            for k, v in self.config[key].items():
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
    eval_path = path / EVAL
    if eval_path.is_file():
        try:
            saved = json.loads(eval_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{eval_path} is not valid JSON ({e}); delete it or run `deepgen eval` again.") from None
        for metric, by_split in saved.items() if isinstance(saved, dict) else []:
            for split, entry in by_split.items() if isinstance(by_split, dict) else []:
                if isinstance(entry, dict) and isinstance(entry.get("values"), dict):
                    run.evals[f"{metric} ({split}, step {entry.get('step', '?')})"] = entry["values"]
    pngs = {p.name: p for p in path.glob("*.png")}
    run.pictures = [pngs.pop(n) for n in PICTURE_ORDER if n in pngs] + [pngs[n] for n in sorted(pngs)]
    frames = sorted((path / SAMPLES_DIR).glob("*.png"))
    if len(frames) > MAX_FRAMES:  # evenly spaced, the first and the last kept
        frames = [frames[round(i * (len(frames) - 1) / (MAX_FRAMES - 1))] for i in range(MAX_FRAMES)]
    run.frames = frames
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
    per run, against the step, four panels to a row; None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not keys:
        return None
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for run in runs:
            pts = [(r["step"], r[key]) for r in run.records if "step" in r and _finite(r.get(key))]
            if pts:
                steps, values = zip(*pts)
                ax.plot(steps, values, label=run.label, lw=1.2)
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(runs) > 1 and ax.lines:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys) :]:
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
    """(header, rows): one row per run and evaluated metric, every numeric figure a column."""
    keys: dict[str, None] = {}
    for run in runs:
        for values in run.evals.values():
            for k, v in values.items():
                if _finite(v):
                    keys.setdefault(k)
    rows = []
    for run in runs:
        for what, values in run.evals.items():
            rows.append([run.label, what, *[values.get(k, "-") for k in keys]])
    return ["run", "evaluation", *keys], rows


def _differing(runs: Sequence[RunSummary]) -> list[list[Any]]:
    """Settings whose values are not the same in every run: [key, value in run 1, ...]."""
    flat = [r.settings() for r in runs]
    keys = sorted(set().union(*flat))
    return [[k, *[f.get(k, "-") for f in flat]] for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; } h3 { margin-top: 1.4em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; } th { background: #f3f3f3; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; }
figure img { max-width: 560px; image-rendering: pixelated; border: 1px solid #eee; }
figure.wide img { max-width: 100%; image-rendering: auto; }
figcaption { font-size: 0.8em; color: #666; } .muted { color: #777; font-size: 0.85em; }
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
    if len(runs) > 1:
        diff = _differing(runs)
        parts.append("<h3>Settings that differ</h3>")
        parts.append(_table(["setting", *labels], diff) if diff else "<p class='muted'>Every setting is the same.</p>")
        shared = [k for k in runs[0].curve_keys() if not k.endswith("_osc") and all(k in r.curve_keys() for r in runs[1:])]
        png = curves_png(runs, shared[:MAX_OVERLAY_KEYS])
        if png is not None:
            parts.append("<h3>Training curves, all runs</h3>" + _img(_data_uri(png), "curves of every run", wide=True))
    for run in runs:
        parts.append(f"<h2>{html.escape(run.label)}</h2>")
        parts.append(f"<p class='muted'>{html.escape(str(run.path))}: {html.escape(run.config['model'])} on "
                     f"{html.escape(str(run.config['data'].get('name', '?')))}, deepgen "
                     f"{html.escape(str(run.config.get('deepgen_version', '?')))}</p>")
        last = {k: v for k, v in run.last.items() if k not in _NOT_CURVES}
        if last:
            parts.append("<h3>Last logged values</h3>" + _table(["value", "at step " + str(run.last.get("step"))], sorted(last.items())))
        png = curves_png([run], run.curve_keys())
        if png is not None:
            parts.append("<h3>Training curves</h3>" + _img(_data_uri(png), f"{run.label}: logged values against the step", wide=True))
        if run.pictures:
            parts.append("<h3>Pictures</h3>" + "".join(_img(_data_uri(p.read_bytes()), p.name) for p in run.pictures))
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
