"""Records: one flat JSON object per (model, format, device, workload), appended to a JSONL file.

Identity: schema_version, run_id, model, format, device, workload. Workloads are llama-bench
style: `pp512` (prefill 512 tokens), `tg64` (decode 64 tokens after a short prompt), `ppl512`
(quality on windows of 512 tokens), `load` (load time and memory).
Every record also carries the variant's memory figures, its status (ok/skipped/failed + reason)
and an `env` block (machine, library versions, git commit, suite hash).
Measured and predicted figures travel together: `decode_tok_s`, `decode_tok_s_predicted`,
`decode_sol_frac`. Raw timing samples are kept beside their medians (`*_samples_s`).
"""
from __future__ import annotations

import fcntl
import functools
import gzip
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 4
# Versions whose records compare with this one: each later version only added fields, and every
# field of the earlier keeps its meaning. 3 added the kernel path fields (kernel_path,
# kernel_detail, kernel_fallback) and the crash fields; 4 the timing precision fields
# (*_ci95_rel, *_stop, decode_steps_timed, ...) and the kernel-term fit fields (fit_*).
SCHEMA_ADDITIVE = {3: (2,), 4: (3, 2)}
IDENTITY = ("model", "format", "device", "workload")
LIBRARIES = ("torch", "transformers", "bitsandbytes", "gptqmodel", "llama_cpp_python", "gguf",
             "numpy", "pandas", "openvino", "optimum_intel", "nncf", "llmcompressor", "compressed_tensors")


@dataclass(frozen=True)
class Display:
    """How the report shows a field, kept beside it: the column header ('' for a column that only
    the CSV and a row's details line carry), the number format ('' for text; "rate": one decimal
    below 100, none above: 80.9 tok/s, 25200 tok/s), and where the shown unit is not the stored
    one, the scale (shown = stored × scale) and the unit-named column (weights_bytes → weights_mb)."""
    header: str = ""
    fmt: str = ""
    scale: float = 1.0
    column: str = ""


@dataclass(frozen=True)
class Field:
    """One record field: its JSON type, unit (base units), meaning, and how the report shows it
    (None: the report does not)."""
    name: str
    type: str  # str, int, float, bool, list[float], dict (None is allowed for any optional field)
    unit: str
    meaning: str
    required: bool = False
    display: Display | None = None


_PY = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "list[float]": (list,),
       "list[str]": (list,), "dict": (dict,)}


def _f(name, type_, unit, meaning, required=False, show: Display | None = None) -> Field:
    return Field(name, type_, unit, meaning, required, show)


_D = Display


