"""Device peaks: a spec-sheet table of GPUs and a short calibration of the machine at hand.

Spec figures are dense (no 2:4 sparsity) and taken from the vendor datasheets cited per row.
`calibrate` measures what this machine reaches (copy bandwidth, GEMM FLOP/s); `local_peaks`
caches that per host, device and thread count, so it runs once per machine.
"""
from __future__ import annotations

import difflib
import json
import os
import socket
import statistics
import time
from dataclasses import asdict, dataclass

from quantbench.errors import UserError

T, G = 1e12, 1e9
GiB = 2**30  # HBM/GDDR capacities are binary: an "80GB" part holds 80 GiB (CUDA shows ~79.2 usable)


@dataclass(frozen=True)
class Peaks:
    name: str
    flop_s: dict[str, float]  # keys among fp32, tf32, bf16, fp16, int8, fp8 (int8: ops/s)
    bandwidth_bytes_s: float
    memory_bytes: float
    source: str = "spec"  # "spec" or "measured"

    def __post_init__(self):
        if "fp32" not in self.flop_s:
            raise ValueError(f"{self.name}: flop_s needs an fp32 entry (the fallback peak)")
        if self.source not in ("spec", "measured"):
            raise ValueError(f"{self.name}: source must be 'spec' or 'measured', "
                             f"got {self.source!r}")


def _p(name, fp32, tf32, bf16, fp16, int8, fp8, bw_gb_s, mem_gib) -> Peaks:
    flops = {"fp32": fp32, "tf32": tf32, "bf16": bf16, "fp16": fp16, "int8": int8, "fp8": fp8}
    return Peaks(name, {k: v * T for k, v in flops.items() if v}, bw_gb_s * G, mem_gib * GiB)


DEVICES: dict[str, Peaks] = {p.name: p for p in [
    #   name              fp32  tf32   bf16   fp16   int8   fp8    GB/s  GiB
    # NVIDIA A100 Tensor Core GPU datasheet (2021), SXM columns; 40GB is 1,555 GB/s.
    _p("a100-40gb-sxm",   19.5, 156,   312,   312,   624,   0,     1555, 40),
    _p("a100-80gb-sxm",   19.5, 156,   312,   312,   624,   0,     2039, 80),
    _p("a100-80gb-pcie",  19.5, 156,   312,   312,   624,   0,     1935, 80),
    # NVIDIA H100 Tensor Core GPU datasheet (2023): SXM 3.35 TB/s, PCIe 2 TB/s; sparse halved.
    _p("h100-sxm",        67,   494.5, 989.5, 989.5, 1979,  1979,  3350, 80),
    _p("h100-pcie",       51,   378,   756,   756,   1513,  1513,  2000, 80),
    # NVIDIA H200 Tensor Core GPU datasheet (2024), SXM: 141 GB HBM3e, 4.8 TB/s.
    _p("h200",            67,   494.5, 989.5, 989.5, 1979,  1979,  4800, 141),
    # NVIDIA L4 datasheet (2023): 120/242/485/485 listed with sparsity; halved here.
    _p("l4",              30.3, 60,    121,   121,   242.5, 242.5, 300,  24),
    # NVIDIA L40S datasheet (2023): 366/733/1466/1466 listed with sparsity; halved here.
    _p("l40s",            91.6, 183,   362,   362,   733,   733,   864,  48),
    # AWS-only part with no NVIDIA datasheet: AWS G5 quotes 24 GB, 600 GB/s; tensor figures follow
    # the NVIDIA A10 datasheet (2021) and may be optimistic — prefer `--device local` on one.
    _p("a10g",            31.2, 62.5,  125,   125,   250,   0,     600,  24),
    # NVIDIA T4 datasheet (2019): 8.1 fp32, 65 fp16 mixed, 130 int8; Turing has no bf16/tf32.
    _p("t4",              8.1,  0,     0,     65,    130,   0,     320,  16),
    # NVIDIA Ampere GA102 whitepaper, appendix A (RTX 3090): tensor fp16/bf16 with fp32 accumulate,
    # which is what PyTorch GEMMs use (fp16 accumulate would be 142).
    _p("rtx-3090",        35.6, 35.6,  71,    71,    284,   0,     936,  24),
    # NVIDIA Ada Lovelace whitepaper, appendix A (RTX 4090): fp32-accumulate tensor figures.
    _p("rtx-4090",        82.6, 82.6,  165.2, 165.2, 660.6, 330.3, 1008, 24),
]}


