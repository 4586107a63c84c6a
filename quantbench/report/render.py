"""The report: the pivot of the records (quantbench.report.pivot: a row per model × host × device ×
format) rendered as HTML (header, verdict, sortable table, inline SVG plots), markdown and CSV.
The table's columns are declared in quantbench.report.columns (schema Display or DERIVED); the page
is a list of Sections (quantbench.report.tables) rendered by templates/report.html.j2.

`quantbench report RESULTS... -o reports/NAME.html` writes NAME.html, NAME.md and NAME.csv from one
pivot. The HTML has no external assets: CSS, the sort script and the plots are inline. Its script
marks `<body data-ready="1">` when it has run and `data-jserror` when a script failed, so a
headless browser can tell (tests/test_browser.py).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from quantbench.core.errors import UserError
from quantbench.core.load import BUSY_PCT
from quantbench.core.records import LIBRARIES
from quantbench.report import columns, plots, tables
from quantbench.report.columns import SOL_COLUMNS
from quantbench.report.pivot import (
    MB,
    OVERHEAD_BOUND_SOL,
    cross_backend,
    first,
    format_order,
    groups,
    machine_comparison,
    num,
    peaks,
    pivot,
    prepare,
    quality_metric,
    same_number_format,
    verdicts,
)
from quantbench.report.tables import Cell, Figures, Head, Para, Row, Section, Table


def model_notes(df) -> list[str]:
    """Returns the distinct caveats the records carry in `model_note` (e.g. Q4_1 rounding), in order."""
    if "model_note" not in df:
        return []
    return [n for n in dict.fromkeys(df["model_note"]) if isinstance(n, str) and n]


def _mb(v) -> float | None:
    return None if num(v) is None else v / MB


def table(p):
    """Returns the variants table (numbers in base-or-named units) that HTML, markdown and CSV share:
    the columns of quantbench/report/columns.py, those with nothing to show left out."""
    import pandas as pd

    cols = columns.expand(p.columns)
    t = pd.DataFrame([{c.name: c.value(r) for c in cols} for r in p.to_dict("records")])
    drop = [c.name for c in cols if (c.hide == columns.ONE_VALUE and t[c.name].nunique() <= 1)
            or (c.hide == columns.EMPTY and not t[c.name].notna().any())]
    return t.drop(columns=drop)


def display_columns(t) -> list[tuple[str, str, str]]:
    """Returns (column, header, number format) for the shown columns of table t, in order."""
    return [(c.name, c.header, c.fmt) for c in columns.shown(t.columns)]


def cell_text(row: dict, col: str, fmt: str) -> str:
    """Returns the shown text of one table cell ('—' when missing)."""
    v = row.get(col)
    if col == "status":  # the reason and the overhead-bound flag go in the details line
        return str(v)
    if col == "kernel":  # a fallback is flagged where the kernel is read; its reason is in details
        return f"{v or '—'} ⚠ fallback" if row.get("kernel_fallback") else str(v or "—")
    if col == "format":
        return f"{v} ★" if row.get("pareto") else str(v)
    if not fmt:
        return "" if v is None or v != v else str(v)
    if num(v) is None:
        return "—"
    if fmt == "rate":
        fmt = ".1f" if abs(v) < 100 else ".0f"
    text = format(v, fmt)
    if col == "ppl" and num(row.get("ppl_stderr")) is not None:
        text += f" ± {row['ppl_stderr']:.3f}"
    if col in SOL_COLUMNS and row.get("sol_suspect"):
        text += " ⚠"  # the details line says why
    if col == "ppl" and row.get("ppl_partial"):
        text += " (partial)"
    if col == "dppl_pct" and row.get("format") == row.get("reference"):
        return "ref"
    if col == "dppl_pct" and (num(row.get("dppl_windows")) or 1e9) < (num(row.get("windows_max")) or 0):
        text += f" ({int(row['dppl_windows'])}w)"
    return text


def details_text(row: dict) -> str:
    """Returns a variant's details line: why it failed or was skipped, the overhead-bound flag,
    kernel, decode/prefill bound, load (and build) seconds and the GGUF tensor-type mix; '' when
    none is known."""
    parts = []
    if row["status"] != "ok" and row.get("reason"):
        parts.append(f"{row['status']}: {row['reason']}")
    if row.get("overhead_bound"):  # rounded down: a flagged 0.2997 reads 29.9 %, not 30.0 %
        pct = math.floor(row["decode_sol_frac"] * 1000) / 10
        parts.append(f"overhead-bound: decode at {pct:.1f}% of its roofline, below {OVERHEAD_BOUND_SOL:.0%}")
    if row.get("sol_suspect"):
        parts.append(f"⚠ SoL suspect: {row['sol_suspect']}")
    if row.get("crash_signal"):
        known = f" (known upstream: {row['crash_upstream']})" if row.get("crash_upstream") else ""
        parts.append(f"✖ engine crash: {row['crash_signal']} in {row.get('kernel') or 'the engine'}{known}")
    if num(row.get("others_busy_pct")) is not None and row["others_busy_pct"] > BUSY_PCT:
        parts.append(f"⚠ other processes used {row['others_busy_pct']:.0f}% of the CPUs while its speeds "
                     "were timed: they may read low")
    if row.get("kernel_fallback"):
        parts.append(f"⚠ kernel fallback: {row['kernel_fallback']}")
    if row.get("kernel"):
        parts.append(f"kernel: {row['kernel']}")
    if num(row.get("decode_vs_eager")):
        parts.append(f"decode {row['decode_vs_eager']:.2f}× the eager {row['format'].split('+')[0]}")
    bounds = [f"{k} {row[f'{k}_bound']}" for k in ("decode", "prefill") if row.get(f"{k}_bound")]
    if bounds:
        parts.append(f"bound: {', '.join(bounds)}")
    load = [f"load {row['load_s']:.2f} s"] if num(row.get("load_s")) is not None else []
    load += [f"build {row['build_s']:.1f} s"] if num(row.get("build_s")) else []
    if load:
        parts.append(", ".join(load))
    if row.get("gguf_type_mix"):
        parts.append(f"GGUF tensor types: {row['gguf_type_mix']}")
    return " · ".join(parts)


def footnotes(p) -> list[str]:
    """Returns the table's footnotes, naming variants compared on fewer windows than they scored."""
    recs = p.to_dict("records")
    refs = sorted({f"{r['device']} → {r['reference']}" for r in recs if r.get("reference")})
    common = sorted({str(int(r["ppl_common_windows"])) for r in recs if num(r.get("ppl_common_windows"))})
    short = [f"{r['format']} on {r['device']}: {int(r['dppl_windows'])} of {r['windows_max']} windows"
             for r in recs if num(r.get("dppl_windows")) and r["dppl_windows"] < r["windows_max"]]
    return [
        "¹ Δppl % = 100 × (ppl / ppl_ref − 1), both computed on the windows both variants scored (the "
        "common prefix of their per-window NLL lists: a variant may score fewer windows within its time "
        "budget); (Nw) marks a comparison on fewer windows than were scored. "
        f"Reference: {', '.join(refs) or 'none'}."
        + (f" Fewer windows than scored: {'; '.join(short)}." if short else ""),
        "² SoL (speed of light) = measured ÷ predicted tok/s, the prediction being the roofline time "
        "max(FLOPs / peak FLOP/s, bytes / bandwidth); prefill SoL is taken at the longest prompt. "
        f"Decode reads every weight per token, so below {OVERHEAD_BOUND_SOL:.2f} decode SoL (orange in "
        "HTML) a row is flagged overhead-bound. ⚠ marks a SoL that cannot be trusted: above 1 (faster "
        "than the roofline: its peaks read low) or computed from a calibration taken beside other "
        "work. The details line of a row says why it failed or why its SoL is suspect, names its "
        "kernel, which roof bounds decode and prefill (memory or compute), and its load time. "
        "★ marks the Pareto set (quality vs size).",
        "³ ppl is computed on the windows every variant of its model and device scored "
        f"({', '.join(common) or '—'} windows), so a variant whose quality budget ran out early "
        "(marked partial) is not compared on other text than the rest; the records keep each "
        "variant's own ppl over its own windows.",
        "⁴ A decode step's wall time = engine + harness. Engine: llama.cpp's own counter "
        "(llama_perf_context, what llama-bench times) or the wall time inside model.forward; "
        "harness: what quantbench adds around it (batch building, logits copy, argmax, timers). "
        "`nox -s parity` compares both with llama-bench and a bare torch loop.",
        "⁵ The kernel path that ran, named from the engine's own report (llama.cpp's weight buffer "
        "types, oneDNN's implementation, the profiler's ops or CUDA kernels, GPTQModel's QuantLinear "
        "class), never from the format's name. ⚠ fallback: the engine crashed or could not use its "
        "default path and this row ran on a safer one; `<format>+path-<p>` rows are that path. "
        "The record's kernel_detail holds the evidence."]


