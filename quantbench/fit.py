"""A fitted model of one decode step beside the roofline bound, its held-out test, and the knee.

The roofline (`*_predicted`) is a bound: every byte at the calibrated bandwidth, every FLOP at the
calibrated peak, nothing else. What a framework adds is fitted, per (model, format, device,
threads), from the decode sweep over depth D and batch B:

    t_step(D, B) = t_fixed + max(bytes(D, B) / BW_eff, flops(D, B) / peak_eff)

bytes and flops are the arithmetic's own (the records' decode_step_bytes/flops_predicted: the
weights plus B·D tokens of KV; B · flops_per_token); t_fixed is time outside the traffic (Python,
kernel launches, sampling), BW_eff and peak_eff what the kernels reach. Least squares on relative
error. Held out: the deepest depth and the largest batch are predicted by a fit that never saw them.
Pure Python + numpy, no torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

KNEE_PLATEAU_FRAC = 0.9  # measured knee: the smallest batch reaching 90 % of the best tok/s


@dataclass(frozen=True)
class Point:
    """One decode measurement: the step's predicted traffic and work, and its median time."""
    workload: str
    depth: int
    batch: int
    bytes: float
    flops: float
    step_s: float

    def __post_init__(self):
        if not (self.bytes > 0 and self.flops > 0 and self.step_s > 0):
            raise ValueError(f"{self.workload}: bytes, flops and step_s must be > 0, got {self}")


@dataclass(frozen=True)
class Fit:
    fixed_s: float
    bandwidth_bytes_s: float
    peak_flop_s: float | None  # None: no point fitted compute-bound, so the data cannot tell it
    n_points: int

    def step_s(self, bytes_: float, flops: float) -> float:
        """Returns the fitted step time for a step reading bytes_ and doing flops."""
        compute = flops / self.peak_flop_s if self.peak_flop_s else 0.0
        return self.fixed_s + max(bytes_ / self.bandwidth_bytes_s, compute)

    def rel_err(self, p: Point) -> float:
        """Returns (fitted − measured) / measured step time of one point."""
        return self.step_s(p.bytes, p.flops) / p.step_s - 1

    def knee_batch(self, weights_bytes: float, kv_bytes_per_seq: float, flops_per_seq: float) -> float | None:
        """Returns the batch where the compute term overtakes the memory term:
        (W + B·kv) / BW = B·f / peak, so B = (W / BW) / (f / peak − kv / BW); None without a peak
        or when compute never wins."""
        if not self.peak_flop_s:
            return None
        per_seq = flops_per_seq / self.peak_flop_s - kv_bytes_per_seq / self.bandwidth_bytes_s
        return weights_bytes / self.bandwidth_bytes_s / per_seq if per_seq > 0 else None


def _solve(z: np.ndarray, t: np.ndarray) -> tuple[float, float, float]:
    """Returns (t0, a, loss): t ≈ t0 + a·z minimizing Σ((t0 + a·z − t) / t)², t0 ≥ 0, a ≥ 0."""
    A = np.stack([1 / t, z / t], axis=1)
    (t0, a), *_ = np.linalg.lstsq(A, np.ones_like(t), rcond=None)
    if t0 < 0:  # time cannot be saved per step: refit through the origin
        t0, a = 0.0, float((z / t).sum() / ((z / t) ** 2).sum())
    if a <= 0:  # no traffic term at all: a constant step
        t0, a = float((1 / t).sum() / ((1 / t) ** 2).sum()), 0.0
    rel = (t0 + a * z - t) / t
    return float(t0), float(a), float(rel @ rel)


