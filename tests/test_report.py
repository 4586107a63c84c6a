"""Report tests on synthetic records (tests/synthetic.py): 8 formats on a CPU host, 6 on a CUDA
host, one failed and one skipped variant, raw samples, per-window NLL lists (one variant scored
fewer windows)."""
import io
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
from synthetic import (
    CPU_FORMATS,
    CPU_PARETO,
    GPU_FORMATS,
    NOTE,
    SHORT_FORMAT,
    SHORT_WINDOWS,
    kernel_of,
    synthetic,
)

from quantbench.core import records
from quantbench.report import pivot, render


@pytest.fixture
def written(tmp_path):
    paths = render.write_report(synthetic(tmp_path), str(tmp_path / "reports" / "smoke.html"))
    return paths, [open(p, encoding="utf-8").read() for p in paths]


def _svg(html, plot_id):
    m = re.search(rf'<svg id="{plot_id}" class="plot".*?</svg>', html, re.S)
    assert m, f"plot {plot_id} missing"
    return m.group(0)


def test_write_report_paths(written):
    paths, _ = written
    assert [p.rsplit(".", 1)[1] for p in paths] == ["html", "md", "csv"]


def test_every_variant_row_present(written):
    _, (html, _, _) = written
    body = re.search(r'<table class="sortable" id="variants">.*?</table>', html, re.S).group(0)
    rows = re.findall(r'<tr class="(?!details).*?</tr>', body, re.S)
    assert len(rows) == len(CPU_FORMATS) + 2 + len(GPU_FORMATS)
    for device, fmts in (("cpu", [*CPU_FORMATS, "bnb-nf4", "awq-4b"]), ("cuda", GPU_FORMATS)):
        for fmt in fmts:
            assert any(f'data-v="{fmt}"' in r and f'data-v="{device}"' in r for r in rows), (fmt, device)
    assert "RuntimeError: bnb 4-bit CPU kernel needs AVX512-BF16" in html
    assert "gptqmodel not installed" in html
    assert "bench-cpu" in html and "bench-h100" in html  # two hosts: host column
    assert "overhead-bound" in html


def test_five_plots_per_device_with_points(written):
    _, (html, _, _) = written
    for device, n in (("cpu", len(CPU_FORMATS)), ("cuda", len(GPU_FORMATS))):
        assert _svg(html, f"quality-size-{device}").count("<circle") >= n
        decode = _svg(html, f"decode-size-{device}")
        assert decode.count("<circle") >= 2 * n and 'class="roof"' in decode  # measured + predicted
        roof = _svg(html, f"roofline-{device}")
        assert roof.count("<rect") >= 2 * n and roof.count("<circle") >= n  # 2 prefill + 1 decode each
        assert roof.count('class="roof"') == 3  # memory slope + fp32 and bf16 roofs
        assert _svg(html, f"memory-{device}").count("<rect") >= 3 * n
        assert _svg(html, f"latency-{device}").count("<circle") >= 100 * n
    assert len(re.findall(r'<svg id="[^"]+" class="plot"', html)) == 10


def test_pareto_set_by_hand(tmp_path):
    p = pivot.pivot(records.read_results(*synthetic(tmp_path)))
    cpu = p[p["device"] == "cpu"]
    assert set(cpu.loc[cpu["pareto"], "format"]) == CPU_PARETO


def test_dppl_common_windows_by_hand():
    # T = 256 scored tokens per window: ppl_ref = exp(Σ ref / (4 × 256)); the variant scored 2 windows.
    ref_nll = [512.0, 520.0, 530.0, 540.0]
    ref = {"window_nll": ref_nll, "ppl": math.exp(sum(ref_nll) / 1024)}
    var = {"window_nll": [530.0, 525.0], "ppl": math.exp(1055 / 512)}
    pct, k = pivot.dppl_common_pct(var, ref)
    assert k == 2
    assert pct == pytest.approx((math.exp((1055 - 1032) / 512) - 1) * 100)  # 4.5946 %
    assert pct == pytest.approx(4.5946, abs=1e-4)