def header_facts(df) -> list[tuple[str, str]]:
    """Returns (label, text) lines for the header: model, suite, machines, libraries, commit, date."""
    d = prepare(df)

    def uniq(col, frame=d):
        return list(dict.fromkeys(str(v) for v in frame[col].dropna() if str(v))) if col in frame else []

    hashes = uniq("suite_hash")
    facts = [("model", ", ".join(uniq("model"))),
             ("suite", ", ".join(uniq("suite")) + (f" (hash {', '.join(hashes)})" if hashes else ""))]
    for host, g in d.groupby("host", sort=False):
        r = g.to_dict("records")
        cpu, cores = first(r, "env.cpu"), num(first(r, "env.cpu_physical_cores"))
        ram = num(first(r, "env.ram_bytes"))
        gpu, gmem = first(r, "env.gpu"), num(first(r, "env.gpu_memory_bytes"))
        bits = [f"{cpu or 'CPU ?'}" + (f" ({int(cores)} physical cores)" if cores else "")
                + (f", {ram / 2**30:.0f} GiB RAM" if ram else "")]
        if gpu:
            bits.append(f"{gpu}" + (f" ({gmem / 2**30:.0f} GiB)" if gmem else ""))
        for device, gd in g.groupby("device", sort=False):
            recs = gd.to_dict("records")
            bw, fl = peaks(recs)
            cal = [f"{plots.fmt_num(bw)}B/s"] if bw else []
            cal += [f"{k} {plots.fmt_num(v)}FLOP/s" for k, v in fl.items()]
            threads = num(first(recs, "peaks.threads"))
            cal += [f"at {int(threads)} thread{'s' if threads != 1 else ''}"] if cal and threads else []
            if cal:
                suspect = first(recs, "peaks.suspect")  # hardware.calibrate: taken beside other work
                bits.append(f"{device} calibrated: " + ", ".join(cal)
                            + (f" (⚠ suspect: {suspect})" if isinstance(suspect, str) else ""))
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
    on_gpu = str(r["device"]).startswith("cuda") and num(r.get("peak_device_bytes"))
    peak = num(r.get("peak_device_bytes") if on_gpu else r.get("peak_rss_bytes"))
    w, kv = num(r.get("weights_bytes")), num(r.get("kv_cache_bytes"))
    other = max(peak - (w or 0) - (kv or 0), 0.0) if peak else None  # RSS misses mmap'd pages: clamp
    return r["format"], _mb(w), _mb(kv), _mb(other), _mb(r.get("weights_bytes_predicted"))


