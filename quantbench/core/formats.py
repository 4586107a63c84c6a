"""The formats table: every weight format quantbench builds, what stores it, and how dense it is.

Names here are what suites and records use. `backend` is a key of `backends.BACKENDS`;
nothing outside that backend's file branches on the format.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

from quantbench.core.errors import UserError

# Most precise first: on each device the first of these a suite runs is the KLD and Δppl reference
# (the runner runs it first; the report compares against it).
REFERENCE_ORDER = ("fp32", "fp16", "gguf-f16", "bf16", "dummy")


@dataclass(frozen=True)
class Layout:
    """How one weight matrix is stored: `bits` per code, and per group of `group` weights along a
    row (0: one group per row) `scale_bits` of scale plus `zero_bits` of zero point (none when
    both are 0). GGUF blocks are groups: Q8_0 = Layout(8, 32, 16), MXFP4 = Layout(4, 32, 8)."""
    bits: float
    group: int = 0
    scale_bits: float = 0
    zero_bits: float = 0

    def tensor_bits(self, rows: int, cols: int) -> float:
        """Returns the bits of a rows x cols matrix (rows = output features, cols = input)."""
        extra = self.scale_bits + self.zero_bits
        groups = (-(-cols // self.group) if self.group else 1) if extra else 0
        return rows * cols * self.bits + rows * groups * extra


F32, BF16 = Layout(32), Layout(16)
Q8_0 = Layout(8, 32, 16)  # llama.cpp: 32 int8 + one fp16 scale = 34 bytes per 32 weights
Q4_0 = Layout(4, 32, 16)  # 16 bytes of nibbles + one fp16 scale = 18 bytes per 32 weights
MXFP4 = Layout(4, 32, 8)  # OCP MX: 32 E2M1 codes + one E8M0 scale = 17 bytes per 32 weights


@dataclass(frozen=True)
class Format:
    name: str
    backend: str  # key of backends.BACKENDS
    library: str
    stores: str
    # Effective bits per quantized weight including scales/zeros (group size 64 for GPTQ/AWQ,
    # block layouts for GGUF). Embeddings, norms and lm_head keep `bits_unquantized`.
    bits_per_weight: float
    bits_unquantized: float
    devices: tuple[str, ...]
    caveat: str = ""
    # Backend-specific knob: torch dtype, llama.cpp type name, bnb mode, quant method.
    param: str = ""
    # Which peak FLOP/s bounds its matmuls (a key of hardware peaks: fp32, bf16, fp16, int8).
    compute_dtype: str = "fp32"
    # `<name>+compiled`: the same weights, decoded with a static KV cache + torch.compile.
    compiled: bool = False
    # `<gguf name>+kv-<type>`: the same weights with llama.cpp's KV cache in that type; "" = f16.
    kv_type: str = ""
    # `<name>+path-<kernel path>`: the same weights on another engine kernel path (KERNEL_PATHS);
    # "" = whatever the engine picks by default.
    kernel_path: str = ""
    # Weights per quantization group (scales/zeros per this many weights of a row), when the format
    # fixes it; 0 = the suite's `group_size` (GPTQ/AWQ) or none. The record's `group_size`.
    group_size: int = 0
    # The backend environment (envs.ENVS) its worker runs in; "" = the one quantbench runs in.
    env: str = ""
    # Per-tensor storage, which the arithmetic prices tensor by tensor (formulas.weights_bytes_of):
    # the blocks' linears, the embedding table (and lm_head, tied or not), and the rest (norms,
    # biases) at `other_bits`. None: bits_per_weight / bits_unquantized for every tensor alike.
    layout: Layout | None = None
    embed_layout: Layout | None = None
    other_bits: float = 0

    @property
    def base(self) -> str:
        """Returns the name without the +path- / +compiled / +kv- suffixes (the artifact it shares)."""
        return self.name.partition(PATH_SUFFIX)[0].removesuffix(COMPILED).partition(KV_SUFFIX)[0]


def _gguf(name: str, ftype: str, bpw: float, caveat: str = "", stores: str = "", group: int = 0,
          layout: Layout | None = None, embed: Layout | None = None) -> Format:
    # llama.cpp keeps norms in F32. With a layout (the 2-D weights' type, token_embd's) the
    # arithmetic prices the file tensor by tensor; without one (mixes like Q4_K_M, whose per-tensor
    # fallbacks depend on row widths) it takes the built file's mean density.
    return Format(name, "gguf", "llama-cpp-python", stores or f"GGUF {ftype}", bpw, 16.0,
                  ("cpu", "cuda"), caveat, ftype, "int8", group_size=group, layout=layout,
                  embed_layout=embed or layout, other_bits=32 if layout else 0)


FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("fp32", "hf", "transformers", "float32 weights", 32, 32, ("cpu", "cuda"), param="float32",
           layout=F32, embed_layout=F32, other_bits=32),
    Format("bf16", "hf", "transformers", "bfloat16 weights", 16, 16, ("cpu", "cuda"),
           param="bfloat16", compute_dtype="bf16", layout=BF16, embed_layout=BF16, other_bits=16),
    Format("fp16", "hf", "transformers", "float16 weights", 16, 16, ("cpu", "cuda"),
           "CPUs without fp16 GEMM kernels prefill ~50x slower than bf16; decode (GEMV) is fine",
           param="float16", compute_dtype="fp16", layout=BF16, embed_layout=BF16, other_bits=16),
    # LLM.int8: int8 weights + one fp32 scale per output row (absmax), outliers in fp16 at run time.
    Format("bnb-int8", "bnb", "bitsandbytes", "int8 rows + row scales (LLM.int8)", 8.0, 16,
           ("cpu", "cuda"), "CPU path casts activations to fp16", param="int8",
           compute_dtype="int8", layout=Layout(8, 0, 32)),
    # NF4: 4-bit codes + one absmax per 64 weights, absmax itself 8-bit (double quant off: fp32/64).
    Format("bnb-nf4", "bnb", "bitsandbytes", "NF4 codes, blocksize 64", 4.5, 16,
           ("cpu", "cuda"), "CPU kernel computes in bf16 whatever compute dtype is asked",
           param="nf4", compute_dtype="bf16", layout=Layout(4, 64, 32)),
    # 4-bit + fp16 scale + 4-bit zero per group of 64: 4 + (16 + 4) / 64 = 4.3125.
    Format("gptq-4b", "gptq", "gptqmodel", "int4 packed, g64 scales/zeros (GPTQ)", 4.3125, 16,
           ("cpu", "cuda"), "group size falls back to the largest of 128/64/32 dividing in_features",
           param="gptq", compute_dtype="bf16", layout=Layout(4, 64, 16, 4)),
    Format("awq-4b", "gptq", "gptqmodel", "int4 packed, g64 scales/zeros (AWQ)", 4.3125, 16,
           ("cpu", "cuda"), "calibration is slow on CPU; CPU default uses few short samples",
           param="awq", compute_dtype="bf16", layout=Layout(4, 64, 16, 4)),
    _gguf("gguf-f16", "F16", 16.0, layout=BF16),
    _gguf("gguf-q8_0", "Q8_0", 8.5, layout=Q8_0),
    # Q4_K_M mixes Q4_K and Q6_K; rows not divisible by 256 fall back to Q5_0/Q8_0.
    _gguf("gguf-q4_k_m", "Q4_K_M", 4.85, "mixed types; rows not divisible by 256 fall back"),
    # Q4_0 on the linears; llama.cpp moves the output tensor (token_embd when tied) to Q6_K, which
    # falls back to Q8_0 on rows not divisible by 256 (576 on SmolLM2).
    _gguf("gguf-q4_0", "Q4_0", 4.5, layout=Q4_0, embed=Q8_0),
    # MXFP4 (OCP microscaling): 32 E2M1 codes + one E8M0 scale = 17 bytes per 32 weights. llama.cpp's
    # only MXFP4 file type, MXFP4_MOE, puts MXFP4 on expert tensors and Q8_0 on the rest, so a dense
    # model needs `pure` (every 2-D tensor in the default type) and a per-tensor override keeps
    # token_embd (the tied lm_head) at Q8_0, as llama.cpp's own mixes keep the output tensor.
    _gguf("gguf-mxfp4", "MXFP4_MOE:pure,embd=Q8_0,output=Q8_0", 4.25, "llama.cpp's MXFP4_MOE with pure "
          "= true (a dense model would otherwise be all Q8_0); token embeddings / output Q8_0",
          "GGUF MXFP4, 32-weight blocks, E8M0 scale; embeddings Q8_0", 32, layout=MXFP4, embed=Q8_0),
    # torchao through transformers' TorchAoConfig. int8: one fp32 scale per output row (8 + 32/576
    # on SmolLM2's 576-wide rows, 8 + 32/1536 on down_proj); int4: bf16 scale + zero per 64.
    Format("torchao-int8wo", "torchao", "torchao", "int8 rows + fp32 row scales (weight-only)", 8.05, 32,
           ("cpu", "cuda"), "eager mode dequantizes the weight on every call", param="int8wo", layout=Layout(8, 0, 32)),
    Format("torchao-w8a8", "torchao", "torchao", "int8 rows + row scales; activations int8 per token",
           8.05, 32, ("cpu", "cuda"), "SmoothQuant-calibrated (0.5); activations quantized per call",
           param="w8a8", compute_dtype="int8", layout=Layout(8, 0, 32)),
    Format("torchao-int4wo", "torchao", "torchao", "int4 packed + bf16 scale/zero per 64", 4.5, 16,
           ("cpu", "cuda"), "group 64: at 128 torchao skips SmolLM2's 576-wide layers", param="int4wo",
           compute_dtype="bf16", group_size=64, layout=Layout(4, 64, 16, 16), embed_layout=BF16, other_bits=16),
    # HQQ: 4-bit codes packed 2 per byte + a bf16 scale and zero per group of 64: 4 + 32/64.
    Format("hqq-4b", "hqq", "hqq", "int4 codes + bf16 scale/zero per 64 (HQQ)", 4.5, 16, ("cpu", "cuda"),
           "CPU: dequantized on every call (no fused kernel)", param="4", compute_dtype="bf16",
           group_size=64, layout=Layout(4, 64, 16, 16), embed_layout=BF16, other_bits=16),
    # OpenVINO weight compression (NNCF, asymmetric): int8 is u8 + an fp16 scale and u8 zero point
    # per output row (8 + 24/576 on SmolLM2's 576-wide rows, 24/1536 on down_proj); int4 is u4 + an
    # fp16 scale and u4 zero point per 64 (4 + 20/64). Either way the tied embeddings are u8 per
    # row (NNCF's int8 backup for int4): bits_unquantized 8 + 24/576. Runs in its own environment.
    Format("openvino-int8", "openvino", "optimum-intel", "u8 rows + fp16 scale, u8 zero (NNCF, OpenVINO IR)",
           8.035, 8.042, ("cpu", "xpu"), "CPU plugin defaults: bf16 inference precision where the CPU has "
           "bf16, dynamic int8 activations (group 32), u8 KV cache", param="8", compute_dtype="bf16",
           env="openvino", layout=Layout(8, 0, 16, 8), embed_layout=Layout(8, 0, 16, 8), other_bits=32),
    Format("openvino-int4", "openvino", "optimum-intel", "u4 + fp16 scale, u4 zero per 64; embeddings u8 "
           "(NNCF, OpenVINO IR)", 4.3125, 8.042, ("cpu", "xpu"), "group 64 (576 is not divisible by 128); "
           "CPU plugin defaults as openvino-int8", param="4", compute_dtype="bf16", group_size=64,
           env="openvino", layout=Layout(4, 64, 16, 4), embed_layout=Layout(8, 0, 16, 8), other_bits=32),
    # compressed-tensors (llmcompressor, data-free): symmetric, bf16 scales, no zero points. W8A8:
    # 8 + 16/576 per row (16/1536 on down_proj); W4A16: 4 + 16/64. Embeddings stay bf16. On CPU
    # transformers decompresses to dense bf16 on the first forward: the bytes on disk are these,
    # the bytes in memory bf16's.
    Format("ct-w8a8", "compressed-tensors", "llmcompressor", "int8 rows + bf16 scales; activations int8 "
           "per token (compressed-tensors int-quantized)", 8.023, 16, ("cpu", "cuda"),
           "dense (decompressed) in transformers: the int8 kernels are vLLM's", param="w8a8",
           compute_dtype="bf16", env="compressed-tensors", layout=Layout(8, 0, 16), embed_layout=BF16, other_bits=16),
    Format("ct-w4a16", "compressed-tensors", "llmcompressor", "int4 packed + bf16 scale per 64 "
           "(compressed-tensors pack-quantized)", 4.25, 16, ("cpu", "cuda"),
           "dense (decompressed) in transformers: the int4 kernels (Marlin/Machete) are vLLM's",
           param="w4a16", compute_dtype="bf16", group_size=64, env="compressed-tensors",
           layout=Layout(4, 64, 16), embed_layout=BF16, other_bits=16),
    # compressed-tensors for vLLM on CUDA (data-free presets; wired, unverified here): FP8_DYNAMIC
    # is fp8 E4M3 weights + a bf16 scale per row, activations fp8 per token; NVFP4A16 is fp4 E2M1
    # weights + an fp8 E4M3 scale per 16 (+ one fp32 global scale per tensor): 4 + 8/16 = 4.5.
    Format("ct-fp8", "compressed-tensors", "llmcompressor", "fp8 E4M3 rows + bf16 scales; activations fp8 "
           "per token (compressed-tensors float-quantized)", 8.023, 16, ("cuda",), "for vLLM: CUTLASS fp8 "
           "GEMM on sm89+, Marlin fp8 weight-only on sm80; not run here", param="fp8", compute_dtype="fp16",
           env="compressed-tensors", layout=Layout(8, 0, 16), embed_layout=BF16, other_bits=16),
    Format("ct-nvfp4", "compressed-tensors", "llmcompressor", "fp4 E2M1 + fp8 scale per 16 (compressed-"
           "tensors nvfp4-pack-quantized)", 4.5, 16, ("cuda",), "for vLLM: CUTLASS FP4 GEMM on sm100, "
           "Marlin FP4 weight-only below; not run here", param="nvfp4", compute_dtype="fp16", group_size=16,
           env="compressed-tensors", layout=Layout(4, 16, 8), embed_layout=BF16, other_bits=16),
    # AutoRound W4A16 (auto-round's own export): int4 packed in int32, an fp16 scale and a packed
    # 4-bit zero per 64 (4 + 20/64, as GPTQ without g_idx); embeddings and norms bf16. Group 64:
    # 576 is not divisible by 128. Runs in its own environment.
    Format("autoround-4b", "auto-round", "auto-round", "int4 packed, g64 fp16 scales + 4-bit zeros "
           "(AutoRound, auto_round format)", 4.3125, 16, ("cpu", "cuda"), "CPU: a short tune (20 "
           "iterations per block, 8 x 256 corpus tokens); kernel: auto-round's ark CPU kernels or "
           "a torch fallback that dequantizes per call", param="4", compute_dtype="bf16", group_size=64,
           env="auto-round", layout=Layout(4, 64, 16, 4), embed_layout=BF16, other_bits=16),
    Format("dummy", "dummy", "numpy", "random bigram model (tests)", 32, 32, ("cpu",), param="float32"),
]}

# The calibrated peaks that bound a format's matmuls where its kernels do not compute in its
# `compute_dtype`: (format or backend, device kind) -> dtypes, the highest of which is the roof.
# A roofline is an upper bound, and these kernels have no torch GEMM twin to calibrate exactly.
KERNEL_PEAKS: dict[tuple[str, str], tuple[str, ...]] = {
    # llama.cpp's own CPU kernels: quantized types quantize activations to 8 bits and take int8
    # dot products (AVX512-VNNI / AVX2; Q4_0 repacked 8x8); F16 widens to fp32 FMAs, yet ran its
    # 512-token prefill at 278 GFLOP/s where torch's fp32 GEMM calibrated 223 (SmolLM2, 2-core
    # EPYC). No one torch dtype bounds them all: the fastest calibrated GEMM does.
    ("gguf", "cpu"): ("fp32", "bf16", "int8"),
    # llama.cpp CUDA: MMQ int8 tensor-core kernels for quantized types, cuBLAS fp16 for F16.
    ("gguf", "cuda"): ("fp16", "int8"),
    # bitsandbytes' CPU int8 matmul is torch._int_mm on AVX512 CPUs, an fp32 matmul elsewhere
    # (bitsandbytes/backends/cpu/ops.py, 0.50).
    ("bnb-int8", "cpu"): ("int8", "fp32"),
    # GPTQModel's CPU kernels for GPTQ/AWQ take a bf16 model, but on a CPU without bf16 units
    # (AMD Zen 3, AVX2) they ran the tiny CI model's 64-token prefill at 1.6x (GPTQ) and 2.2x (AWQ)
    # the calibrated bf16 GEMM (19 GFLOP/s there, fp32 137): they do not compute through torch's
    # bf16 GEMM. The faster of bf16 and fp32 bounds them (on AVX512-bf16 CPUs that is bf16).
    ("gptq", "cpu"): ("bf16", "fp32"),
    # torchao's W8A8: torch._int_mm inside the model outran the int8 calibration (2.4 GOP/s on
    # the Zen 3, SoL 2.5 at prefill): int8 or fp32, whichever is faster, as bnb-int8.
    ("torchao-w8a8", "cpu"): ("int8", "fp32"),
}


def compute_dtypes(fmt: Format, device: str) -> tuple[str, ...]:
    """Returns the peaks (dtype keys) whose highest bounds fmt's matmuls on device (cpu, cuda:N)."""
    kind = device.split(":")[0]
    return (KERNEL_PEAKS.get((fmt.base, kind)) or KERNEL_PEAKS.get((fmt.backend, kind))
            or (fmt.compute_dtype,))


