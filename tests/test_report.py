"""Report tests on synthetic records: 8 formats on a CPU host, 6 on a CUDA host, one failed and
one skipped variant, raw samples, per-window NLL lists (one variant scored fewer windows)."""
import argparse
import io
import math
import random
import re

import pandas as pd
import pytest

from quantbench import records, report

TOKENS_PER_WINDOW = 256
N_WINDOWS = 20
PARAMS = 134_515_008
CPU_BW, GPU_BW = 25e9, 3.35e12
# format -> (weights MB, bits/weight, per-token log-ppl increase over fp32, cpu decode tok/s)
# Pareto by hand (size vs Δppl): gguf-f16 is beaten by fp16 (smaller, better), bnb-int8 by
# gguf-q8_0 (smaller, better); everything else is on the frontier.
CPU_FORMATS = {"fp32": (538.1, 32, 0.0, 16.3), "fp16": (269.0, 16, 0.0005, 32.7),
               "gguf-f16": (270.9, 16, 0.0010, 30.1), "bnb-int8": (170.0, 8, 0.0050, 12.0),
               "gguf-q8_0": (144.8, 8.5, 0.0030, 55.2), "gguf-q4_k_m": (105.5, 4.85, 0.0400, 71.0),
               "gguf-q4_0": (90.1, 4.5, 0.0800, 80.4)}
GPU_FORMATS = {"fp32": (538.1, 32, 0.0, 150.0), "fp16": (269.0, 16, 0.0004, 160.0),
               "gguf-f16": (270.9, 16, 0.0011, 520.0), "gguf-q8_0": (144.8, 8.5, 0.0031, 610.0),
               "gguf-q4_k_m": (105.5, 4.85, 0.0410, 640.0), "gguf-q4_0": (90.1, 4.5, 0.0790, 700.0)}
CPU_PARETO = {"fp32", "fp16", "gguf-q8_0", "gguf-q4_k_m", "gguf-q4_0"}
SHORT_FORMAT, SHORT_WINDOWS = "gguf-q4_0", 12  # ran out of quality budget on the CPU


def _base_nll():
    return [TOKENS_PER_WINDOW * (math.log(11.6) + 0.05 * math.sin(i)) for i in range(N_WINDOWS)]


def _variant(model, fmt, device, host, spec, bw, rng, calib, ts):
    mb, bpw, dlog, tok_s = spec
    wb = int(mb * 1e6)
    env = {"host": host, "cpu": "AMD EPYC 9R14", "cpu_physical_cores": 2, "ram_bytes": 8 * 2**30,
           "torch": "2.13.0", "transformers": "5.1.0", "llama_cpp_python": "0.3.16",
           "git_commit": "abc123def456", **({"gpu": "NVIDIA H100 80GB HBM3",
                                             "gpu_memory_bytes": 80 * 2**30} if device == "cuda" else {})}
    common = {"schema_version": 1, "run_id": "r1", "timestamp": ts, "model": model, "format": fmt,
              "device": device, "status": "ok", "reason": "", "suite": "default",
              "suite_hash": "0123abcd4567",
              "backend": "gguf" if fmt.startswith("gguf") else "hf", "bits_per_weight": bpw,
              "weights_bytes": wb, "weights_bytes_predicted": int(wb * 0.99),
              "peak_rss_bytes": wb + 380_000_000, "kv_cache_bytes": 23_040 * 512,
              "kv_cache_bytes_predicted": 23_040 * 512, "env": env, **calib}
    if device == "cuda":
        common["peak_device_bytes"] = wb + 60_000_000
    if fmt == "gguf-q4_k_m":
        common["gguf_type_mix"] = {"Q4_K": 150, "Q6_K": 31, "F32": 61}
    flops = 2 * PARAMS
    out = [dict(common, workload="load", load_s=1.2)]
    for n in (128, 512):
        pp = tok_s * (6 if device == "cpu" else 40) * (0.9 if n == 512 else 1.0)
        out.append(dict(common, workload=f"pp{n}", n_prompt=n, prefill_tok_s=pp,
                        prefill_samples_s=[n / pp * (1 + 0.02 * k) for k in range(3)],
                        flops_per_token=flops, arith_intensity=n * flops / wb))
    lat = sorted(1 / tok_s * math.exp(rng.gauss(0, 0.12)) for _ in range(192))
    pct = lambda q: lat[int(q * (len(lat) - 1))]  # noqa: E731
    out.append(dict(common, workload="tg64", n_prompt=16, n_gen=64, decode_tok_s=1 / pct(0.5),
                    decode_tok_s_predicted=bw / wb, decode_sol_frac=(1 / pct(0.5)) / (bw / wb),
                    decode_samples_s=lat, decode_p50_s=pct(0.5), decode_p90_s=pct(0.9),
                    decode_p99_s=pct(0.99), ttft_s=16 / (tok_s * 6), flops_per_token=flops))
    n_win = SHORT_WINDOWS if (fmt == SHORT_FORMAT and device == "cpu") else N_WINDOWS
    nll = [b + TOKENS_PER_WINDOW * (dlog + 0.002 * math.cos(i)) * (dlog > 0)
           for i, b in enumerate(_base_nll()[:n_win])]
    ppl = math.exp(sum(nll) / (n_win * TOKENS_PER_WINDOW))
    q = dict(common, workload="ppl512", n_ctx=512, ppl=ppl, ppl_stderr=ppl * 0.02, ppl_windows=n_win,
             window_nll=nll, kld_reference="fp32")
    if fmt != "fp32":
        q.update(kld_mean=dlog * 0.9, kld_p99=dlog * 9, top1_agree=1 - dlog * 2, rms_dp=dlog)
    return out + [q]