def plot_svgs(df, p) -> list[tuple[str, list[str]]]:
    """Returns (heading, five SVGs) per (model, host, device): quality/size, decode/size, roofline,
    memory, latency."""
    colors = {f: plots.color_for(i) for i, f in enumerate(sorted(p["format"].unique(), key=format_order))}
    d, out = prepare(df), []
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
                                   num(r.get(metric)) if metric else None, c(r)) for r in grp],
                                   [r["format"] for r in grp if r["pareto"]], ylab, metric == "kld_mean"),
            plots.decode_size_svg(f"decode-size-{slug}", [(r["format"], num(r.get("weights_bytes")),
                                  num(r.get("decode_tok_s")), num(r.get("decode_tok_s_predicted")), c(r))
                                  for r in grp], bw),
            plots.roofline_svg(f"roofline-{slug}", [(r["format"], kind, ai, fs, c(r)) for r in grp
                                                    for kind, ai, fs in r["roof_points"]], fl, bw),
            plots.memory_bars_svg(f"memory-{slug}", [_mem_bar(r) for r in grp]),
            plots.latency_svg(f"latency-{slug}", [
                (r["format"], [s * 1e3 for s in r["decode_samples_s"]], c(r))
                for r in grp if isinstance(r.get("decode_samples_s"), list)])]
        out.append((f"{model} on {device}" + (f" ({host})" if host else ""), svgs))
    return out



