"""Synthetic result records for the report tests (tests/test_report.py, tests/test_browser.py),
written through records.append, so each one is validated against the record schema and carries
the layouts real runs write:
8 formats on a CPU host, 6 on a CUDA host, one failed and one skipped variant, raw samples,
per-window NLL lists (one variant scored fewer windows). The CUDA decode records carry no
decode_sol_frac, so the report has to compute it from decode_tok_s_predicted."""
import math
import random

from quantbench.core import records

NOTE = "smollm2-135m: the FP16 baseline is dequantized from a Q4_1 GGUF, so every format carries Q4_1 rounding"
TOKENS_PER_WINDOW = 256
N_WINDOWS = 20
PARAMS = 134_515_008
CPU_BW, GPU_BW = 25e9, 3.35e12
CPU_FLOP_S, GPU_FLOP_S = {"fp32": 90e9, "bf16": 200e9}, {"fp32": 67e12, "bf16": 989e12}
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


def kernel_of(fmt: str, device: str) -> str:
    """Returns the kernel string a backend would record for fmt on device."""
    if fmt.startswith("gguf"):
        return f"llama.cpp {fmt[5:].upper()} ({'CUDA' if device == 'cuda' else 'CPU'})"
    if fmt.startswith("bnb"):
        return f"bitsandbytes {fmt[4:]} ({device})"
    return f"torch {fmt} eager"


def _prefill_predicted(n: int, wb: int, bw: float, peak: float) -> tuple[float, str]:
    """Returns (tok/s, bound) of a prefill of n tokens: min(peak / FLOPs per token, n × bw / weights)."""
    compute, memory = peak / (2 * PARAMS), n * bw / wb
    return (compute, "compute") if compute < memory else (memory, "memory")


def _variant(model, fmt, device, host, spec, bw, rng, calib, ts):
    mb, bpw, dlog, tok_s = spec
    wb = int(mb * 1e6)
    env = {"host": host, "cpu": "AMD EPYC 9R14", "cpu_physical_cores": 2, "ram_bytes": 8 * 2**30,
           "torch": "2.13.0", "transformers": "5.1.0", "llama_cpp_python": "0.3.16",
           "git_commit": "abc123def456", **({"gpu": "NVIDIA H100 80GB HBM3",
                                             "gpu_memory_bytes": 80 * 2**30} if device == "cuda" else {})}
    common = {"schema_version": 1, "run_id": "r1", "timestamp": ts, "model": model, "format": fmt,
              "device": device, "status": "ok", "reason": "", "suite": "default",
              "suite_hash": "0123abcd4567", "kernel": kernel_of(fmt, device), "model_note": NOTE,
              "backend": "gguf" if fmt.startswith("gguf") else "hf", "bits_per_weight": bpw,
              "weights_bytes": wb, "weights_bytes_predicted": int(wb * 0.99),
              "peak_rss_bytes": wb + 380_000_000, "kv_cache_bytes": 23_040 * 512,
              "kv_cache_bytes_predicted": 23_040 * 512, "env": env, **calib}
    if device == "cuda":
        common["peak_device_bytes"] = wb + 60_000_000
    if fmt.startswith("gguf-q"):
        common["build_s"] = round(mb / 40, 1)
    if fmt == "gguf-q4_k_m":
        common["gguf_type_mix"] = {"Q4_K": 150, "Q6_K": 31, "F32": 61}
    flops = 2 * PARAMS
    peak = (GPU_FLOP_S if device == "cuda" else CPU_FLOP_S)["fp32" if fmt == "fp32" else "bf16"]
    out = [dict(common, workload="load", load_s=round(0.4 + mb / 400, 2), bound="memory")]
    for n in (128, 512):
        pp = tok_s * (6 if device == "cpu" else 40) * (0.9 if n == 512 else 1.0)
        pred, bound = _prefill_predicted(n, wb, bw, peak)
        out.append(dict(common, workload=f"pp{n}", n_prompt=n, prefill_tok_s=pp,
                        prefill_tok_s_predicted=pred, prefill_sol_frac=pp / pred, bound=bound,
                        prefill_samples_s=[n / pp * (1 + 0.02 * k) for k in range(3)],
                        flops_per_token=flops, arith_intensity=n * flops / wb))
    lat = sorted(1 / tok_s * math.exp(rng.gauss(0, 0.12)) for _ in range(192))
    pct = lambda q: lat[int(q * (len(lat) - 1))]  # noqa: E731
    tg = dict(common, workload="tg64", n_prompt=16, n_gen=64, decode_tok_s=1 / pct(0.5),
              decode_tok_s_predicted=bw / wb, decode_sol_frac=(1 / pct(0.5)) / (bw / wb), bound="memory",
              decode_samples_s=lat, decode_p50_s=pct(0.5), decode_p90_s=pct(0.9),
              decode_p99_s=pct(0.99), ttft_s=16 / (tok_s * 6), flops_per_token=flops)
    if device == "cuda":
        del tg["decode_sol_frac"]  # older records: the report computes it
    out.append(tg)
    n_win = SHORT_WINDOWS if (fmt == SHORT_FORMAT and device == "cpu") else N_WINDOWS
    nll = [b + TOKENS_PER_WINDOW * (dlog + 0.002 * math.cos(i)) * (dlog > 0)
           for i, b in enumerate(_base_nll()[:n_win])]
    ppl = math.exp(sum(nll) / (n_win * TOKENS_PER_WINDOW))
    q = dict(common, workload="ppl512", n_ctx=512, ppl=ppl, ppl_stderr=ppl * 0.02, ppl_windows=n_win,
             window_nll=nll, kld_reference="fp32", bound="compute")
    if fmt != "fp32":
        q.update(kld_mean=dlog * 0.9, kld_p99=dlog * 9, top1_agree=1 - dlog * 2, rms_dp=dlog)
    return out + [q]


def _dead(model, fmt, device, host, status, reason):
    return [{"schema_version": 1, "run_id": "r1", "timestamp": "2025-11-20T10:00:00Z", "model": model,
             "format": fmt, "device": device, "workload": w, "status": status, "reason": reason,
             "suite": "default", "env": {"host": host}} for w in ("load", "pp128", "tg64", "ppl512")]


def synthetic(tmp_path, model="smollm2-135m") -> list[str]:
    """Writes the records under tmp_path; returns [cpu.jsonl, gpu/]: two hosts, one device each."""
    rng = random.Random(0)
    # the layouts real runs write: hardware.Peaks as a dict
    cpu_cal = {"peaks": {"name": "local-cpu", "flop_s": CPU_FLOP_S, "bandwidth_bytes_s": CPU_BW,
                         "memory_bytes": 8 * 2**30, "source": "measured"}}
    gpu_cal = {"peaks": {"name": "local-cuda", "flop_s": GPU_FLOP_S, "bandwidth_bytes_s": GPU_BW,
                         "memory_bytes": 80 * 2**30, "source": "measured"}}
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