# A suffix, not a suite switch, so eager and compiled decode of one format sit side by side in a
# run, a report and a compare. llama.cpp has no torch.compile path (it captures CUDA graphs itself).
COMPILED = "+compiled"
COMPILABLE_BACKENDS = ("hf", "bnb", "gptq")

# `gguf-q4_0+kv-q8_0`: llama.cpp's cache types (type_k = type_v, flash attention on), a variant
# of its own so records, reports and compares keep them apart. Bits: arith.KV_TYPE_BITS.
KV_SUFFIX = "+kv-"
LLAMA_KV_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")


def with_kv_types(formats, kv_types) -> list[str]:
    """Returns formats with a `+kv-<type>` twin after each llama.cpp format for each non-f16 type
    (a suite's kv_types axis); other backends have one cache type and no twins."""
    out = []
    for f in formats:
        out.append(f)
        if get_format(f).backend == "gguf" and KV_SUFFIX not in f:
            out += [f"{f}{KV_SUFFIX}{t}" for t in kv_types if t != "f16"]
    return out


@dataclass(frozen=True)
class KernelPath:
    """An engine code path a suite can cross formats with (`kernel_paths`), or the runner falls
    back to when the default path crashes: how it is asked for and what it changes."""
    name: str
    backends: tuple[str, ...]  # backends that offer it
    env: tuple[tuple[str, str], ...]  # environment the worker process starts with
    what: str  # what changes, for the docs and the console line
    upstream: str = ""  # the engine's own switch for the same path (parity runs it)