def _clean(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if not (isinstance(v, float) and v != v)}


def arith_rows(df) -> tuple[list[dict], list[dict]]:
    """Returns (per-variant fit summaries, ladder held-out rows) of the records that carry a fit."""
    from quantbench.arith import fit

    rows = fit.summaries([_clean(r) for r in prepare(df).to_dict("records")])
    ladder = fit.ladder_holdout(rows)
    if not any(r["fixed_s"] is not None for r in rows):  # no sweep in these records: no section
        return [], []
    rows = [r for r in rows if r["fixed_s"] is not None or len({x["model"] for x in rows}) > 1]
    rows.sort(key=lambda r: (str(r["host"]), str(r["device"]), r["threads"] or 0, r["params"] or 0,
                             str(r["model"]), format_order(r["format"])))
    return rows, ladder


def _pct(v, signed=True) -> str:
    return "—" if num(v) is None else format(100 * v, "+.1f" if signed else ".0f") + " %"


def _knee(v, max_batch=None) -> str:
    if num(v) is None:
        return "—"
    if v < 1:
        return "<1"  # compute-bound from batch 1 on
    return f"≥{max_batch}" if max_batch and v >= max_batch else f"{v:.3g}"


ARITH_HEADERS = ("model", "format", "threads", "fixed ms/step", "t_seq ms/seq", "weights at cal. BW ms",
                 "overhead share at d0", "BW_eff ≥ GB/s", "BW_eff / calibrated", "KV s/token measured",
                 "KV s/token predicted", "BW_kv / calibrated", "attn GFLOP/s fit / alone",
                 "k_mm", "GEMM GFLOP/s at B=1 fit / cal.", "GEMM GFLOP/s at B max fit / cal.",
                 "knee predicted", "knee fitted", "knee 90 %",
                 "KV bytes = pred.", "fit RMS err", "held-out errors", "interpolation errors")


def _rate(v, unit: str) -> str:
    return f"{plots.fmt_num(v)}{unit}" if num(v) is not None else "— (no bytes term fitted)"


def _ms(v) -> str:
    return "—" if num(v) is None else f"{v * 1e3:.1f}"


def _us(v) -> str:
    return "—" if num(v) is None else f"{v * 1e6:.2f} µs"


def _pair(fit, cal) -> str:
    """Returns 'fit / calibrated' in GFLOP/s, '—' for a missing side."""
    def g(v):
        return "—" if not num(v) else f"{v / 1e9:.3g}"
    return f"{g(fit)} / {g(cal)}"


def _errs(d: dict, precision: dict | None = None) -> str:
    """Returns 'tg32x64 +3.1 % (120 steps, ±2.9 %)' per point: its error, and what its median rests on."""
    def rests(w):
        n, ci = (precision or {}).get(w, (None, None))
        if num(n) is None:
            return ""
        return f" ({int(n)} steps" + (f", ±{100 * ci:.1f} %)" if ci is not None else ")")
    return "; ".join(f"{w.split('@t')[0]} {_pct(e)}{rests(w)}" for w, e in d.items()) or "—"


def arith_table(rows: list[dict]) -> list[list[str]]:
    """Returns the cells of the per-variant "Arithmetic vs measurement" table: each fitted term
    beside its physical counterpart."""
    out = []
    for r in rows:
        bw, cal, kvbw = r["bandwidth_bytes_s"], r["bandwidth_cal_bytes_s"], r["kv_bandwidth_bytes_s"]
        kv = "—" if r["kv_bytes_match"] is None else ("yes" if r["kv_bytes_match"] else "NO")
        out.append([str(r["model"]), r["format"], str(r["threads"] or ""), _ms(r["fixed_s"]),
                    _ms(r.get("seq_s")), _ms(r["weights_s"]),
                    _pct(r["overhead_share"], False), "—" if not num(bw) else f"{bw / 1e9:.2f}",
                    _pct(bw / cal if num(bw) and cal else None, False),
                    _us(r["kv_slope_s"]), _us(r["kv_slope_predicted_s"]),
                    _pct(kvbw / cal if num(kvbw) and cal else None, False),
                    _pair(r.get("attn_flop_s"), r.get("attn_cal_flop_s")),
                    "—" if not num(r.get("gemm_scale")) else f"{r['gemm_scale']:.3g}",
                    _pair(r.get("gemm1_flop_s"), r.get("gemm1_cal_flop_s")),
                    _pair(r.get("gemm_top_flop_s"), r.get("gemm_top_cal_flop_s")),
                    _knee(r["knee_predicted"]), _knee(r["knee_fit"]),
                    _knee(r["knee_plateau"], r["max_batch"]),
                    kv, _pct(r["rms_rel_err"], False), _errs(r["holdout"], r.get("precision")),
                    _errs(r.get("interp", {}), r.get("precision"))])
    return out


