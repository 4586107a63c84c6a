"""A fitted model of one decode step beside the roofline bound, its held-out test, and the knee.

The roofline (`*_predicted`) is a bound: every byte at the calibrated bandwidth, every FLOP at the
calibrated peak, nothing else. What a framework does instead is fitted, per (model, format,
device, threads), from its decode sweep over depth D and batch B, with one term per kind of work
its kernels do, each priced by a quantity of the arithmetic and one fitted coefficient:

    t_step(D, B) = t_fixed + B · t_seq + A(D, B) / R_attn + k_mm · M(B) / G(B)

- t_fixed: what one step costs whatever D and B (dispatch, thread wake-ups, sampling).
- t_seq: what each sequence of the batch adds beyond its matmul rows and its attention (its
  embedding row, norms, the logits it copies and argmaxes, the cache bookkeeping): s/sequence.
- A = B · Σ_l ctx_l · 4 · H · h: attention FLOPs over the cached tokens (PaLM appendix B;
  `decode_step_attn_flops_predicted`); R_attn the fitted attention rate in FLOP/s. Within one
  model the KV bytes are a fixed multiple of A, so the same term prices them: its bytes-equivalent
  bandwidth is reported beside the calibrated copy bandwidth, the FLOP rate beside the attention
  kernel measured alone (`Peaks.attn_flop_s`); whichever counterpart is nearer says what bounds it.
- M(B) = B · 2 · active matmul params (`decode_step_matmul_flops_predicted`) priced at G(B), the
  GEMM FLOP/s this machine's calibration reached at M = B rows for the format's compute dtype
  (`Peaks.gemm_flop_s_by_m`, every power of two M to 64: at M = 1 that is reading the weights; on an AMX or
  AVX512 CPU it climbs steeply with M). k_mm is dimensionless: 1 means the framework's matmuls run
  as fast as the calibrated GEMM, the effective rate is G(B) / k_mm. Without a per-M calibration G
  is the flat calibrated peak.

No free curve: every column is an arithmetic quantity, every coefficient is ≥ 0 and reported beside
its physical counterpart. Least squares on relative error (scipy.optimize.nnls, Lawson & Hanson
1974). Held out: the deepest depth and the largest batch are predicted by a fit that never saw
them; interpolation: the middle depth and middle batch likewise. numpy and scipy, no torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

KNEE_PLATEAU_FRAC = 0.9  # measured knee: the smallest batch reaching 90 % of the best tok/s
TERMS = ("fixed", "seq", "attn", "gemm")


@dataclass(frozen=True)
class Point:
    """One decode measurement: the step's predicted work by kind, the calibrated GEMM rate at its
    batch, and its median time."""
    workload: str
    depth: int
    batch: int
    attn_flops: float  # A: B · Σ ctx · 4 · H · h, the attention FLOPs over the cached tokens
    matmul_flops: float  # M: B · 2 · active matmul params
    gemm_flop_s: float  # G(B): calibrated GEMM FLOP/s at M = B (or the flat calibrated peak)
    step_s: float
    kv_bytes: float = 0.0  # B · ctx · KV bytes per token: the attention term's bytes

    def __post_init__(self):
        if not (self.attn_flops >= 0 and self.matmul_flops > 0 and self.gemm_flop_s > 0 and self.step_s > 0
                and self.batch >= 1):
            raise ValueError(f"{self.workload}: attn_flops >= 0, matmul_flops, gemm_flop_s, step_s > 0 "
                             f"and batch >= 1 needed, got {self}")

    def columns(self) -> list[float]:
        """Returns the four terms' arithmetic quantities (what each coefficient multiplies)."""
        return [1.0, float(self.batch), self.attn_flops, self.matmul_flops / self.gemm_flop_s]


