"""Inline SVG plots in pure Python: the report's charts open offline, with no plotting library.

Every function takes plain numbers (no pandas) and returns one `<svg id=… class="plot">` string
with axes, ticks, axis labels and a legend. Log axes use decades (with 2 and 5 between them when a
range spans fewer than two decades). Colors come from `color_for(index)` so one format keeps one
color across plots.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#7f7f7f", "#bcbd22", "#393b79", "#637939")
WIDTH_PX, HEIGHT_PX = 680, 400
MARGIN_PX = {"left": 72, "right": 180, "top": 34, "bottom": 62}  # right margin holds the legend
MAX_STRIP_POINTS = 120  # per format in the latency plot; evenly spaced quantiles keep the shape


def color_for(i: int) -> str:
    """Returns the palette color of series number i."""
    return PALETTE[i % len(PALETTE)]


def fmt_num(v: float) -> str:
    """Returns a compact tick label: 1.5k, 20M, 0.05, 1e-06."""
    if v == 0:
        return "0"
    a = abs(v)
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}" if a >= 1e-3 else f"{v:.0e}"


def _finite(vals) -> list[float]:
    return [float(v) for v in vals if isinstance(v, numbers.Real) and not isinstance(v, bool)
            and math.isfinite(v)]


@dataclass
class Axes:
    """Maps data to pixels for one chart; log axes take log10 of positive values."""
    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float
    x_log: bool = False
    y_log: bool = False

    def _t(self, v, log):
        return math.log10(v) if log else v

    def px(self, x: float) -> float:
        a, b = self._t(self.x_lo, self.x_log), self._t(self.x_hi, self.x_log)
        w = WIDTH_PX - MARGIN_PX["left"] - MARGIN_PX["right"]
        return MARGIN_PX["left"] + (self._t(x, self.x_log) - a) / (b - a) * w

    def py(self, y: float) -> float:
        a, b = self._t(self.y_lo, self.y_log), self._t(self.y_hi, self.y_log)
        h = HEIGHT_PX - MARGIN_PX["top"] - MARGIN_PX["bottom"]
        return HEIGHT_PX - MARGIN_PX["bottom"] - (self._t(y, self.y_log) - a) / (b - a) * h


def data_range(vals, log: bool, pad_frac: float = 0.08, include_zero: bool = False) -> tuple[float, float]:
    """Returns a padded (lo, hi) covering vals; log ranges pad by a factor, never reach 0."""
    v = [x for x in _finite(vals) if x > 0 or not log]
    if not v:
        return (1.0, 10.0) if log else (0.0, 1.0)
    lo, hi = min(v), max(v)
    if include_zero and not log:
        lo = min(lo, 0.0)
    if log:
        lo, hi = math.log10(lo), math.log10(hi)
        span = max(hi - lo, 0.3)
        mid = (lo + hi) / 2 if hi - lo < 0.3 else None
        if mid is not None:
            lo, hi = mid - span / 2, mid + span / 2
        return 10 ** (lo - span * pad_frac), 10 ** (hi + span * pad_frac)
    span = (hi - lo) or (abs(hi) or 1.0)
    lo2 = lo if (include_zero and lo == 0) else lo - span * pad_frac
    return lo2, hi + span * pad_frac


def ticks(lo: float, hi: float, log: bool) -> list[float]:
    """Returns tick positions inside [lo, hi]: 1-2-5 steps (linear) or decades (log)."""
    if log:
        d0, d1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        mults = (1,) if math.log10(hi / lo) >= 2 else (1, 2, 5)
        return [m * 10.0 ** d for d in range(d0, d1 + 1) for m in mults if lo <= m * 10.0 ** d <= hi]
    raw = (hi - lo) / 5
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10)), key=lambda s: abs(math.log(s / raw)))  # 4 to 8 ticks
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step) + 1)]


def distinct_labels(values: list[float]) -> list[str]:
    """Returns fmt_num labels, or plain ones with as many significant digits as keep them apart."""
    out = [fmt_num(v) for v in values]
    digits = 4
    while len(set(out)) < len(out) and digits <= 9:
        out = [f"{v:.{digits}g}" for v in values]
        digits += 1
    return out


def _frame(ax: Axes, plot_id: str, title: str, x_label: str, y_label: str,
           x_ticks: bool = True) -> list[str]:
    left, top = MARGIN_PX["left"], MARGIN_PX["top"]
    right, bottom = WIDTH_PX - MARGIN_PX["right"], HEIGHT_PX - MARGIN_PX["bottom"]
    out = [f'<svg id="{escape(plot_id)}" class="plot" '
           f'viewBox="0 0 {WIDTH_PX} {HEIGHT_PX}" width="{WIDTH_PX}" height="{HEIGHT_PX}" '
           f'font-family="system-ui, sans-serif" font-size="11" role="img">',
           f"<title>{escape(title)}</title>",
           f'<text x="{left}" y="20" font-size="13" font-weight="600">{escape(title)}</text>',
           f'<g class="axes" stroke="#999" fill="none"><path d="M{left},{top}V{bottom}H{right}"/></g>']
    for t in ticks(ax.x_lo, ax.x_hi, ax.x_log) if x_ticks else []:
        x = ax.px(t)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#eee"/>'
                   f'<text x="{x:.1f}" y="{bottom + 15}" text-anchor="middle" fill="#444">'
                   f"{fmt_num(t)}</text>")
    y_ticks = ticks(ax.y_lo, ax.y_hi, ax.y_log)
    for t, label in zip(y_ticks, distinct_labels(y_ticks), strict=True):
        y = ax.py(t)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#eee"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#444">{label}</text>')
    out.append(f'<text x="{(left + right) / 2}" y="{HEIGHT_PX - 12}" text-anchor="middle">'
               f"{escape(x_label)}</text>")
    out.append(f'<text transform="translate(16,{(top + bottom) / 2}) rotate(-90)" '
               f'text-anchor="middle">{escape(y_label)}</text>')
    return out


def _legend(entries: list[tuple[str, str, str]]) -> str:
    """Returns a legend; entries are (label, color, shape) with shape circle, square or line."""
    x0, out = WIDTH_PX - MARGIN_PX["right"] + 14, ['<g class="legend">']
    for i, (label, color, shape) in enumerate(entries):
        y = MARGIN_PX["top"] + 8 + i * 17
        if shape == "line":
            out.append(f'<line x1="{x0}" y1="{y}" x2="{x0 + 14}" y2="{y}" stroke="{color}" '
                       'stroke-width="2"/>')
        elif shape == "square":
            out.append(f'<rect x="{x0 + 2}" y="{y - 5}" width="10" height="10" fill="{color}" '
                       'stroke="#999" stroke-width="0.5"/>')
        else:
            out.append(f'<circle cx="{x0 + 7}" cy="{y}" r="5" fill="{color}"/>')
        out.append(f'<text x="{x0 + 20}" y="{y + 4}">{escape(label)}</text>')
    return "".join(out) + "</g>"


def _empty(plot_id: str, title: str, why: str) -> str:
    ax = Axes(0, 1, 0, 1)
    parts = _frame(ax, plot_id, title, "", "")
    parts.append(f'<text x="{WIDTH_PX / 2 - 60}" y="{HEIGHT_PX / 2}" text-anchor="middle" fill="#888">'
                 f'{escape(why)}</text>')
    return "\n".join(parts) + "</svg>"


def _dot(ax: Axes, x, y, color, tip, shape="circle", hollow=False) -> str:
    fill = "none" if hollow else color
    cx, cy = ax.px(x), ax.py(y)
    t = f"<title>{escape(tip)}</title>"
    if shape == "square":
        return (f'<rect x="{cx - 4.5:.1f}" y="{cy - 4.5:.1f}" width="9" height="9" fill="{fill}" '
                f'stroke="{color}" stroke-width="1.5">{t}</rect>')
    return (f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{fill}" stroke="{color}" '
            f'stroke-width="1.5">{t}</circle>')


def _labels(ax: Axes, items: list[tuple[float, float, str]],
            avoid: list[tuple[float, float]] | None = None) -> list[str]:
    """Returns point labels, each at the first of a few spots inside the frame that covers no earlier
    label and no point (the labelled ones and `avoid`, in data units); else the first spot inside."""
    frame = (MARGIN_PX["left"], MARGIN_PX["top"], WIDTH_PX - MARGIN_PX["right"],
             HEIGHT_PX - MARGIN_PX["bottom"])
    dots = [(x, y) for x, y, _ in items] + (avoid or [])
    taken = [(ax.px(x) - 5, ax.py(y) - 5, ax.px(x) + 5, ax.py(y) + 5) for x, y in dots]
    hit = lambda a, b: a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
    out = []
    for x, y, text in items:
        cx, cy, w = ax.px(x), ax.py(y), 6.3 * len(text)
        spots = []
        for dx, dy, anchor in ((7, -6, "start"), (7, 14, "start"), (-7, -6, "end"), (-7, 14, "end"),
                               (7, -19, "start"), (7, 27, "start"), (-7, -19, "end"), (-7, 27, "end")):
            x0 = cx + dx if anchor == "start" else cx + dx - w
            box = (x0, cy + dy - 10, x0 + w, cy + dy + 2)
            if frame[0] <= box[0] and box[2] <= frame[2] and frame[1] <= box[1] and box[3] <= frame[3]:
                spots.append((dx, dy, anchor, box))
        free = [sp for sp in spots if not any(hit(sp[3], b) for b in taken)]
        dx, dy, anchor, box = (free or spots or [(7, -6, "start", (0, 0, 0, 0))])[0]
        taken.append(box)
        out.append(f'<text x="{cx + dx:.1f}" y="{cy + dy:.1f}" text-anchor="{anchor}" fill="#333">'
                   f"{escape(text)}</text>")
    return out


def _categories(ax: Axes, names: list[str]) -> list[str]:
    """Returns category labels under the x axis, slanted when there are many."""
    y, out = HEIGHT_PX - MARGIN_PX["bottom"] + 14, []
    for i, name in enumerate(names):
        x = ax.px(i + 0.5)
        rot = f' transform="rotate(-25 {x:.1f} {y})"' if len(names) > 5 else ""
        anchor = "end" if rot else "middle"
        out.append(f'<text x="{x + (8 if rot else 0):.1f}" y="{y}" text-anchor="{anchor}" '
                   f'font-size="10"{rot}>{escape(name)}</text>')
    return out


def quality_size_svg(plot_id: str, points: list[tuple[str, float, float, str]], pareto: list[str],
                     y_label: str, y_log: bool = False) -> str:
    """Returns quality vs weights size: points (name, weights_mb, quality, color), lower is better;
    the Pareto frontier (names in `pareto`) is drawn as a step line."""
    title = "Quality vs size (lower-left is better)"
    pts = [p for p in points if _finite([p[1], p[2]]) == [p[1], p[2]] and p[1] > 0
           and (p[2] > 0 or not y_log)]
    if not pts:
        return _empty(plot_id, title, "no variant has both size and quality")
    ax = Axes(*data_range([p[1] for p in pts], True), *data_range([p[2] for p in pts], y_log),
              x_log=True, y_log=y_log)
    parts = _frame(ax, plot_id, title, "weights (MB, log)", y_label)
    front = sorted((p for p in pts if p[0] in pareto), key=lambda p: p[1])
    if len(front) > 1:
        d = f"M{ax.px(front[0][1]):.1f},{ax.py(front[0][2]):.1f}" + "".join(
            f"H{ax.px(b[1]):.1f}V{ax.py(b[2]):.1f}" for b in front[1:])
        parts.append(f'<path class="pareto" d="{d}" fill="none" stroke="#555" stroke-dasharray="5,3"/>')
    for name, x, y, color in sorted(pts, key=lambda p: p[0] not in pareto):  # hollow rings on top
        parts.append(_dot(ax, x, y, color, f"{name}: {x:.1f} MB, {y:.4g}", hollow=name not in pareto))
    parts += _labels(ax, [(p[1], p[2], p[0]) for p in pts])
    parts.append(_legend([("Pareto set", "#555", "circle"), ("dominated: hollow", "#bbb", "circle"),
                          ("frontier", "#555", "line")]))
    return "\n".join(parts) + "</svg>"


def decode_size_svg(plot_id: str, points: list[tuple[str, float, float, float | None, str]],
                    bandwidth_bytes_s: float | None) -> str:
    """Returns decode tok/s vs weights bytes: points (name, weights_bytes, tok_s, predicted_tok_s,
    color), with the roofline tok/s = bandwidth / weights_bytes when a bandwidth is known."""
    title = "Decode speed vs weights size"
    pts = [p for p in points if _finite([p[1], p[2]]) == [p[1], p[2]] and p[1] > 0 and p[2] > 0]
    if not pts:
        return _empty(plot_id, title, "no decode measurements")
    xs = [p[1] for p in pts]
    ys = [p[2] for p in pts] + _finite(p[3] for p in pts)
    x_lo, x_hi = data_range(xs, True)
    if bandwidth_bytes_s:
        ys += [bandwidth_bytes_s / x_lo, bandwidth_bytes_s / x_hi]
    ax = Axes(x_lo, x_hi, *data_range(ys, True), x_log=True, y_log=True)
    parts = _frame(ax, plot_id, title, "weights (bytes, log)", "decode tok/s (log)")
    legend = [("measured", "#333", "circle")]
    if bandwidth_bytes_s:
        parts.append(f'<line class="roof" x1="{ax.px(x_lo):.1f}" y1="{ax.py(bandwidth_bytes_s / x_lo):.1f}" '
                     f'x2="{ax.px(x_hi):.1f}" y2="{ax.py(bandwidth_bytes_s / x_hi):.1f}" stroke="#c00" '
                     f'stroke-dasharray="6,3"/>')
        legend.append((f"roofline {fmt_num(bandwidth_bytes_s)}B/s", "#c00", "line"))
    for name, x, y, pred, color in pts:
        if pred and _finite([pred]) and pred > 0:
            parts.append(_dot(ax, x, pred, color, f"{name} predicted: {pred:.3g} tok/s", hollow=True))
        parts.append(_dot(ax, x, y, color, f"{name}: {y:.3g} tok/s at {x / 1e6:.1f} MB"))
    parts += _labels(ax, [(p[1], p[2], p[0]) for p in pts],
                     [(p[1], p[3]) for p in pts if p[3] and _finite([p[3]]) and p[3] > 0])
    if any(p[3] for p in pts):
        legend.append(("predicted: hollow", "#bbb", "circle"))
    parts.append(_legend(legend))
    return "\n".join(parts) + "</svg>"


def roofline_svg(plot_id: str, points: list[tuple[str, str, float, float, str]],
                 peak_flop_s: dict[str, float], bandwidth_bytes_s: float | None) -> str:
    """Returns the roofline chart: points (name, 'prefill'|'decode', FLOP/byte, achieved FLOP/s,
    color); roofs min(peak, bandwidth × intensity) for each peak FLOP/s given (Williams et al. 2009)."""
    title = "Roofline: arithmetic intensity vs achieved FLOP/s"
    pts = [p for p in points if _finite([p[2], p[3]]) == [p[2], p[3]] and p[2] > 0 and p[3] > 0]
    if not pts:
        return _empty(plot_id, title, "no FLOP counts or intensities recorded")
    xs = [p[2] for p in pts]
    ys = [p[3] for p in pts] + list(peak_flop_s.values())
    if bandwidth_bytes_s:
        xs += [peak / bandwidth_bytes_s for peak in peak_flop_s.values()]  # ridge points
    x_lo, x_hi = data_range(xs, True, pad_frac=0.15)
    if bandwidth_bytes_s:
        ys.append(bandwidth_bytes_s * x_lo)
    ax = Axes(x_lo, x_hi, *data_range(ys, True), x_log=True, y_log=True)
    parts = _frame(ax, plot_id, title, "arithmetic intensity (FLOP/byte, log)", "FLOP/s (log)")
    legend = [("prefill", "#333", "square"), ("decode", "#333", "circle")]
    legend += [(n, c, "circle") for n, c in dict((p[0], p[4]) for p in pts).items()]
    roofs = sorted(peak_flop_s.items(), key=lambda kv: -kv[1])
    if bandwidth_bytes_s:  # memory slope up to the highest ridge, shared by every roof
        top = roofs[0][1] if roofs else bandwidth_bytes_s * x_hi
        x_end = min(top / bandwidth_bytes_s, x_hi)
        parts.append(f'<line class="roof" x1="{ax.px(x_lo):.1f}" y1="{ax.py(bandwidth_bytes_s * x_lo):.1f}" '
                     f'x2="{ax.px(x_end):.1f}" y2="{ax.py(bandwidth_bytes_s * x_end):.1f}" stroke="#555" '
                     f'stroke-width="1.5"/>')
        legend.append((f"{fmt_num(bandwidth_bytes_s)}B/s memory", "#555", "line"))
    for i, (dtype, peak) in enumerate(roofs):
        color = ("#c00", "#e67", "#a50", "#870")[i % 4]
        x0 = max(peak / bandwidth_bytes_s, x_lo) if bandwidth_bytes_s else x_lo
        parts.append(f'<line class="roof" x1="{ax.px(x0):.1f}" y1="{ax.py(peak):.1f}" x2="{ax.px(x_hi):.1f}" '
                     f'y2="{ax.py(peak):.1f}" stroke="{color}" stroke-width="1.5"/>')
        legend.append((f"{dtype} {fmt_num(peak)}FLOP/s", color, "line"))
    for name, kind, x, y, color in pts:
        shape = "square" if kind == "prefill" else "circle"
        parts.append(_dot(ax, x, y, color, f"{name} {kind}: {x:.3g} FLOP/B, {fmt_num(y)}FLOP/s", shape))
    parts.append(_legend(legend))
    return "\n".join(parts) + "</svg>"


def memory_bars_svg(plot_id: str, bars: list[tuple[str, float, float, float, float | None]]) -> str:
    """Returns memory bars per format: bars (name, weights_mb, kv_mb, other_mb, predicted_weights_mb);
    measured is stacked weights/KV/other, predicted weights is the hatched bar beside it."""
    title = "Memory: measured peak (weights / KV / other) beside predicted weights"
    bars = [b for b in bars if _finite(b[1:4])]
    if not bars:
        return _empty(plot_id, title, "no memory figures recorded")
    tops = [sum(_finite(b[1:4])) for b in bars] + _finite(b[4] for b in bars)
    ax = Axes(0, len(bars), 0, max(tops) * 1.08 or 1.0)
    parts = _frame(ax, plot_id, title, "", "MB", x_ticks=False)  # categories are labeled below
    parts.append('<defs><pattern id="hatch-' + escape(plot_id) + '" width="6" height="6" '
                 'patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" '
                 'fill="#fff"/><line x1="0" y1="0" x2="0" y2="6" stroke="#1f77b4" stroke-width="3"/>'
                 "</pattern></defs>")
    colors = {"weights": "#1f77b4", "KV cache": "#ff7f0e", "other": "#bbb"}
    slot = ax.px(1) - ax.px(0)
    for i, (name, w, kv, other, pred) in enumerate(bars):
        x0, base = ax.px(i) + slot * 0.12, 0.0
        for part, v in zip(colors, (w, kv, other), strict=True):
            v = v if _finite([v]) else 0.0
            if v > 0:
                parts.append(f'<rect x="{x0:.1f}" y="{ax.py(base + v):.1f}" width="{slot * 0.45:.1f}" '
                             f'height="{ax.py(base) - ax.py(base + v):.1f}" fill="{colors[part]}">'
                             f"<title>{escape(name)} {part}: {v:.1f} MB</title></rect>")
            base += v
        if pred and _finite([pred]):
            parts.append(f'<rect x="{x0 + slot * 0.48:.1f}" y="{ax.py(pred):.1f}" width="{slot * 0.28:.1f}" '
                         f'height="{ax.py(0) - ax.py(pred):.1f}" fill="url(#hatch-{escape(plot_id)})" '
                         f'stroke="#1f77b4"><title>{escape(name)} predicted weights: {pred:.1f} MB</title>'
                         "</rect>")
    parts += _categories(ax, [b[0] for b in bars])
    parts.append(_legend([(k, c, "square") for k, c in colors.items()] +
                         [("predicted weights", f"url(#hatch-{escape(plot_id)})", "square")]))
    return "\n".join(parts) + "</svg>"


def _quantile(sorted_vals: list[float], q: float) -> float:
    pos = q * (len(sorted_vals) - 1)
    i = int(pos)
    j = min(i + 1, len(sorted_vals) - 1)
    return sorted_vals[i] + (sorted_vals[j] - sorted_vals[i]) * (pos - i)


def latency_svg(plot_id: str, dists: list[tuple[str, list[float], str]]) -> str:
    """Returns per-token decode latency per format: dists (name, samples_ms, color) as a box
    (p25–p75, median line, whiskers p1–p99) beside a strip of the samples."""
    title = "Decode latency per token (box p25–p75, whiskers p1–p99)"
    dists = [(n, sorted(_finite(s)), c) for n, s, c in dists]
    dists = [d for d in dists if d[1]]
    if not dists:
        return _empty(plot_id, title, "no raw decode samples recorded")
    allv = [v for d in dists for v in d[1] if v > 0]
    y_log = bool(allv) and max(allv) / min(allv) > 20
    ax = Axes(0, len(dists), *data_range(allv, y_log), y_log=y_log)
    parts = _frame(ax, plot_id, title, "", "ms per token" + (" (log)" if y_log else ""), x_ticks=False)
    slot = ax.px(1) - ax.px(0)
    for i, (name, s, color) in enumerate(dists):
        q = {k: _quantile(s, k / 100) for k in (1, 25, 50, 75, 99)}
        xb, wb = ax.px(i) + slot * 0.1, slot * 0.35
        xm = xb + wb / 2
        parts.append(f'<line x1="{xm:.1f}" y1="{ax.py(q[1]):.1f}" x2="{xm:.1f}" y2="{ax.py(q[99]):.1f}" '
                     f'stroke="{color}"/>')
        parts.append(f'<rect x="{xb:.1f}" y="{ax.py(q[75]):.1f}" width="{wb:.1f}" '
                     f'height="{max(ax.py(q[25]) - ax.py(q[75]), 1):.1f}" fill="{color}" fill-opacity="0.25" '
                     f'stroke="{color}"><title>{escape(name)}: p50 {q[50]:.3g} ms, p25–p75 {q[25]:.3g}–'
                     f'{q[75]:.3g} ms, n={len(s)}</title></rect>')
        parts.append(f'<line x1="{xb:.1f}" y1="{ax.py(q[50]):.1f}" x2="{xb + wb:.1f}" '
                     f'y2="{ax.py(q[50]):.1f}" '
                     f'stroke="{color}" stroke-width="2"/>')
        k = min(len(s), MAX_STRIP_POINTS)
        idx = [round(j * (len(s) - 1) / max(k - 1, 1)) for j in range(k)]
        for j, si in enumerate(idx):
            jitter = ((j * 0.618034) % 1.0) * slot * 0.3
            parts.append(f'<circle cx="{xb + wb + slot * 0.08 + jitter:.1f}" cy="{ax.py(s[si]):.1f}" r="1.8" '
                         f'fill="{color}" fill-opacity="0.6"/>')
    parts += _categories(ax, [d[0] for d in dists])
    parts.append(_legend([("p25–p75 box", "#999", "square"), ("median", "#333", "line"),
                          ("samples", "#999", "circle")]))
    return "\n".join(parts) + "</svg>"


def series_svg(plot_id: str, title: str, x_label: str, y_label: str,
               series: list[tuple[str, str, list[tuple[float, float]], str]], x_log: bool = False,
               y_log: bool = False, marks: list[tuple[float, str, str, bool]] = ()) -> str:
    """Returns an x/y chart of series (name, color, [(x, y)], style), style 'dots' (measured),
    'line' (fitted), 'dash' (roofline) or 'join' (a plain line joining points); marks are vertical
    lines (x, label, color, dashed)."""
    def ok(x, y) -> bool:
        return _finite([x, y]) == [x, y] and (x > 0 or not x_log) and (y > 0 or not y_log)

    series = [(n, c, [(x, y) for x, y in pts if ok(x, y)], st) for n, c, pts, st in series]
    series = [s for s in series if s[2]]
    if not series:
        return _empty(plot_id, title, "no points")
    xs = [x for s in series for x, _ in s[2]] + [m[0] for m in marks if _finite([m[0]])]
    ys = [y for s in series for _, y in s[2]]
    ax = Axes(*data_range(xs, x_log), *data_range(ys, y_log, include_zero=not y_log),
              x_log=x_log, y_log=y_log)
    parts = _frame(ax, plot_id, title, x_label, y_label)
    for name, color, pts, style in series:
        pts = sorted(pts)
        if style == "dots":
            parts += [_dot(ax, x, y, color, f"{name}: {fmt_num(y)} at {fmt_num(x)}") for x, y in pts]
        elif len(pts) > 1:
            d = "M" + "L".join(f"{ax.px(x):.1f},{ax.py(y):.1f}" for x, y in pts)
            dash = ' stroke-dasharray="6,3"' if style == "dash" else ""
            what = {"dash": "roofline", "line": "fitted"}.get(style, "joined")
            parts.append(f'<path class="{style}" d="{d}" fill="none" stroke="{color}" '
                         f'stroke-width="1.5"{dash}><title>{escape(name)} ({what})</title></path>')
    top, bottom = MARGIN_PX["top"], HEIGHT_PX - MARGIN_PX["bottom"]
    for x, label, color, dashed in marks:
        if not _finite([x]) or not (ax.x_lo <= x <= ax.x_hi):
            continue
        dash = ' stroke-dasharray="3,3"' if dashed else ""
        parts.append(f'<line class="mark" x1="{ax.px(x):.1f}" y1="{top}" x2="{ax.px(x):.1f}" y2="{bottom}" '
                     f'stroke="{color}"{dash}><title>{escape(label)}</title></line>')
    legend = list(dict.fromkeys((n, c, "circle") for n, c, _, _ in series))
    styles = {s[3] for s in series}
    keys = (("dots", ("measured: dots", "#333", "circle")), ("line", ("fitted", "#333", "line")),
            ("dash", ("roofline: dashed", "#999", "line")))
    legend += [e for st, e in keys if st in styles]
    if marks:
        legend.append(("knee: dotted pred., solid fit", "#333", "line"))
    parts.append(_legend(legend[:16]))
    return "\n".join(parts) + "</svg>"