def test_dppl_in_report_uses_common_prefix(tmp_path, written):
    p = pivot.pivot(records.read_results(*synthetic(tmp_path)))
    row = p[(p["device"] == "cpu") & (p["format"] == SHORT_FORMAT)].iloc[0]
    assert row["dppl_windows"] == SHORT_WINDOWS
    # by hand: per-window extra NLL is 256 × (0.08 + 0.002 cos i) over windows 0..11
    extra = sum(0.08 + 0.002 * math.cos(i) for i in range(SHORT_WINDOWS)) / SHORT_WINDOWS
    assert row["dppl_pct"] == pytest.approx((math.exp(extra) - 1) * 100, rel=1e-9)
    _, (html, md, _) = written
    assert "common prefix" in html and "common prefix" in md
    assert "(12w)" in html


def test_verdict_note_and_cross_backend(written):
    _, (html, md, _) = written
    assert "smallest weights: gguf-q4_0" in html and "fastest decode: gguf-q4_0" in html
    assert "Pareto set (quality vs size): fp32, fp16, gguf-q8_0, gguf-q4_k_m, gguf-q4_0" in html
    assert NOTE in html and NOTE in md  # the records' own model_note
    assert re.search(r"cpu: gguf-f16 vs fp16 ppl differs by \+0\.0\d % on 20 common windows ✓", html)
    assert "25GB/s" in html and "fp32 90GFLOP/s" in html  # calibrated peaks in the header


def test_markdown_and_csv(written):
    _, (_, md, csv) = written
    assert re.search(r"^\| format \| device \| host \| bits per weight \| weights MB \|", md, re.M)
    variants = md.split("\n## Variants\n")[1].split("\n## ")[0]  # not the machines compared after it
    assert variants.count("\n| ") == 1 + len(CPU_FORMATS) + 2 + len(GPU_FORMATS)
    t = pd.read_csv(io.StringIO(csv))
    assert len(t) == len(CPU_FORMATS) + 2 + len(GPU_FORMATS)
    want = {"format", "device", "weights_mb", "decode_tok_s", "dppl_pct", "prefill_tok_s@pp512"}
    assert want <= set(t.columns)
    failed = t[t["format"] == "bnb-nf4"].iloc[0]
    assert failed["status"] == "failed" and "AVX512" in failed["reason"]


def test_no_external_assets(written):
    _, (html, _, _) = written
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "http://" not in html and "https://" not in html


def test_cli_parser(tmp_path, capsys):
    from quantbench.cli.main import main

    out = tmp_path / "r" / "x.html"
    assert main(["report", *synthetic(tmp_path), "-o", str(out)]) == 0
    assert out.exists() and out.with_suffix(".csv").exists()
    assert str(out) in capsys.readouterr().out


def test_missing_fields_do_not_crash(tmp_path):
    f = tmp_path / "bare.jsonl"
    records.append(f, [{"model": "m", "format": "fp32", "device": "cpu", "workload": "tg8", "status": "ok",
                        "schema_version": 2},
                       {"model": "m", "format": "gguf-q4_0", "device": "cpu", "workload": "pp64",
                        "status": "failed", "reason": "boom", "schema_version": 2}])
    html = render.render_html(records.read_results(f))
    assert "boom" in html and html.count('class="plot"') == 5


def test_partial_variant_and_kld_only_quality(tmp_path):
    f = tmp_path / "kld.jsonl"
    base = {"model": "m", "device": "cpu", "status": "ok", "weights_bytes": 0, "schema_version": 2}
    recs = []
    for fmt, wb, kld in (("fp32", 500e6, None), ("gguf-q8_0", 140e6, 0.003), ("gguf-q4_0", 90e6, 0.07),
                         ("gguf-q4_k_m", 80e6, 0.08)):
        recs.append(dict(base, format=fmt, workload="tg16", weights_bytes=int(wb), decode_tok_s=25e9 / wb / 3))
        recs.append(dict(base, format=fmt, workload="ppl512", weights_bytes=int(wb), kld_reference="fp32",
                         **({"kld_mean": kld} if kld else {})))
    recs[-1] = dict(recs[-1], status="failed", reason="quality budget exceeded")  # q4_k_m: partial
    records.append(f, recs)
    df = records.read_results(f)
    p = pivot.pivot(df)
    assert set(p.loc[p["pareto"], "format"]) == {"gguf-q8_0", "gguf-q4_0"}  # q4_k_m has no KLD
    row = p[p["format"] == "gguf-q4_k_m"].iloc[0]
    assert row["status"] == "partial" and row["reason"] == "ppl512: quality budget exceeded"
    html = render.render_html(df)
    assert "mean KLD vs reference (log)" in html
    assert "partial: ppl512: quality budget exceeded" in html
    assert "fastest decode: gguf-q4_k_m" in html  # a partial variant still counts where it ran


