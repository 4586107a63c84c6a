"""The report: one pivot of the records (a row per model × host × device × format) rendered as
HTML (header, verdict, sortable table, inline SVG plots), markdown and CSV.

`quantbench report RESULTS... -o reports/NAME.html` writes NAME.html, NAME.md and NAME.csv.
The HTML has no external assets: CSS, the sort script and the plots are inline.
Δppl compares a variant with the reference format on the windows both scored (the common prefix
of their `window_nll` lists), since a variant may stop early when its time budget runs out.
"""
from __future__ import annotations

import math
import numbers
import re
from html import escape
from pathlib import Path

from quantbench import plots
from quantbench.errors import UserError
from quantbench.formats import FORMATS
from quantbench.records import LIBRARIES

OVERHEAD_BOUND_SOL = 0.30  # decode below 30 % of its bandwidth roofline: Python/launch overhead rules
CROSS_BACKEND_TOL_PCT = 0.5  # fp16 (transformers) vs gguf-f16 (llama.cpp) should agree this closely
REFERENCE_ORDER = ("fp32", "bf16", "fp16", "gguf-f16")
VARIANT = ("model", "host", "device", "format")
SMOLLM_NOTE = "the FP16 baseline is dequantized from a Q4_1 GGUF and carries Q4_1 rounding"
_WORKLOAD = re.compile(r"^(pp|tg|ppl)(\d+)$")
_MB = 1e6