@dataclass(frozen=True)
class Fit:
    fixed_s: float
    seq_s: float  # per sequence of the batch
    attn_flop_s: float | None  # R_attn; None: the attention term fitted to 0 (no cost seen)
    gemm_scale: float | None  # k_mm; None: the matmul term fitted to 0
    n_points: int

    def coef(self) -> list[float]:
        return [self.fixed_s, self.seq_s, 1 / self.attn_flop_s if self.attn_flop_s else 0.0,
                self.gemm_scale or 0.0]

    def terms_s(self, p: Point) -> dict[str, float]:
        """Returns each term's seconds at one point."""
        return {t: c * x for t, c, x in zip(TERMS, self.coef(), p.columns(), strict=True)}

    def step_s(self, p: Point) -> float:
        """Returns the fitted step time."""
        return sum(self.terms_s(p).values())

    def rel_err(self, p: Point) -> float:
        """Returns (fitted − measured) / measured step time of one point."""
        return self.step_s(p) / p.step_s - 1

    def gemm_eff_flop_s(self, gemm_flop_s: float) -> float | None:
        """Returns the framework's effective matmul rate where the calibrated GEMM reaches gemm_flop_s."""
        return gemm_flop_s / self.gemm_scale if self.gemm_scale else None

    def knee_batch(self, matmul_flops_per_seq: float, gemm_flop_s: float) -> float | None:
        """Returns the batch whose matmul term equals the fixed term, at the GEMM rate gemm_flop_s
        (the largest batch's: the rate the matmuls tend to): t_fixed · G / (k_mm · M per sequence);
        None without a matmul term."""
        if not self.gemm_scale:
            return None
        return self.fixed_s * gemm_flop_s / (self.gemm_scale * matmul_flops_per_seq)


def fit(points: list[Point]) -> Fit:
    """Returns the least-squares Fit (relative error) of t_fixed, t_seq, R_attn and k_mm."""
    from scipy.optimize import nnls  # imported here (~0.8 s): a run that fits nothing does not pay it

    if len(points) < 2:
        raise ValueError(f"a fit needs at least 2 points, got {len(points)}")
    t = np.array([p.step_s for p in points], float)
    cols = np.array([p.columns() for p in points], float)
    scale = np.where(cols.max(axis=0) > 0, cols.max(axis=0), 1.0)  # columns from 1 to ~1e10: one scale
    x, _ = nnls(cols / scale / t[:, None], np.ones(len(t)))
    t0, seq, inv_attn, k = x / scale
    return Fit(float(t0), float(seq), float(1 / inv_attn) if inv_attn > 0 else None,
               float(k) if k > 0 else None, len(points))


def held_out(points: list[Point]) -> list[Point]:
    """Returns the points a held-out test predicts: those at the deepest depth and those at the
    largest batch (when the sweep has more than one of each)."""
    depths, batches = {p.depth for p in points}, {p.batch for p in points}
    return [p for p in points if (len(depths) > 1 and p.depth == max(depths))
            or (len(batches) > 1 and p.batch == max(batches))]