# The safer paths. llama.cpp's extra buffer types hold weights repacked for its AMX and
# CPU_REPACK (AVX2/AVX512 interleaved) kernels; off, every weight stays in a plain CPU buffer
# (llama-bench --repack 0). oneDNN and ATen pick the widest ISA the CPU has (AMX tiles for bf16 and
# int8 matmuls on Sapphire Rapids and later); ONEDNN_MAX_CPU_ISA caps oneDNN, ATEN_CPU_CAPABILITY
# caps ATen's vectorized kernels (and with it bitsandbytes' CPU kernel choice, which asks ATen).
KERNEL_PATHS: dict[str, KernelPath] = {k.name: k for k in [
    KernelPath("norepack", ("gguf",), (), "llama.cpp extra buffer types off (use_extra_bufts = "
               "false): no AMX or CPU_REPACK weight layouts", "llama-bench --repack 0"),
    KernelPath("noamx", ("hf", "bnb", "gptq"), (("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_FP16"),),
               "oneDNN capped below AMX (ONEDNN_MAX_CPU_ISA=AVX512_CORE_FP16)"),
    KernelPath("avx2", ("hf", "bnb", "gptq"), (("ONEDNN_MAX_CPU_ISA", "AVX2"),
                                               ("ATEN_CPU_CAPABILITY", "avx2")),
               "oneDNN and ATen capped at AVX2 (ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2)"),
]}
PATH_SUFFIX = "+path-"
# Where a worker dies by a signal inside the engine, the runner retries the variant once on this
# path (suite key kernel_fallback = false turns that off).
SAFER_PATH = {"gguf": "norepack", "hf": "avx2", "bnb": "avx2", "gptq": "avx2"}