def test_details_line_kernel_bound_load(written):
    _, (html, md, csv) = written
    body = re.search(r'<table class="sortable" id="variants">.*?</table>', html, re.S).group(0)
    pairs = re.findall(r'<tr class="(?!details)[^"]*">(.*?)</tr>'
                       r'<tr class="details \w+"><td colspan="(\d+)">(.*?)</td></tr>', body)
    assert len(pairs) == len(CPU_FORMATS) + 2 + len(GPU_FORMATS)
    assert {int(n) for _, n, _ in pairs} == {len(re.findall(r"<th[ >]", body))}  # one cell spans the row
    details = {tuple(re.findall(r'data-v="([^"]*)"', row)[:2]): text for row, _, text in pairs}
    q4 = details["gguf-q4_k_m", "cpu"]
    assert f" · kernel: {kernel_of('gguf-q4_k_m', 'cpu')} · " in q4
    assert "bound: decode memory, prefill compute" in q4  # the CPU's prefill hits the bf16 roof
    assert "load 0.66 s, build 2.6 s" in q4 and "GGUF tensor types: F32×61, Q4_K×150, Q6_K×31" in q4
    assert details["bnb-nf4", "cpu"] == "failed: RuntimeError: bnb 4-bit CPU kernel needs AVX512-BF16"
    # 12 tok/s measured ÷ (25 GB/s ÷ 170 MB) predicted = 8.16 % (from the sampled median: 8.19 %)
    overhead = "overhead-bound: decode at 8.1% of its roofline, below 30% · kernel: bitsandbytes int8"
    assert details["bnb-int8", "cpu"].startswith(overhead)
    assert "decode at 29.9% of its roofline" in q4  # 0.2997: rounded down, never "30.0 %"
    gpu = details["fp32", "cuda"]
    assert "bound: decode memory, prefill compute" in gpu and "build" not in gpu  # 67 TFLOP/s fp32 roof
    assert f"- gguf-q4_k_m on cpu (bench-cpu): {q4}" in md
    t = pd.read_csv(io.StringIO(csv))
    assert {"kernel", "decode_bound", "prefill_bound", "load_s", "prefill_sol_frac"} <= set(t.columns)


def test_sol_fractions_prefill_beside_decode(tmp_path):
    df = records.read_results(*synthetic(tmp_path))
    p = pivot.pivot(df)
    cuda = p[p["device"] == "cuda"]
    # the CUDA records carry no decode_sol_frac: measured / predicted, by hand bandwidth / weights
    want = cuda["decode_tok_s"] / (3.35e12 / cuda["weights_bytes"])
    assert cuda["decode_sol_frac"].tolist() == pytest.approx(want.tolist())
    fp32 = p[(p["device"] == "cpu") & (p["format"] == "fp32")].iloc[0]
    # pp512 on the CPU: 16.3 × 6 × 0.9 tok/s ÷ (90 GFLOP/s ÷ 2 × 134.5 M FLOP/token) = 0.2631
    assert fp32["prefill_sol_workload"] == "pp512"
    assert fp32["prefill_sol_frac"] == pytest.approx(16.3 * 6 * 0.9 / (90e9 / (2 * 134_515_008)))
    assert fp32["prefill_sol_frac"] == pytest.approx(0.2631, abs=1e-4)
    heads = [h for _, h, _ in render.display_columns(render.table(p))]
    assert heads.index("prefill SoL²") + 1 == heads.index("decode SoL²")
    assert render.cell_text({"t": 25200.4}, "t", "rate") == "25200"
    assert render.cell_text({"t": 80.94}, "t", "rate") == "80.9"
    assert "decode SoL (spec)" not in heads  # no record carries the datasheet twin