def fit(points: list[Point], memory_only: bool = False) -> Fit:
    """Returns the least-squares Fit (relative error) of t_fixed, BW_eff and peak_eff.

    For a fixed ratio r = BW_eff / peak_eff the model is t0 + max(bytes, r · flops) / BW_eff, linear
    in (t0, 1 / BW_eff): r is scanned over every value where some point switches term (and r = 0,
    memory only), each solved exactly, and the best r refined by golden-section search.
    memory_only fits t_fixed and BW_eff alone (r = 0).
    """
    if len(points) < 2:
        raise ValueError(f"a fit needs at least 2 points, got {len(points)}")
    x = np.array([p.bytes for p in points], float)
    y = np.array([p.flops for p in points], float)
    t = np.array([p.step_s for p in points], float)
    switch = x / y  # r above which a point's compute term wins
    lo, hi = switch.min() / 2, switch.max() * 4

    def loss(r: float) -> float:
        return _solve(np.maximum(x, r * y), t)[2]

    grid = [0.0] + ([] if memory_only else list(np.geomspace(lo, hi, 240)))
    losses = [loss(r) for r in grid]
    i = int(np.argmin(losses))
    best = grid[i]
    if i > 0:  # golden-section between the neighbours of the best grid value
        a, b = grid[max(i - 1, 1)], grid[min(i + 1, len(grid) - 1)]
        g = (math.sqrt(5) - 1) / 2
        for _ in range(60):
            c, d = b - g * (b - a), a + g * (b - a)
            if loss(c) < loss(d):
                b = d
            else:
                a = c
        best = min((best, (a + b) / 2), key=loss)
    t0, inv_bw, _ = _solve(np.maximum(x, best * y), t)
    bw = 1 / inv_bw if inv_bw > 0 else math.inf
    compute_wins = best > 0 and bool((best * y > x).any())
    return Fit(t0, bw, float(bw / best) if compute_wins else None, len(points))


def held_out(points: list[Point]) -> list[Point]:
    """Returns the points a held-out test predicts: those at the deepest depth and those at the
    largest batch (when the sweep has more than one of each)."""
    depths, batches = {p.depth for p in points}, {p.batch for p in points}
    return [p for p in points if (len(depths) > 1 and p.depth == max(depths))
            or (len(batches) > 1 and p.batch == max(batches))]


def holdout_errors(points: list[Point]) -> dict[str, float]:
    """Returns {workload: relative error} of the held-out points predicted by a fit on the rest
    ({} when fewer than 2 points remain to fit)."""
    out = held_out(points)
    train = [p for p in points if p not in out]
    if not out or len(train) < 2:
        return {}
    f = fit(train)
    return {p.workload: float(f.rel_err(p)) for p in out}


def plateau_knee(tok_s_by_batch: dict[int, float], frac: float = KNEE_PLATEAU_FRAC) -> int | None:
    """Returns the smallest batch whose tok/s reaches frac of the best; None with under 2 batches."""
    if len(tok_s_by_batch) < 2:
        return None
    top = max(tok_s_by_batch.values())
    return min(b for b, v in tok_s_by_batch.items() if v >= frac * top)


def points_from_records(recs: list[dict]) -> list[Point]:
    """Returns the decode Points of ok tg records carrying the step's predicted bytes and FLOPs."""
    out = []
    for r in recs:
        if r.get("status") != "ok" or not str(r.get("workload", "")).startswith("tg"):
            continue
        b, f, tok_s = (r.get(k) for k in ("decode_step_bytes_predicted", "decode_step_flops_predicted",
                                          "decode_tok_s"))
        if not all(isinstance(v, (int, float)) and v > 0 for v in (b, f, tok_s)):
            continue
        batch = int(r.get("batch") or 1)
        out.append(Point(r["workload"], int(r.get("depth") or 0), batch, float(b), float(f), batch / tok_s))
    return out