def with_kernel_paths(formats, paths) -> list[str]:
    """Returns formats with a `+path-<p>` twin after each format whose backend offers path p
    (a suite's kernel_paths axis); "default" in paths names the engine's own choice, always run."""
    out = []
    for f in formats:
        out.append(f)
        backend = get_format(f).backend
        out += [f"{f}{PATH_SUFFIX}{p}" for p in paths
                if p != "default" and backend in KERNEL_PATHS[p].backends]
    return out


@dataclass(frozen=True)
class SharedNumberFormat:
    """Two formats whose weights are the same number format: their ppl should agree within the
    windows' paired noise, and where they do not, `differs` says what else the two do differently
    (the report's "same number format" check lines)."""
    a: str
    b: str
    number_format: str
    differs: str


SAME_NUMBER_FORMAT = (
    SharedNumberFormat("torchao-int8wo", "bnb-int8", "int8 weights, one scale per output channel",
                       "bitsandbytes' LLM.int8 is not weight-only: it rounds activations to int8 per row "
                       "and keeps outlier input columns (|x| ≥ 6) in 16 bits"),
    SharedNumberFormat("gguf-q8_0", "openvino-int8", "int8 weights",
                       "Q8_0 is symmetric with one fp16 scale per block of 32 weights; OpenVINO's NNCF "
                       "int8 is asymmetric (u8 + zero point) with one scale per output channel"),
    SharedNumberFormat("torchao-w8a8", "ct-w8a8", "int8 weights per output channel, int8 activations per token",
                       "torchao: SmoothQuant at strength 0.5, then round-to-nearest; llmcompressor: "
                       "SmoothQuant at 0.8, then GPTQ"),
)