def _num(v) -> float | None:
    """Returns v as a finite float, or None (NaN, None, strings, lists)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return None
    return float(v) if math.isfinite(v) else None


def _first(recs: list[dict], col: str):
    """Returns the first present (non-NaN, non-empty) value of col among recs."""
    for r in recs:
        v = r.get(col)
        if v is not None and v == v and v != "":
            return v
    return None


def _mb(v) -> float | None:
    return None if _num(v) is None else v / _MB


def _prepare(df):
    """Returns df with the identity columns present, a host column, and reruns superseded."""
    df = df.copy()
    for c in ("model", "device", "format", "workload", "status", "reason"):
        if c not in df:
            df[c] = ""
    df["host"] = df["env.host"].fillna("") if "env.host" in df else ""
    if "timestamp" in df:
        df = df.sort_values("timestamp", kind="stable", na_position="first")
    return df.drop_duplicates(subset=[*VARIANT, "workload"], keep="last")


def _roof_point(r: dict, n_tokens: float, tok_s) -> tuple[float, float] | None:
    """Returns (FLOP/byte, achieved FLOP/s) of one workload record; the intensity falls back to
    n_tokens × flops_per_token / weights_bytes (weights dominate traffic at small batch)."""
    flops, tok_s = _num(r.get("flops_per_token")), _num(tok_s)
    if flops is None or tok_s is None:
        return None
    ai = _num(r.get("arith_intensity"))
    if ai is None and _num(r.get("weights_bytes")):
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
                "kernel", "group_size", "suite"):
        row[col] = _first(recs, col)
    recs = [r for r in recs if r["status"] == "ok"]  # measurements only from workloads that ran
    for col in ("weights_bytes", "load_s", "build_s", "bound"):
        row[col] = _first(recs, col)
    if row["bits_per_weight"] is None and row["format"] in FORMATS:
        row["bits_per_weight"] = FORMATS[row["format"]].bits_per_weight
    mix = {c.split(".", 1)[1]: int(_first(recs, c)) for c in (recs[0] if recs else {})
           if c.startswith("gguf_type_mix.") and _num(_first(recs, c))}
    row["type_mix"] = ", ".join(f"{t}×{n}" for t, n in sorted(mix.items()))
    rss = [r for r in recs if _num(r.get("peak_rss_bytes"))]
    top = max(rss, key=lambda r: r["peak_rss_bytes"]) if rss else {}
    row["peak_rss_bytes"] = top.get("peak_rss_bytes")
    row["kv_cache_bytes"] = _num(top.get("kv_cache_bytes")) or max(
        (_num(r.get("kv_cache_bytes")) or 0 for r in recs), default=0) or None
    dev = [_num(r.get("peak_device_bytes")) for r in recs if _num(r.get("peak_device_bytes"))]
    row["peak_device_bytes"] = max(dev) if dev else None
    by_kind: dict[str, list] = {"pp": [], "tg": [], "ppl": []}
    for r in recs:
        m = _WORKLOAD.match(str(r["workload"]))
        if m:
            by_kind[m[1]].append((int(m[2]), r))
    row["roof_points"] = []
    for n, r in sorted(by_kind["pp"], key=lambda t: t[0]):
        row[f"prefill_tok_s@pp{n}"] = _num(r.get("prefill_tok_s"))
        pt = _roof_point(r, _num(r.get("n_prompt")) or n, r.get("prefill_tok_s"))
        row["roof_points"] += [("prefill", *pt)] if pt else []
    tg = dict(max(by_kind["tg"], key=lambda t: t[0])[1]) if by_kind["tg"] else {}
    for col in ("decode_tok_s", "decode_tok_s_predicted", "decode_sol_frac", "decode_p50_s",
                "decode_p90_s", "decode_p99_s", "decode_samples_s"):
        row[col] = tg.get(col)
    row["ttft_s"] = tg.get("ttft_s") if _num(tg.get("ttft_s")) else _first(recs, "ttft_s")
    pt = _roof_point(tg, 1, tg.get("decode_tok_s")) if tg else None
    row["roof_points"] += [("decode", *pt)] if pt else []
    q = dict(max(by_kind["ppl"], key=lambda t: t[0])[1]) if by_kind["ppl"] else {}
    for col in ("ppl", "ppl_stderr", "ppl_full", "ppl_windows", "window_nll", "n_ctx"):
        row[col] = q.get(col)
    for col in ("kld_reference", "kld_mean", "kld_p99", "top1_agree", "rms_dp"):
        row[col] = q.get(col) if q.get(col) is not None and q.get(col) == q.get(col) else _first(recs, col)
    return row


def reference_format(rows: list[dict]) -> str | None:
    """Returns the format Δppl is measured against: the KLD reference, else fp32/bf16/fp16/gguf-f16,
    else the widest format with a ppl."""
    have = {r["format"]: r for r in rows if _num(r.get("ppl")) or isinstance(r.get("window_nll"), list)}
    refs = [r["kld_reference"] for r in rows if isinstance(r.get("kld_reference"), str)]
    for name in ([max(set(refs), key=refs.count)] if refs else []) + list(REFERENCE_ORDER):
        if name in have:
            return name
    return max(have, key=lambda f: _num(have[f].get("bits_per_weight")) or 0) if have else None


def tokens_per_window(nll: list, ppl, n_ctx) -> float | None:
    """Returns scored tokens per window, from ppl = exp(Σ nll / (windows × tokens)), else n_ctx / 2."""
    if nll and _num(ppl) and ppl > 1:
        t = sum(nll) / (len(nll) * math.log(ppl))
        return round(t) if t > 10 else t  # ppl is stored rounded; window sizes are whole tokens
    return _num(n_ctx) and n_ctx / 2


def dppl_common_pct(a: dict, b: dict) -> tuple[float | None, int | None]:
    """Returns (100 × (ppl_a / ppl_b − 1), windows) on the common prefix of both window_nll lists;
    with no window lists, the recorded ppls and None windows."""
    na, nb = a.get("window_nll"), b.get("window_nll")
    if isinstance(na, list) and isinstance(nb, list) and na and nb:
        k = min(len(na), len(nb))
        t = (tokens_per_window(nb, b.get("ppl"), b.get("n_ctx"))
             or tokens_per_window(na, a.get("ppl"), a.get("n_ctx")))
        if t:
            return 100 * (math.exp((sum(na[:k]) - sum(nb[:k])) / (k * t)) - 1), k
    if _num(a.get("ppl")) and _num(b.get("ppl")):
        return 100 * (a["ppl"] / b["ppl"] - 1), None
    return None, None


def quality_metric(rows: list[dict]) -> str | None:
    """Returns the column that ranks quality in a group: dppl_pct when any variant has it, else kld_mean."""
    for col in ("dppl_pct", "kld_mean"):
        if any(_num(r.get(col)) is not None for r in rows):
            return col
    return None


def pareto_set(rows: list[dict], metric: str | None) -> list[str]:
    """Returns formats no other variant beats on both weights_bytes and the quality metric (lower)."""
    pts = [(r["format"], _num(r.get("weights_bytes")), _num(r.get(metric))) for r in rows] if metric else []
    pts = [p for p in pts if p[1] is not None and p[2] is not None]
    return [f for f, s, q in pts if not any(s2 <= s and q2 <= q and (s2 < s or q2 < q) for _, s2, q2 in pts)]


def _format_order(name: str) -> tuple:
    order = list(FORMATS)
    return (order.index(name), name) if name in order else (len(order), name)


def pivot(df):
    """Returns one row per (model, host, device, format) with per-workload columns, Δppl vs the
    group's reference on common windows, and the Pareto flag; skipped and failed variants stay."""
    import pandas as pd

    df = _prepare(df)
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
        front = pareto_set(grp, quality_metric(grp))
        for r in grp:
            r["pareto"] = r["format"] in front
    rows.sort(key=lambda r: (str(r["model"]), str(r["host"]), str(r["device"]), _format_order(r["format"])))
    return pd.DataFrame(rows)


def groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Returns rows grouped by (model, host, device), the scope of a verdict and its plots."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault((r["model"], r["host"], r["device"]), []).append(r)
    return out


def table(p):
    """Returns the variants table (numbers in base-or-named units) that HTML, markdown and CSV share."""
    import pandas as pd

    rows = p.to_dict("records")
    pp_cols = sorted({c for c in p.columns if c.startswith("prefill_tok_s@pp")}, key=lambda c: int(c[16:]))
    out = []
    for r in rows:
        peak_dev = _mb(r.get("peak_device_bytes"))
        t = {"format": r["format"], "device": r["device"], "host": r["host"], "model": r["model"],
             "bits_per_weight": _num(r.get("bits_per_weight")), "weights_mb": _mb(r.get("weights_bytes")),
             "peak_rss_mb": _mb(r.get("peak_rss_bytes")), "peak_device_mb": peak_dev,
             **{c: _num(r.get(c)) for c in pp_cols},
             "decode_tok_s": _num(r.get("decode_tok_s")),
             "decode_p50_ms": _num(r.get("decode_p50_s")) and r["decode_p50_s"] * 1e3,
             "decode_p90_ms": _num(r.get("decode_p90_s")) and r["decode_p90_s"] * 1e3,
             "ttft_ms": _num(r.get("ttft_s")) and r["ttft_s"] * 1e3,
             "ppl": _num(r.get("ppl")), "ppl_stderr": _num(r.get("ppl_stderr")),
             "dppl_pct": _num(r.get("dppl_pct")), "dppl_windows": _num(r.get("dppl_windows")),
             "windows_max": r.get("windows_max") or None,
             "kld_mean": _num(r.get("kld_mean")),
             "top1_agree_pct": _num(r.get("top1_agree")) and r["top1_agree"] * 100,
             "decode_sol_frac": _num(r.get("decode_sol_frac")),
             "reference": r.get("reference"), "status": r["status"], "reason": r.get("reason") or "",
             "overhead_bound": (_num(r.get("decode_sol_frac")) or 1.0) < OVERHEAD_BOUND_SOL,
             "pareto": bool(r.get("pareto")), "gguf_type_mix": r.get("type_mix") or ""}
        out.append(t)
    t = pd.DataFrame(out)
    drop = [c for c, keep in (("host", p["host"].nunique() > 1), ("model", p["model"].nunique() > 1),
                              ("peak_device_mb", t["peak_device_mb"].notna().any())) if not keep]
    return t.drop(columns=drop)