def arith_svgs(rows: list[dict], colors: dict) -> list[tuple[str, list[str]]]:
    """Returns (heading, SVGs) per (model, host, device, threads): decode tok/s against depth and
    against batch; then per (host, device, threads) with several models, SoL against parameters."""
    out, by = [], {}
    for r in rows:
        by.setdefault((r["model"], r["host"], r["device"], r["threads"]), []).append(r)
    for (model, host, device, threads), rs in by.items():
        slug = _slug(f"{model}-{host}-{device}-t{threads}")
        depth, batch, marks = [], [], []
        for r in rs:
            c = colors.get(r["format"], "#333")
            one = [p for p in r["points"] if p["batch"] == 1]
            zero = [p for p in r["points"] if p["depth"] == 0]
            for pts, x, target in ((one, "depth", depth), (zero, "batch", batch)):
                if len({p[x] for p in pts}) < 2:
                    continue
                target += [(r["format"], c, [(p[x], p["tok_s"]) for p in pts], "dots"),
                           (r["format"], c, [(p[x], p["fit_tok_s"]) for p in pts], "line"),
                           (r["format"], c, [(p[x], p["roofline_tok_s"]) for p in pts], "dash")]
            if len({p["batch"] for p in zero}) > 1:
                marks += [(r["knee_predicted"], f"{r['format']} knee predicted {_knee(r['knee_predicted'])}",
                           c, True),
                          (r["knee_fit"], f"{r['format']} knee fitted {_knee(r['knee_fit'])}", c, False)]
        if not depth and not batch:  # a ladder rung measured at one point: the ladder plot has it
            continue
        t = f", {threads} threads" if threads else ""
        svgs = [plots.series_svg(f"depth-{slug}", f"Decode tok/s vs KV depth (batch 1{t})",
                                 "tokens in the KV cache", "decode tok/s (log)", depth, y_log=True),
                plots.series_svg(f"batch-{slug}", f"Decode tok/s vs batch (depth 0{t})", "batch (log)",
                                 "decode tok/s, all sequences (log)", batch, x_log=True, y_log=True,
                                 marks=[m for m in marks if num(m[0])])]
        out.append((f"{model} on {device}{t}" + (f" ({host})" if host else ""), svgs))
    ladder = {}
    for r in rows:
        ladder.setdefault((r["host"], r["device"], r["threads"]), {}).setdefault(r["format"], []).append(r)
    for (host, device, threads), fmts in ladder.items():
        if max(len(v) for v in fmts.values()) < 2:
            continue
        series = [(f, colors.get(f, "#333"), [(r["params"], r["sol0"]) for r in rs], st)
                  for f, rs in fmts.items() for st in ("dots", "join")]
        t = f", {threads} threads" if threads else ""
        out.append((f"size ladder on {device}{t}", [plots.series_svg(
            _slug(f"ladder-{host}-{device}-t{threads}"), "Decode SoL vs parameters (batch 1, depth 0)",
            "parameters (log)", "decode tok/s ÷ roofline", series, x_log=True)]))
    return out


