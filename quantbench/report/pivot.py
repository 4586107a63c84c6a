"""The analysis behind the report: one row per variant (model × host × device × format) from its
workload records, Δppl against the group's reference on common windows, the Pareto set, the
calibrated peaks, and the verdicts drawn from them. Pure data in, data out; report.py renders it.

Δppl compares a variant with the reference format on the windows both scored (the common prefix
of their `window_nll` lists), since a variant may stop early when its time budget runs out.
A speed-of-light fraction is measured ÷ predicted tok/s (arith.sol, the one place that computes it,
also for a record that lacks it but carries both figures).
"""
from __future__ import annotations

import math
import numbers

from quantbench.arith.sol import sol_frac
from quantbench.core.formats import COMPILED, FORMATS, REFERENCE_ORDER, SAME_NUMBER_FORMAT
from quantbench.core.suite import Workload

OVERHEAD_BOUND_SOL = 0.30  # decode below 30 % of its bandwidth roofline: Python/launch overhead rules
CROSS_BACKEND_TOL_PCT = 0.5  # fp16 (transformers) vs gguf-f16 (llama.cpp) should agree this closely
VARIANT = ("model", "host", "device", "format")
MB = 1e6


def num(v) -> float | None:
    """Returns v as a finite float, or None (NaN, None, strings, lists)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return None
    return float(v) if math.isfinite(v) else None


def first(recs: list[dict], col: str):
    """Returns the first present (non-NaN, non-empty) value of col among recs."""
    for r in recs:
        v = r.get(col)
        if v is not None and v == v and v != "":
            return v
    return None


def _text(v) -> str | None:
    """Returns v when it is a non-empty string (pandas fills absent text fields with NaN), else None."""
    return v if isinstance(v, str) and v else None


def prepare(df):
    """Returns df with the identity columns present, a host column, and reruns superseded."""
    df = df.copy()
    for c in ("model", "device", "format", "workload", "status", "reason"):
        if c not in df:
            df[c] = ""
    df["host"] = df["env.host"].fillna("") if "env.host" in df else ""
    if "node_kind" in df:  # a fleet's node kinds are machines of their own, even on one host
        kind = df["node_kind"].fillna("").astype(str)
        df["host"] = df["host"].astype(str) + kind.map(lambda k: f" [{k}]" if k else "")
    if "timestamp" in df:
        df = df.sort_values("timestamp", kind="stable", na_position="first")
    return df.drop_duplicates(subset=[*VARIANT, "workload"], keep="last")


def _roof_point(r: dict, n_tokens: float, tok_s) -> tuple[float, float] | None:
    """Returns (FLOP/byte, achieved FLOP/s) of one workload record; the intensity falls back to
    n_tokens × flops_per_token / weights_bytes (weights dominate traffic at small batch)."""
    flops, tok_s = num(r.get("flops_per_token")), num(tok_s)
    if flops is None or tok_s is None:
        return None
    ai = num(r.get("arith_intensity"))
    if ai is None and num(r.get("weights_bytes")):
        ai = n_tokens * flops / r["weights_bytes"]
    return None if ai is None else (ai, flops * tok_s)


def _variant_row(key: tuple, recs: list[dict]) -> dict:
    """Returns one table row from every workload record of one variant."""
    row = dict(zip(VARIANT, key, strict=True))
    statuses = {r["status"] for r in recs}
    row["status"] = ("ok" if statuses == {"ok"} else "partial" if "ok" in statuses
                     else "failed" if "failed" in statuses else "skipped")
    row["problems"] = [(r["workload"], r["status"], r.get("reason") or "")
                       for r in recs if r["status"] != "ok"]
    by_reason: dict[str, list[str]] = {}
    for w, _, why in row["problems"]:
        by_reason.setdefault(why, []).append(w)
    row["reason"] = (next(iter(by_reason)) if len(by_reason) == 1 and "ok" not in statuses else
                     "; ".join(f"{', '.join(ws)}: {why}" for why, ws in by_reason.items()))
    for col in ("bits_per_weight", "weights_bytes_predicted", "kv_cache_bytes_predicted", "backend",
                "kernel", "group_size", "suite", "kernel_fallback", "crash_signal", "crash_upstream"):
        row[col] = first(recs, col)
    recs = [r for r in recs if r["status"] == "ok"]  # measurements only from workloads that ran
    for col in ("weights_bytes", "load_s", "build_s"):
        row[col] = first(recs, col)
    if row["bits_per_weight"] is None and row["format"] in FORMATS:
        row["bits_per_weight"] = FORMATS[row["format"]].bits_per_weight
    mix = {c.split(".", 1)[1]: int(first(recs, c)) for c in (recs[0] if recs else {})
           if c.startswith("gguf_type_mix.") and num(first(recs, c))}
    row["type_mix"] = ", ".join(f"{t}×{n}" for t, n in sorted(mix.items()))
    rss = [r for r in recs if num(r.get("peak_rss_bytes"))]
    top = max(rss, key=lambda r: r["peak_rss_bytes"]) if rss else {}
    row["peak_rss_bytes"] = top.get("peak_rss_bytes")
    row["kv_cache_bytes"] = num(top.get("kv_cache_bytes")) or max(
        (num(r.get("kv_cache_bytes")) or 0 for r in recs), default=0) or None
    dev = [num(r.get("peak_device_bytes")) for r in recs if num(r.get("peak_device_bytes"))]
    row["peak_device_bytes"] = max(dev) if dev else None
    by_kind: dict[str, list] = {"pp": [], "tg": [], "ppl": [], "batched": []}
    parsed = []
    for r in recs:
        try:
            parsed.append((Workload.parse(r["workload"]), r))
        except ValueError:
            continue
    # sweeps: the table shows depth 0 on the most threads swept (quality runs at the first count)
    most = max((w.threads for w, _ in parsed), default=0)
    for w, r in parsed:
        if w.kind in by_kind and not w.depth and (w.threads == most or w.kind == "ppl"):
            by_kind["batched" if w.batch > 1 else w.kind].append((w.tokens if w.batch == 1 else w.batch, r))
    row["roof_points"] = []
    row["prefill_sol_frac"] = row["prefill_sol_workload"] = row["prefill_bound"] = None
    for n, r in sorted(by_kind["pp"], key=lambda t: t[0]):  # the longest prompt's SoL and bound win
        row[f"prefill_tok_s@pp{n}"] = num(r.get("prefill_tok_s"))
        pt = _roof_point(r, num(r.get("n_prompt")) or n, r.get("prefill_tok_s"))
        row["roof_points"] += [("prefill", *pt)] if pt else []
        frac = sol_frac(r, "prefill_sol_frac")
        if frac is not None:
            row["prefill_sol_frac"], row["prefill_sol_workload"] = frac, f"pp{n}"
        row["prefill_bound"] = _text(r.get("bound")) or row["prefill_bound"]
    for b, r in by_kind["batched"]:
        row[f"decode_tok_s@b{b}"] = num(r.get("decode_tok_s"))
    tg = dict(max(by_kind["tg"], key=lambda t: t[0])[1]) if by_kind["tg"] else {}
    for col in ("decode_tok_s", "decode_tok_s_predicted", "decode_p50_s",
                "decode_p90_s", "decode_p99_s", "decode_samples_s", "engine_decode_s", "harness_decode_s",
                "decode_energy_j_per_tok", "decode_power_w", "gpu_idle_w", "energy_reason"):
        row[col] = tg.get(col)
    busy = [num(r.get("others_busy_pct")) for _, r in by_kind["pp"] + by_kind["tg"] + by_kind["batched"]]
    row["others_busy_pct"] = max((b for b in busy if b is not None), default=None)  # core.load
    row["decode_sol_frac"] = sol_frac(tg, "decode_sol_frac")
    row["decode_sol_frac_spec"] = sol_frac(tg, "decode_sol_frac_spec")
    row["decode_bound"] = _text(tg.get("bound"))
    row["sol_suspect_reason"] = first(recs, "sol_suspect_reason")  # arith.sol: roofline inputs read low
    row["ttft_s"] = tg.get("ttft_s") if num(tg.get("ttft_s")) else first(recs, "ttft_s")
    pt = _roof_point(tg, 1, tg.get("decode_tok_s")) if tg else None
    row["roof_points"] += [("decode", *pt)] if pt else []
    q = dict(max(by_kind["ppl"], key=lambda t: t[0])[1]) if by_kind["ppl"] else {}
    for col in ("ppl", "ppl_stderr", "ppl_full", "ppl_windows", "window_nll", "n_ctx", "window_tokens",
                "ppl_partial"):
        row[col] = q.get(col)
    for col in ("kld_reference", "kld_mean", "kld_p99", "top1_agree", "rms_dp"):
        row[col] = q.get(col) if q.get(col) is not None and q.get(col) == q.get(col) else first(recs, col)
    return row


def reference_format(rows: list[dict]) -> str | None:
    """Returns the format Δppl is measured against: the KLD reference, else fp32/bf16/fp16/gguf-f16,
    else the widest format with a ppl."""
    have = {r["format"]: r for r in rows if num(r.get("ppl")) or isinstance(r.get("window_nll"), list)}
    refs = [r["kld_reference"] for r in rows if isinstance(r.get("kld_reference"), str)]
    for name in ([max(set(refs), key=refs.count)] if refs else []) + list(REFERENCE_ORDER):
        if name in have:
            return name
    return max(have, key=lambda f: num(have[f].get("bits_per_weight")) or 0) if have else None


def tokens_per_window(nll: list, ppl, n_ctx, window_tokens=None) -> float | None:
    """Returns scored tokens per window: the record's window_tokens; for older records from
    ppl = exp(Σ nll / (windows × tokens)), else n_ctx / 2."""
    if num(window_tokens):
        return window_tokens
    if nll and num(ppl) and ppl > 1:
        t = sum(nll) / (len(nll) * math.log(ppl))
        return round(t) if t > 10 else t  # ppl is stored rounded; window sizes are whole tokens
    return num(n_ctx) and n_ctx / 2


def common_windows(a: dict, b: dict) -> tuple[list, list, float] | None:
    """Returns (a's window NLLs, b's, scored tokens per window) over the common prefix of both
    window_nll lists, or None without both lists or a token count."""
    na, nb = a.get("window_nll"), b.get("window_nll")
    if not (isinstance(na, list) and isinstance(nb, list) and na and nb):
        return None
    k = min(len(na), len(nb))
    t = (tokens_per_window(nb, b.get("ppl"), b.get("n_ctx"), b.get("window_tokens"))
         or tokens_per_window(na, a.get("ppl"), a.get("n_ctx"), a.get("window_tokens")))
    return (na[:k], nb[:k], t) if t else None


def dppl_common_pct(a: dict, b: dict) -> tuple[float | None, int | None]:
    """Returns (100 × (ppl_a / ppl_b − 1), windows) on the common prefix of both window_nll lists;
    with no window lists, the recorded ppls and None windows."""
    common = common_windows(a, b)
    if common:
        na, nb, t = common
        k = len(na)
        return 100 * (math.exp((sum(na) - sum(nb)) / (k * t)) - 1), k
    if num(a.get("ppl")) and num(b.get("ppl")):
        return 100 * (a["ppl"] / b["ppl"] - 1), None
    return None, None


def ppl_on_windows(r: dict, k: int) -> float | None:
    """Returns r's perplexity over its first k windows (exp of their NLL per scored token), or None."""
    nll = r.get("window_nll")
    if not isinstance(nll, list) or len(nll) < k or k < 1:
        return None
    t = tokens_per_window(nll, r.get("ppl"), r.get("n_ctx"), r.get("window_tokens"))
    return math.exp(sum(nll[:k]) / (k * t)) if t else None