# Display: column -> (header, number format). Columns not listed are CSV-only.
HEADERS = {"format": ("format", ""), "device": ("device", ""), "host": ("host", ""), "model": ("model", ""),
           "bits_per_weight": ("bits/weight", ".2f"), "weights_mb": ("weights MB", ".1f"),
           "peak_rss_mb": ("peak RSS MB", ".0f"), "peak_device_mb": ("peak GPU MB", ".0f"),
           "decode_tok_s": ("decode tok/s", ".1f"), "decode_p50_ms": ("p50 ms", ".1f"),
           "decode_p90_ms": ("p90 ms", ".1f"), "ttft_ms": ("TTFT ms", ".0f"), "ppl": ("ppl ± stderr", ".3f"),
           "dppl_pct": ("Δppl %¹", "+.2f"), "kld_mean": ("KLD", ".4f"), "top1_agree_pct": ("top-1 %", ".1f"),
           "decode_sol_frac": ("decode SoL²", ".2f"), "status": ("status", "")}


def display_columns(t) -> list[tuple[str, str, str]]:
    """Returns (column, header, number format) for the shown columns, prefill columns included."""
    out = []
    for c in t.columns:
        if c.startswith("prefill_tok_s@"):
            out.append((c, f"prefill tok/s @{c.split('@')[1]}", ".1f"))
        elif c in HEADERS:
            out.append((c, *HEADERS[c]))
    return out


def cell_text(row: dict, col: str, fmt: str) -> str:
    """Returns the shown text of one table cell ('—' when missing)."""
    v = row.get(col)
    if col == "status":
        extra = " · overhead-bound" if row.get("overhead_bound") else ""
        return f"{v}{extra}" + (f": {row['reason']}" if v != "ok" and row.get("reason") else "")
    if col == "format":
        return f"{v} ★" if row.get("pareto") else str(v)
    if not fmt:
        return "" if v is None or v != v else str(v)
    if _num(v) is None:
        return "—"
    text = format(v, fmt)
    if col == "ppl" and _num(row.get("ppl_stderr")) is not None:
        text += f" ± {row['ppl_stderr']:.3f}"
    if col == "dppl_pct" and row.get("format") == row.get("reference"):
        return "ref"
    if col == "dppl_pct" and (_num(row.get("dppl_windows")) or 1e9) < (_num(row.get("windows_max")) or 0):
        text += f" ({int(row['dppl_windows'])}w)"
    return text


def verdicts(p) -> list[str]:
    """Returns one verdict sentence group per (model, host, device): best for memory, speed,
    quality, and the Pareto set."""
    out = []
    for (model, host, device), grp in groups(p.to_dict("records")).items():
        ok = [r for r in grp if r["status"] in ("ok", "partial")]
        where = f"{model} on {device}" + (f" ({host})" if p["host"].nunique() > 1 else "")
        parts = []
        sized = [r for r in ok if _num(r.get("weights_bytes"))]
        if sized:
            r = min(sized, key=lambda r: r["weights_bytes"])
            parts.append(f"smallest weights: {r['format']} ({r['weights_bytes'] / _MB:.1f} MB)")
        fast = [r for r in ok if _num(r.get("decode_tok_s"))]
        if fast:
            r = max(fast, key=lambda r: r["decode_tok_s"])
            parts.append(f"fastest decode: {r['format']} ({r['decode_tok_s']:.1f} tok/s)")
        metric = quality_metric(grp)
        scored = [r for r in ok if metric and _num(r.get(metric)) is not None]
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
        hf = next((by[f] for f in ("fp16", "fp32") if f in by and _num(by[f].get("ppl"))), None)
        gg = by.get("gguf-f16")
        if hf is None or gg is None or _num(gg.get("ppl")) is None:
            continue
        d, k = dppl_common_pct(gg, hf)
        if d is None:
            continue
        mark = "✓" if abs(d) <= CROSS_BACKEND_TOL_PCT else "✗"
        on = f"{k} common windows" if k else "recorded ppl"
        out.append(f"{device}: gguf-f16 vs {hf['format']} ppl differs by {d:+.2f} % on {on} "
                   f"{mark} (tolerance {CROSS_BACKEND_TOL_PCT} %)")
    return out