def _median_s(fn, sync, budget_s: float, min_reps: int = 3, max_reps: int = 20) -> float:
    """Returns the median wall time of fn() over reps that fit in budget_s (one untimed warm-up)."""
    fn()
    sync()
    times, start = [], time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps
                                     or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _copy_bytes_s(torch, device: str, n_bytes: int, budget_s: float, sync) -> float:
    """Returns copy bandwidth: bytes read + bytes written per second, dst.copy_(src)."""
    src = torch.ones(n_bytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return 2 * src.nbytes / _median_s(lambda: dst.copy_(src), sync, budget_s)


def _gemm_flop_s(torch, dtype, device: str, n_max: int, budget_s: float, sync) -> float:
    """Returns 2·n³ / time of an n×n GEMM; n doubles from 256 while one call stays short.

    The size adapts so a dtype without fast kernels (fp16 on some CPUs) still
    finishes inside the budget instead of taking minutes.
    """
    def run(n, k=1):
        if dtype == torch.int8:  # int8 × int8 → int32; the public matmul has no int8 path
            a = torch.randint(-8, 8, (n, n), dtype=dtype, device=device)
            mm = torch._int_mm
        else:
            a = torch.randn(n, n, device=device).to(dtype)
            # F.linear is what nn.Linear runs; on CPUs without fp16 GEMM, torch.matmul takes a
            # ~1 GFLOP/s path for fp16 while F.linear reaches ~55 (oneDNN), 50x apart.
            mm = torch.nn.functional.linear
        return lambda: [mm(a, a) for _ in range(k)]

    n = 256
    t = _median_s(run(n), sync, 0, min_reps=1, max_reps=1)
    while n < n_max and t * 8 < budget_s / 4:
        n *= 2
        t = _median_s(run(n), sync, 0, min_reps=1, max_reps=1)
    # A 4096² GEMM on a GPU takes ~0.1 ms; batch calls to ~10 ms so the sync costs nothing.
    k = max(1, min(100, int(0.01 / t)))
    return 2 * n**3 * k / _median_s(run(n, k), sync, budget_s)


def calibrate(device: str = "cpu", seconds: float = 6.0) -> Peaks:
    """Returns measured Peaks: copy bandwidth and GEMM FLOP/s per dtype, within about `seconds`.

    CPU: 256 MiB copy, GEMMs up to 1024² with the current torch thread count. CUDA: 1 GiB copy,
    GEMMs at 4096² (fp32 with TF32 off, tf32 with it on), synchronized around each timing.
    """
    import torch

    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise UserError("device 'cuda' asked but torch sees no GPU; "
                        "use `--device local-cpu` or a spec name")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if cuda or hasattr(torch, "_int_mm"):
        dtypes["int8"] = torch.int8
    share = seconds / (len(dtypes) + 2)
    if cuda:
        bw = _copy_bytes_s(torch, device, GiB, share, sync)
        memory = torch.cuda.get_device_properties(device).total_memory
        name = f"local-{torch.cuda.get_device_name(device)}"
    else:
        bw = _copy_bytes_s(torch, device, 256 * 2**20, share, sync)
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        name = f"local-cpu-{torch.get_num_threads()}t"
    flops, tf32_was = {}, torch.backends.cuda.matmul.allow_tf32
    for key, dtype in dtypes.items():
        try:
            torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32, not TF32
            flops[key] = _gemm_flop_s(torch, dtype, device, 4096 if cuda else 1024, share, sync)
        except RuntimeError:  # no kernel for this dtype: leave it out, arith falls back to fp32
            pass
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        flops["tf32"] = _gemm_flop_s(torch, torch.float32, device, 4096, share, sync)
    torch.backends.cuda.matmul.allow_tf32 = tf32_was
    return Peaks(name, flops, bw, float(memory), "measured")


def _calibration_path(device: str):
    import torch

    from quantbench.cache import cache_dir

    host = socket.gethostname()
    # v2: GEMMs through F.linear; bump when the method changes so stale figures are not reused
    return cache_dir() / "calibration" / f"v2-{host}-{device}-{torch.get_num_threads()}.json"


def local_peaks(device: str = "cpu", refresh: bool = False) -> Peaks:
    """Returns this machine's calibrated Peaks, measured once and cached per host/device/threads.

    A calibration taken while other work loaded the machine reads low; refresh=True redoes it.
    """
    path = _calibration_path(device)
    if path.exists() and not refresh:
        return Peaks(**json.loads(path.read_text()))
    peaks = calibrate(device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(peaks), indent=1))
    os.replace(tmp, path)  # atomic: a concurrent run sees the old file or the whole new one
    return peaks


# (words in the name NVML reports, DEVICES row), most specific first.
GPU_NAMES = [(("H100", "PCIe"), "h100-pcie"), (("H100",), "h100-sxm"), (("H200",), "h200"),
             (("A100", "PCIe"), "a100-80gb-pcie"), (("A100", "80GB"), "a100-80gb-sxm"),
             (("A100",), "a100-40gb-sxm"), (("L40S",), "l40s"), (("L4",), "l4"),
             (("A10G",), "a10g"), (("T4",), "t4"), (("3090",), "rtx-3090"), (("4090",), "rtx-4090")]


def spec_for_gpu(gpu_name: str) -> Peaks | None:
    """Returns the spec-sheet row for a GPU name as NVML reports it, or None when unknown."""
    for words, row in GPU_NAMES:
        if all(w in gpu_name for w in words):
            return DEVICES[row]
    return None


def get_peaks(name: str) -> Peaks:
    """Returns DEVICES[name], or calibrated peaks for 'local' / 'local-cpu' / 'local-cuda'."""
    if name in DEVICES:
        return DEVICES[name]
    if name in ("local", "local-cpu", "local-cuda"):
        if name == "local":
            import torch

            return local_peaks("cuda" if torch.cuda.is_available() else "cpu")
        return local_peaks(name[6:])
    names = [*DEVICES, "local"]
    close = [n for n in names if n.startswith(name)] or difflib.get_close_matches(name, names, n=2)
    hint = f"did you mean {' or '.join(repr(n) for n in close[:2])}? " if close else ""
    raise UserError(f"unknown device '{name}': {hint}see `quantbench devices`")
