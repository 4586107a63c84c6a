"""A fitted model of one decode step beside the roofline bound, its held-out test, and the knee.

The roofline (`*_predicted`) is a bound: every byte at the calibrated bandwidth, every FLOP at the
calibrated peak, nothing else. What a framework does instead is fitted, per (model, format,
device, threads), from its decode sweep over depth D and batch B:

    t_step(D, B) = t_fixed + B · ctx · kv_bytes_per_token / BW_kv + B · flops_per_seq / peak_eff

t_fixed is what one step costs whatever D and B: reading the weights plus the framework's
overhead (Python, dispatch, thread wake-ups). Within one model's sweep the weights' read time is a
constant, so it cannot be told apart from overhead; the size ladder separates them
(`fit_layers`: t_layer · layers + weights / BW_eff). BW_kv is what reading the KV cache really
costs (attention kernels, not a copy), peak_eff what the matmuls reach as B grows. The terms add:
the CPU kernels run one after the other, and the first sweeps here fitted a max(memory, compute)
form worse. Least squares on relative error, every term ≥ 0 (exact: all subsets of the three
terms, the best feasible one wins). Held out: the deepest depth and the largest batch are predicted
by a fit that never saw them. Pure Python + numpy, no torch.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

KNEE_PLATEAU_FRAC = 0.9  # measured knee: the smallest batch reaching 90 % of the best tok/s


@dataclass(frozen=True)
class Point:
    """One decode measurement: the step's predicted KV bytes and FLOPs, and its median time."""
    workload: str
    depth: int
    batch: int
    kv_bytes: float  # B · ctx · KV bytes per token: what the step reads beyond the weights
    flops: float  # B · flops_per_token(ctx)
    step_s: float

    def __post_init__(self):
        if not (self.kv_bytes >= 0 and self.flops > 0 and self.step_s > 0):
            raise ValueError(f"{self.workload}: kv_bytes >= 0, flops and step_s > 0 needed, got {self}")


@dataclass(frozen=True)
class Fit:
    fixed_s: float
    kv_bandwidth_bytes_s: float | None  # None: the KV term fitted to 0 (no cost seen)
    peak_flop_s: float | None  # None: the compute term fitted to 0
    n_points: int

    def step_s(self, kv_bytes: float, flops: float) -> float:
        """Returns the fitted step time."""
        kv = kv_bytes / self.kv_bandwidth_bytes_s if self.kv_bandwidth_bytes_s else 0.0
        return self.fixed_s + kv + (flops / self.peak_flop_s if self.peak_flop_s else 0.0)

    def rel_err(self, p: Point) -> float:
        """Returns (fitted − measured) / measured step time of one point."""
        return self.step_s(p.kv_bytes, p.flops) / p.step_s - 1

    def knee_batch(self, flops_per_seq: float) -> float | None:
        """Returns the batch whose compute term equals the fixed term (weights + overhead):
        t_fixed · peak_eff / flops per sequence; None without a compute term."""
        return self.fixed_s * self.peak_flop_s / flops_per_seq if self.peak_flop_s else None


def _nnls(A: np.ndarray) -> tuple[np.ndarray, float]:
    """Returns (x ≥ 0, loss) minimizing |A x − 1|², trying every subset of columns."""
    best = (np.zeros(A.shape[1]), float(A.shape[0]))
    for k in range(1, A.shape[1] + 1):
        for cols in itertools.combinations(range(A.shape[1]), k):
            x_sub, *_ = np.linalg.lstsq(A[:, cols], np.ones(A.shape[0]), rcond=None)
            if (x_sub < 0).any():
                continue
            x = np.zeros(A.shape[1])
            x[list(cols)] = x_sub
            loss = float(((A @ x - 1) ** 2).sum())
            if loss < best[1]:
                best = (x, loss)
    return best