def footnotes(p) -> list[str]:
    """Returns the table's footnotes, naming variants compared on fewer windows than they scored."""
    recs = p.to_dict("records")
    refs = sorted({f"{r['device']} → {r['reference']}" for r in recs if r.get("reference")})
    short = [f"{r['format']} on {r['device']}: {int(r['dppl_windows'])} of {r['windows_max']} windows"
             for r in recs if _num(r.get("dppl_windows")) and r["dppl_windows"] < r["windows_max"]]
    return [
        "¹ Δppl % = 100 × (ppl / ppl_ref − 1), both computed on the windows both variants scored (the "
        "common prefix of their per-window NLL lists: a variant may score fewer windows within its time "
        "budget); (Nw) marks a comparison on fewer windows than were scored. "
        f"Reference: {', '.join(refs) or 'none'}."
        + (f" Fewer windows than scored: {'; '.join(short)}." if short else ""),
        f"² decode SoL = decode tok/s ÷ bandwidth roofline (bandwidth / bytes read per token); below "
        f"{OVERHEAD_BOUND_SOL:.2f} a row is flagged overhead-bound. "
        "★ marks the Pareto set (quality vs size)."]


def peaks(recs: list[dict]) -> tuple[float | None, dict[str, float]]:
    """Returns (bandwidth bytes/s, {dtype: peak FLOP/s}) from optional calib.*/peaks.*/env.* fields."""
    bw, flops = None, {}

    def walk(path: str, v):
        nonlocal bw
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{path}.{k}", x)
        elif _num(v) is not None:
            if path.endswith("bandwidth_bytes_s"):
                bw = bw or v
            elif "flop_s" in path:
                dtype = path.split("flop_s", 1)[1].strip("._") or "peak"
                flops.setdefault(dtype, v)

    for r in recs:
        for c, v in r.items():
            in_env = c.startswith("env.") and any(w in c for w in ("bandwidth", "flop", "peak"))
            if c.startswith(("calib.", "peaks.")) or in_env:
                walk(c, v)
    return bw, flops


def header_facts(df) -> list[tuple[str, str]]:
    """Returns (label, text) lines for the header: model, suite, machines, libraries, commit, date."""
    d = _prepare(df)

    def uniq(col, frame=d):
        return list(dict.fromkeys(str(v) for v in frame[col].dropna() if str(v))) if col in frame else []

    hashes = uniq("suite_hash")
    facts = [("model", ", ".join(uniq("model"))),
             ("suite", ", ".join(uniq("suite")) + (f" (hash {', '.join(hashes)})" if hashes else ""))]
    for host, g in d.groupby("host", sort=False):
        r = g.to_dict("records")
        cpu, cores = _first(r, "env.cpu"), _num(_first(r, "env.cpu_physical_cores"))
        ram = _num(_first(r, "env.ram_bytes"))
        gpu, gmem = _first(r, "env.gpu"), _num(_first(r, "env.gpu_memory_bytes"))
        bits = [f"{cpu or 'CPU ?'}" + (f" ({int(cores)} physical cores)" if cores else "")
                + (f", {ram / 2**30:.0f} GiB RAM" if ram else "")]
        if gpu:
            bits.append(f"{gpu}" + (f" ({gmem / 2**30:.0f} GiB)" if gmem else ""))
        for device, gd in g.groupby("device", sort=False):
            bw, fl = peaks(gd.to_dict("records"))
            cal = [f"{plots.fmt_num(bw)}B/s"] if bw else []
            cal += [f"{k} {plots.fmt_num(v)}FLOP/s" for k, v in fl.items()]
            if cal:
                bits.append(f"{device} calibrated: " + ", ".join(cal))
        facts.append(("machine" + (f" {host}" if host else ""), "; ".join(bits)))
    facts.append(("libraries", ", ".join(f"{lib} {'/'.join(uniq('env.' + lib))}" for lib in LIBRARIES
                                         if uniq("env." + lib))))
    facts.append(("commit", ", ".join(uniq("env.git_commit"))))
    days = sorted({t[:10] for t in uniq("timestamp")})
    facts.append(("date", days[0] + (f" – {days[-1]}" if len(days) > 1 else "") if days else ""))
    facts.append(("results", ", ".join(uniq("source_file"))))
    return [(k, v) for k, v in facts if v]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "all"