ARITH_TEXT = ("Each variant's decode sweep is fitted with t_step = t_fixed + B·t_seq + attention FLOPs ÷ "
              "R_attn + k_mm · matmul FLOPs ÷ G(B): a fixed cost per step, a cost per sequence, attention over "
              "the cached tokens (B · Σ ctx · 4·H·h FLOPs) at a fitted rate, and the batch's matmuls (B · 2 · "
              "params) priced at G(B), the GEMM rate the calibration reached at M = B rows (each power of two to 64; "
              "k_mm = 1: as fast as the calibrated GEMM). One coefficient per term, each ≥ 0, least squares on "
              "relative error; each is shown beside its physical counterpart: R_attn beside the attention "
              "kernel measured alone and, as bytes, beside the calibrated copy bandwidth (BW_kv); the matmuls' "
              "effective rate G(B)/k_mm beside G(B). Overhead share: t_fixed (with a flat-peak calibration, "
              "less the weights at the calibrated bandwidth) of the fitted step at depth 0, batch 1. KV "
              "s/token: the decode step's slope over depth, measured, and predicted as KV bytes per token ÷ "
              "calibrated bandwidth. Knee: predicted = calibrated FLOP/s ÷ bandwidth × bytes per weight ÷ "
              "FLOPs per weight (Kipply's 208 on an A100); fitted = the batch whose matmul term equals "
              "t_fixed; 90 % = smallest batch reaching 90 % of the best tok/s (≥B: not reached). Held-out "
              "errors: the deepest depth and the largest batch predicted by a fit that did not see them; "
              "interpolation: the middle depth and middle batch likewise; each with the timed steps and the "
              "CI its median rests on.")


def arith_section(df, colors: dict) -> Section | None:
    """Returns the "Arithmetic vs measurement" section, or None when no record carries a fit."""
    rows, ladder = arith_rows(df)
    if not rows:
        return None
    blocks = [Para(ARITH_TEXT),
              Table(tuple(Head(x) for x in ARITH_HEADERS),
                    tuple(Row(tuple(Cell(c, "s" if i < 2 else "") for i, c in enumerate(cells)))
                          for cells in arith_table(rows)), id="arith")]
    if ladder:
        blocks.append(Para("Size ladder, held out (t_step = t_layer · layers + bytes / BW_eff fitted on the "
                           "smaller models, the largest predicted; beside it, where calibrated, the "
                           "alternative k_bw · bytes / S(width), S the weight stream at each model's "
                           "hidden size): " + "; ".join(map(_ladder_text, ladder))))
    misses = _misses(rows)
    if misses:
        from quantbench.arith.fit import MISS
        blocks.append(Para(f"Held-out misses beyond ±{100 * MISS:.0f} %, the term that failed and the "
                           "measurement that shows it: " + "; ".join(misses) + "."))
    blocks += [Figures(heading, tuple(svgs)) for heading, svgs in arith_svgs(rows, colors)]
    return Section("Arithmetic vs measurement", tuple(blocks))


def _ladder_text(x: dict) -> str:
    """Returns one ladder row in words: the held-out error, the fitted terms and where they came from."""
    terms = f"t_layer {x['layer_s'] * 1e3:.2f} ms, BW_eff {_rate(x['bandwidth_bytes_s'], 'B/s')}"
    if x.get("rel_err_stream") is not None:
        rates = ", ".join(f"{m} {_rate(v, 'B/s')}" for m, v in x["stream_bytes_s"].items())
        terms += f"; priced at S(width) instead: {_pct(x['rel_err_stream'])}, k_bw {x['stream_scale']:.2f}, S {rates}"
    return f"{x['format']}: {x['held_out']} {_pct(x['rel_err'])} ({terms}; from {', '.join(x['fitted_on'])})"


def _misses(rows: list[dict]) -> list[str]:
    """Returns one line per held-out miss: the variant, the point, the failing term and its evidence."""
    return [f"{r['format']} ({r['model']}) {m.text()}" for r in rows for m in r.get("misses") or ()]


def arith_markdown(df) -> list[str]:
    """Returns the "Arithmetic vs measurement" table as markdown lines ([] without a fit)."""
    rows, ladder = arith_rows(df)
    if not rows:
        return []
    out = ["## Arithmetic vs measurement", "", "| " + " | ".join(ARITH_HEADERS) + " |",
           "|" + "|".join("---" if i < 2 else "---:" for i in range(len(ARITH_HEADERS))) + "|"]
    out += ["| " + " | ".join(arith_table([r])[0]) + " |" for r in rows]
    out += [""] + [f"- ladder held out (t_layer · layers + bytes / BW_eff): {_ladder_text(x)}"
                   for x in ladder]
    out += [f"- held-out miss: {m}" for m in _misses(rows)]
    return out + [""]