def annotate(recs: list[dict]) -> None:
    """Adds the fit's fields to the decode records of one variant (one model, format, device and
    thread count), in place: fit_* parameters, each point's fit_rel_err, holdout_rel_err on the
    held-out points, and the measured knees at depth 0."""
    pts = points_from_records(recs)
    if len(pts) < 3:  # two points fit exactly: nothing would be tested
        return
    f, hold = fit(pts), holdout_errors(pts)
    by_name = {p.workload: p for p in pts}
    base = {p.batch: p for p in pts if p.depth == 0}
    knee = plateau_knee({b: b / p.step_s for b, p in base.items()})
    one = base.get(1)
    w = next((r.get("weights_bytes_predicted") for r in recs if r.get("weights_bytes_predicted")), None)
    fit_knee = None
    if one is not None and w:
        fit_knee = f.knee_batch(w, one.bytes - w, one.flops)
    for r in recs:
        p = by_name.get(r.get("workload")) if r.get("status") == "ok" else None
        if p is None:
            continue
        r.update(fit_fixed_s=f.fixed_s, fit_bandwidth_bytes_s=f.bandwidth_bytes_s,
                 fit_peak_flop_s=f.peak_flop_s, fit_points=f.n_points, fit_rel_err=float(f.rel_err(p)),
                 fit_step_s=f.step_s(p.bytes, p.flops))
        if p.workload in hold:
            r["holdout_rel_err"] = hold[p.workload]
        if fit_knee is not None:
            r["knee_batch_fit"] = float(fit_knee)
        if knee is not None:
            r["knee_batch_plateau"] = knee


# --- per-variant summaries for the report: records in, plain rows out

SWEEP = ("model", "host", "device", "format", "threads")


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _kv_slope(pts: list[tuple[float, float]]) -> float | None:
    """Returns the least-squares slope dy/dx of (x, y) pairs; None with under 2 distinct x."""
    if len({x for x, _ in pts}) < 2:
        return None
    x, y = np.array(pts, float).T
    return float(np.polyfit(x, y, 1)[0])


def summaries(recs: list[dict]) -> list[dict]:
    """Returns one row per (model, host, device, format, threads) with decode records: the fitted
    terms (None without a fit) beside the calibrated ones, the knees, held-out errors, the KV slope
    measured against predicted, and the decode points (depth, batch, measured/roofline/fitted tok/s)."""
    groups: dict[tuple, list[dict]] = {}
    for r in recs:
        if r.get("status") == "ok":
            groups.setdefault(tuple(r.get(k) for k in SWEEP), []).append(r)
    out = []
    for key, rs in groups.items():
        tg = [r for r in rs if str(r.get("workload", "")).startswith("tg") and _num(r.get("decode_tok_s"))]
        if not tg:
            continue
        r0 = next((r for r in tg if not r.get("depth") and (r.get("batch") or 1) == 1), tg[0])
        row = dict(zip(SWEEP, key, strict=True))
        peaks = r0.get("peaks") if isinstance(r0.get("peaks"), dict) else {}
        bw_cal = _num(r0.get("peaks.bandwidth_bytes_s")) or _num(peaks.get("bandwidth_bytes_s"))
        row.update(params=_num(r0.get("params")), n_layers=_num(r0.get("n_layers")),
                   fixed_s=_num(r0.get("fit_fixed_s")),
                   bandwidth_bytes_s=_num(r0.get("fit_bandwidth_bytes_s")),
                   peak_flop_s=_num(r0.get("fit_peak_flop_s")), bandwidth_cal_bytes_s=bw_cal,
                   step0_s=_num(r0.get("fit_step_s")),
                   measured0_s=(r0.get("batch") or 1) / r0["decode_tok_s"],
                   knee_predicted=_num(r0.get("knee_batch_predicted")),
                   knee_fit=_num(r0.get("knee_batch_fit")),
                   knee_plateau=_num(r0.get("knee_batch_plateau")),
                   sol0=_num(r0.get("decode_sol_frac")),
                   max_batch=max(int(r.get("batch") or 1) for r in tg),
                   holdout={r["workload"]: r["holdout_rel_err"] for r in tg
                            if _num(r.get("holdout_rel_err")) is not None})
        errs = [r["fit_rel_err"] ** 2 for r in tg if _num(r.get("fit_rel_err")) is not None]
        row["rms_rel_err"] = float(np.sqrt(np.mean(errs))) if errs else None
        row["overhead_share"] = row["fixed_s"] / row["step0_s"] if row["step0_s"] and row["fixed_s"] else None
        pts = [{"depth": int(r.get("depth") or 0), "batch": int(r.get("batch") or 1),
                "tok_s": r["decode_tok_s"], "roofline_tok_s": _num(r.get("decode_tok_s_predicted")),
                "fit_tok_s": (r.get("batch") or 1) / r["fit_step_s"] if _num(r.get("fit_step_s")) else None,
                "bytes": _num(r.get("decode_step_bytes_predicted"))} for r in tg]
        row["points"] = sorted(pts, key=lambda p: (p["batch"], p["depth"]))
        # KV read cost: seconds per cached token at batch 1, measured (slope of step time over the
        # step's bytes, scaled by KV bytes per token) and predicted (KV bytes per token / bandwidth)
        deep = [p for p in pts if p["batch"] == 1 and p["bytes"]]
        kv_token = _kv_slope([(p["depth"], p["bytes"]) for p in deep])
        row["kv_bytes_per_token"] = kv_token
        row["kv_slope_s"] = _kv_slope([(p["depth"], 1 / p["tok_s"]) for p in deep])
        row["kv_slope_predicted_s"] = kv_token / bw_cal if kv_token and bw_cal else None
        pp = [r for r in rs if str(r.get("workload", "")).startswith("pp") and r.get("depth")
              and _num(r.get("kv_cache_bytes")) and _num(r.get("kv_cache_bytes_predicted"))]
        row["kv_bytes_match"] = (all(r["kv_cache_bytes"] == r["kv_cache_bytes_predicted"] for r in pp)
                                 if pp else None)
        out.append(row)
    return out