def _mem_bar(r: dict) -> tuple:
    on_gpu = str(r["device"]).startswith("cuda") and _num(r.get("peak_device_bytes"))
    peak = _num(r.get("peak_device_bytes") if on_gpu else r.get("peak_rss_bytes"))
    w, kv = _num(r.get("weights_bytes")), _num(r.get("kv_cache_bytes"))
    other = max(peak - (w or 0) - (kv or 0), 0.0) if peak else None  # RSS misses mmap'd pages: clamp
    return r["format"], _mb(w), _mb(kv), _mb(other), _mb(r.get("weights_bytes_predicted"))


def plot_svgs(df, p) -> list[tuple[str, list[str]]]:
    """Returns (heading, five SVGs) per (model, host, device): quality/size, decode/size, roofline,
    memory, latency."""
    colors = {f: plots.color_for(i) for i, f in enumerate(sorted(p["format"].unique(), key=_format_order))}
    d, out = _prepare(df), []
    gs = groups(p.to_dict("records"))
    devices_unique = len({k[2] for k in gs}) == len(gs)
    for (model, host, device), grp in gs.items():
        raw = d[(d["model"] == model) & (d["host"] == host) & (d["device"] == device)].to_dict("records")
        bw, fl = peaks(raw)
        slug = _slug(str(device) if devices_unique else f"{model}-{host}-{device}")
        metric = quality_metric(grp)
        ylab = (f"Δppl % vs {grp[0]['reference']} (common windows)" if metric == "dppl_pct"
                else "mean KLD vs reference (log)")
        c = lambda r: colors[r["format"]]  # noqa: E731
        svgs = [
            plots.quality_size_svg(f"quality-size-{slug}", [(r["format"], _mb(r.get("weights_bytes")),
                                   _num(r.get(metric)) if metric else None, c(r)) for r in grp],
                                   [r["format"] for r in grp if r["pareto"]], ylab, metric == "kld_mean"),
            plots.decode_size_svg(f"decode-size-{slug}", [(r["format"], _num(r.get("weights_bytes")),
                                  _num(r.get("decode_tok_s")), _num(r.get("decode_tok_s_predicted")), c(r))
                                  for r in grp], bw),
            plots.roofline_svg(f"roofline-{slug}", [(r["format"], kind, ai, fs, c(r)) for r in grp
                                                    for kind, ai, fs in r["roof_points"]], fl, bw),
            plots.memory_bars_svg(f"memory-{slug}", [_mem_bar(r) for r in grp]),
            plots.latency_svg(f"latency-{slug}", [
                (r["format"], [s * 1e3 for s in r["decode_samples_s"]], c(r))
                for r in grp if isinstance(r.get("decode_samples_s"), list)])]
        out.append((f"{model} on {device}" + (f" ({host})" if host else ""), svgs))
    return out