def quality_metric(rows: list[dict]) -> str | None:
    """Returns the column that ranks quality in a group: dppl_pct when any variant has it, else kld_mean."""
    for col in ("dppl_pct", "kld_mean"):
        if any(num(r.get(col)) is not None for r in rows):
            return col
    return None


def pareto_set(rows: list[dict], metric: str | None) -> list[str]:
    """Returns formats no other variant beats on both weights_bytes and the quality metric (lower)."""
    pts = [(r["format"], num(r.get("weights_bytes")), num(r.get(metric))) for r in rows] if metric else []
    pts = [p for p in pts if p[1] is not None and p[2] is not None]
    return [f for f, s, q in pts if not any(s2 <= s and q2 <= q and (s2 < s or q2 < q) for _, s2, q2 in pts)]


def format_order(name: str) -> tuple:
    """Returns a sort key placing formats in formats-table order, unknown names last."""
    order = list(FORMATS)
    return (order.index(name), name) if name in order else (len(order), name)


def pivot(df):
    """Returns one row per (model, host, device, format) with per-workload columns, Δppl vs the
    group's reference on common windows, the Pareto and overhead-bound flags; skipped and failed
    variants stay."""
    import pandas as pd

    df = prepare(df)
    rows = [_variant_row(k, g.to_dict("records"))
            for k, g in df.groupby(list(VARIANT), sort=False, dropna=False)]
    for grp in groups(rows).values():
        ref = reference_format(grp)
        ref_row = next((r for r in grp if r["format"] == ref), None)
        for r in grp:
            r["reference"] = ref
            r["dppl_pct"], r["dppl_windows"] = dppl_common_pct(r, ref_row) if ref_row else (None, None)
            r["windows_max"] = max(len(x["window_nll"]) if isinstance(x.get("window_nll"), list) else 0
                                   for x in (r, ref_row or {}))
        # The ppl people compare: over the windows every variant of the group scored, so a variant
        # the quality budget cut short (ppl_partial) is not compared on other text than the rest.
        lens = [len(r["window_nll"]) for r in grp if isinstance(r.get("window_nll"), list) and r["window_nll"]]
        k = min(lens, default=0)
        for r in grp:
            r["ppl_common"] = ppl_on_windows(r, k) if k else num(r.get("ppl"))
            r["ppl_common_windows"] = k or None
        front = pareto_set(grp, quality_metric(grp))
        by_format = {r["format"]: r for r in grp}
        for r in grp:
            r["pareto"] = r["format"] in front
            r["overhead_bound"] = (num(r.get("decode_sol_frac")) or 1.0) < OVERHEAD_BOUND_SOL
            # a +compiled twin beside its eager format: how much the static cache + compile bought
            eager = by_format.get(r["format"].removesuffix(COMPILED), {})
            twin = r["format"].endswith(COMPILED) and num(eager.get("decode_tok_s"))
            r["decode_vs_eager"] = r["decode_tok_s"] / eager["decode_tok_s"] \
                if twin and num(r.get("decode_tok_s")) else None
    rows.sort(key=lambda r: (str(r["model"]), str(r["host"]), str(r["device"]), format_order(r["format"])))
    return pd.DataFrame(rows)


def groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Returns rows grouped by (model, host, device), the scope of a verdict and its plots."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault((r["model"], r["host"], r["device"]), []).append(r)
    return out


def verdicts(p) -> list[str]:
    """Returns one verdict sentence group per (model, host, device): best for memory, speed,
    quality, and the Pareto set."""
    out = []
    for (model, host, device), grp in groups(p.to_dict("records")).items():
        ok = [r for r in grp if r["status"] in ("ok", "partial")]
        where = f"{model} on {device}" + (f" ({host})" if p["host"].nunique() > 1 else "")
        parts = []
        sized = [r for r in ok if num(r.get("weights_bytes"))]
        if sized:
            r = min(sized, key=lambda r: r["weights_bytes"])
            parts.append(f"smallest weights: {r['format']} ({r['weights_bytes'] / MB:.1f} MB)")
        fast = [r for r in ok if num(r.get("decode_tok_s"))]
        if fast:
            r = max(fast, key=lambda r: r["decode_tok_s"])
            parts.append(f"fastest decode: {r['format']} ({r['decode_tok_s']:.1f} tok/s)")
        metric = quality_metric(grp)
        scored = [r for r in ok if metric and num(r.get(metric)) is not None]
        if scored:
            r = min(scored, key=lambda r: r[metric])
            unit = ("reference" if r["format"] == r.get("reference") else f"{r[metric]:+.2f} % ppl vs "
                    f"{r['reference']}" if metric == "dppl_pct" else f"KLD {r[metric]:.4f}")
            text = f"best quality: {r['format']} ({unit})"
            quant = [q for q in scored if q["format"] != r["reference"]]
            if r["format"] == r.get("reference") and quant:
                q = min(quant, key=lambda q: q[metric])
                unit = " %" if metric == "dppl_pct" else ""
                text += f", closest to it: {q['format']} ({q[metric]:+.2f}{unit})"
            parts.append(text)
        front = [r["format"] for r in grp if r.get("pareto")]
        if front:
            parts.append("Pareto set (quality vs size): " + ", ".join(front))
        bad = [r["format"] for r in grp if r["status"] in ("failed", "skipped")]
        if bad:
            parts.append(f"not measured: {', '.join(bad)}")
        out.append(f"{where}: " + "; ".join(parts) + "." if parts else f"{where}: no variant ran.")
    return out