def fit(points: list[Point]) -> Fit:
    """Returns the least-squares Fit (relative error) of t_fixed, BW_kv and peak_eff."""
    if len(points) < 2:
        raise ValueError(f"a fit needs at least 2 points, got {len(points)}")
    t = np.array([p.step_s for p in points], float)
    cols = np.array([[1.0, p.kv_bytes, p.flops] for p in points], float)
    scale = cols.max(axis=0)  # columns of 1, ~1e8 bytes and ~1e10 FLOPs: solve on one scale
    x, _ = _nnls(cols / scale / t[:, None])
    t0, inv_kv, inv_peak = x / scale
    return Fit(float(t0), float(1 / inv_kv) if inv_kv > 0 else None,
               float(1 / inv_peak) if inv_peak > 0 else None, len(points))


def held_out(points: list[Point]) -> list[Point]:
    """Returns the points a held-out test predicts: those at the deepest depth and those at the
    largest batch (when the sweep has more than one of each)."""
    depths, batches = {p.depth for p in points}, {p.batch for p in points}
    return [p for p in points if (len(depths) > 1 and p.depth == max(depths))
            or (len(batches) > 1 and p.batch == max(batches))]


def holdout_errors(points: list[Point]) -> dict[str, float]:
    """Returns {workload: relative error} of the held-out points predicted by a fit on the rest
    ({} when fewer than 3 points remain to fit)."""
    out = held_out(points)
    train = [p for p in points if p not in out]
    if not out or len(train) < 3:
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
        b, w, f, tok_s = (r.get(k) for k in ("decode_step_bytes_predicted", "weights_bytes_predicted",
                                             "decode_step_flops_predicted", "decode_tok_s"))
        if not all(isinstance(v, (int, float)) and v > 0 for v in (b, w, f, tok_s)):
            continue
        batch = int(r.get("batch") or 1)
        out.append(Point(r["workload"], int(r.get("depth") or 0), batch, max(float(b) - w, 0.0), float(f),
                         batch / tok_s))
    return out


def annotate(recs: list[dict]) -> None:
    """Adds the fit's fields to the decode records of one variant (one model, format, device and
    thread count), in place: fit_* parameters, each point's fit_rel_err, holdout_rel_err on the
    held-out points, and the knees measured at depth 0."""
    pts = points_from_records(recs)
    if len(pts) < 4:  # three terms: fewer points fit exactly and test nothing
        return
    f, hold = fit(pts), holdout_errors(pts)
    by_name = {p.workload: p for p in pts}
    base = {p.batch: p for p in pts if p.depth == 0}
    knee = plateau_knee({b: b / p.step_s for b, p in base.items()})
    one = base.get(1)
    fit_knee = f.knee_batch(one.flops) if one is not None else None
    for r in recs:
        p = by_name.get(r.get("workload")) if r.get("status") == "ok" else None
        if p is None:
            continue
        r.update(fit_fixed_s=f.fixed_s, fit_kv_bandwidth_bytes_s=f.kv_bandwidth_bytes_s,
                 fit_peak_flop_s=f.peak_flop_s, fit_points=f.n_points, fit_rel_err=float(f.rel_err(p)),
                 fit_step_s=f.step_s(p.kv_bytes, p.flops))
        if r.get("weights_bytes_predicted") and f.fixed_s > 0:
            r["fit_bandwidth_bytes_s"] = r["weights_bytes_predicted"] / f.fixed_s
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
        rs = [dict(r) for r in rs]
        annotate(rs)  # refitted with this code, so older records read the same as new ones
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
                   kv_bandwidth_bytes_s=_num(r0.get("fit_kv_bandwidth_bytes_s")),
                   weights_bytes=_num(r0.get("weights_bytes_predicted")),
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
        # overhead: the fixed time beyond reading the weights at the calibrated bandwidth
        w_s = row["weights_bytes"] / bw_cal if row["weights_bytes"] and bw_cal else None
        row["weights_s"] = w_s
        row["overhead_s"] = max(row["fixed_s"] - w_s, 0.0) if row["fixed_s"] is not None and w_s else None
        row["overhead_share"] = (row["overhead_s"] / row["step0_s"] if row["step0_s"]
                                 and row["overhead_s"] is not None else None)
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
                    "bandwidth_bytes_s": 1 / a if a > 0 else None,
                    "rel_err": (c * last[2] + a * last[3]) / last[4] - 1})
    return out