def _dead(model, fmt, device, host, status, reason):
    return [{"schema_version": 1, "run_id": "r1", "timestamp": "2025-11-20T10:00:00Z", "model": model,
             "format": fmt, "device": device, "workload": w, "status": status, "reason": reason,
             "suite": "default", "env": {"host": host}} for w in ("load", "pp128", "tg64", "ppl512")]


def synthetic(tmp_path, model="smollm2-135m"):
    """Returns [cpu.jsonl, cuda.jsonl]: two hosts, one device each."""
    rng = random.Random(0)
    cpu_cal = {"calib": {"bandwidth_bytes_s": CPU_BW, "flop_s": {"fp32": 90e9, "bf16": 200e9}}}
    gpu_cal = {"peaks": {"bandwidth_bytes_s": GPU_BW, "flop_s_fp32": 67e12, "flop_s_bf16": 989e12}}
    cpu, gpu = tmp_path / "cpu.jsonl", tmp_path / "gpu" / "cuda.jsonl"
    for fmt, spec in CPU_FORMATS.items():
        records.append(cpu, _variant(model, fmt, "cpu", "bench-cpu", spec, CPU_BW, rng, cpu_cal,
                                     "2025-11-20T10:00:00Z"))
    records.append(cpu, _dead(model, "bnb-nf4", "cpu", "bench-cpu", "failed",
                              "RuntimeError: bnb 4-bit CPU kernel needs AVX512-BF16"))
    records.append(cpu, _dead(model, "awq-4b", "cpu", "bench-cpu", "skipped", "gptqmodel not installed"))
    for fmt, spec in GPU_FORMATS.items():
        records.append(gpu, _variant(model, fmt, "cuda", "bench-h100", spec, GPU_BW, rng, gpu_cal,
                                     "2025-11-22T08:00:00Z"))
    return [str(cpu), str(gpu.parent)]


@pytest.fixture
def written(tmp_path):
    paths = report.write_report(synthetic(tmp_path), str(tmp_path / "reports" / "smoke.html"))
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
    rows = re.findall(r"<tr class=.*?</tr>", body, re.S)
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
    p = report.pivot(records.read_results(*synthetic(tmp_path)))
    cpu = p[p["device"] == "cpu"]
    assert set(cpu.loc[cpu["pareto"], "format"]) == CPU_PARETO