# The page's CSS and scripts, inline in every report (templates/). ERROR_JS runs first, so a
# failure in any later script leaves its message on <body data-jserror>. SORT_JS: click a header to
# sort by it; numbers compare as numbers (data-v), blanks always sort last; a variant row takes its
# details row (the next row, class "details") along wherever it goes.
CSS, ERROR_JS, SORT_JS = (tables.template_text(n).rstrip("\n") for n in ("report.css", "error.js", "sort.js"))


def variants_table(t) -> Table:
    """Returns the sortable variants table: one row per variant, its details line below it."""
    cols = display_columns(t)
    head = tuple(Head(h, "" if fmt else "s") for _, h, fmt in cols)
    rows = []
    for r in t.to_dict("records"):
        cls = (r["status"] + (" overhead" if r["overhead_bound"] else "")
               + (" suspect" if r["sol_suspect"] else ""))
        cells = []
        for c, _, fmt in cols:
            v = r.get(c)
            key = ("" if num(v) is None else repr(float(v))) if fmt else str(v)
            cells.append(Cell(cell_text(r, c, fmt), f"{'s ' if not fmt else ''}{c}", key))
        rows.append(Row(tuple(cells), cls))
        more = details_text(r)
        if more:
            rows.append(Row((Cell(more, span=len(cols)),), f"details {r['status']}"))
    return Table(head, tuple(rows), id="variants", cls="sortable")


def _problems(p) -> list[tuple[str, str, str, str, str]]:
    """Returns (format, device, workloads, status, reason) per variant and distinct problem."""
    out = {}
    for r in p.to_dict("records"):
        for w, s, why in r["problems"]:
            out.setdefault((r["format"], r["device"], s, why), []).append(w)
    return [(f, d, ", ".join(ws), s, why) for (f, d, s, why), ws in out.items()]



def page_sections(df, p, extra: list[Section] = ()) -> list[Section]:
    """Returns the report's sections in page order: verdict, `extra` (the parity table), variants,
    skipped and failed, arithmetic vs measurement (when a record carries a fit), plots. A new section
    is one more Section appended here (docs/report.md)."""
    verdict = [Para(v) for v in verdicts(p)] + [Para(f"Cross-backend: {line}", "check") for line in cross_backend(p)]
    verdict += [Para(f"Same number format: {line}", "check") for line in same_number_format(p)]
    problems = _problems(p)
    colors = {f: plots.color_for(i) for i, f in enumerate(sorted(p["format"].unique(), key=format_order))}
    out = [Section("Verdict", tuple(verdict)), *extra,
           Section("Variants", (variants_table(table(p)), *(Para(f, "foot") for f in footnotes(p)))),
           machine_section(machine_comparison(df.to_dict("records"))),
           Section("Skipped and failed", (Table(
               tuple(Head(h, "s") for h in ("format", "device", "workloads", "status", "reason")),
               tuple(Row(tuple(Cell(str(x), "s") for x in pr)) for pr in problems), id="problems",
               scroll=False),) if problems else (Para("none"),)),
           arith_section(df, colors),
           Section("Plots", tuple(Figures(heading, tuple(svgs)) for heading, svgs in plot_svgs(df, p)))]
    return [s for s in out if s is not None]


def machine_section(rows: list[dict]) -> Section | None:
    """Returns the machine-comparison section from pivot.machine_comparison's rows: per model,
    format and workload, each machine's measured and predicted tok/s and SoL; None with no rows."""
    if not rows:
        return None

    def fmt(v, spec: str) -> str:
        return "" if v is None else f"{v:{spec}}"

    text = ("model", "format", "workload", "machine", "device")
    head = (*(Head(h, "s") for h in text), *(Head(h, right=True) for h in ("measured tok/s", "predicted tok/s", "SoL")))
    body = tuple(Row(tuple(Cell(str(r[k]), "s") for k in text) + (
        Cell(fmt(r["measured"], ".1f")), Cell(fmt(r["predicted"], ".1f")), Cell(fmt(r["sol_frac"], ".0%"))))
        for r in rows)
    return Section("Machines compared", (
        Para("The same variant and workload on each machine; predicted and SoL from that machine's own "
             "calibrated roofline.", "foot"), Table(head, body, id="machines")))


