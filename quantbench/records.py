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
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
from pathlib import Path

SCHEMA_VERSION = 1
IDENTITY = ("model", "format", "device", "workload")
STATUSES = ("ok", "skipped", "failed")
LIBRARIES = ("torch", "transformers", "bitsandbytes", "gptqmodel", "llama_cpp_python", "gguf",
             "numpy", "pandas")

# Field -> meaning, the schema the README documents; tests check every record against it.
FIELDS = {
    "schema_version": "record schema version",
    "run_id": "id of the run that wrote the record (UTC time + pid)",
    "timestamp": "UTC ISO time the record was written",
    "model": "model short name (embedded name, hub id or directory name)",
    "format": "formats-table name: fp32, bf16, fp16, bnb-int8, bnb-nf4, gptq-4b, awq-4b, gguf-*",
    "device": "cpu, cuda or cuda:N",
    "workload": "pp<N> prefill, tg<N> decode, tg<N>x<B> decode of B sequences, ppl<N_CTX> quality, load",
    "status": "ok, skipped or failed",
    "reason": "why skipped or failed (empty when ok)",
    "suite": "suite name",
    "suite_hash": "hash of every suite setting",
    "backend": "backend that ran it (hf, bnb, gptq, gguf, dummy)",
    "kernel": "kernel or code path that ran (e.g. TorchQuantLinear, llama.cpp CPU)",
    "threads": "CPU threads used",
    "bits_per_weight": "effective bits per quantized weight (GGUF: measured from the file)",
    "group_size": "quantization group size used (GPTQ/AWQ)",
    "artifact": "path of the built or given artifact",
    "build_s": "seconds to build the artifact (0 when cached)",
    "load_s": "seconds to load the variant",
    "weights_bytes": "bytes of parameters + buffers (or the GGUF tensor data)",
    "peak_rss_bytes": "peak resident memory of the variant's process",
    "peak_device_bytes": "torch.cuda.max_memory_allocated (CUDA only)",
    "kv_cache_bytes": "bytes held by the KV cache after a forward of the workload's context",
    "kv_type": "KV cache element type (llama.cpp: f16, q8_0, q4_0 ...; the +kv-<type> format twins)",
    "kv_cache_bytes_per_token": "KV cache bytes per cached token (llama.cpp: its logged cache size / cells)",
    "n_prompt": "prompt tokens (pp, tg)",
    "n_gen": "generated tokens (tg)",
    "batch": "sequences decoded together (tg: 1; tg<N>x<B>: B); decode_tok_s counts all of them",
    "prefill_tok_s": "prompt tokens per second, median of the samples",
    "prefill_samples_s": "raw prefill times",
    "ttft_s": "time to first token, median",
    "decode_tok_s": "1 / median per-token decode latency",
    "decode_samples_s": "raw per-token decode latencies (every step of every repetition)",
    "decode_p50_s": "per-token latency percentile 50",
    "decode_p90_s": "per-token latency percentile 90",
    "decode_p99_s": "per-token latency percentile 99",
    "decode_tokens_timed": "decode steps timed (fewer than asked when the time budget hit)",
    "n_ctx": "window length (ppl)",
    "ppl": "perplexity, llama.cpp protocol (second half of each window scored)",
    "ppl_stderr": "standard error of ppl",
    "ppl_full": "perplexity over every position of each window",
    "ppl_windows": "windows scored",
    "window_nll": "sum of NLL over the scored half of each window (raw samples)",
    "window_nll_full": "sum of NLL over every position of each window",
    "kld_reference": "format the KL-divergence is measured against",
    "kld_mean": "mean KL(reference || variant) per token",
    "kld_p99": "99th percentile of per-token KLD",
    "top1_agree": "fraction of tokens where the argmax matches the reference (same top p)",
    "rms_dp": "RMS of the change in probability of the correct token",
    "kld_tokens": "tokens the KLD statistics cover",
    "env": "machine, libraries, git commit",
    "peaks": "calibrated peaks of this machine: flop_s per dtype, bandwidth_bytes_s, memory_bytes",
    "peaks_spec": "spec-sheet peaks of the GPU (CUDA devices whose name is in the devices table)",
    "decode_tok_s_predicted_spec": "decode roofline from the spec-sheet peaks (peaks_spec)",
    "decode_sol_frac_spec": "decode_tok_s / decode_tok_s_predicted_spec: speed of light vs the datasheet",
}
PREDICTED = ("weights_bytes", "kv_cache_bytes", "prefill_tok_s", "decode_tok_s", "ttft_s")


@functools.cache
def git_commit() -> str:
    """Returns the short git commit of the quantbench checkout, or '' outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip()
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


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


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
    """Returns name/driver/memory of CUDA device 0 via NVML or torch, or {} without a GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(h)
        return {"gpu": name.decode() if isinstance(name, bytes) else name,
                "gpu_driver": pynvml.nvmlSystemGetDriverVersion(),
                "gpu_memory_bytes": pynvml.nvmlDeviceGetMemoryInfo(h).total}
    except Exception:  # no NVML library, no driver, no GPU: all mean "no GPU info"
        return {}


def environment() -> dict:
    """Returns the env block every record carries."""
    from quantbench.suite import physical_cores

    return {"host": socket.gethostname(), "os": platform.platform(), "cpu": _cpu_model(),
            "cpu_physical_cores": physical_cores(), "cpu_logical_cores": os.cpu_count(),
            "ram_bytes": _ram_bytes(), "python": platform.python_version(),
            "git_commit": git_commit(), **gpu_info(), **library_versions()}


def append(path: str | os.PathLike, records: list[dict]) -> None:
    """Appends records to a JSONL file under an exclusive lock, one line each, fsynced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())


def read(path: str | os.PathLike) -> list[dict]:
    """Returns the records of a JSONL file; a truncated last line (crash mid-write) is skipped."""
    from quantbench.errors import UserError

    out = []
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise UserError(f"results file '{path}' not found; run `quantbench run` first") from None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue
            raise UserError(f"{path}:{i + 1}: not a JSON record; the file is corrupt") from None
        if not isinstance(rec, dict) or any(k not in rec for k in IDENTITY + ("status",)):
            raise UserError(f"{path}:{i + 1}: not a quantbench record (needs {IDENTITY} and status)")
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