def fit_layers(layers: np.ndarray, bytes_: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """Returns (t_layer, 1 / BW_eff): t ≈ t_layer · layers + bytes / BW_eff by least squares on
    relative error, both ≥ 0 (the ladder's overhead grows with depth in layers, not with size)."""
    A = np.stack([layers / t, bytes_ / t], axis=1)
    (c, a), *_ = np.linalg.lstsq(A, np.ones_like(t), rcond=None)
    if c < 0 or a < 0:  # one term only: the better of the two
        fits = [(float((A[:, k].sum()) / (A[:, k] ** 2).sum()), k) for k in (0, 1)]
        (v, k) = min(fits, key=lambda f: float(((A[:, f[1]] * f[0] - 1) ** 2).sum()))
        c, a = (v, 0.0) if k == 0 else (0.0, v)
    return float(c), float(a)


def ladder_holdout(rows: list[dict]) -> list[dict]:
    """Returns, per (host, device, format, threads) run on 3 or more models, the batch-1 depth-0
    step time of the largest model predicted by t_layer · layers + bytes / BW_eff fitted on the
    others."""
    by: dict[tuple, list[dict]] = {}
    for r in rows:
        by.setdefault((r["host"], r["device"], r["format"], r["threads"]), []).append(r)
    out = []
    for (host, device, fmt, threads), rs in by.items():
        pts = []
        for r in rs:
            p0 = next((p for p in r["points"] if p["depth"] == 0 and p["batch"] == 1 and p["bytes"]), None)
            if p0 and r.get("params") and r.get("n_layers"):
                pts.append((r["params"], r["model"], r["n_layers"], p0["bytes"], 1 / p0["tok_s"]))
        if len(pts) < 3:
            continue
        pts.sort()
        train, last = pts[:-1], pts[-1]
        layers, bytes_, t = (np.array([p[i] for p in train], float) for i in (2, 3, 4))
        c, a = fit_layers(layers, bytes_, t)
        out.append({"host": host, "device": device, "format": fmt, "threads": threads,
                    "fitted_on": [p[1] for p in train], "held_out": last[1], "layer_s": c,
                    "bandwidth_bytes_s": 1 / a if a > 0 else math.inf,
                    "rel_err": (c * last[2] + a * last[3]) / last[4] - 1})
    return out