def test_dppl_common_windows_by_hand():
    # T = 256 scored tokens per window: ppl_ref = exp(Σ ref / (4 × 256)); the variant scored 2 windows.
    ref_nll = [512.0, 520.0, 530.0, 540.0]
    ref = {"window_nll": ref_nll, "ppl": math.exp(sum(ref_nll) / 1024)}
    var = {"window_nll": [530.0, 525.0], "ppl": math.exp(1055 / 512)}
    pct, k = report.dppl_common_pct(var, ref)
    assert k == 2
    assert pct == pytest.approx((math.exp((1055 - 1032) / 512) - 1) * 100)  # 4.5946 %
    assert pct == pytest.approx(4.5946, abs=1e-4)


def test_dppl_in_report_uses_common_prefix(tmp_path, written):
    p = report.pivot(records.read_results(*synthetic(tmp_path)))
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
    assert report.SMOLLM_NOTE in html and report.SMOLLM_NOTE in md
    assert re.search(r"cpu: gguf-f16 vs fp16 ppl differs by \+0\.0\d % on 20 common windows ✓", html)
    assert "25GB/s" in html and "fp32 90GFLOP/s" in html  # calibrated peaks in the header


def test_markdown_and_csv(written):
    _, (_, md, csv) = written
    assert re.search(r"^\| format \| device \| host \| bits/weight \| weights MB \|", md, re.M)
    assert md.count("\n| ") == 1 + len(CPU_FORMATS) + 2 + len(GPU_FORMATS)
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
    ap = argparse.ArgumentParser()
    report.add_report_parser(ap.add_subparsers())
    out = tmp_path / "r" / "x.html"
    args = ap.parse_args(["report", *synthetic(tmp_path), "-o", str(out)])
    assert args.func(args) == 0
    assert out.exists() and out.with_suffix(".csv").exists()
    assert str(out) in capsys.readouterr().out


def test_missing_fields_do_not_crash(tmp_path):
    f = tmp_path / "bare.jsonl"
    records.append(f, [{"model": "m", "format": "fp32", "device": "cpu", "workload": "tg8", "status": "ok"},
                       {"model": "m", "format": "gguf-q4_0", "device": "cpu", "workload": "pp64",
                        "status": "failed", "reason": "boom"}])
    html = report.render_html(records.read_results(f))
    assert "boom" in html and html.count('class="plot"') == 5


def test_partial_variant_and_kld_only_quality(tmp_path):
    f = tmp_path / "kld.jsonl"
    base = {"model": "m", "device": "cpu", "status": "ok", "weights_bytes": 0}
    recs = []
    for fmt, wb, kld in (("fp32", 500e6, None), ("gguf-q8_0", 140e6, 0.003), ("gguf-q4_0", 90e6, 0.07),
                         ("gguf-q4_k_m", 80e6, 0.08)):
        recs.append(dict(base, format=fmt, workload="tg16", weights_bytes=wb, decode_tok_s=25e9 / wb / 3))
        recs.append(dict(base, format=fmt, workload="ppl512", weights_bytes=wb, kld_reference="fp32",
                         **({"kld_mean": kld} if kld else {})))
    recs[-1] = dict(recs[-1], status="failed", reason="quality budget exceeded")  # q4_k_m: partial
    records.append(f, recs)
    df = records.read_results(f)
    p = report.pivot(df)
    assert set(p.loc[p["pareto"], "format"]) == {"gguf-q8_0", "gguf-q4_0"}  # q4_k_m has no KLD
    row = p[p["format"] == "gguf-q4_k_m"].iloc[0]
    assert row["status"] == "partial" and row["reason"] == "ppl512: quality budget exceeded"
    html = report.render_html(df)
    assert "mean KLD vs reference (log)" in html
    assert "partial: ppl512: quality budget exceeded" in html
    assert "fastest decode: gguf-q4_k_m" in html  # a partial variant still counts where it ran