CSS = """body{font:14px/1.45 system-ui,sans-serif;color:#222;margin:0;background:#fafafa}
main{max-width:1320px;margin:auto;padding:16px 24px}h1{font-size:22px;margin:8px 0}
h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:26px}h3{font-size:15px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0}
dt{font-weight:600;color:#555}dd{margin:0}.note{background:#fff7e0;border:1px solid #e8c860;padding:8px 12px;
border-radius:4px;margin:12px 0}
.scroll{overflow-x:auto}table{border-collapse:collapse;background:#fff;font-size:12.5px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
td:first-child,th:first-child,td.s{text-align:left}th{background:#f0f0f0;cursor:pointer;position:sticky;top:0}
th[data-dir=asc]::after{content:" ▲"}th[data-dir=desc]::after{content:" ▼"}
tr.failed td,tr.skipped td{background:#fdecec;color:#844}tr.overhead td.status{color:#a60}
td.status{white-space:normal;min-width:12em;text-align:left}tbody tr:hover td{background:#eef5ff}
.foot{font-size:12px;color:#555;margin:4px 0}.check{font-family:ui-monospace,monospace}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:12px}
figure{margin:0;background:#fff;border:1px solid #ddd}svg.plot{width:100%;height:auto;display:block}
footer{margin-top:24px;color:#888;font-size:12px}"""

# Click a header to sort by it; numbers compare as numbers (data-v), blanks always sort last.
SORT_JS = """document.querySelectorAll("table.sortable th").forEach((th, i) =>
 th.addEventListener("click", () => {
  const tb = th.closest("table").tBodies[0], asc = th.dataset.dir !== "asc";
  th.closest("tr").querySelectorAll("th").forEach(h => delete h.dataset.dir);
  th.dataset.dir = asc ? "asc" : "desc";
  const key = r => { const v = r.cells[i].dataset.v, n = parseFloat(v);
    return v === "" ? null : isNaN(n) ? v : n; };
  [...tb.rows].sort((a, b) => { const x = key(a), y = key(b);
    if (x === null || y === null) return (x === null) - (y === null);
    const c = x < y ? -1 : x > y ? 1 : 0; return asc ? c : -c; }).forEach(r => tb.appendChild(r));
}));"""


def _table_html(t) -> str:
    cols = display_columns(t)
    head = "".join(f"<th>{escape(h)}</th>" for _, h, _ in cols)
    body = []
    for r in t.to_dict("records"):
        cls = r["status"] + (" overhead" if r["overhead_bound"] else "")
        tds = []
        for c, _, fmt in cols:
            v = r.get(c)
            key = ("" if _num(v) is None else repr(float(v))) if fmt else str(v)
            tip = f' title="{escape(r["gguf_type_mix"])}"' if c == "format" and r.get("gguf_type_mix") else ""
            tds.append(f'<td class="{"s " if not fmt else ""}{c}" data-v="{escape(key)}"{tip}>'
                       f"{escape(cell_text(r, c, fmt))}</td>")
        body.append(f'<tr class="{cls}">{"".join(tds)}</tr>')
    return (f'<table class="sortable" id="variants"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _problems(p) -> list[tuple[str, str, str, str, str]]:
    """Returns (format, device, workloads, status, reason) per variant and distinct problem."""
    out = {}
    for r in p.to_dict("records"):
        for w, s, why in r["problems"]:
            out.setdefault((r["format"], r["device"], s, why), []).append(w)
    return [(f, d, ", ".join(ws), s, why) for (f, d, s, why), ws in out.items()]


def render_html(df, title: str = "") -> str:
    """Returns the self-contained HTML report (inline CSS, JS and SVG; no external assets)."""
    if df.empty:
        raise UserError("no records to report; check the results paths")
    p = pivot(df)
    title = title or "quantbench report: " + ", ".join(dict.fromkeys(map(str, p["model"])))
    facts = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in header_facts(df))
    h = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
         f'content="width=device-width, initial-scale=1"><title>{escape(title)}</title><style>{CSS}</style>'
         f"</head><body><main><h1>{escape(title)}</h1><dl class=\"facts\">{facts}</dl>"]
    if any("smollm2-135m" in str(m).lower() for m in p["model"]):
        h.append(f'<div class="note"><b>Note:</b> {escape(SMOLLM_NOTE)}.</div>')
    h.append("<h2>Verdict</h2>" + "".join(f"<p>{escape(v)}</p>" for v in verdicts(p)))
    h += [f'<p class="check">Cross-backend: {escape(line)}</p>' for line in cross_backend(p)]
    h.append('<h2>Variants</h2><div class="scroll">' + _table_html(table(p)) + "</div>")
    h += [f'<p class="foot">{escape(f)}</p>' for f in footnotes(p)]
    rows = "".join("<tr>" + "".join(f'<td class="s">{escape(str(x))}</td>' for x in pr) + "</tr>"
                   for pr in _problems(p))
    h.append("<h2>Skipped and failed</h2>" + (
        f'<table id="problems"><thead><tr><th>format</th><th>device</th><th>workloads</th><th>status</th>'
        f"<th>reason</th></tr></thead><tbody>{rows}</tbody></table>" if rows else "<p>none</p>"))
    h.append("<h2>Plots</h2>")
    for heading, svgs in plot_svgs(df, p):
        h.append(f"<h3>{escape(heading)}</h3><div class=\"plots\">" +
                 "".join(f"<figure>{s}</figure>" for s in svgs) + "</div>")
    h.append(f"<footer>generated by quantbench report</footer><script>{SORT_JS}</script>"
             "</main></body></html>")
    return "\n".join(h)