# The record schema: every field a record may carry. Records are validated against it when written
# (records.append); docs/records.md's field table is generated from it (quantbench/cli/reference.py,
# checked by tests/test_docs.py); the synthetic records of the report tests are written through the same check.
SCHEMA: dict[str, Field] = {f.name: f for f in [
    # identity and provenance
    _f("schema_version", "int", "", "record schema version", True),
    _f("run_id", "str", "", "id of the run that wrote the record (UTC time + pid)"),
    _f("timestamp", "str", "", "UTC ISO time the record was written"),
    _f("model", "str", "", "model short name (embedded name, hub id, directory name, shape:NAME)", True, _D("model")),
    _f("format", "str", "", "formats-table name: fp32, bf16, fp16, bnb-int8, bnb-nf4, gptq-4b, awq-4b, "
       "gguf-*, <format>+compiled", True, _D("format")),
    _f("device", "str", "", "cpu, cuda or cuda:N", True, _D("device")),
    _f("workload", "str", "", "load, pp<N> prefill, tg<N> decode, tg<N>x<B> decode of B sequences, "
       "ppl<N_CTX> quality", True),
    _f("status", "str", "", "ok, skipped or failed", True, _D("status")),
    _f("reason", "str", "", "why skipped or failed (empty when ok)", show=_D()),
    _f("suite", "str", "", "suite name"),
    _f("suite_hash", "str", "", "hash of every suite setting"),
    _f("corpus", "str", "", "corpus name (pydoc, wikitext2, file:PATH)"),
    _f("model_note", "str", "", "caveat on the model (e.g. Q4_1 rounding); the report shows each"),
    _f("env", "dict", "", "machine, libraries, git commit"),
    # where and when it was measured (a fleet's records: one file, many machines)
    _f("host", "str", "", "host name of the machine that measured the record", show=_D("host")),
    _f("node_kind", "str", "", "`--executor ray`: the node kind (Ray resource, e.g. qb-kind:cpu-amx, "
       "accelerator_type:H100) the variant ran on; empty when the node offers none"),
    _f("ray_node_id", "str", "", "`--executor ray`: the Ray node id the variant ran on"),
    _f("started_at", "str", "", "UTC ISO time (microseconds) the workload's measurement began; with "
       "ended_at, overlapping measurements on one host show from the records alone"),
    _f("ended_at", "str", "", "UTC ISO time (microseconds) the workload's measurement ended"),
    _f("load_avg_1m", "float", "", "the machine's 1-minute load average when the workload's measurement "
       "began (it counts this run's own threads of the minute before)"),
    _f("others_busy_pct", "float", "%", "share of all CPUs' time other processes used during the "
       "workload's measurement (psutil: total busy − this process); above core.load.BUSY_PCT the "
       "report flags the row's speeds"),
    _f("build_node_id", "str", "", "`--executor ray`: the Ray node whose build task built (or found) "
       "the variant's artefact"),
    _f("build_started_at", "str", "", "`--executor ray`: UTC ISO time (microseconds) that build task "
       "began; with build_ended_at, a build overlapping a measurement on its node shows from the records"),
    _f("build_ended_at", "str", "", "`--executor ray`: UTC ISO time (microseconds) that build task ended"),
    # how it ran
    _f("backend", "str", "", "backend that ran it (hf, bnb, gptq, gguf, dummy)"),
    _f("kernel", "str", "", "kernel path that ran, named from the engine's own report: llama.cpp:AMX, "
       "llama.cpp:CPU_REPACK, llama.cpp:CPU, llama.cpp:CUDA, torch:onednn-amx-bf16, bnb:cpu-avx512, "
       "the QuantLinear class GPTQModel chose, ...", show=_D("kernel⁵")),
    _f("kernel_detail", "dict", "", "the evidence: llama.cpp buffer types and bytes, ISA flags, torch's "
       "CPU capability, oneDNN's implementation, CUDA kernel names, fallback warnings"),
    _f("kernel_path", "str", "", "engine path asked for: default, or a formats.KERNEL_PATHS name "
       "(norepack, noamx, avx2); the format's +path- suffix"),
    _f("kernel_fallback", "str", "", "empty, or the slower path taken and why (a crash on the "
       "default path, a kernel the engine could not use)", show=_D()),
    _f("decode_energy_j_per_tok", "float", "J", "GPU energy per decoded token over the timed steps, "
       "net of the idle draw (NVML total-energy counter)", show=_D("decode mJ/token", ".3g", 1e3, "decode_mj_per_tok")),
    _f("decode_energy_gross_j_per_tok", "float", "J", "the same before the idle draw is taken off"),
    _f("decode_power_w", "float", "W", "mean board power over the timed decode steps"),
    _f("gpu_idle_w", "float", "W", "the card's idle draw, sampled for 1 s by the runner before any variant ran"),
    _f("energy_source", "str", "", "the counter energy was read from"),
    _f("energy_reason", "str", "", "why a GPU record has no energy figures"),
    _f("crash_signal", "str", "", "signal that killed the worker inside the engine (SIGSEGV, ...)", show=_D()),
    _f("crash_upstream", "str", "", "the upstream issue of a known engine crash", show=_D()),
    _f("engine_log_tail", "list[str]", "", "the engine's last log lines before the crash"),
    _f("threads", "int", "", "CPU threads used"),
    _f("omp_num_threads", "int", "", "OMP_NUM_THREADS of the variant's process: set to threads by the "
       "runner (Ray would set it to the task's CPU count)"),
    _f("bits_per_weight", "float", "bit", "effective bits per quantized weight (GGUF: measured from the file)",
       show=_D("bits per weight", ".2f")),
    _f("bits_unquantized", "float", "bit", "bits per weight of the tensors the format leaves unquantized"),
    _f("group_size", "int", "", "quantization group size used (GPTQ/AWQ; a format's own, e.g. 64; "
       "GGUF MXFP4: its block)"),
    _f("quantized_layers", "int", "", "decoder Linear layers the library really quantized (torchao, HQQ; "
       "checked against all of them)"),
    _f("sym", "bool", "", "symmetric quantization (GPTQ/AWQ)"),
    _f("quantize_dtype", "str", "", "dtype GPTQModel quantized in (bfloat16; float32 on a CPU without "
       "oneDNN bf16 GEMM; float16 on CUDA)"),
    _f("calib_samples", "int", "", "GPTQ/AWQ calibration sequences actually used"),
    _f("calib_tokens", "int", "token", "tokens per calibration sequence"),
    _f("calib_iters", "int", "", "AutoRound tuning iterations per block"),
    _f("artifact", "str", "", "path of the built or given artifact"),
    _f("build_s", "float", "s", "seconds to build the artifact (0 when cached)", show=_D()),
    _f("backend_env", "str", "", "the backend environment (its own venv) the worker ran in; absent: the main one"),
    _f("artifact_bytes", "int", "byte", "bytes of the artifact's weight files on disk (torchao, HQQ, OpenVINO, "
       "compressed-tensors), "
       "beside weights_bytes in memory"),
    _f("load_s", "float", "s", "seconds to load the variant", show=_D()),
    _f("gguf_type_mix", "dict", "", "GGUF tensor type -> tensor count"),
    _f("gguf_mixed", "bool", "", "more than one quantized tensor type in the GGUF file"),
    _f("tokenizer_agree", "float", "", "fraction of a corpus sample llama.cpp tokenizes as HF does"),
    _f("llama_cpp_version", "str", "", "llama.cpp build the GGUF backend ran"),
    _f("n_gpu_layers", "int", "", "layers llama.cpp offloaded to the GPU"),
    _f("kv_bytes_per_elem", "float", "byte", "bytes per cached K/V element"),
    _f("kv_cache_source", "str", "", "how kv_cache_bytes was measured (DynamicCache tensors, llama.cpp cells)"),
    _f("kv_attend_pad", "int", "cell", "the engine pads the KV cells its attention iterates to a multiple of "
       "this (llama.cpp: 256, llama_kv_cache::get_n_kv); decode_step_attn_flops_predicted counts them"),
    _f("kv_cells_per_seq", "int", "cell", "KV cache cells per sequence of the context the workload ran in "
       "(llama_n_ctx_seq): the cap on the cells attended"),
    # memory
    _f("weights_bytes", "int", "byte", "bytes of parameters + buffers (or the GGUF tensor data)",
       show=_D("weights MB", ".1f", 1e-6, "weights_mb")),
    _f("peak_rss_bytes", "int", "byte", "peak resident memory of the variant's process (VmHWM)",
       show=_D("peak RSS MB", ".0f", 1e-6, "peak_rss_mb")),
    _f("peak_device_bytes", "int", "byte", "torch.cuda.max_memory_allocated (CUDA only)",
       show=_D("peak GPU MB", ".0f", 1e-6, "peak_device_mb")),
    _f("reserved_device_bytes", "int", "byte", "torch.cuda.max_memory_reserved (CUDA only)"),
    _f("nvml_process_bytes", "int", "byte", "NVML's view of the process's GPU memory (CUDA only)"),
    _f("kv_cache_bytes", "int", "byte", "bytes held by the KV cache after a forward of the workload's context"),
    _f("kv_type", "str", "", "KV cache element type (llama.cpp: f16, q8_0, q4_0; the +kv-<type> format twins)"),
    _f("kv_cache_bytes_per_token", "float", "byte", "KV cache bytes per cached token (llama.cpp: its logged "
       "cache size / cells)"),
    # throughput
    _f("n_prompt", "int", "token", "prompt tokens (pp, tg)"),
    _f("n_gen", "int", "token", "generated tokens (tg)"),
    _f("batch", "int", "", "sequences decoded together (tg: 1; tg<N>x<B>: B); decode_tok_s counts all of them"),
    _f("depth", "int", "token", "tokens already in the KV cache before the timed region (workload @d<D>), "
       "cached by an untimed prefill"),
    _f("prefill_tok_s", "float", "tok/s", "prompt tokens per second, median of the samples",
       show=_D("prefill tok/s", "rate")),
    _f("prefill_samples_s", "list[float]", "s", "raw prefill times"),
    _f("ttft_s", "float", "s", "time to first token, median", show=_D("TTFT ms", ".0f", 1e3, "ttft_ms")),
    _f("decode_tok_s", "float", "tok/s", "batch / median per-step decode latency", show=_D("decode tok/s", "rate")),
    _f("decode_samples_s", "list[float]", "s", "raw per-step decode latencies (every step of every repetition)"),
    _f("decode_p50_s", "float", "s", "per-step latency percentile 50", show=_D("p50 ms", ".1f", 1e3, "decode_p50_ms")),
    _f("decode_p90_s", "float", "s", "per-step latency percentile 90", show=_D("p90 ms", ".1f", 1e3, "decode_p90_ms")),
    _f("decode_p99_s", "float", "s", "per-step latency percentile 99"),
    _f("decode_tokens_timed", "int", "token", "decode tokens timed (fewer than asked when the time budget hit)"),
    _f("decode_steps_timed", "int", "", "decode steps timed (each step decodes `batch` tokens)"),
    _f("decode_repetitions", "int", "", "repetitions of prompt + decode steps the timing ran"),
    _f("decode_ci95_rel", "float", "", "half-width of the 95 % CI of the median step time (order "
       "statistics, binomial), over the median: 0.03 = ±3 %; absent with under 6 steps"),
    _f("decode_stop", "str", "", "what ended the decode timing: ci (reached ci_target), min_samples "
       "(ci_target 0: fixed repetitions), max_samples, or budget (time_budget_s of timed seconds)"),
    _f("decode_timed_s", "float", "s", "seconds of timed regions the decode timing spent (prompts and "
       "steps; a depth's untimed fill is not counted)"),
    _f("prefill_timed", "int", "", "prompts timed"),
    _f("prefill_ci95_rel", "float", "", "half-width of the 95 % CI of the median prefill time, over the "
       "median (as decode_ci95_rel)"),
    _f("prefill_stop", "str", "", "what ended the prefill timing (as decode_stop)"),
    _f("prefill_timed_s", "float", "s", "seconds of timed prompts the prefill timing spent"),
    _f("ci_target", "float", "", "the suite's precision goal for timings (0: fixed repetitions)"),
    _f("engine_prefill_s", "float", "s", "the engine's own time for the timed prompt, median (llama.cpp: "
       "llama_perf_context t_p_eval, as llama-bench counts; transformers: wall time inside model.forward)"),
    _f("harness_prefill_s", "float", "s", "median of (wall − engine) per timed prompt: what quantbench adds"),
    _f("engine_prefill_samples_s", "list[float]", "s", "raw engine times of the timed prompts"),
    _f("engine_decode_s", "float", "s", "the engine's own time per decode step, median (llama.cpp: "
       "llama_perf_context t_eval; transformers: wall time inside model.forward)",
       show=_D("engine ms/step⁴", ".2f", 1e3, "engine_decode_ms")),
    _f("harness_decode_s", "float", "s", "median of (wall − engine) per decode step: what quantbench adds "
       "(batch building, logits copy, argmax, timers)", show=_D("harness ms/step⁴", ".2f", 1e3, "harness_decode_ms")),
    _f("engine_decode_samples_s", "list[float]", "s", "raw engine times of the decode steps"),
    _f("openmp_runtime", "str", "", "OpenMP runtimes mapped into a GGUF variant's process after load "
       "('libgomp.so.1 (path)'; several joined by '; '): llama.cpp's CPU threads run on it"),
    _f("omp_wait_policy", "str", "", "OMP_WAIT_POLICY the variant's process ran under (suite key "
       "omp_wait_policy; 'default' when unset: OpenMP's own spin-then-sleep)"),
    # quality
    _f("n_ctx", "int", "token", "window length (ppl)"),
    _f("ppl", "float", "", "perplexity, llama.cpp protocol (second half of each window scored), over "
       "ppl_windows windows"),
    _f("ppl_stderr", "float", "", "standard error of ppl"),
    _f("ppl_full", "float", "", "perplexity over every position of each window"),
    _f("ppl_full_stderr", "float", "", "standard error of ppl_full"),
    _f("ppl_tokens", "int", "token", "tokens ppl is computed over"),
    _f("window_tokens", "int", "token", "scored tokens per window (window_nll's divisor)"),
    _f("ppl_windows", "int", "", "windows scored"),
    _f("ppl_windows_asked", "int", "", "windows the suite asked for"),
    _f("ppl_partial", "bool", "", "the quality budget ran out before every asked window was scored; "
       "compare this variant on common windows only", show=_D()),
    _f("window_nll", "list[float]", "nat", "sum of NLL over the scored half of each window (raw samples)"),
    _f("window_nll_full", "list[float]", "nat", "sum of NLL over every position of each window"),
    _f("kld_reference", "str", "", "format the KL-divergence is measured against"),
    _f("kld_reason", "str", "", "why no KL-divergence was measured"),
    _f("kld_mean", "float", "nat", "mean KL(reference || variant) per token", show=_D("KLD", ".4f")),
    _f("kld_p99", "float", "nat", "99th percentile of per-token KLD"),
    _f("top1_agree", "float", "", "fraction of tokens where the argmax matches the reference (same top p)",
       show=_D("top-1 %", ".1f", 100, "top1_agree_pct")),
    _f("rms_dp", "float", "", "RMS of the change in probability of the correct token"),
    _f("kld_tokens", "int", "token", "tokens the KLD statistics cover"),
    _f("bos_first", "bool", "", "ppl windows start with BOS (the tokenizer adds one: add_bos_token); "
       "false: plain chunks, each keeping its first token, as llama-perplexity cuts them"),
    # the arithmetic beside the measurement
    _f("peaks", "dict", "", "calibrated peaks of this machine: name, flop_s per dtype, bandwidth_bytes_s, "
       "memory_bytes, source, threads (the calibration's), load_avg_1m, others_busy_pct, suspect"),
    _f("peaks_spec", "dict", "", "spec-sheet peaks of the GPU (CUDA devices whose name is in the devices table)"),
    _f("params", "int", "", "the model's parameter count (the arithmetic's params_total)"),
    _f("n_layers", "int", "", "the model's decoder layers"),
    _f("weights_bytes_predicted", "int", "byte", "the arithmetic's weights_bytes, tensor by tensor from "
       "the format's layout (formats.Layout) where it has one"),
    _f("weights_layout", "list[float]", "", "[code bits, group, scale bits, zero bits] of the linears as the loaded "
       "kernel holds them, where it repacks on load (bnb NF4 on CPU: absmax in bf16); the prediction "
       "prices from it"),
    _f("bits_per_weight_predicted", "float", "bit", "effective bits per block-linear weight of the "
       "format's layout on this model (scales and zeros included)"),
    _f("kv_cache_bytes_predicted", "int", "byte", "the arithmetic's kv_cache_bytes (2·L·H_kv·h·b·T·B)"),
    _f("kv_cache_bytes_per_token_predicted", "float", "byte", "the arithmetic's KV bytes per cached token"),
    _f("prefill_tok_s_predicted", "float", "tok/s", "roofline prefill tok/s"),
    _f("decode_tok_s_predicted", "float", "tok/s", "roofline decode tok/s"),
    _f("ttft_s_predicted", "float", "s", "roofline time to first token"),
    _f("prefill_sol_frac", "float", "", "prefill_tok_s / prefill_tok_s_predicted: fraction of speed of light",
       show=_D("prefill SoL²", ".2f")),
    _f("decode_sol_frac", "float", "", "decode_tok_s / decode_tok_s_predicted: fraction of speed of light",
       show=_D("decode SoL²", ".2f")),
    _f("decode_tok_s_predicted_spec", "float", "tok/s", "decode roofline from the spec-sheet peaks (peaks_spec)"),
    _f("decode_sol_frac_spec", "float", "", "decode_tok_s / decode_tok_s_predicted_spec: speed of light vs "
       "the datasheet", show=_D("decode SoL (spec)", ".2f")),
    _f("peak_flop_s", "float", "FLOP/s", "compute peak the roofline used: the highest calibrated of "
       "formats.compute_dtypes (what the kernels compute in)"),
    _f("sol_suspect", "bool", "", "a SoL fraction above 1, or peaks calibrated beside other work: the "
       "roofline inputs read low"),
    _f("sol_suspect_reason", "str", "", "why the SoL fractions are suspect (empty when they are not)"),
    _f("flops_per_token", "int", "FLOP", "FLOPs per token of the workload"),
    _f("arith_intensity", "float", "FLOP/byte", "FLOPs per byte moved"),
    _f("bound", "str", "", "which roofline term won: memory or compute"),
    _f("decode_step_bytes_predicted", "float", "byte", "bytes one decode step reads: weights + batch × "
       "context tokens of KV, mean over the timed steps"),
    _f("decode_step_flops_predicted", "float", "FLOP", "FLOPs of one decode step (batch × flops_per_token), "
       "mean over the timed steps"),
    _f("decode_step_attn_flops_predicted", "float", "FLOP", "attention FLOPs of one decode step: batch × "
       "Σ over layers of the cached tokens × 4 · heads · head_dim (PaLM appendix B), mean over the "
       "timed steps"),
    _f("decode_step_matmul_flops_predicted", "float", "FLOP", "matmul FLOPs of one decode step: batch × 2 "
       "× active matmul params (lm_head included)"),
    _f("decode_gemm_flop_s", "float", "FLOP/s", "calibrated GEMM rate at M = batch rows for the format's "
       "compute dtypes (Peaks.gemm_flop_s_by_m at M = 1, 2, 4 ... 64; log-log between): what the step's "
       "matmuls are priced at"),
    _f("decode_gemv_bytes_s", "float", "B/s", "calibrated weight stream at M = 1 over matrices as wide "
       "as the model's hidden size, for the format's compute dtypes (Peaks.gemv_bytes_s_by_k, log-log "
       "between K = 512, 1024, 2048, 4096): what the size ladder prices a model's bytes at"),
    _f("attn_flop_s_calibrated", "float", "FLOP/s", "the attention kernel alone: one decode query over "
       "4096 cached tokens (torch scaled_dot_product_attention), the fit's attention rate's counterpart"),
    _f("knee_batch_predicted", "float", "", "decode batch where the roofline turns compute-bound: "
       "peak/bandwidth × bytes per weight ÷ FLOPs per weight (Kipply's 208 on an A100)"),
    # the step-time fit over a variant's decode sweep (quantbench/arith/fit.py), on its tg records:
    # t = fit_fixed_s + B · fit_seq_s + attn FLOPs / fit_attn_flop_s + fit_gemm_scale · matmul FLOPs / G(B)
    _f("fit_fixed_s", "float", "s", "fitted time of a decode step whatever its depth and batch "
       "(dispatch, thread wake-ups; with a flat-peak calibration also the weights' reads)"),
    _f("fit_seq_s", "float", "s", "fitted time each sequence of the batch adds beyond its matmul rows "
       "and attention (embedding row, norms, logits copy and argmax, cache bookkeeping)"),
    _f("fit_attn_flop_s", "float", "FLOP/s", "fitted attention rate: attention FLOPs over the cached "
       "tokens per second (absent: no attention cost fitted); beside attn_flop_s_calibrated"),
    _f("fit_gemm_scale", "float", "", "fitted k_mm: the step's matmuls cost k_mm × their FLOPs at the "
       "calibrated GEMM rate at M = batch (1: as fast as the calibrated GEMM)"),
    _f("fit_gemm_flop_s", "float", "FLOP/s", "the framework's effective matmul rate at this record's "
       "batch: decode_gemm_flop_s / fit_gemm_scale"),
    _f("fit_terms_s", "dict", "s", "the fitted step time split by term at this record's point: fixed, "
       "seq, attn, gemm"),
    _f("fit_bandwidth_bytes_s", "float", "byte/s", "weights_bytes_predicted / (fixed + matmul terms at "
       "batch 1, depth 0): the weights' effective bandwidth if that time were all weight reads (a lower "
       "bound)"),
    _f("fit_kv_bandwidth_bytes_s", "float", "byte/s", "the attention term as bytes: the bandwidth at "
       "which reading this point's KV cache would take the fitted attention time (absent: no attention "
       "cost fitted); beside the calibrated copy bandwidth"),
    _f("fit_peak_flop_s", "float", "FLOP/s", "schema ≤ 3 only: fitted effective compute rate of the "
       "former batch term"),
    _f("fit_points", "int", "", "decode points the fit used"),
    _f("fit_step_s", "float", "s", "fitted step time of this workload"),
    _f("fit_rel_err", "float", "", "(fitted − measured) / measured step time of this workload"),
    _f("holdout_rel_err", "float", "", "same, from a fit that left out the deepest depth and the largest "
       "batch (present on those held-out workloads only)"),
    _f("interp_rel_err", "float", "", "same, from a fit that left out the middle depth and the middle "
       "batch (of 3 or more; present on those workloads only)"),
    _f("knee_batch_fit", "float", "", "batch where the fitted matmul term, at the largest batch's GEMM "
       "rate, equals the fixed term"),
    _f("knee_batch_plateau", "int", "", "smallest measured batch reaching 90 % of the best decode tok/s"),
]}
FIELDS = {name: f.meaning for name, f in SCHEMA.items()}  # name -> meaning (older callers)