def cross_backend(p) -> list[str]:
    """Returns per device the fp16 (or fp32) vs gguf-f16 ppl difference on common windows, ✓ within 0.5 %."""
    out = []
    for (_, _, device), grp in groups(p.to_dict("records")).items():
        by = {r["format"]: r for r in grp}
        hf = next((by[f] for f in ("fp16", "fp32") if f in by and num(by[f].get("ppl"))), None)
        gg = by.get("gguf-f16")
        if hf is None or gg is None or num(gg.get("ppl")) is None:
            continue
        d, k = dppl_common_pct(gg, hf)
        if d is None:
            continue
        mark = "✓" if abs(d) <= CROSS_BACKEND_TOL_PCT else "✗"
        on = f"{k} common windows" if k else "recorded ppl"
        out.append(f"{device}: gguf-f16 vs {hf['format']} ppl differs by {d:+.2f} % on {on} "
                   f"{mark} (tolerance {CROSS_BACKEND_TOL_PCT} %)")
    return out


def paired_dppl(a: dict, b: dict) -> tuple[float, float, int] | None:
    """Returns (100 × (ppl_a / ppl_b − 1), its 95 % CI half-width in %, windows) over the common
    windows of both window_nll lists, or None with fewer than 3 common windows. The noise is
    paired: each window's NLL difference, so text that is hard for both formats cancels
    (Student's t over the per-window mean log-ppl difference, scipy.stats.t)."""
    from scipy import stats

    common = common_windows(a, b)
    if not common or len(common[0]) < 3:
        return None
    na, nb, t = common
    k = len(na)
    d = [(x - y) / t for x, y in zip(na, nb, strict=True)]
    mean = sum(d) / k
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (k - 1))
    half = float(stats.t.ppf(0.975, k - 1)) * sd / math.sqrt(k)
    # exp(mean ± half) − 1, reported as the centre and the larger side of the interval
    return 100 * (math.exp(mean) - 1), 100 * max(math.exp(mean + half) - math.exp(mean),
                                                 math.exp(mean) - math.exp(mean - half)), k