def render_markdown(df) -> str:
    """Returns the report as markdown: header, verdict, the variants table, footnotes, problems."""
    p = pivot(df)
    t = table(p)
    cols = display_columns(t)
    out = ["# quantbench report: " + ", ".join(dict.fromkeys(map(str, p["model"]))), ""]
    out += [f"- **{k}**: {v}" for k, v in header_facts(df)] + [""]
    if any("smollm2-135m" in str(m).lower() for m in p["model"]):
        out += [f"> **Note:** {SMOLLM_NOTE}.", ""]
    out += ["## Verdict", ""] + [f"- {v}" for v in verdicts(p)]
    out += [f"- cross-backend: {c}" for c in cross_backend(p)]
    out += ["", "## Variants", "", "| " + " | ".join(h for _, h, _ in cols) + " |",
            "|" + "|".join("---:" if f else "---" for _, _, f in cols) + "|"]
    out += ["| " + " | ".join(cell_text(r, c, f).replace("|", "\\|") for c, _, f in cols) + " |"
            for r in t.to_dict("records")]
    out += [""] + [x for f in footnotes(p) for x in (f, "")]
    probs = _problems(p)
    out += ["## Skipped and failed", ""] + ([f"- {f} on {d}, {w}: {s} — {why}" for f, d, w, s, why in probs]
                                           or ["none"])
    return "\n".join(out) + "\n"


def render_csv(df) -> str:
    """Returns the variants table as CSV (one row per variant, unit-named numeric columns)."""
    return table(pivot(df)).to_csv(index=False)


def write_report(result_paths: list[str], out_html: str, title: str = "") -> list[str]:
    """Writes out_html plus .md and .csv beside it from JSONL files or directories; returns the paths."""
    from quantbench.records import read_results

    df = read_results(*result_paths)
    if df.empty:
        raise UserError(f"no records in {', '.join(map(str, result_paths))}; run `quantbench run` first")
    html_path = Path(out_html)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    paths = [html_path, html_path.with_suffix(".md"), html_path.with_suffix(".csv")]
    for path, text in zip(paths, (render_html(df, title), render_markdown(df), render_csv(df)), strict=True):
        path.write_text(text, encoding="utf-8")
    return [str(x) for x in paths]


def add_report_parser(subparsers) -> None:
    """Adds `quantbench report RESULTS... -o reports/NAME.html` to an argparse subparsers object."""
    sp = subparsers.add_parser("report", help="render results as HTML (+ markdown and CSV beside it)")
    sp.add_argument("results", nargs="+", help="JSONL result files or directories of them")
    sp.add_argument("-o", "--out", default="reports/report.html", help="HTML path; .md/.csv go beside it")
    sp.add_argument("--title", default="", help="report title (default: the model names)")
    sp.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    """Writes the report files and prints their paths; returns the exit status."""
    for path in write_report(args.results, args.out, args.title):
        print(path)
    return 0