class SchemaError(ValueError):
    """A record that does not match SCHEMA: a bug in the harness, not bad user input."""


def validate(rec: dict) -> None:
    """Raises SchemaError naming every unknown field, missing required field and wrong type."""
    problems = [f"unknown field '{k}'" for k in rec if k not in SCHEMA]
    problems += [f"missing '{f.name}'" for f in SCHEMA.values() if f.required and f.name not in rec]
    for k, v in rec.items():
        f = SCHEMA.get(k)
        if f is None or v is None:
            continue
        ok = isinstance(v, _PY[f.type]) and not (isinstance(v, bool) and f.type in ("int", "float"))
        if ok and f.type == "list[float]":
            ok = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        if not ok:
            problems.append(f"'{k}' must be {f.type}, got {type(v).__name__}")
    if rec.get("status") not in (None, "ok", "skipped", "failed"):
        problems.append(f"status must be ok, skipped or failed, got {rec['status']!r}")
    if problems:
        where = "/".join(str(rec.get(k, "?")) for k in IDENTITY)
        raise SchemaError(f"record {where}: " + "; ".join(problems))


def schema_markdown() -> str:
    """Returns the record field table of docs/records.md, generated from SCHEMA."""
    rows = ["| field | type | unit | meaning |", "|---|---|---|---|"]
    for f in SCHEMA.values():
        meaning = f.meaning.replace("|", "\\|")  # a bare | would end the table cell
        rows.append(f"| `{f.name}` | {f.type} | {f.unit} | {meaning}{' (always present)' if f.required else ''} |")
    return "\n".join(rows) + "\n"


