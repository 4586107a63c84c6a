"""Device peaks: a spec-sheet table of GPUs and a short calibration of the machine at hand.

Spec figures are dense (no 2:4 sparsity) and taken from the vendor datasheets cited per row.
`calibrate` measures what this machine reaches (copy bandwidth, GEMM FLOP/s) at a given thread
count, and what else loaded the CPUs meanwhile; `local_peaks` caches a quiet calibration per host,
device and thread count, and re-checks it with a short `probe` at every run start.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import os
import socket
import statistics
import sys
import time
from dataclasses import dataclass

from quantbench.core.errors import UserError
from quantbench.core.load import BUSY_PCT
from quantbench.core.load import LoadWatch as _Load

T, G = 1e12, 1e9
GiB = 2**30  # HBM/GDDR capacities are binary: an "80GB" part holds 80 GiB (CUDA shows ~79.2 usable)


@dataclass(frozen=True)
class Peaks:
    name: str
    flop_s: dict[str, float]  # keys among fp32, tf32, bf16, fp16, int8, fp8 (int8: ops/s)
    bandwidth_bytes_s: float
    memory_bytes: float
    source: str = "spec"  # "spec" or "measured"
    # CPU threads the calibration's GEMMs and copies ran on (0: a spec sheet). A 1-thread run
    # is compared against a 1-thread roofline, never the machine's default thread count.
    threads: int = 0
    # What else ran on the machine during the calibration: the 1-minute load average at its
    # start and other processes' share of all CPUs' time while it measured (None: spec sheet).
    load_avg_1m: float | None = None
    others_busy_pct: float | None = None
    # Why these figures may read low (measured beside other work, or a drifted cache); "" when
    # trusted. A suspect calibration is never cached and flags every SoL computed from it.
    suspect: str = ""
    # What the machine's GEMM reaches at small M (the decode batch): {dtype: {"M": FLOP/s}} for
    # M in GEMM_MS, an M × K by K × N F.linear over weights bigger than the caches (calibrate).
    # Keys are strings so the dict survives JSON. {}: not calibrated (spec sheets, older caches).
    gemm_flop_s_by_m: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    # The attention kernel alone: one decode query over ATTN_CTX cached tokens (torch's
    # scaled_dot_product_attention), 4 · H · h FLOPs per cached token, per dtype. {}: not measured.
    attn_flop_s: dict[str, float] = dataclasses.field(default_factory=dict)
    # The weight stream by matrix size: M = 1 F.linear over a stack of K × K weights for K in
    # GEMV_KS, in weight bytes per second: {dtype: {"K": bytes/s}}. A decode step at batch 1 reads
    # each of its matrices this way, and small matrices stream slower than large ones (per-call
    # and per-row costs); the size ladder's reported alternative prices each model's bytes at its
    # width's rate (fit.ladder_holdout). {}: not measured (spec sheets, older caches).
    gemv_bytes_s_by_k: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if "fp32" not in self.flop_s:
            raise ValueError(f"{self.name}: flop_s needs an fp32 entry (the fallback peak)")
        if self.source not in ("spec", "measured"):
            raise ValueError(f"{self.name}: source must be 'spec' or 'measured', "
                             f"got {self.source!r}")
        if self.threads < 0:
            raise ValueError(f"{self.name}: threads must be >= 0, got {self.threads}")


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


def _gemm(torch, dtype, device: str, n: int, k: int = 1):
    """Returns a callable that runs k n×n GEMMs of dtype as nn.Linear would."""
    if dtype == torch.int8:  # int8 × int8 → int32; the public matmul has no int8 path
        a = torch.randint(-8, 8, (n, n), dtype=dtype, device=device)
        mm = torch._int_mm
    else:
        a = torch.randn(n, n, device=device).to(dtype)
        # F.linear is what nn.Linear runs; on CPUs without fp16 GEMM, torch.matmul takes a
        # ~1 GFLOP/s path for fp16 while F.linear reaches ~55 (oneDNN), 50x apart.
        mm = torch.nn.functional.linear
    return lambda: [mm(a, a) for _ in range(k)]


def _gemm_flop_s(torch, dtype, device: str, n_max: int, budget_s: float, sync) -> float:
    """Returns 2·n³ / time of an n×n GEMM; n doubles from 256 while one call stays short.

    The size adapts so a dtype without fast kernels (fp16 on some CPUs) still
    finishes inside the budget instead of taking minutes.
    """
    n = 256
    t = _median_s(_gemm(torch, dtype, device, n), sync, 0, min_reps=1, max_reps=1)
    while n < n_max and t * 8 < budget_s / 4:
        n *= 2
        t = _median_s(_gemm(torch, dtype, device, n), sync, 0, min_reps=1, max_reps=1)
    # A 4096² GEMM on a GPU takes ~0.1 ms; batch calls to ~10 ms so the sync costs nothing.
    k = max(1, min(100, int(0.01 / t)))
    return 2 * n**3 * k / _median_s(_gemm(torch, dtype, device, n, k), sync, budget_s)


# The decode batch's matmuls are M × K by K × N with M = batch: calibrated at these M over a stack of
# weights larger than the caches (a model's layers are), so M = 1 is what a weight read costs.
# Every power of two a decode sweep runs, not a log-log curve between fewer: the kernels step with
# their tiles. On the AVX-512 EPYC, fp32 reached 8.1, 8.2, 18.8 and 41 GFLOP/s at M = 1, 2, 4, 8: M = 2
# costs twice M = 1 and as much as M = 4, where log-log between 1, 4 and 16 said 12.4 and 30 at 2 and 8.
GEMM_MS = (1, 2, 4, 8, 16, 32, 64)
GEMM_K = 2048  # K = N: the width of a small model's MLP
GEMM_STACK_BYTES = 96 * 2**20
ATTN_HEADS, ATTN_HEAD_DIM, ATTN_CTX = 8, 64, 4096
# The widths (hidden sizes) the weight stream is calibrated at: SmolLM2-135M's 576 to an 8B's 4096.
GEMV_KS = (512, 1024, 2048, 4096)


def _gemm_by_m(torch, dtype, device: str, budget_s: float, sync,
               stack_bytes: int = GEMM_STACK_BYTES) -> dict[str, float]:
    """Returns {str(M): FLOP/s} of F.linear at M in GEMM_MS over a stack of K × K weights of
    stack_bytes (each call reads every weight once, as a decode step does): the median of up
    to 3 calls per M (the first, cold, is only kept when it is the only one); the M left when the
    budget is spent are left out (a dtype without fast kernels keeps M = 1 alone).
    int8: torch._int_mm (int8 × int8 → int32), the matmul bitsandbytes' LLM.int8 and torchao's
    W8A8 run on a CPU with AVX-512 (elsewhere it is a scalar loop, and they take fp32)."""
    n = max(1, stack_bytes // (GEMM_K * GEMM_K * torch.tensor([], dtype=dtype).element_size()))
    # constant weights: filling is cheap (randn of 96 MiB takes longer than the GEMMs) and the
    # kernels' speed does not depend on the values (0.01 is no denormal in any of these dtypes)
    fill = 1 if dtype == torch.int8 else 0.01
    ws = [torch.full((GEMM_K, GEMM_K), fill, dtype=dtype, device=device) for _ in range(n)]
    if dtype == torch.int8:  # weights stored out × in, as nn.Linear and bitsandbytes keep them
        ws = [w.t() for w in ws]

        def mm(x, w):
            return torch._int_mm(x, w)
    else:
        mm = torch.nn.functional.linear
    out, start = {}, time.perf_counter()
    for m in GEMM_MS:
        x = torch.full((m, GEMM_K), fill, dtype=dtype, device=device)
        times = []
        while len(times) < 4 and (not times or time.perf_counter() - start + times[-1] < budget_s):
            t0 = time.perf_counter()
            for w in ws:
                mm(x, w)
            sync()
            times.append(time.perf_counter() - t0)
        out[str(m)] = 2 * m * GEMM_K * GEMM_K * n / statistics.median(times[1:] or times)
        if time.perf_counter() - start >= budget_s:
            break
    return out


def _gemv_by_k(torch, dtype, device: str, budget_s: float, sync,
               stack_bytes: int = GEMM_STACK_BYTES) -> dict[str, float]:
    """Returns {str(K): weight bytes/s} of F.linear at M = 1 over a stack of K × K weights of
    stack_bytes, for K in GEMV_KS: the median of 3 passes after a cold one (as _gemm_by_m); the K
    left when the budget is spent are left out."""
    size = torch.tensor([], dtype=dtype).element_size()
    out, start = {}, time.perf_counter()
    for k in GEMV_KS:
        n = max(1, stack_bytes // (k * k * size))
        ws = [torch.full((k, k), 0.01, dtype=dtype, device=device) for _ in range(n)]
        x = torch.full((1, k), 0.01, dtype=dtype, device=device)
        times = []
        while len(times) < 4:
            t0 = time.perf_counter()
            for w in ws:
                torch.nn.functional.linear(x, w)
            sync()
            times.append(time.perf_counter() - t0)
        out[str(k)] = n * k * k * size / statistics.median(times[1:])
        del ws
        if time.perf_counter() - start >= budget_s:
            break
    return out


def _attn_flop_s(torch, dtype, device: str, budget_s: float, sync) -> float:
    """Returns 4 · H · h · ctx / time of one decode query's attention over ctx cached tokens
    (scaled_dot_product_attention, the kernel transformers runs on a CPU)."""
    shape = (1, ATTN_HEADS, ATTN_CTX, ATTN_HEAD_DIM)
    q = torch.randn(1, ATTN_HEADS, 1, ATTN_HEAD_DIM, device=device).to(dtype)
    k, v = (torch.randn(*shape, device=device).to(dtype) for _ in range(2))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    t = _median_s(lambda: sdpa(q, k, v), sync, budget_s, min_reps=2, max_reps=50)
    return 4 * ATTN_HEADS * ATTN_HEAD_DIM * ATTN_CTX / t


# A calibration during which other processes used more than BUSY_PCT of all CPUs (core.load) is
# retried, and never cached.
CALIBRATION_TRIES, RETRY_WAIT_S = 2, 3.0
# The cached peaks are re-checked at each run start by a ~0.3 s probe (copy bandwidth and one
# fixed-size fp32 GEMM) against the probe taken right after the calibration: reading this much
# faster means the cache reads low; this much slower on a quiet machine means the machine changed.
# A second probe must agree before the ~8 s recalibration (local_peaks).
DRIFT_FASTER, DRIFT_SLOWER = 1.25, 1 / 1.5


@contextlib.contextmanager
def _torch_threads(torch, threads: int):
    """Runs the block with torch's intra-op thread count set to `threads` (0: leave it)."""
    was = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(was)


