"""The report of a hyperparameter search campaign: optimization history, parameter importances, parallel
coordinates and every trial's learning curve, as PNG images and one self-contained HTML page.

The input is plain data (`CampaignSummary` of `TrialRecord`s), independent of Ray, so the report can be built and
tested without a cluster and rebuilt later from the stored JSON (`summary_to_json` / `summary_from_json`).
`report.html` embeds its images as base64 data URIs and uses no external JS or CSS: it is one file that can be
mailed or logged as one artifact.

Figures are built on `matplotlib.figure.Figure` directly rather than through pyplot: nothing is registered in
pyplot's global figure list (so nothing can leak), and the caller's backend is left alone; saving to PNG uses Agg.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from optuna.distributions import BaseDistribution

ParamValue = float | int | str
STATUSES = ("completed", "pruned", "failed", "running")
MODES = ("max", "min")
CMAP = "viridis"  # objective colour scale of the parallel coordinates and the learning curves
PRUNED_STYLE: dict[str, Any] = {"color": "0.55", "linestyle": "--"}
DPI = 110


@dataclass
class TrialRecord:
    """One trial of a campaign."""

    trial_id: str
    number: int  # order of creation, 0-based
    params: dict[str, ParamValue]  # dotted config keys -> values, e.g. {"optim.lr": 1e-3}
    status: str  # one of STATUSES
    value: float | None  # the trial's final (best) objective value; None when it failed before reporting
    curve: list[tuple[int, float]]  # (epoch, objective value) per reported epoch
    seconds: float  # wall time of the trial, with any wait for a free slot (0 when it never reported)
    worker_seconds: float | None = None  # its workers' time, start to last report: its cost; None: not measured

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"trial {self.trial_id}: status {self.status!r} is not one of {', '.join(STATUSES)}")


@dataclass
class CampaignSummary:
    """A campaign: its objective and all its trials."""

    name: str
    metric: str  # e.g. "valid_spearman"
    mode: str  # "max" or "min": which direction of the metric is better
    trials: list[TrialRecord]
    baseline: float | None = None
    """The metric's trivial baseline on the validation split (majority class, mean predictor: the trials share it),
    from a finished trial; None before one finishes."""
    stopped: str = ""
    """Why the campaign ended before ``num_samples`` trials (a stop criterion; empty when it ran them all)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"campaign {self.name}: mode {self.mode!r} is not 'max' or 'min'")


# ---------------------------------------------------------------------------------------------------------------
# Analysis


def format_params(params: dict[str, Any]) -> str:
    """A trial's sampled values as ``key=value, ...`` (floats to 4 significant digits)."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def quiet_optuna() -> AbstractContextManager[None]:
    """Optuna's INFO lines off for a block ("A new study created in memory / in RDB ...", one per study)."""
    from pbp.console import quiet_logger

    return quiet_logger("optuna")  # the logger optuna.logging.set_verbosity sets


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _completed(summary: CampaignSummary) -> list[TrialRecord]:
    """Completed trials with a finite value, by number."""
    trials = [t for t in summary.trials if t.status == "completed" and _finite(t.value)]
    return sorted(trials, key=lambda t: t.number)


def _value(trial: TrialRecord) -> float:
    """The trial's value as a float, NaN when it has none."""
    return math.nan if trial.value is None else trial.value


def _score(summary: CampaignSummary, trial: TrialRecord) -> float:
    """The value signed so that higher is better whatever the mode; -inf without a finite value."""
    if not _finite(trial.value):
        return -math.inf
    return _value(trial) if summary.mode == "max" else -_value(trial)


def best_trial(summary: CampaignSummary) -> TrialRecord | None:
    """The best completed trial by the campaign's mode (the earliest one on a tie), or None if none completed.

    Pruned trials are not eligible even when their value looks better: it was measured at a lower budget (fewer
    epochs) than the completed trials' values, so the two are not comparable, and the configuration was never
    trained to the end. Failed and running trials have no final value.
    """
    return max(_completed(summary), key=lambda t: _score(summary, t), default=None)  # max keeps the first on a tie


ParamKind = Literal["int", "float", "log", "cat"]


