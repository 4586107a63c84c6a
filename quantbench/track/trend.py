"""`quantbench trend HISTORY -o reports/trend.html`: each metric over the runs of a history, steps first.

Change points come in two stages:
1. ruptures (Truong, Oudre & Vayatis 2020, "Selective review of offline change point detection
   methods") PELT (Killick, Fearnhead & Eckley 2012) with an L2 cost proposes candidates on each
   series (one variant on one machine): log values (a step is relative), scaled by a robust
   noise estimate (MAD of successive differences / sqrt 2), penalty PENALTY x ln(n) per change.
2. Each candidate is judged by `compare.judge` on the two runs either side of it, under the same
   gates as `quantbench compare --history` on this history (defaults raised to the series' learnt
   noise floor, compare.gate_for; or fixed --fail gates): timings by Mann-Whitney + bootstrap on
   the raw samples and the threshold, ppl / KLD / bytes by the gate's tolerance alone. So a listed
   step is exactly a pair that `quantbench compare BEFORE AFTER --history HISTORY` calls, and
   compare never calls a pair around a candidate that the trend leaves out.
A series (and a colour) is one variant on the hardware part of the fingerprint
(history.hardware_id), so a step a library upgrade caused is found and names the upgrade; the
drawn line still breaks where the fingerprint changes, so no line joins two fingerprints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

import numpy as np

from quantbench.core.errors import UserError
from quantbench.report import plots, tables
from quantbench.report.tables import Cell, Head, Row, Table
from quantbench.track import compare, history

METRICS = {  # metric -> (label, workloads it is read from: a prefix, or "load" for bytes)
    "decode_tok_s": ("decode tok/s", "tg"),
    "prefill_tok_s": ("prefill tok/s", "pp"),
    "ppl": ("perplexity", "ppl"),
    "kld_mean": ("KLD mean", "ppl"),
    "peak_rss_bytes": ("peak RSS bytes", "load"),
    "weights_bytes": ("weights bytes", "load"),
}
PENALTY = 3.0          # x ln(n), in noise variances: BIC's 2 ln(n) plus a margin (fewer noise candidates)
SHORT_SERIES = 5  # runs; up to this many, every boundary is a candidate
SIGMA_FLOOR = 1e-6     # noise floor (log units) when values repeat exactly (deterministic metrics)
MAX_X_LABELS = 24      # commit labels under a panel; every k-th beyond that
LEGEND_CHARS = 23      # what the 180 px legend margin holds at 11 px


@dataclass(frozen=True)
class Point:
    run: int           # index of the run in the whole history, oldest = 0
    value: float
    rec: dict
    where: history.Run


@dataclass(frozen=True)
class Step:
    """A change point that compare also calls: between runs `before` and `after` of one series."""
    machine: str
    variant: str       # model/format/device workload
    metric: str
    before: Point
    after: Point
    level_before: float  # median of the segment before the step
    level_after: float   # median of the segment after it
    verdict: str       # REGRESSION or improved (compare's words)
    p: float | None    # Mann-Whitney p of the pair (timings), None for deterministic metrics
    ci: tuple[float, float] | None = None  # bootstrap CI of the pair's median ratio - 1
    changed: tuple[str, ...] = ()          # software or suite that changed between the two runs
    gate: str = ""                         # what the pair was judged against (compare.Gate.label)

    @property
    def change(self) -> float:
        """Returns level_after / level_before - 1 (inf from a level of 0)."""
        if self.level_before == 0:
            return 0.0 if self.level_after == 0 else math.copysign(math.inf, self.level_after)
        return self.level_after / self.level_before - 1

    def size(self) -> str:
        """Returns '-9.1%', or '0 -> 0.002' from a level of 0."""
        if self.level_before == 0:
            return f"0 -> {self.level_after:.3g}"
        return f"{self.change:+.1%}"

    def line(self) -> str:
        """Returns 'gguf-q4_0 tg64 decode tok/s -9.1% between a1b2 and c3d4 (p=...; ...)'."""
        extra = [f"p={self.p:.2g}"] if self.p is not None else ["deterministic"]
        extra.append(f"gate {self.gate}")
        if self.ci:
            extra.append(f"pair CI [{self.ci[0]:+.1%}, {self.ci[1]:+.1%}]")
        extra += [f"runs {self.before.run}->{self.after.run} on {self.machine}", *self.changed]
        return (f"{self.variant} {METRICS[self.metric][0]} {self.size()} between "
                f"{self.before.where.commit} and {self.after.where.commit} "
                f"({self.verdict}; {'; '.join(extra)})")


@dataclass
class Trend:
    runs: list[history.Run]
    series: dict[tuple, list[Point]]   # (machine, model, format, device, workload, metric) -> points
    steps: list[Step] = field(default_factory=list)
    unconfirmed: list[str] = field(default_factory=list)  # candidates compare does not call
    gates: dict[tuple, compare.Gate] = field(default_factory=dict)  # series key -> its gate


def change_points(values) -> list[int]:
    """Returns the indices where ruptures PELT starts a new level (candidates, not yet judged)."""
    y = np.asarray(values, float)
    if len(y) < 2:
        return []
    if len(y) <= SHORT_SERIES:
        # Too few runs for a noise estimate from their differences (a step at the last run would
        # set it): every boundary is a candidate, and compare's statistics on the raw samples judge.
        return list(range(1, len(y)))
    y = np.log(y) if (y > 0).all() else y
    sigma = max(1.4826 * float(np.median(np.abs(np.diff(y)))) / math.sqrt(2), SIGMA_FLOOR)
    import ruptures

    ends = ruptures.Pelt(model="l2", min_size=1, jump=1).fit(y / sigma).predict(
        pen=PENALTY * math.log(len(y)))
    return ends[:-1]


def _series(runs: list[history.Run]) -> dict[tuple, list[Point]]:
    """Returns history.series of METRICS, each metric read from its workloads only."""
    return {key: [Point(i, v, r, runs[i]) for i, v, r in pts]
            for key, pts in history.series(runs, METRICS).items()
            if key[4].startswith(METRICS[key[5]][1])}  # bytes from `load`: one point per run


def _changed(a: dict, b: dict) -> tuple[str, ...]:
    """Returns what changed between two records besides the code: software versions, suite hash."""
    ma, mb = history.machine(a.get("env")), history.machine(b.get("env"))
    out = [f"{k} {ma[k]}->{mb[k]}" for k in history.SOFTWARE if ma[k] != mb[k]]
    if a.get("suite_hash") != b.get("suite_hash"):
        out.append(f"suite_hash {a.get('suite_hash')}->{b.get('suite_hash')}")
    return tuple(out)


def analyse(history_dir, fail: list[str] | None = None, alpha: float = compare.ALPHA) -> Trend:
    """Returns every series of a history and the steps in them that compare also calls."""
    runs = history.runs(history_dir)
    if not runs:
        raise UserError(f"history '{history_dir}' has no runs; add some with "
                        f"`quantbench track RESULTS --history {history_dir}`")
    gates = compare.gates_for(fail)
    trend = Trend(runs, _series(runs))
    floors = {k: f for k, pts in trend.series.items()
              if (f := compare.noise_floor(p.value for p in pts)) is not None}
    for key, pts in trend.series.items():
        hw, model, fmt, device, workload, metric = key
        variant = f"{model}/{fmt}/{device} {workload}"
        # the same gate compare --history gives this series (its floor learnt from every run)
        gate = trend.gates[key] = compare.gate_for(metric, gates, floors, pts[-1].rec)
        label = gate.label() if gate else "none"
        cuts = change_points([p.value for p in pts])
        bounds = [0, *cuts, len(pts)]
        for j, i in enumerate(cuts):
            row = compare.judge(metric, gate, pts[i - 1].rec, pts[i].rec, alpha)
            where = f"{variant} {METRICS[metric][0]} at {pts[i - 1].where.commit}->{pts[i].where.commit}"
            if row is None or row["verdict"] not in ("REGRESSION", "improved"):
                said = row["verdict"] if row else "unmeasured"
                trend.unconfirmed.append(f"{where}: compare says {said} (gate {label})")
                continue
            lo = np.median([p.value for p in pts[bounds[j]:i]])
            hi = np.median([p.value for p in pts[i:bounds[j + 2]]])
            ci = (row["ci_low"], row["ci_high"]) if row["ci_low"] is not None else None
            trend.steps.append(Step(hw, variant, metric, pts[i - 1], pts[i], float(lo), float(hi),
                                    row["verdict"], row["p"], ci, _changed(pts[i - 1].rec, pts[i].rec),
                                    label))
    trend.steps.sort(key=lambda s: (s.verdict != "REGRESSION", s.after.run, s.variant, s.metric))
    return trend


# --- HTML: the SVG panels are drawn here, like report/plots.py's; the page is templates/trend.html.j2

def _panel(plot_id: str, title: str, metric: str, trend: Trend, keys: list[tuple],
           colors: dict[str, str], names: dict[tuple, str]) -> str:
    """Returns one metric's SVG: a line per series in keys, coloured per machine, or per variant
    when the whole history has one machine (eleven lines of one colour say nothing).

    A line never joins two fingerprints: where a library version changes under a series, its
    line breaks and a dotted grey rule names what changed (a step across it is still judged)."""
    per_machine = len(colors) > 1
    pts = [p for k in keys for p in trend.series[k]]
    vals = [p.value for p in pts]
    y_log = min(vals) > 0 and max(vals) / min(vals) > 20
    ax = plots.Axes(-0.5, len(trend.runs) - 0.5, *plots.data_range(vals, y_log), y_log=y_log)
    parts = plots._frame(ax, plot_id, title, "run (commit)", METRICS[metric][0] + (" (log)" if y_log else ""),
                         x_ticks=False)
    every = max(1, math.ceil(len(trend.runs) / MAX_X_LABELS))
    y0 = plots.HEIGHT_PX - plots.MARGIN_PX["bottom"] + 12
    for i, run in enumerate(trend.runs):
        if i % every == 0:
            x = ax.px(i)
            parts.append(f'<text x="{x:.1f}" y="{y0}" text-anchor="end" font-size="9" '
                         f'transform="rotate(-40 {x:.1f} {y0})">{escape(run.commit[:7])}</text>')
    for s in trend.steps:
        if (s.machine, *_ident(s.after.rec), s.metric) in keys:
            x = ax.px(s.after.run - 0.5)
            color = "#c00" if s.verdict == "REGRESSION" else "#090"
            parts.append(f'<line class="step" x1="{x:.1f}" y1="{plots.MARGIN_PX["top"]}" x2="{x:.1f}" '
                         f'y2="{plots.HEIGHT_PX - plots.MARGIN_PX["bottom"]}" stroke="{color}" '
                         f'stroke-width="2" stroke-dasharray="5,3"><title>{escape(s.line())}</title></line>')
    upgrades = {}
    for k in keys:
        line = trend.series[k]
        for a, b in zip(line, line[1:], strict=False):
            if a.where.machine != b.where.machine:
                upgrades[b.run] = ", ".join(_changed(a.rec, b.rec)) or "machine fingerprint"
    for run, what in sorted(upgrades.items()):
        x = ax.px(run - 0.5)
        parts.append(f'<line class="upgrade" x1="{x:.1f}" y1="{plots.MARGIN_PX["top"]}" x2="{x:.1f}" '
                     f'y2="{plots.HEIGHT_PX - plots.MARGIN_PX["bottom"]}" stroke="#999" '
                     f'stroke-dasharray="1,3"><title>{escape(what)}</title></line>')
    labels, legend = [], {}
    for i, k in enumerate(keys):
        line = trend.series[k]
        color = colors[k[0]] if per_machine else plots.color_for(i)
        legend[_short(k[0], list(colors).index(k[0])) if per_machine else names[k]] = color
        start = 0
        for j in range(1, len(line) + 1):  # one path per stretch of one fingerprint
            if j == len(line) or line[j].where.machine != line[start].where.machine:
                d = "".join(f"{'M' if n == start else 'L'}{ax.px(p.run):.1f},{ax.py(p.value):.1f}"
                            for n, p in enumerate(line[start:j], start))
                parts.append(f'<path class="series" data-machine="{escape(line[start].where.machine)}" '
                             f'd="{d}" fill="none" stroke="{color}" stroke-width="1.5"/>')
                start = j
        for p in line:
            tip = (f"{names[k]} {k[4]} on {p.where.machine}: {p.value:.5g} at {p.where.commit} "
                   f"({_iso(p.where.date)}, run {p.run})")
            parts.append(f'<circle cx="{ax.px(p.run):.1f}" cy="{ax.py(p.value):.1f}" r="3" '
                         f'fill="{color}"><title>{escape(tip)}</title></circle>')
        labels.append((line[-1].run, line[-1].value, names[k]))
    if per_machine:  # else the legend names the variants
        parts += plots._labels(ax, labels)
    parts.append(plots._legend([(name, c, "line") for name, c in legend.items()]))
    return "\n".join(parts) + "</svg>"


def _short(machine: str, i: int) -> str:
    """Returns the legend label of machine number i: 'M1 amd-epyc-7763-2c-24g' (no hash, cut)."""
    return f"M{i + 1} {machine.rsplit('-', 1)[0]}"[:LEGEND_CHARS].rstrip("-")


def _iso(date: str) -> str:
    """Returns '2026-11-27 13:30Z' for a history date '20261127T133019Z' (else the text as it is)."""
    if len(date) == 16 and date[8] == "T":
        return f"{date[:4]}-{date[4:6]}-{date[6:8]} {date[9:11]}:{date[11:13]}Z"
    return date


def _ident(rec: dict) -> tuple:
    return rec["model"], rec["format"], rec["device"], rec["workload"]


def learnt(trend: Trend) -> list[tuple[tuple, compare.Gate]]:
    """Returns (series key, gate) of every series whose gate a learnt noise floor raised."""
    return [(k, g) for k, g in sorted(trend.gates.items()) if g is not None and g.source == "noise"]


def _gates_table(trend: Trend) -> Table:
    """Returns the table of the gate each metric was judged against, per series."""
    head = tuple(Head(h, "s") for h in ("variant", "metric", "gate", "machine"))
    rows = tuple(Row((Cell(f"{k[1]}/{k[2]}/{k[3]} {k[4]}", "s"), Cell(METRICS[k[5]][0], "s"),
                      Cell(g.label(), "s"), Cell(k[0], "s machine")))
                 for k, g in sorted((k, g) for k, g in trend.gates.items() if g is not None))
    return Table(head, rows, id="gates", scroll=False)


def render_html(trend: Trend, source: str) -> str:
    """Returns the self-contained trend page (templates/trend.html.j2, autoescaped): steps list, then
    one SVG panel per metric and workload."""
    machines = sorted({k[0] for k in trend.series})
    colors = {m: plots.color_for(i) for i, m in enumerate(machines)}
    vary = [j for j in (1, 2, 3) if len({k[j] for k in trend.series}) > 1] or [2]  # model, format, device
    names = {k: "/".join(k[j] for j in vary) for k in trend.series}
    groups: dict[tuple[str, str], list[tuple]] = {}
    for k in sorted(trend.series):
        groups.setdefault((k[5], k[4]), []).append(k)
    panels = [_panel(f"trend-{metric}-{workload}", f"{METRICS[metric][0]} · {workload}",
                     metric, trend, keys, colors, names)
              for metric in METRICS for (m, workload), keys in groups.items() if m == metric]
    return tables.render(
        "trend.html.j2", "quantbench.track", title="quantbench trend", css=tables.template_text("report.css"),
        error_js=tables.template_text("error.js"), source=source, runs=len(trend.runs),
        first=_iso(trend.runs[0].date), last=_iso(trend.runs[-1].date), steps=trend.steps,
        unconfirmed=trend.unconfirmed, gates=_gates_table(trend), learnt=len(learnt(trend)), panels=panels,
        machines=[{"color": colors[m], "label": _short(m, i).split()[0], "name": m} for i, m in enumerate(machines)])