def _middle(values: set) -> int | None:
    """Returns the middle of at least 3 sorted values (the upper middle of an even count), or None."""
    v = sorted(values)
    return v[len(v) // 2] if len(v) >= 3 else None


def interpolated(points: list[Point]) -> list[Point]:
    """Returns the points an interpolation test predicts: those at the middle depth and at the
    middle batch (of 3 or more of each), never the ends."""
    md, mb = _middle({p.depth for p in points}), _middle({p.batch for p in points})
    return [p for p in points if (md is not None and p.depth == md) or (mb is not None and p.batch == mb)]


N_TERMS = len(TERMS)


def holdout_errors(points: list[Point], which=held_out) -> dict[str, float]:
    """Returns {workload: relative error} of the points `which` picks, predicted by a fit on the
    rest ({} when fewer points than terms remain to fit)."""
    out = which(points)
    train = [p for p in points if p not in out]
    if not out or len(train) < N_TERMS:
        return {}
    f = fit(train)
    return {p.workload: float(f.rel_err(p)) for p in out}


MISS = 0.15  # issue 27's bar: a held-out point predicted further off than this is a miss


@dataclass(frozen=True)
class Miss:
    """A held-out point the fit without it missed, with the term that failed and the measurement
    that shows it: what that term would have had to be at this point, against what it was fitted."""
    workload: str
    rel_err: float  # (predicted − measured) / measured, as holdout_rel_err
    term: str  # "attn" (the deepest depth) or "batch" (the largest batch: per-sequence + matmuls)
    measured_s: float  # the step time measured
    others_s: float  # the fitted terms this point does not test, at this point
    term_fit_s: float  # the tested term(s) as the fit without this point priced them
    implied: float  # the tested term's rate the measurement implies (R_attn FLOP/s; batch: s/seq)
    fitted: float | None  # the same rate as fitted without this point (None: term fitted to 0)
    kv_bytes: float = 0.0  # the KV cache this point's attention reads (0: not known)

    @property
    def term_measured_s(self) -> float:
        """Returns the seconds the measurement leaves for the tested term(s)."""
        return self.measured_s - self.others_s

    def text(self) -> str:
        """Returns one line: the miss, the failing term and its evidence."""
        if self.term == "attn":
            rate = (f"R_attn {self.implied / 1e9:.3g} GFLOP/s implied here against "
                    + (f"{self.fitted / 1e9:.3g} fitted on the shallower depths" if self.fitted
                       else "no attention cost fitted on the shallower depths"))
            what = "attention over the cache" + (f" ({self.kv_bytes / 1e6:.0f} MB of KV)" if self.kv_bytes else "")
        else:
            rate = (f"{self.implied * 1e3:.3g} ms per sequence implied here against "
                    f"{self.fitted * 1e3:.3g} ms fitted on the smaller batches" if self.fitted is not None else "")
            what = "the batch terms (per-sequence cost and matmuls)"
        return (f"{self.workload}: {100 * self.rel_err:+.1f} % — {what}: measured {self.measured_s * 1e3:.2f} ms/step "
                f"leaves {self.term_measured_s * 1e3:.2f} ms to this term, the fit without this point priced "
                f"{self.term_fit_s * 1e3:.2f} ms" + (f"; {rate}" if rate else ""))


def diagnose(points: list[Point], bar: float = MISS) -> list[Miss]:
    """Returns a Miss per held-out point predicted beyond ±bar by the fit without the held-out
    points: a depth point's miss is the attention term's (the fitted other terms are subtracted from
    the measured step and the attention FLOPs divided by what is left), a batch point's the batch
    terms' (B · t_seq + matmuls: what is left per sequence)."""
    out_pts = held_out(points)
    train = [p for p in points if p not in out_pts]
    if not out_pts or len(train) < N_TERMS:
        return []
    f = fit(train)
    deepest = max(p.depth for p in points)
    misses = []
    for p in out_pts:
        err = f.rel_err(p)
        if abs(err) <= bar:
            continue
        terms = f.terms_s(p)
        if p.depth == deepest and p.depth > 0 and p.attn_flops > 0:
            tested = ("attn",)
            others = sum(v for k, v in terms.items() if k not in tested)
            left = p.step_s - others
            implied = p.attn_flops / left if left > 0 else float("inf")
            misses.append(Miss(p.workload, float(err), "attn", p.step_s, others, terms["attn"], implied,
                               f.attn_flop_s, p.kv_bytes))
        else:
            tested = ("seq", "gemm")
            others = sum(v for k, v in terms.items() if k not in tested)
            left = p.step_s - others
            fitted = (terms["seq"] + terms["gemm"]) / p.batch
            misses.append(Miss(p.workload, float(err), "batch", p.step_s, others,
                               terms["seq"] + terms["gemm"], left / p.batch, fitted))
    return misses


def plateau_knee(tok_s_by_batch: dict[int, float], frac: float = KNEE_PLATEAU_FRAC) -> int | None:
    """Returns the smallest batch whose tok/s reaches frac of the best; None with under 2 batches."""
    if len(tok_s_by_batch) < 2:
        return None
    top = max(tok_s_by_batch.values())
    return min(b for b, v in tok_s_by_batch.items() if v >= frac * top)


def points_from_records(recs: list[dict]) -> list[Point]:
    """Returns the decode Points of ok tg records carrying the step's predicted work by kind
    (records older than schema 4 carry none: they are not fitted)."""
    out = []
    for r in recs:
        if r.get("status") != "ok" or not str(r.get("workload", "")).startswith("tg"):
            continue
        a, m, tok_s = (r.get(k) for k in ("decode_step_attn_flops_predicted",
                                          "decode_step_matmul_flops_predicted", "decode_tok_s"))
        g = r.get("decode_gemm_flop_s") or r.get("peak_flop_s")
        if not all(_num(v) is not None and v > 0 for v in (m, tok_s, g)) or _num(a) is None:
            continue
        batch = int(r.get("batch") or 1)
        b, w = _num(r.get("decode_step_bytes_predicted")), _num(r.get("weights_bytes_predicted"))
        out.append(Point(r["workload"], int(r.get("depth") or 0), batch, float(a), float(m), float(g),
                         batch / tok_s, max(b - w, 0.0) if b is not None and w is not None else 0.0))
    return out


def annotate(recs: list[dict]) -> None:
    """Adds the fit's fields to the decode records of one variant (one model, format, device and
    thread count), in place: fit_* coefficients and what they mean at this record's point, each
    point's fit_rel_err, holdout_rel_err on the held-out points, interp_rel_err on the middle ones,
    and the knees measured at depth 0."""
    pts = points_from_records(recs)
    if len(pts) <= N_TERMS:  # four terms: no more points than that fit exactly and test nothing
        return
    f, hold, mid = fit(pts), holdout_errors(pts), holdout_errors(pts, interpolated)
    by_name = {p.workload: p for p in pts}
    base = {p.batch: p for p in pts if p.depth == 0}
    knee = plateau_knee({b: b / p.step_s for b, p in base.items()})
    one, top = base.get(1), max(pts, key=lambda p: p.batch)
    fit_knee = f.knee_batch(one.matmul_flops, top.gemm_flop_s) if one is not None else None
    for r in recs:
        p = by_name.get(r.get("workload")) if r.get("status") == "ok" else None
        if p is None:
            continue
        terms = f.terms_s(p)
        r.update(fit_fixed_s=f.fixed_s, fit_seq_s=f.seq_s, fit_attn_flop_s=f.attn_flop_s,
                 fit_gemm_scale=f.gemm_scale, fit_gemm_flop_s=f.gemm_eff_flop_s(p.gemm_flop_s),
                 fit_points=f.n_points, fit_rel_err=float(f.rel_err(p)), fit_step_s=f.step_s(p),
                 fit_terms_s=terms)
        if f.attn_flop_s and p.attn_flops > 0 and p.kv_bytes > 0:
            # the attention term's bytes: the bandwidth at which reading the KV would cost its time
            r["fit_kv_bandwidth_bytes_s"] = f.attn_flop_s * p.kv_bytes / p.attn_flops
        if one is not None and r.get("weights_bytes_predicted"):
            t1 = sum(v for k, v in f.terms_s(one).items() if k in ("fixed", "gemm"))
            if t1 > 0:
                r["fit_bandwidth_bytes_s"] = r["weights_bytes_predicted"] / t1
        if p.workload in hold:
            r["holdout_rel_err"] = hold[p.workload]
        if p.workload in mid:
            r["interp_rel_err"] = mid[p.workload]
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
        top = max(tg, key=lambda r: (int(r.get("batch") or 1), -int(r.get("depth") or 0)))
        deep = max(tg, key=lambda r: (int(r.get("depth") or 0), -int(r.get("batch") or 1)))
        row.update(params=_num(r0.get("params")), n_layers=_num(r0.get("n_layers")),
                   fixed_s=_num(r0.get("fit_fixed_s")), seq_s=_num(r0.get("fit_seq_s")),
                   bandwidth_bytes_s=_num(r0.get("fit_bandwidth_bytes_s")),
                   kv_bandwidth_bytes_s=_num(deep.get("fit_kv_bandwidth_bytes_s")),
                   attn_flop_s=_num(r0.get("fit_attn_flop_s")),
                   attn_cal_flop_s=_num(r0.get("attn_flop_s_calibrated")),
                   gemm_scale=_num(r0.get("fit_gemm_scale")),
                   gemm1_flop_s=_num(r0.get("fit_gemm_flop_s")),
                   gemm1_cal_flop_s=_num(r0.get("decode_gemm_flop_s")) or _num(r0.get("peak_flop_s")),
                   gemv_bytes_s=_num(r0.get("decode_gemv_bytes_s")),
                   gemm_top_flop_s=_num(top.get("fit_gemm_flop_s")),
                   gemm_top_cal_flop_s=_num(top.get("decode_gemm_flop_s")) or _num(top.get("peak_flop_s")),
                   weights_bytes=_num(r0.get("weights_bytes_predicted")),
                   peak_flop_s=_num(top.get("fit_gemm_flop_s")), bandwidth_cal_bytes_s=bw_cal,
                   step0_s=_num(r0.get("fit_step_s")),
                   measured0_s=(r0.get("batch") or 1) / r0["decode_tok_s"],
                   knee_predicted=_num(r0.get("knee_batch_predicted")),
                   knee_fit=_num(r0.get("knee_batch_fit")),
                   knee_plateau=_num(r0.get("knee_batch_plateau")),
                   sol0=_num(r0.get("decode_sol_frac")),
                   max_batch=max(int(r.get("batch") or 1) for r in tg),
                   holdout={r["workload"]: r["holdout_rel_err"] for r in tg
                            if _num(r.get("holdout_rel_err")) is not None},
                   interp={r["workload"]: r["interp_rel_err"] for r in tg
                           if _num(r.get("interp_rel_err")) is not None},
                   # what each point rests on: timed steps and the CI its median reached
                   precision={r["workload"]: (r.get("decode_steps_timed"), _num(r.get("decode_ci95_rel")))
                              for r in tg})
        row["misses"] = diagnose(points_from_records(tg))
        errs = [r["fit_rel_err"] ** 2 for r in tg if _num(r.get("fit_rel_err")) is not None]
        row["rms_rel_err"] = float(np.sqrt(np.mean(errs))) if errs else None
        # overhead: the fixed time beyond reading the weights at the calibrated bandwidth
        w_s = row["weights_bytes"] / bw_cal if row["weights_bytes"] and bw_cal else None
        row["weights_s"] = w_s
        # t_fixed is overhead alone when the matmul term prices the weights' reads (a per-M
        # calibration: G(1) is a weight read); with a flat peak it also holds the weights' time
        per_m = _num(r0.get("decode_gemm_flop_s")) is not None
        row["overhead_s"] = (row["fixed_s"] if per_m else max(row["fixed_s"] - w_s, 0.0)) \
            if row["fixed_s"] is not None and w_s else None
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
    from scipy.optimize import nnls

    (c, a), _ = nnls(np.stack([layers / t, bytes_ / t], axis=1), np.ones_like(t))
    return float(c), float(a)


def ladder_holdout(rows: list[dict]) -> list[dict]:
    """Returns, per (host, device, format, threads) run on 3 or more models, the batch-1 depth-0
    step time of the largest model predicted from the others by

        t = t_layer · layers + bytes / BW_eff                       (rel_err)

    and, where every rung carries the calibrated weight stream at its hidden size
    (`decode_gemv_bytes_s`), by the alternative tried against it

        t = t_layer · layers + k_bw · bytes / S(width)              (rel_err_stream)

    k_bw dimensionless (1: weights read as fast as the calibration's M = 1 F.linear at that width).
    The second is reported, not used: on the Zen 3 EPYC it read −40 % (bf16) and −25 % (gguf-q4_0)
    where the flat fit read +13 % and −4 % (docs/arith-vs-measurement.md): the calibrated stream
    grows up to 3.4x from 512 to 2048 wide, the models' own reads far less. On the AVX-512 EPYC it
    read −8 % and −10 % where the flat fit read +12 % and +30 %: neither form transfers."""
    by: dict[tuple, list[dict]] = {}
    for r in rows:
        by.setdefault((r["host"], r["device"], r["format"], r["threads"]), []).append(r)
    out = []
    for (host, device, fmt, threads), rs in by.items():
        pts = []
        for r in rs:
            p0 = next((p for p in r["points"] if p["depth"] == 0 and p["batch"] == 1 and p["bytes"]), None)
            if p0 and r.get("params") and r.get("n_layers"):
                pts.append((r["params"], r["model"], r["n_layers"], p0["bytes"], 1 / p0["tok_s"],
                            r.get("gemv_bytes_s")))
        if len(pts) < 3:
            continue
        pts.sort(key=lambda p: p[0])
        train, last = pts[:-1], pts[-1]
        layers, bytes_, t = (np.array([p[i] for p in train], float) for i in (2, 3, 4))
        c, a = fit_layers(layers, bytes_, t)
        row = {"host": host, "device": device, "format": fmt, "threads": threads,
               "fitted_on": [p[1] for p in train], "held_out": last[1], "layer_s": c,
               "bandwidth_bytes_s": 1 / a if a > 0 else None,
               "rel_err": (c * last[2] + a * last[3]) / last[4] - 1,
               "rel_err_stream": None, "stream_scale": None, "stream_bytes_s": {}}
        if all(p[5] for p in pts):
            stream = np.array([p[5] for p in train], float)
            cs, k = fit_layers(layers, bytes_ / stream, t)
            row.update(rel_err_stream=(cs * last[2] + k * last[3] / last[5]) / last[4] - 1, stream_scale=k,
                       stream_bytes_s={p[1]: p[5] for p in pts})
        out.append(row)
    return out