def _param_kind(values: Sequence[ParamValue]) -> ParamKind:
    """How a parameter is distributed, from the values seen: ints, floats (log-spread when all are positive and
    span more than two decades) or categories (strings, booleans or a mix of types)."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "int"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        lo, hi = min(float(v) for v in values), max(float(v) for v in values)
        return "log" if lo > 0 and hi / lo > 100 else "float"
    return "cat"


def _categories(values: Sequence[ParamValue]) -> list[ParamValue]:
    return sorted(set(values), key=str)


def _distributions(trials: list[TrialRecord]) -> dict[str, BaseDistribution]:
    """Optuna distributions of the parameters present in every trial, inferred from the values seen."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    names = sorted(set.intersection(*(set(t.params) for t in trials)))
    out: dict[str, BaseDistribution] = {}
    for name in names:
        values = [t.params[name] for t in trials]
        kind = _param_kind(values)
        if kind == "int":
            out[name] = IntDistribution(min(int(v) for v in values), max(int(v) for v in values))
        elif kind in ("float", "log"):
            lo, hi = min(float(v) for v in values), max(float(v) for v in values)
            out[name] = FloatDistribution(lo, hi, log=kind == "log")
        else:
            out[name] = CategoricalDistribution(_categories(values))
    return out


def _importances(summary: CampaignSummary) -> tuple[dict[str, float], str]:
    """fANOVA importances that sum to 1 and, when there are none, the reason why."""
    trials = _completed(summary)
    if len(trials) < 2:
        return {}, f"fewer than 2 completed trials ({len(trials)})"
    dists = _distributions(trials)
    if all(d.single() for d in dists.values()):
        return {}, "no parameter varies across the completed trials"
    if len({t.value for t in trials}) == 1:
        return {}, "the objective has the same value in every completed trial"

    import optuna
    from optuna.distributions import FloatDistribution

    with quiet_optuna():
        study = optuna.create_study(direction="maximize" if summary.mode == "max" else "minimize")
    for t in trials:
        params = {n: float(t.params[n]) if isinstance(d, FloatDistribution) else t.params[n] for n, d in dists.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=t.value))
    with warnings.catch_warnings():  # normalize=False is "experimental"; it lets an all-zero answer show as such
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        raw = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=list(dists), normalize=False
        )
    total = float(sum(raw.values()))
    if not total > 0:
        return {}, "no parameter explains any of the objective's variance"
    return {name: float(v) / total for name, v in raw.items()}, ""


def param_importances(summary: CampaignSummary) -> dict[str, float]:
    """Importance of each parameter for the objective, most important first, summing to 1 (fANOVA with a fixed
    seed over the completed trials, so the same summary gives the same answer). Parameters that vary only in some
    trials are left out; constant ones get 0. Empty with fewer than 2 completed trials, when every parameter is
    constant, or when the objective is."""
    return _importances(summary)[0]


# ---------------------------------------------------------------------------------------------------------------
# Figures: each builder returns a Figure, or None when there is nothing to draw


def _new_figure(width: float, height: float) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return fig, fig.add_subplot()


def _png(fig: Figure | None) -> bytes | None:
    if fig is None:
        return None
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _objective_norm(summary: CampaignSummary, trials: list[TrialRecord]) -> Normalize:
    """Colour scale over the values of completed trials (of all given trials if none completed)."""
    from matplotlib.colors import Normalize

    values = [_value(t) for t in _completed(summary)] or [_value(t) for t in trials if _finite(t.value)]
    return Normalize(min(values), max(values))