def render_html(df, title: str = "", *, p=None, sections: list[Section] = ()) -> str:
    """Returns the self-contained HTML report (inline CSS, JS and SVG; no external assets) from
    templates/report.html.j2; p is pivot(df) when the caller has it already; `sections` go after
    the verdict."""
    if df.empty:
        raise UserError("no records to report; check the results paths")
    p = pivot(df) if p is None else p
    title = title or "quantbench report: " + ", ".join(dict.fromkeys(map(str, p["model"])))
    return tables.render("report.html.j2", title=title, facts=header_facts(df), notes=model_notes(df),
                         sections=page_sections(df, p, list(sections)), css=CSS, error_js=ERROR_JS,
                         sort_js=SORT_JS)


def render_markdown(df, *, p=None, sections: list[Section] = ()) -> str:
    """Returns the report as markdown: header, verdict, the variants table, `sections`, details,
    footnotes, problems; p is pivot(df) when the caller has it already."""
    p = pivot(df) if p is None else p
    t = table(p)
    cols = display_columns(t)
    out = ["# quantbench report: " + ", ".join(dict.fromkeys(map(str, p["model"]))), ""]
    out += [f"- **{k}**: {v}" for k, v in header_facts(df)] + [""]
    out += [x for n in model_notes(df) for x in (f"> **Note:** {n}.", "")]
    out += _summary_lines(p, t, cols)
    machines = machine_section(machine_comparison(df.to_dict("records")))
    out += [x for s in [*sections, *filter(None, [machines])] for x in ("", f"## {s.title}", "", tables.markdown(s))]
    details = [(r, details_text(r)) for r in t.to_dict("records")]
    out += [""] + [f"- {r['format']} on {r['device']}" + (f" ({r['host']})" if "host" in r else "")
                   + f": {text}" for r, text in details if text]
    out += [""] + [x for f in footnotes(p) for x in (f, "")]
    out += arith_markdown(df)
    probs = _problems(p)
    out += ["## Skipped and failed", ""] + ([f"- {f} on {d}, {w}: {s} — {why}" for f, d, w, s, why in probs]
                                           or ["none"])
    return "\n".join(out) + "\n"


def _summary_lines(p, t, cols) -> list[str]:
    out = ["## Verdict", ""] + [f"- {v}" for v in verdicts(p)]
    out += [f"- cross-backend: {c}" for c in cross_backend(p)]
    out += [f"- same number format: {c}" for c in same_number_format(p)]
    out += ["", "## Variants", "", "| " + " | ".join(h for _, h, _ in cols) + " |",
            "|" + "|".join("---:" if f else "---" for _, _, f in cols) + "|"]
    out += ["| " + " | ".join(cell_text(r, c, f).replace("|", "\\|") for c, _, f in cols) + " |"
            for r in t.to_dict("records")]
    return out


def render_summary(df) -> str:
    """Returns the verdict and the variants table as markdown (what `quantbench run` prints)."""
    p = pivot(df)
    t = table(p)
    return "\n".join(_summary_lines(p, t, display_columns(t))) + "\n"


def render_csv(df, *, p=None) -> str:
    """Returns the variants table as CSV (one row per variant, unit-named numeric columns);
    p is pivot(df) when the caller has it already."""
    return table(pivot(df) if p is None else p).to_csv(index=False)


def write_report(result_paths: list[str], out_html: str, title: str = "",
                 sections: list[Section] = ()) -> list[str]:
    """Writes out_html plus .md and .csv beside it from JSONL files or directories; returns the paths.
    `sections`: shown after the verdict (the parity table)."""
    from quantbench.core.records import read_results

    df = read_results(*result_paths)
    if df.empty:
        raise UserError(f"no records in {', '.join(map(str, result_paths))}; run `quantbench run` first")
    p = pivot(df)  # the three outputs share one pivot
    html_path = Path(out_html)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    paths = [html_path, html_path.with_suffix(".md"), html_path.with_suffix(".csv")]
    texts = (render_html(df, title, p=p, sections=sections), render_markdown(df, p=p, sections=sections),
             render_csv(df, p=p))
    for path, text in zip(paths, texts, strict=True):
        path.write_text(text, encoding="utf-8")
    return [str(x) for x in paths]
