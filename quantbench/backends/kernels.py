"""Which kernels ran: read from the engines' own reports, never from the format's name.

- torch on CPU: `torch.backends.cpu.get_cpu_capability()` (the ATen ISA), oneDNN's verbose log
  of the primitives it executed (`onednn_verbose,...,exec,cpu,matmul,brg_matmul:avx512_core_amx,...`:
  the implementation names the ISA, AMX included), and the profiler's op names (aten::_int_mm,
  aten::_weight_int4pack_mm_for_cpu, bitsandbytes:: ops, ...).
- CUDA (every engine in the process, llama.cpp's too): the CUDA kernels the profiler (CUPTI) saw,
  by device time, classified by name (KERNEL_CLASSES).

Each probe runs one short step of the loaded model under observation, at load time.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import re
import tempfile
from collections import Counter

# CUDA kernel name -> short class, first match wins (names as CUPTI reports them).
KERNEL_CLASSES: tuple[tuple[str, str], ...] = (
    (r"marlin", "marlin"), (r"machete", "machete"), (r"exllama", "exllama"),
    (r"mul_mat_vec_q|mmvq", "llama.cpp-mmvq"), (r"mul_mat_q|mmq", "llama.cpp-mmq"),
    (r"mul_mat_vec|mmv", "llama.cpp-mmv"), (r"mul_mat_f\b|mul_mat_f<|mmf", "llama.cpp-mmf"),
    (r"flash_attn_ext", "llama.cpp-fattn"),
    (r"gemm_4bit|gemv_4bit|kdequantize|kint8|int8_linear|igemmlt|bitsandbytes", "bnb"),
    (r"flash|fmha|sdpa", "flash-attention"), (r"^triton_|_kernel$", "triton"),
    (r"sm90_xmma|xmma|cutlass|cublas|gemm|gemv|nvjet", "cublas"),
)


def classify(name: str) -> str:
    """Returns the short class of a CUDA kernel name ('other' when none matches)."""
    low = name.lower()
    return next((cls for pat, cls in KERNEL_CLASSES if re.search(pat, low)), "other")


def cuda_kernels(step, top: int = 6) -> list[dict]:
    """Returns the CUDA kernels `step()` launched, by device time: [{name, class, pct}], the
    names as the profiler saw them (cut to 120 characters); [] when the profiler sees none."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    times: Counter = Counter()
    for ev in prof.events():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if str(getattr(ev, "device_type", "")).endswith("CUDA") and t:
            times[ev.name] += t
    total = sum(times.values()) or 1
    return [{"name": n[:120], "class": classify(n), "pct": round(100 * t / total, 1)}
            for n, t in times.most_common(top)]


def cuda_label(kernels: list[dict], skip=("other", "flash-attention", "llama.cpp-fattn")) -> str:
    """Returns the class that took most device time among the matmul classes ('' if none)."""
    by: Counter = Counter()
    for k in kernels:
        if k["class"] not in skip:
            by[k["class"]] += k["pct"]
    return by.most_common(1)[0][0] if by else ""


ONEDNN_EXEC = re.compile(r"onednn_verbose,(?:[^,]*,)*?exec,cpu,([a-z_]+),([^,]+),")


def onednn_primitives(text: str) -> dict[str, str]:
    """Returns {primitive: implementation} of oneDNN's verbose exec lines (the most frequent
    implementation per primitive), e.g. {'matmul': 'brg_matmul:avx512_core_amx'}."""
    seen: dict[str, Counter] = {}
    for prim, impl in ONEDNN_EXEC.findall(text):
        seen.setdefault(prim, Counter())[impl] += 1
    return {p: c.most_common(1)[0][0] for p, c in seen.items()}


@contextlib.contextmanager
def _captured_stdout(sink: list[str]):
    """Sends fd 1 (C stdio included) to a temp file for the block and appends its text to sink."""
    libc = ctypes.CDLL(None)
    with tempfile.TemporaryFile() as f:
        libc.fflush(None)
        saved = os.dup(1)
        os.dup2(f.fileno(), 1)
        try:
            yield
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
            f.seek(0)
            sink.append(f.read().decode("utf-8", "replace"))


def cpu_probe(step) -> dict:
    """Returns what `step()` ran on the CPU: ATen's capability, oneDNN's primitives and the
    profiler's top ops by self time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    out: list[str] = []
    with _captured_stdout(out), torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    ops: Counter = Counter()
    for ev in prof.key_averages():
        if ev.key.startswith(("aten::", "bitsandbytes::", "gptqmodel::", "quantized::", "mkldnn::",
                              "torchao::")) and ev.self_cpu_time_total > 0:
            ops[ev.key] = ev.self_cpu_time_total
    total = sum(ops.values()) or 1
    # the top ops overall, and the matrix ops among them even when small (a tiny model's matmuls
    # can trail its embedding lookup)
    keep = [k for k, _ in ops.most_common(5)]
    keep += [k for k, _ in ops.most_common() if MATRIX_OP.search(k) and k not in keep][:3]
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn": onednn_primitives(out[0] if out else ""),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
            "top_ops": sorted(({"op": k, "pct": round(100 * ops[k] / total, 1)} for k in keep),
                              key=lambda o: -o["pct"]),
            "mkl": bool(torch.backends.mkl.is_available())}


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")
# ops that do a layer's matrix work when they appear (quantized kernels included)
MATRIX_OP = re.compile(r"mm|linear|gemm|gemv|matmul|int4pack|bitsandbytes::|gptqmodel::|torchao::", re.I)


def cpu_label(detail: dict, dtype: str) -> str:
    """Returns a torch CPU kernel name from a cpu_probe: the oneDNN implementation that ran the
    matmuls (`torch:onednn-avx512_core_amx-bf16`); else, for aten's own matmul, the BLAS behind it
    (`torch:mkl-fp32`, `torch:aten-bf16`: ATen's fallback GEMM); else the busiest matrix op
    (`torch:aten::_int_mm`)."""
    impl = detail["onednn"].get("matmul") or detail["onednn"].get("inner_product")
    if impl:
        return f"torch:onednn-{impl.split(':')[-1]}-{dtype}"
    top = [o["op"] for o in detail["top_ops"] if MATRIX_OP.search(o["op"])]
    if top and top[0] in MATMUL_OPS:
        return f"torch:{'mkl' if detail['mkl'] and dtype == 'fp32' else 'aten'}-{dtype}"
    return f"torch:{top[0]}" if top else f"torch:{dtype}"


def probe(step, device: str, dtype: str) -> tuple[str, dict]:
    """Returns (kernel, kernel_detail) of `step()` (a short prefill and a decode step of the loaded
    model) observed by oneDNN's log and the profiler (CPU) or CUPTI (CUDA)."""
    if device.startswith("cuda"):
        ks = cuda_kernels(step)
        detail = {"cuda_kernels": ks, "source": "torch.profiler (CUPTI) over a prefill and a decode step"}
        return f"torch:cuda-{cuda_label(ks) or 'unknown'}", detail
    detail = cpu_probe(step)
    detail["source"] = "oneDNN verbose + torch.profiler over a prefill and a decode step"
    return cpu_label(detail, dtype), detail