def _history_figure(summary: CampaignSummary) -> Figure:
    """Objective per trial number: completed filled, pruned hollow, failed as x on the axis, best-so-far steps."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _new_figure(8, 4.5)
    trials = sorted(summary.trials, key=lambda t: t.number)

    def scatter(status: str, **style: Any) -> None:
        group = [t for t in trials if t.status == status and _finite(t.value)]
        if group:
            ax.scatter([t.number for t in group], [_value(t) for t in group], label=status, zorder=3, **style)

    scatter("completed", color="tab:blue", s=36)
    scatter("pruned", facecolors="none", edgecolors="0.4", s=36)
    scatter("running", marker="^", facecolors="none", edgecolors="tab:orange", s=36)
    failed = [t.number for t in trials if t.status == "failed" or (t.status != "running" and not _finite(t.value))]
    if failed:
        ax.scatter(failed, [0] * len(failed), marker="x", color="tab:red", s=50, label="failed (no value)",
                   transform=ax.get_xaxis_transform(), clip_on=False, zorder=4)  # fmt: skip

    xs, ys, best = [], [], None
    for t in _completed(summary):
        if best is None or _score(summary, t) > _score(summary, best):
            best = t
        xs.append(t.number)
        ys.append(_value(best))
    if best is not None:
        xs.append(trials[-1].number)
        ys.append(_value(best))
        ax.step(xs, ys, where="post", color="tab:green", lw=1.5, label=f"best so far ({summary.mode})", zorder=2)
        ax.scatter([best.number], [_value(best)], marker="*", s=220, color="gold", edgecolors="black",
                   label=f"best: trial {best.number}", zorder=5)  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if trials:  # the failed trials' markers (in axis coordinates along y) do not widen the x range by themselves
        ax.set_xlim(trials[0].number - 0.5, trials[-1].number + 0.5)
    ax.set(xlabel="trial number", ylabel=summary.metric, title="Optimization history")
    ax.grid(alpha=0.3)
    if trials:
        ax.legend(loc="best", fontsize=8)
    return fig


def _importance_figure(importances: dict[str, float]) -> Figure | None:
    """Horizontal bars, the most important parameter on top."""
    if not importances:
        return None
    names = list(importances)[::-1]
    fig, ax = _new_figure(7, 1.2 + 0.45 * len(names))
    bars = ax.barh(range(len(names)), [importances[n] for n in names], color="tab:blue")
    ax.bar_label(bars, fmt="%.2f", padding=3, fontsize=8)
    ax.set_yticks(range(len(names)), [_short(n) for n in names], parse_math=False)
    ax.set_xlim(0, max(importances.values()) * 1.15)
    ax.set(xlabel="share of the objective's variance (fANOVA)", title="Parameter importances")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _short(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class _Axis:
    """One vertical axis of the parallel coordinates: a position in [0, 1] per trial (NaN where the trial has no
    such parameter) and the labelled ticks."""

    label: str
    positions: list[float]
    ticks: list[tuple[float, str]]


def _parallel_axis(label: str, values: Sequence[ParamValue | None], kind: ParamKind | None = None) -> _Axis:
    """Normalise a parameter's values to [0, 1]: linear, log10 for log-spread floats, categories evenly spaced."""
    present = [v for v in values if v is not None]
    kind = kind or _param_kind(present)
    if kind == "cat":
        cats = _categories(present)
        pos = {c: i / (len(cats) - 1) if len(cats) > 1 else 0.5 for i, c in enumerate(cats)}
        return _Axis(
            label, [math.nan if v is None else pos[v] for v in values], [(pos[c], _short(str(c))) for c in cats]
        )
    lo, hi = min(float(v) for v in present), max(float(v) for v in present)
    scale = math.log10 if kind == "log" else float

    def norm(x: float) -> float:
        return 0.5 if hi == lo else (scale(x) - scale(lo)) / (scale(hi) - scale(lo))

    ticks = [(norm(v), f"{v:.3g}") for v in _tick_values(lo, hi, kind, norm)]
    return _Axis(label, [math.nan if v is None else norm(float(v)) for v in values], ticks)


def _tick_values(lo: float, hi: float, kind: ParamKind, norm: Callable[[float], float]) -> list[float]:
    """The range's ends and the round values between them that are not too close to an end (decades on a log
    axis), to label an axis with."""
    from matplotlib.ticker import LogLocator, MaxNLocator

    if lo == hi:
        return [lo]
    locator = LogLocator(base=10) if kind == "log" else MaxNLocator(nbins=4, integer=kind == "int")
    inner = [float(v) for v in locator.tick_values(lo, hi) if 0.08 < norm(float(v)) < 0.92]
    return [lo, *inner, hi]