def same_number_format(p) -> list[str]:
    """Returns per device one line for each pair of formats in SAME_NUMBER_FORMAT that both have
    window NLLs: their ppl difference on common windows with its paired 95 % CI, and either
    "agree within noise" or what else the two formats do differently."""
    out = []
    for (_, _, device), grp in groups(p.to_dict("records")).items():
        by = {r["format"]: r for r in grp}
        for pair in SAME_NUMBER_FORMAT:
            got = pair.a in by and pair.b in by and paired_dppl(by[pair.b], by[pair.a])
            if not got:
                continue
            d, ci, k = got
            verdict = ("✓ agree within noise" if abs(d) <= ci else
                       f"✗ differ beyond noise: {pair.differs}")
            out.append(f"{device}: {pair.b} vs {pair.a} ({pair.number_format}): ppl {d:+.2f} % "
                       f"± {ci:.2f} % (95 % CI, paired over {k} windows) {verdict}")
    return out


# Calibrated rates that are not a dtype's GEMM peak (hardware.calibrate: the attention kernel alone,
# GEMM at the decode batch's small M): under their dtype's name they overwrote the peak in the
# header and drew a bf16 roof at the attention kernel's 1.7 GFLOP/s.
DECODE_SHAPED = ("attn_flop_s", "gemm_flop_s_by_m")