# llama.cpp type names a user may ask for as `gguf-<type>` beyond the table (bits per weight).
GGUF_EXTRA_BPW = {"Q4_1": 5.0, "Q5_0": 5.5, "Q5_1": 6.0, "Q5_K_M": 5.69, "Q6_K": 6.5625,
                  "Q3_K_M": 3.91, "Q2_K": 2.625, "IQ4_NL": 4.5, "BF16": 16.0}


def get_format(name: str) -> Format:
    """Returns the Format for `name`, including any `gguf-<llama.cpp type>` and `<name>+compiled`;
    unknown names raise."""
    if PATH_SUFFIX in name:
        inner, _, path = name.rpartition(PATH_SUFFIX)
        base = get_format(inner)
        kp = KERNEL_PATHS.get(path)
        if kp is None or base.backend not in kp.backends:
            offered = [k for k, v in KERNEL_PATHS.items() if base.backend in v.backends]
            raise UserError(f"format '{name}': kernel path '{path}' is not one {base.library} offers; "
                            f"use {', '.join(offered) or 'none (it has one path)'}")
        return dataclasses.replace(base, name=name, kernel_path=path)
    if KV_SUFFIX in name:
        base_name, _, kv = name.partition(KV_SUFFIX)
        base = get_format(base_name)
        if base.backend != "gguf" or kv not in LLAMA_KV_TYPES:
            raise UserError(f"format '{name}': a +kv-<type> twin needs a gguf-* format and one of "
                            f"{', '.join(LLAMA_KV_TYPES)}; e.g. gguf-q4_0{KV_SUFFIX}q8_0")
        return dataclasses.replace(base, name=name, kv_type=kv)
    if name.endswith(COMPILED):
        base = get_format(name.removesuffix(COMPILED))
        if base.backend not in COMPILABLE_BACKENDS:
            raise UserError(f"format '{name}': {base.library} has no torch.compile decode path; "
                            f"use '{base.name}' (compiled runs: hf, bitsandbytes and GPTQModel formats)")
        return dataclasses.replace(base, name=name, compiled=True)
    if name in FORMATS:
        return FORMATS[name]
    if name.startswith("gguf-") and name[5:].upper() in GGUF_EXTRA_BPW:
        ftype = name[5:].upper()
        return _gguf(name, ftype, GGUF_EXTRA_BPW[ftype])
    close = difflib.get_close_matches(name, list(FORMATS), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise UserError(f"unknown format '{name}': {hint}see `quantbench formats` for the list")