def test_spec_sheet_sol_beside_calibrated(tmp_path):
    # GPU records carry decode SoL against the calibrated copy bandwidth and against the datasheet's
    files = synthetic(tmp_path)
    gpu = next(Path(files[1]).glob("*.jsonl"))
    recs = records.read(gpu)
    for r in recs:
        if r["workload"] == "tg64":
            r["decode_tok_s_predicted_spec"] = 4.0e12 / r["weights_bytes"]  # a faster datasheet
            r["decode_sol_frac_spec"] = r["decode_tok_s"] / r["decode_tok_s_predicted_spec"]
    gpu.unlink()
    records.append(gpu, recs)
    t = render.table(pivot.pivot(records.read_results(*files)))
    heads = [h for _, h, _ in render.display_columns(t)]
    assert heads.index("decode SoL²") + 1 == heads.index("decode SoL (spec)")
    cuda = t[t["device"] == "cuda"]
    assert cuda["decode_sol_frac_spec"].notna().all()
    assert t[t["device"] == "cpu"]["decode_sol_frac_spec"].isna().all()
    # calibrated 3.35 TB/s vs datasheet 4.0 TB/s: the spec fraction is 3.35 / 4.0 of the other
    want = cuda["decode_sol_frac"] * 3.35 / 4.0
    assert cuda["decode_sol_frac_spec"].tolist() == pytest.approx(want.tolist())


def test_write_report_pivots_once(tmp_path, monkeypatch):
    calls = []
    real = render.pivot
    monkeypatch.setattr(render, "pivot", lambda df: calls.append(1) or real(df))
    render.write_report(synthetic(tmp_path), str(tmp_path / "once.html"))
    assert len(calls) == 1


def test_script_marks_ready_and_errors(written):
    _, (html, _, _) = written
    head, body = html.split("</head>")
    assert "window.onerror" in head  # installed before any other script runs
    assert body.rstrip().endswith("</script></main></body></html>")
    assert 'document.body.dataset.ready = "1"' in body and "details" in render.SORT_JS


def test_compiled_twin_beside_eager(tmp_path):
    # fp16+compiled decoding 2.5x its eager fp16 says so in its details line
    files = synthetic(tmp_path)
    gpu = next(Path(files[1]).glob("*.jsonl"))
    twin = [dict(r, format="fp16+compiled", kernel="torch.compile(reduce-overhead) static cache, float16",
                 **({"decode_tok_s": 2.5 * r["decode_tok_s"]} if r["workload"] == "tg64" else {}))
            for r in records.read(gpu) if r["format"] == "fp16"]
    records.append(gpu, twin)
    t = render.table(pivot.pivot(records.read_results(*files)))
    rows = {r["format"]: r for r in t.to_dict("records") if r["device"] == "cuda"}
    assert rows["fp16+compiled"]["decode_vs_eager"] == pytest.approx(2.5)
    assert "decode 2.50× the eager fp16" in render.details_text(rows["fp16+compiled"])
    assert "× the eager" not in render.details_text(rows["fp16"])


def test_batched_decode_column(tmp_path):
    files = synthetic(tmp_path)
    gpu = next(Path(files[1]).glob("*.jsonl"))
    batched = [dict(r, workload="tg64x8", batch=8, decode_tok_s=6.5 * r["decode_tok_s"])
               for r in records.read(gpu) if r["workload"] == "tg64"]
    records.append(gpu, batched)
    t = render.table(pivot.pivot(records.read_results(*files)))
    heads = [h for _, h, _ in render.display_columns(t)]
    assert heads.index("decode tok/s") + 1 == heads.index("decode tok/s ×8 seqs")
    cuda = t[t["device"] == "cuda"]
    assert (cuda["decode_tok_s@b8"] / cuda["decode_tok_s"]).tolist() == pytest.approx([6.5] * len(cuda))
    assert t[t["device"] == "cpu"]["decode_tok_s@b8"].isna().all()