def calibrate(device: str = "cpu", seconds: float = 6.0, threads: int = 0) -> Peaks:
    """Returns measured Peaks: copy bandwidth, GEMM FLOP/s per dtype, GEMM FLOP/s at the decode
    batch's small M (GEMM_MS) and the attention kernel's rate alone, within about `seconds`.

    CPU: 256 MiB copy, GEMMs up to 1024² on `threads` torch threads (0: torch's current count).
    CUDA: 1 GiB copy, GEMMs at 4096² (fp32 with TF32 off, tf32 with it on), synchronized around
    each timing. The Peaks say what else loaded the CPUs meanwhile; above BUSY_PCT they are
    `suspect` (a busy CPU slows the host side of a GPU calibration too, so both are judged).
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
    share = seconds / (len(dtypes) + 5)  # copy, GEMM per dtype, then small-M GEMMs of three dtypes
    with _torch_threads(torch, threads) as threads:
        load = _Load()
        if cuda:
            bw = _copy_bytes_s(torch, device, GiB, share, sync)
            memory = torch.cuda.get_device_properties(device).total_memory
            name = f"local-{torch.cuda.get_device_name(device)}"
        else:
            bw = _copy_bytes_s(torch, device, 256 * 2**20, share, sync)
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            name = f"local-cpu-{threads}t"
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
        torch.backends.cuda.matmul.allow_tf32 = False
        # the decode-shaped figures: GEMM at small M and attention alone, for the dtypes decode
        # runs in (fp16 only where it has kernels: a CPU's fp16 GEMM can be 50x slower)
        by_m, attn, by_k = {}, {}, {}
        small = ("fp32", "bf16", "fp16") if cuda else ("fp32", "bf16")
        # a short calibration (a test's) reads a smaller stack: cached, it reads high
        stack = GEMM_STACK_BYTES if cuda else int(min(GEMM_STACK_BYTES, GEMM_STACK_BYTES * seconds / 6))
        for key in small:
            if key not in flops:
                continue
            try:
                by_m[key] = _gemm_by_m(torch, dtypes[key], device, share, sync, stack)
                attn[key] = _attn_flop_s(torch, dtypes[key], device, share / 8, sync)
                by_k[key] = _gemv_by_k(torch, dtypes[key], device, share / 4, sync, stack)
            except RuntimeError:
                pass
        if not cuda and "int8" in flops:  # CUDA's _int_mm takes M > 16 only: no decode-shaped figure
            try:
                by_m["int8"] = _gemm_by_m(torch, torch.int8, device, share, sync, stack)
            except RuntimeError:
                pass
        torch.backends.cuda.matmul.allow_tf32 = tf32_was
        busy = load.others_busy_pct()
    suspect = (f"other processes used {busy:.0f}% of the CPUs while it measured (load average "
               f"{load.load_avg_1m:.2f}), so its figures may read low" if busy > BUSY_PCT else "")
    return Peaks(name, flops, bw, float(memory), "measured", threads, round(load.load_avg_1m, 2),
                 round(busy, 1), suspect, by_m, attn, by_k)


def probe(device: str = "cpu", threads: int = 0, budget_s: float = 0.15) -> dict[str, float]:
    """Returns a quick reading (~0.3 s) to hold against a cached calibration: copy bandwidth at
    the calibration's size, a fixed-size fp32 GEMM, and other processes' CPU share meanwhile."""
    import torch

    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with _torch_threads(torch, threads):
        load = _Load()
        bw = _copy_bytes_s(torch, device, GiB if cuda else 256 * 2**20, budget_s, sync)
        n = 4096 if cuda else 512
        gemm = 2 * n**3 / _median_s(_gemm(torch, torch.float32, device, n), sync, budget_s)
        return {"bandwidth_bytes_s": bw, "fp32_flop_s": gemm, "others_busy_pct": load.others_busy_pct()}


def drift(cached: dict[str, float], now: dict[str, float]) -> str:
    """Returns why a cached calibration no longer holds, judged by its probe against one taken now
    ('' when it holds). A probe reading slower while other work runs says the run is loaded, not
    that the cached peaks are wrong: the cache stands."""
    for key, what in (("bandwidth_bytes_s", "copy bandwidth"), ("fp32_flop_s", "fp32 GEMM")):
        ratio = now[key] / cached[key]
        if ratio > DRIFT_FASTER:
            return f"{what} probes {ratio:.2f}x faster than when calibrated (the cache reads low)"
        if ratio < DRIFT_SLOWER and now["others_busy_pct"] <= BUSY_PCT:
            return f"{what} probes {ratio:.2f}x slower on a quiet machine (the machine changed)"
    return ""


def _higher(old: Peaks, new: Peaks) -> Peaks:
    """Returns new with each figure the higher of old and new: load only ever slows a measurement,
    so the higher reading is the better estimate of the peak."""
    flops = {k: max(old.flop_s.get(k, 0.0), v) for k, v in new.flop_s.items()}
    return dataclasses.replace(new, flop_s=flops, bandwidth_bytes_s=max(old.bandwidth_bytes_s,
                                                                        new.bandwidth_bytes_s),
                               suspect=new.suspect + "; each figure the higher of this and the "
                                                     "cached calibration")


def _calibration_path(device: str, threads: int):
    from quantbench.core.cache import cache_dir

    host = socket.gethostname()
    # v3: records load and threads, probe beside the peaks; v4: GEMM at small M and attention
    # alone; v5: the weight stream by matrix width; v6: GEMM at every power of two M to 64, and
    # int8. Bump when the method changes so stale figures are not reused.
    return cache_dir() / "calibration" / f"v6-{host}-{device}-{threads}t.json"


def local_peaks(device: str = "cpu", refresh: bool = False, threads: int = 0) -> Peaks:
    """Returns this machine's Peaks at `threads` torch threads (0: torch's current count),
    calibrated once and cached per host, device and thread count.

    Each call re-checks the cache with a short probe and recalibrates when it drifted (`drift`) and
    a second probe says so too.
    A calibration taken beside other work (`calibrate`: suspect) is retried once; if still busy
    it is used for this run, flagged, and not cached. refresh=True recalibrates regardless.
    """
    import torch

    threads = threads or torch.get_num_threads()
    path, old = _calibration_path(device, threads), None
    if path.exists() and not refresh:
        try:
            cached = json.loads(path.read_text())
            old = Peaks(**cached["peaks"])
            why = drift(cached["probe"], probe(device, threads))
            # a drift must hold on a second probe: one 0.3 s reading moves +-25 % between processes
            # (a fresh Ray worker against the driver), and a lone outlier would recalibrate (~8 s)
            # in one process and again, the other way, in the next
            if why and not drift(cached["probe"], probe(device, threads)):
                why = ""
        except (ValueError, TypeError, KeyError, AttributeError) as e:  # truncated or foreign file
            old, why = None, f"unreadable ({type(e).__name__})"
        if not why:
            return old
        _say(f"calibration {path.name}: {why}; recalibrating")
    for attempt in range(CALIBRATION_TRIES):
        peaks = calibrate(device, threads=threads)
        if not peaks.suspect:
            break
        if attempt + 1 < CALIBRATION_TRIES:
            _say(f"calibration of {device} at {threads} threads: {peaks.suspect}; "
                 f"retrying in {RETRY_WAIT_S:.0f} s")
            time.sleep(RETRY_WAIT_S)
    else:
        _say(f"calibration of {device} at {threads} threads: {peaks.suspect}; not cached, "
             "speed-of-light fractions from it are flagged")
        return _higher(old, peaks) if old else peaks
    entry = {"peaks": dataclasses.asdict(peaks), "probe": probe(device, threads)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(entry, indent=1))
    os.replace(tmp, path)  # atomic: a concurrent run sees the old file or the whole new one
    return peaks


def _say(text: str) -> None:
    print(f"[quantbench] {text}", file=sys.stderr, flush=True)


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