def _parallel_figure(summary: CampaignSummary) -> Figure | None:
    """One vertical axis per parameter plus the objective; completed trials coloured by objective, pruned dashed
    grey. Trials without a value (failed, running) are left out."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable

    trials = sorted((t for t in summary.trials if t.status in ("completed", "pruned") and _finite(t.value)),
                    key=lambda t: t.number)  # fmt: skip
    if not trials:
        return None
    names = sorted(set().union(*(t.params for t in trials)))
    axes = [_parallel_axis(n, [t.params.get(n) for t in trials]) for n in names]
    axes.append(_parallel_axis(summary.metric, [_value(t) for t in trials], kind="float"))
    fig, ax = _new_figure(max(7.0, 1.5 * len(axes) + 2.5), 5)
    norm, cmap = _objective_norm(summary, trials), colormaps[CMAP]

    # Pruned first (underneath), then completed from worst to best so the best lines are drawn on top.
    order = sorted(range(len(trials)), key=lambda i: (trials[i].status == "completed", _score(summary, trials[i])))
    xs = list(range(len(axes)))
    for i in order:
        t, ys = trials[i], [a.positions[i] for a in axes]
        if t.status == "pruned":
            ax.plot(xs, ys, lw=1, alpha=0.8, zorder=1, **PRUNED_STYLE)
        else:
            ax.plot(xs, ys, color=cmap(norm(_value(t))), lw=1.8, alpha=0.9, zorder=2)
    for x, a in enumerate(axes):
        ax.axvline(x, color="0.25", lw=1, zorder=3)
        for pos, text in a.ticks:
            ax.plot([x - 0.025, x], [pos, pos], color="0.25", lw=1, zorder=3)
            ax.text(x - 0.05, pos, text, ha="right", va="center", fontsize=8, parse_math=False, zorder=4,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})  # fmt: skip
    ax.set_xticks(xs, [_short(a.label) for a in axes], parse_math=False, rotation=20 if len(axes) > 5 else 0)
    ax.set_xlim(-0.6, len(axes) - 0.8)
    ax.set_ylim(-0.05, 1.05)
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=summary.metric, pad=0.01)
    n_pruned = sum(t.status == "pruned" for t in trials)
    ax.set_title(f"Parallel coordinates ({len(trials) - n_pruned} completed, {n_pruned} pruned in dashed grey)")
    return fig


def _curves_figure(summary: CampaignSummary) -> Figure | None:
    """Every trial's learning curve: completed coloured by final value, pruned dashed grey, failed dotted red,
    running dash-dotted orange; the best trial thicker. Trials are labelled by number when there are few."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    trials = sorted((t for t in summary.trials if t.curve), key=lambda t: (t.status == "completed", _score(summary, t)))
    if not trials:
        return None
    fig, ax = _new_figure(8, 4.5)
    norm, cmap, best = _objective_norm(summary, trials), colormaps[CMAP], best_trial(summary)
    styles: dict[str, dict[str, Any]] = {
        "pruned": {**PRUNED_STYLE, "lw": 1},
        "failed": {"color": "tab:red", "linestyle": ":", "lw": 1.2},
        "running": {"color": "tab:orange", "linestyle": "-.", "lw": 1.2},
    }
    for t in trials:
        epochs, values = zip(*t.curve, strict=True)
        style = styles.get(t.status) or {"color": cmap(norm(_value(t))), "lw": 2.8 if t is best else 1.6}
        ax.plot(epochs, values, marker=".", ms=4, zorder=3 if t is best else 2, **style)
        if len(trials) <= 15:
            ax.annotate(f"#{t.number}", (epochs[-1], values[-1]), xytext=(4, 0), textcoords="offset points",
                        fontsize=7, va="center", color="0.3")  # fmt: skip
    present = {t.status for t in trials}
    handles = []
    if "completed" in present:
        handles.append(Line2D([], [], color=cmap(0.7), lw=1.6, label="completed (colour: final value)"))
    if best is not None:
        handles.append(Line2D([], [], color=cmap(norm(_value(best))), lw=2.8, label=f"best: trial {best.number}"))
    handles += [Line2D([], [], label=s, **styles[s]) for s in ("pruned", "failed", "running") if s in present]
    ax.legend(handles=handles, loc="best", fontsize=8)
    if "completed" in present:
        fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=f"final {summary.metric}", pad=0.01)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel=summary.metric, title="Learning curves")
    ax.grid(alpha=0.3)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# HTML