def peaks(recs: list[dict]) -> tuple[float | None, dict[str, float]]:
    """Returns (bandwidth bytes/s, {dtype: peak GEMM FLOP/s}) from optional calib.*/peaks.*/env.*
    fields (the decode-shaped figures, DECODE_SHAPED, are not peaks)."""
    bw, flops = None, {}

    def walk(path: str, v):
        nonlocal bw
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{path}.{k}", x)
        elif num(v) is not None:
            if path.endswith("bandwidth_bytes_s"):
                bw = bw or v
            elif "flop_s" in path and not any(w in path for w in DECODE_SHAPED):
                dtype = path.split("flop_s", 1)[1].strip("._") or "peak"
                flops.setdefault(dtype, v)

    for r in recs:
        for c, v in r.items():
            in_env = c.startswith("env.") and any(w in c for w in ("bandwidth", "flop", "peak"))
            if c.startswith(("calib.", "peaks.")) or in_env:
                walk(c, v)
    return bw, flops


COMPARED = {"tg": "decode_tok_s", "pp": "prefill_tok_s"}  # the figure a machine comparison shows per kind


def machine_of(r: dict) -> str:
    """Returns the machine a record names: its fleet node kind, else its host (record or env)."""
    return _text(r.get("node_kind")) or _text(r.get("host")) or _text(r.get("env.host")) or \
        _text((r.get("env") or {}).get("host") if isinstance(r.get("env"), dict) else None) or ""


def machine_comparison(recs: list[dict]) -> list[dict]:
    """Returns one row per (model, format, workload, machine, device) for every timed workload that
    ran ok on two machines (or devices) or more: the measured tok/s, the tok/s that machine's
    roofline predicts, and their ratio (SoL), since each machine has its own peaks. A later record
    supersedes an earlier one of the same machine; rows are in model, format, workload, machine order."""
    latest: dict[tuple, dict] = {}
    for r in sorted(recs, key=lambda r: str(r.get("timestamp") or "")):
        if r.get("status") != "ok":
            continue
        try:
            kind = Workload.parse(str(r.get("workload"))).kind
        except ValueError:
            continue
        if kind in COMPARED and num(r.get(COMPARED[kind])) is not None:
            latest[(r["model"], r["format"], r["workload"], machine_of(r), r["device"])] = r
    by_variant: dict[tuple, list[tuple[str, str, dict]]] = {}
    for (model, fmt, workload, machine, device), r in latest.items():
        by_variant.setdefault((model, fmt, workload), []).append((machine, device, r))
    rows = []
    for (model, fmt, workload), found in by_variant.items():
        if len(found) < 2:
            continue
        metric = COMPARED[Workload.parse(workload).kind]
        for machine, device, r in found:
            rows.append({"model": model, "format": fmt, "device": device, "workload": workload,
                         "machine": machine, "metric": metric, "measured": num(r[metric]),
                         "predicted": num(r.get(f"{metric}_predicted")),
                         "sol_frac": sol_frac(r, metric.replace("_tok_s", "_sol_frac"))})
    rows.sort(key=lambda x: (str(x["model"]), format_order(x["format"]), x["workload"], x["machine"],
                             str(x["device"])))
    return rows