def test_a_row_timed_beside_other_work_says_so(tmp_path):
    from quantbench.core.load import BUSY_PCT

    files = synthetic(tmp_path)
    cpu = Path(files[0])
    busy = {("fp16", "tg64"): BUSY_PCT + 25, ("fp32", "tg64"): BUSY_PCT - 5}  # one over, one under
    recs = [dict(r, others_busy_pct=busy[r["format"], r["workload"]]) if (r["format"], r["workload"]) in busy
            else r for r in records.read(cpu)]
    cpu.write_text("".join(json.dumps(r) + "\n" for r in recs))
    rows = {(r["format"], r["device"]): r for r in pivot.pivot(records.read_results(*files)).to_dict("records")}
    flag = "other processes used 35% of the CPUs while its speeds were timed"
    assert flag in render.details_text(rows["fp16", "cpu"])
    assert "other processes used" not in render.details_text(rows["fp32", "cpu"])


def test_peaks_are_the_gemm_peaks_not_the_decode_shaped_rates():
    # The README run's header read "bf16 1.7GFLOP/s, fp32 23.8GFLOP/s" (the attention kernel alone)
    # where the calibrated GEMM peaks were 394 and 181, and the roofline drew those roofs.
    from quantbench.report import pivot

    rec = {"peaks.bandwidth_bytes_s": 41e9, "peaks.attn_flop_s.bf16": 1.7e9, "peaks.attn_flop_s.fp32": 23.8e9,
           "peaks.flop_s.bf16": 394e9, "peaks.flop_s.fp32": 181e9,
           "peaks.gemm_flop_s_by_m.bf16.1": 7.8e9, "peaks.gemm_flop_s_by_m.bf16.64": 265e9}
    assert pivot.peaks([rec]) == (41e9, {"bf16": 394e9, "fp32": 181e9})


def _nll_rows(shift: list[float], a="torchao-int8wo", b="bnb-int8", tokens=256) -> pd.DataFrame:
    base = [600.0 + 37.0 * (i % 5) for i in range(len(shift))]  # windows of unequal difficulty
    row = {"model": "m", "host": "h", "device": "cpu", "n_ctx": 512, "window_tokens": tokens, "ppl": 10.0}
    return pd.DataFrame([{**row, "format": a, "window_nll": base},
                         {**row, "format": b, "window_nll": [x + s for x, s in zip(base, shift, strict=True)]}])


def test_same_number_format_pairs_are_judged_on_paired_window_noise():
    # b costs 0.02 nats per token more on every window, ± 0.01 alternating: mean 0.02, sd of
    # the per-window differences sqrt(20/19) x 0.01, t(0.975, 19) = 2.093
    d_tok = [0.02 + (0.01 if i % 2 else -0.01) for i in range(20)]
    p = _nll_rows([x * 256 for x in d_tok])
    d, ci, k = pivot.paired_dppl(p.iloc[1].to_dict(), p.iloc[0].to_dict())
    assert k == 20 and d == pytest.approx(100 * (math.exp(0.02) - 1), rel=1e-9)
    half = 2.093 * 0.01 * math.sqrt(20 / 19) / math.sqrt(20)
    assert ci == pytest.approx(100 * (math.exp(0.02 + half) - math.exp(0.02)), rel=1e-3)
    (line,) = pivot.same_number_format(p)
    assert line.startswith("cpu: bnb-int8 vs torchao-int8wo (int8 weights, one scale per output channel): ppl +2.02 %")
    assert "✗ differ beyond noise: bitsandbytes' LLM.int8 is not weight-only" in line
    # the same spread around a zero mean: within noise, although each window moves by 1 %
    p = _nll_rows([(0.01 if i % 2 else -0.01) * 256 for i in range(20)])
    assert "✓ agree within noise" in pivot.same_number_format(p)[0]
    # a pair the table does not list, or fewer than 3 common windows: no line
    assert pivot.same_number_format(_nll_rows([1.0] * 20, b="gguf-q8_0")) == []
    assert pivot.same_number_format(_nll_rows([1.0] * 2)) == []


def test_same_number_format_pairs_name_real_formats_that_share_their_weight_bits():
    from quantbench.core.formats import FORMATS, SAME_NUMBER_FORMAT

    for pair in SAME_NUMBER_FORMAT:
        a, b = FORMATS[pair.a], FORMATS[pair.b]
        assert pair.a != pair.b and pair.differs
        assert round(a.bits_per_weight) == round(b.bits_per_weight) == 8, pair  # all int8 today