@dataclass
class _Section:
    filename: str
    title: str
    png: bytes | None
    missing: str  # why there is no image, shown instead of it


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
tr.best { background: #fff6cc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; }
.note { color: #8a5a00; }
code { background: #f3f3f3; padding: 0 0.25em; }
"""


def _fmt(value: ParamValue | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _best_html(summary: CampaignSummary) -> str:
    best = best_trial(summary)
    if best is None:
        return "<p class='note'>No trial has completed yet.</p>"
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(_fmt(v))}</td></tr>" for k, v in sorted(best.params.items())
    )
    return (
        f"<p>Trial <b>#{best.number}</b> (<code>{html.escape(best.trial_id)}</code>): "
        f"{html.escape(summary.metric)} = <b>{html.escape(_fmt(best.value))}</b>{_baseline_note(summary)}</p>"
        f"<table><tr><th>parameter</th><th>value</th></tr>{rows}</table>"
        "<p>Pruned trials are not eligible: their values were measured at a lower budget.</p>"
    )


def baseline_note(summary: CampaignSummary) -> str:
    """`` (trivial baseline 0.0533)`` beside the best value; empty when no trial finished."""
    return "" if summary.baseline is None else f" (trivial baseline {summary.baseline:.4f})"


def _baseline_note(summary: CampaignSummary) -> str:
    return html.escape(baseline_note(summary))


def _trials_html(summary: CampaignSummary) -> str:
    names = sorted(set().union(*(t.params for t in summary.trials)))
    best = best_trial(summary)
    head = "".join(
        f"<th>{html.escape(h)}</th>"
        for h in ["#", "trial id", "status", summary.metric, "seconds", "worker seconds", *names]
    )
    rows = []
    for t in sorted(summary.trials, key=lambda t: t.number):
        cells = [f"<td class='num'>{t.number}</td>", f"<td><code>{html.escape(t.trial_id)}</code></td>",
                 f"<td>{html.escape(t.status)}</td>", f"<td class='num'>{html.escape(_fmt(t.value))}</td>",
                 f"<td class='num'>{t.seconds:.1f}</td>",
                 f"<td class='num'>{'—' if t.worker_seconds is None else f'{t.worker_seconds:.1f}'}</td>"]  # fmt: skip
        cells += [f"<td>{html.escape(_fmt(t.params.get(n)))}</td>" for n in names]
        row_class = " class='best'" if t is best else ""
        rows.append(f"<tr{row_class}>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _html(summary: CampaignSummary, sections: list[_Section]) -> str:
    esc = html.escape
    counts = ", ".join(f"{sum(t.status == s for t in summary.trials)} {s}" for s in STATUSES)
    total = sum(t.worker_seconds or 0.0 for t in summary.trials)
    unmeasured = sum(t.worker_seconds is None for t in summary.trials)
    not_in = f", {unmeasured} trial(s) that never reported not measured" if unmeasured else ""
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Tuning report: {esc(summary.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Tuning report: {esc(summary.name)}</h1>",
        f"<p>Metric <code>{esc(summary.metric)}</code>, mode <b>{esc(summary.mode)}</b>. "
        f"{len(summary.trials)} trials: {counts}. Total cost: {total:.1f} s of trials holding their workers ({_hms(total)}{not_in}).</p>",
        f"<p class='note'>{esc(summary.stopped[0].upper() + summary.stopped[1:])}.</p>" if summary.stopped else "",
        f"<h2>Best trial</h2>{_best_html(summary)}",
    ]
    for s in sections:
        parts.append(f"<h2>{esc(s.title)}</h2>")
        if s.png is None:
            parts.append(f"<p class='note'>{esc(s.title)} not available: {esc(s.missing)}.</p>")
        else:
            data = base64.b64encode(s.png).decode("ascii")
            parts.append(f"<img alt='{esc(s.title)}' src='data:image/png;base64,{data}'>")
    parts += [f"<h2>All trials</h2>{_trials_html(summary)}", "</body></html>\n"]
    return "\n".join(parts)


def write_report(summary: CampaignSummary, out_dir: Path) -> Path:
    """Write history.png, importances.png, parallel.png, curves.png and report.html (which embeds them) into
    out_dir and return the path of report.html. An image with nothing to show is not written (a stale one from an
    earlier report is removed) and the page says why."""
    importances, why_not = _importances(summary)
    sections = [
        _Section("history.png", "Optimization history", _png(_history_figure(summary)), ""),
        _Section("importances.png", "Parameter importances", _png(_importance_figure(importances)), why_not),
        _Section(
            "parallel.png",
            "Parallel coordinates",
            _png(_parallel_figure(summary)),
            "no completed or pruned trial has a value",
        ),
        _Section("curves.png", "Learning curves", _png(_curves_figure(summary)), "no trial reported a learning curve"),
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    for s in sections:
        if s.png is None:
            (out_dir / s.filename).unlink(missing_ok=True)
        else:
            (out_dir / s.filename).write_bytes(s.png)
    report = out_dir / "report.html"
    report.write_text(_html(summary, sections), encoding="utf-8")
    return report


# ---------------------------------------------------------------------------------------------------------------
# Storage


def summary_to_json(summary: CampaignSummary) -> str:
    return json.dumps(asdict(summary), indent=2)


def summary_from_json(text: str) -> CampaignSummary:
    """The inverse of summary_to_json; a missing or unknown key fails with its name."""
    data = json.loads(text)
    try:
        trials = [
            TrialRecord(**{**t, "curve": [(int(epoch), float(value)) for epoch, value in t["curve"]]})
            for t in data.pop("trials")
        ]
        return CampaignSummary(**data, trials=trials)
    except (AttributeError, KeyError, TypeError) as e:
        raise ValueError(f"not a campaign summary: {e}") from e