@functools.cache
def git_commit() -> str:
    """Returns the short git commit of the quantbench checkout, `+dirty` when tracked files differ
    from it ('' outside git); QUANTBENCH_GIT_COMMIT overrides it (a copied tree whose .git is not
    the one it came from, as on a lent device machine)."""
    if env := os.environ.get("QUANTBENCH_GIT_COMMIT"):
        return env
    try:
        here = Path(__file__).parent
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, cwd=here, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=here, timeout=5)
        commit = out.stdout.strip()
        return commit + ("+dirty" if commit and dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def physical_cores() -> int:
    """Returns the number of physical CPU cores (psutil; the logical count when it cannot tell)."""
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def library_versions() -> dict[str, str]:
    """Returns installed versions of the libraries that shape results ('' when absent)."""
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = importlib.metadata.version(lib.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            out[lib] = ""
    return out


def gpu_info() -> dict:
    """Returns name/driver/memory of CUDA device 0 via NVML, else torch's name and why NVML failed;
    {} without a GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(h)
        return {"gpu": name.decode() if isinstance(name, bytes) else name,
                "gpu_driver": pynvml.nvmlSystemGetDriverVersion(),
                "gpu_memory_bytes": pynvml.nvmlDeviceGetMemoryInfo(h).total}
    except Exception as e:  # no NVML library, no driver, no GPU, or a container without NVML
        nvml_error = f"{type(e).__name__}: {e}".splitlines()[0]
    try:
        import torch

        if not torch.cuda.is_available():
            return {}
        props = torch.cuda.get_device_properties(0)
        return {"gpu": props.name, "gpu_memory_bytes": int(props.total_memory),
                "gpu_info_error": f"NVML unavailable ({nvml_error}); name and memory from torch, "
                                  "no driver version"}
    except Exception:  # no torch or no CUDA: no GPU to describe
        return {}


def environment() -> dict:
    """Returns the env block every record carries."""
    import psutil

    return {"host": socket.gethostname(), "os": platform.platform(), "cpu": _cpu_model(),
            "cpu_physical_cores": physical_cores(), "cpu_logical_cores": os.cpu_count(),
            "ram_bytes": int(psutil.virtual_memory().total), "python": platform.python_version(),
            "git_commit": git_commit(), **gpu_info(), **library_versions()}


def now() -> str:
    """Returns the UTC ISO time records carry as `timestamp`."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def instant() -> str:
    """Returns the UTC ISO time to the microsecond, as `started_at` / `ended_at` carry it (these
    strings sort as the times do)."""
    import datetime

    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _set_aside_torn_tail(f, path: Path) -> None:
    """Moves an unterminated last line (a writer killed mid-line) to PATH.torn and truncates it off,
    so the next record starts on a line of its own."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return
    f.seek(max(0, size - (1 << 20)))
    tail = f.read()
    cut = size - len(tail) + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
    f.seek(cut)
    fragment = f.read()
    with open(f"{path}.torn", "ab") as torn:
        torn.write(fragment + b"\n")
    f.truncate(cut)
    print(f"warning: {path}: an unterminated last line ({len(fragment)} bytes, a writer killed "
          f"mid-record) was moved to {path}.torn", file=sys.stderr, flush=True)


def append(path: str | os.PathLike, records: list[dict]) -> None:
    """Appends records to a JSONL file under an exclusive lock: validated, one write, fsynced.

    A torn last line is set aside first; a failed write (disk full) is truncated back, so the file
    only ever holds whole records, and the error names the path.
    """
    from quantbench.core.errors import UserError

    for r in records:
        validate(r)
    path = Path(path)
    data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b", buffering=0) as f:  # unbuffered: a failed write is seen at once
            fcntl.flock(f, fcntl.LOCK_EX)
            _set_aside_torn_tail(f, path)
            size = f.seek(0, os.SEEK_END)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(f.fileno(), view):]
                os.fsync(f.fileno())
            except OSError:
                os.ftruncate(f.fileno(), size)
                raise
    except OSError as e:
        raise UserError(f"cannot write records to '{path}': {e.strerror or e}; free space or pick "
                        "another --out (records already in it are intact)") from None


def read(path: str | os.PathLike, *, quiet: bool = False) -> list[dict]:
    """Returns the records of a JSONL file. A torn last line (a writer killed mid-record) is set
    aside with a warning; any other bad line is a UserError naming the file, the line and the fix."""
    from quantbench.core.errors import UserError

    fix = "move the file aside or delete that line, then rerun"
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"results file '{path}' not found; run `quantbench run` first") from None
    except IsADirectoryError:
        raise UserError(f"'{path}' is a directory, not a results file; pass a .jsonl file") from None
    if str(path).endswith(".gz"):  # results kept small in git: results/examples/*.jsonl.gz
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise UserError(f"{path}: not a readable gzip file ({e}); recompress the .jsonl with gzip, "
                            "or pass the .jsonl itself") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text, so not a quantbench results file; {fix}") from None
    out = []
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # no newline after it: a writer died mid-record
                if not quiet:
                    print(f"warning: {path}:{i + 1}: an unterminated last line (a run killed "
                          "mid-record) is set aside", file=sys.stderr, flush=True)
                continue
            raise UserError(f"{path}:{i + 1}: not a JSON record; {fix}") from None
        bad = (not isinstance(rec, dict) or any(not isinstance(rec.get(k), str) for k in IDENTITY)
               or rec.get("status") not in ("ok", "skipped", "failed"))
        if bad:
            raise UserError(f"{path}:{i + 1}: not a quantbench record (needs string fields "
                            f"{', '.join(IDENTITY)} and status ok/skipped/failed); {fix}")
        out.append(rec)
    return out


def key(rec: dict) -> tuple:
    """Returns the identity tuple (model, format, device, workload) of a record."""
    return tuple(rec[k] for k in IDENTITY)


def read_results(*paths) -> pandas.DataFrame:  # noqa: F821
    """Returns all records of the given JSONL files (or directories of them) as a DataFrame.

    The env block is flattened into `env.*` columns; list fields (raw samples) stay lists.
    """
    import pandas as pd

    recs = []
    for p in paths:
        p = Path(p)
        files = sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
        for f in files:
            for r in read(f):
                r = dict(r)
                r["source_file"] = str(f)
                recs.append(r)
    if not recs:
        return pd.DataFrame(columns=[*IDENTITY, "status"])
    return pd.json_normalize(recs, max_level=1)
