"""llama.cpp backend (llama-cpp-python): GGUF files converted and quantized by llama.cpp itself.

F16 comes from llama.cpp's own `convert_hf_to_gguf.py`, taken from the source distribution of the
installed llama-cpp-python so converter and runtime agree; other types are quantized from that F16
file with `llama_model_quantize`. Every file is cached by content key, written atomically.
"""
from __future__ import annotations

import ctypes
import difflib
import importlib.metadata
import logging
import os
import re
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from quantbench import backends
from quantbench.arith.formulas import LLAMA_CPP_KV_PAD
from quantbench.backends import CRASH_HOOK_ENV, ENGINE_LOG_ENV, Backend, Skip, crash_hook, say
from quantbench.core import cache
from quantbench.core.errors import UserError

FLOAT_TYPES = {"F32", "F16", "BF16", "F64"}
# Decode steps past prompt + gen_tokens (warm-up). Only the decode term gets it: llama.cpp pads
# n_ctx up to a multiple of 256 cells, so 512 + 8 would allocate (and report) a 768-cell cache.
CTX_SLACK = 8


def _llama_cpp():
    """Returns the llama_cpp module, imported quietly; Skip when it is not installed."""
    try:
        import llama_cpp
    except ImportError:
        raise Skip("llama_cpp not installed; install quantbench[gguf] "
                   "(nox installs it from the wheelhouse)") from None
    # llama.cpp logs every tensor it loads or quantizes; keep errors only, and the KV cache size.
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    llama_cpp.llama_log_set(_log_callback(llama_cpp), ctypes.c_void_p(0))
    return llama_cpp


# llama.cpp's own account of a context's cache: "llama_kv_cache: size = 5.98 MiB (512 cells,
# 30 layers, 1/1 seqs), K (q8_0): 2.99 MiB, V (q8_0): 2.99 MiB" (0.01 MiB resolution: exact to
# 0.1% on the embedded model's 512 cells, to 1.3% on tiny's 256).
KV_LOG = re.compile(r"llama_kv_cache: size =\s*([\d.]+) MiB \(\s*(\d+) cells")
# Where llama.cpp put the weights, one line per buffer (llama-model.cpp, load_tensors):
# "load_tensors:   CPU_REPACK model buffer size =    34.50 MiB". The buffer type names the kernels
# that read it: AMX (amx.cpp), CPU_REPACK (repack.cpp: interleaved rows for AVX2/AVX512/NEON
# GEMMs), CPU / CPU_Mapped (the generic ggml-cpu kernels), CUDA0 (ggml-cuda).
BUFFER_LOG = re.compile(r"(\S+) model buffer size =\s*([\d.]+) MiB")
_kv_logged: list[tuple[int, int]] = []  # (bytes, cells) per context made, newest last
_buffers: dict[str, int] = {}  # buffer type -> bytes, of the model loaded last
_callback = None  # the ctypes callback must outlive every llama.cpp call
_engine_log = None  # the file ENGINE_LOG_ENV names, line-buffered


def _log_callback(llama_cpp):
    global _callback, _engine_log
    if _callback is None:
        if path := os.environ.get(ENGINE_LOG_ENV):
            _engine_log = open(path, "a", buffering=1)  # noqa: SIM115 (open for the process's life)

        @llama_cpp.llama_log_callback
        def _callback(level, text, user_data):
            line = text.decode("utf-8", "replace")
            if _engine_log is not None:
                _engine_log.write(line)
            if m := KV_LOG.search(line):
                _kv_logged.append((round(float(m[1]) * 2**20), int(m[2])))
            elif m := BUFFER_LOG.search(line):
                _buffers[m[1]] = _buffers.get(m[1], 0) + round(float(m[2]) * 2**20)
            elif level == 4:  # GGML_LOG_LEVEL_ERROR
                print(line, end="", file=sys.stderr, flush=True)
    return _callback


# Buffer types in order of precedence: the kernel path is named by the most specialised buffer
# holding weights (AMX and CPU_REPACK hold the quantized matrices, CPU_Mapped the rest).
KERNEL_BUFFERS = (("AMX", "AMX"), ("CPU_REPACK", "CPU_REPACK"), ("CUDA", "CUDA"), ("CPU", "CPU"))


def kernel_from_buffers(buffers: dict[str, int]) -> str:
    """Returns llama.cpp's kernel path named from the buffers its weights landed in:
    `llama.cpp:AMX`, `llama.cpp:CPU_REPACK`, `llama.cpp:CUDA` or `llama.cpp:CPU` ('' if none logged)."""
    for prefix, name in KERNEL_BUFFERS:
        if any(b.startswith(prefix) and n > 0 for b, n in buffers.items()):
            return f"llama.cpp:{name}"
    return ""


def system_flags(info: str) -> dict[str, str]:
    """Returns llama_print_system_info()'s 'NAME = value' pairs ("CPU : SSE3 = 1 | AMX_INT8 = 1 |
    REPACK = 1 | CUDA : ARCHS = 900 |"), each backend's "NAME :" prefix dropped: the ISA and
    build features the loaded ggml backends report."""
    out = {}
    for part in info.split("|"):
        key, eq, value = part.partition("=")
        if eq:
            out[key.rpartition(":")[2].strip()] = value.strip()
    return out


OPENMP_LIBS = ("libgomp", "libomp", "libiomp5", "libomp5")


def openmp_runtime(maps: str | None = None) -> str:
    """Returns the OpenMP runtimes mapped into this process ('libgomp.so.1 (path)', several joined
    by '; '; '' when none or not Linux): llama.cpp's CPU threads run on it, and GNU and LLVM/Intel
    runtimes spin and sleep differently (OMP_WAIT_POLICY, KMP_BLOCKTIME)."""
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return ""
    seen = {}
    for line in maps.splitlines():
        path = line.split()[-1] if line.split() else ""
        name = path.rsplit("/", 1)[-1]
        if name.startswith(OPENMP_LIBS) and ".so" in name:
            seen.setdefault(name, path)
    return "; ".join(f"{n} ({p})" for n, p in sorted(seen.items()))


def _no_extra_bufts(llama_cpp):
    """Returns a stand-in for llama_model_default_params with extra buffer types off: Llama() takes
    its model parameters from that call and has no argument for use_extra_bufts."""
    default = llama_cpp.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p
    return params


def extra_bufts_crash(path: str, threads: int) -> bool:
    """Returns whether a batched eval of `path` with extra buffer types on kills its process on this
    machine (llama.cpp's AMX path segfaults on some virtualised Xeons: ggml-org/llama.cpp#20824).
    Probed in a child process once per file, llama.cpp version and CPU; the answer is cached."""
    flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "") \
        if Path("/proc/cpuinfo").exists() else ""
    st = Path(path).stat()
    key = cache.content_key("xbuf-probe", _version(), flags, str(Path(path).resolve()), st.st_size,
                            st.st_mtime_ns, os.environ.get(CRASH_HOOK_ENV, ""))
    mark = cache.entry("probes", f"{key}.txt")
    if mark.exists():
        return mark.read_text() == "crash"
    code = ("import llama_cpp; from quantbench.backends import crash_hook; "
            "cb = llama_cpp.llama_log_callback(lambda *a: None); llama_cpp.llama_log_set(cb, None); "
            f"m = llama_cpp.Llama({str(path)!r}, n_ctx=64, n_batch=64, n_threads={threads}, verbose=False); "
            "crash_hook('gguf', ''); m.eval(list(range(100, 108)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    crashed = r.returncode < 0
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.write_text("crash" if crashed else "ok")
    return crashed


# ggml type ids of the cache types (ggml.h enum ggml_type).
GGML_KV_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8, "bf16": 30}


def _version() -> str:
    """Returns the installed llama-cpp-python version without a local suffix (+cu124)."""
    return importlib.metadata.version("llama-cpp-python").split("+")[0]


def download_sdist(version: str, into: Path, fix: str) -> Path:
    """Returns the llama-cpp-python `version` source distribution, downloaded into `into` (the
    package index once); a UserError naming `fix` when it cannot be had."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "--quiet",
           f"llama-cpp-python=={version}", "-d", str(into)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    sdists = list(into.glob("*.tar.gz"))
    if r.returncode or not sdists:
        raise UserError(f"could not download the llama-cpp-python {version} sdist (needs the package "
                        f"index once): {(r.stderr or r.stdout).strip()[-300:]}; {fix}")
    return sdists[0]


def llama_src(version: str) -> Path:
    """Returns llama.cpp's python tree (converter, conversion/, gguf-py/) from the sdist, cached."""
    final = cache.entry("llama-src", version)
    if (final / "llama.cpp" / "convert_hf_to_gguf.py").exists():
        return final / "llama.cpp"
    say(f"[gguf] downloading the llama-cpp-python {version} sdist for convert_hf_to_gguf.py "
        "(once) ...")
    with cache.atomic_dir(final) as tmp:
        sdist = download_sdist(version, tmp, "or give a ready .gguf in the suite's [artifacts]")
        with tarfile.open(sdist) as tf:
            keep = []
            for m in tf.getmembers():
                parts = m.name.split("/", 3)  # root/vendor/llama.cpp/rest
                if len(parts) == 4 and parts[1:3] == ["vendor", "llama.cpp"] and (
                        parts[3].startswith(("gguf-py/", "conversion/"))
                        or ("/" not in parts[3] and parts[3].endswith(".py"))):
                    m.name = "llama.cpp/" + parts[3]
                    keep.append(m)
            tf.extractall(tmp, members=keep, filter="data")
        sdist.unlink()  # 75 MB of C++ sources we do not need
    return final / "llama.cpp"


def convert_f16(model_dir: str, out: Path, version: str) -> None:
    """Writes `out`: the HF directory converted to an F16 GGUF by llama.cpp's converter."""
    src = llama_src(version)
    say(f"[gguf] converting {model_dir} to F16 with convert_hf_to_gguf.py ...")
    env = {**os.environ, "PYTHONPATH": str(src / "gguf-py"), "OMP_WAIT_POLICY": "passive"}
    cmd = [sys.executable, str(src / "convert_hf_to_gguf.py"), model_dir,
           "--outtype", "f16", "--outfile", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        missing = re.search(r"No module named '([\w.]+)'", r.stderr)
        if missing:  # e.g. sentencepiece, which the converter imports for every llama model
            raise Skip(f"llama.cpp's convert_hf_to_gguf.py needs the module '{missing[1]}'; "
                       f"pip install {missing[1].split('.')[0]}")
        raise RuntimeError(f"convert_hf_to_gguf.py failed: {r.stderr.strip()[-600:]}")


# ftype options after ":" (comma-separated), as llama-quantize's flags: `pure` (--pure: every 2-D
# tensor in the type's default, no mix), `embd=<type>` (--token-embedding-type), `output=<type>`
# (--output-tensor-type).
QUANTIZE_OPTIONS = {"embd": "token_embedding_type", "output": "output_tensor_type"}


def quantize(src: Path, dst: Path, ftype: str, threads: int) -> None:
    """Writes `dst`: `src` quantized to llama.cpp file type `ftype` (Q4_K_M, Q8_0, ...; options
    after ":" as QUANTIZE_OPTIONS, e.g. `MXFP4_MOE:pure,embd=Q8_0`)."""
    from gguf import GGMLQuantizationType

    llama_cpp = _llama_cpp()
    ftype, _, mode = ftype.partition(":")
    const = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}", None)
    if const is None:
        raise UserError(f"llama-cpp-python {_version()} has no file type {ftype}")
    say(f"[gguf] quantizing {src.name} -> {ftype}{f' ({mode})' if mode else ''} ({threads} threads) ...")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = const, threads
    for opt in filter(None, mode.split(",")):
        key, _, tensor_type = opt.partition("=")
        if key == "pure":
            params.pure = True
        elif key in QUANTIZE_OPTIONS and tensor_type in GGMLQuantizationType.__members__:
            setattr(params, QUANTIZE_OPTIONS[key], GGMLQuantizationType[tensor_type].value)
        else:
            raise UserError(f"gguf file type '{ftype}:{mode}': unknown option '{opt}'; use pure, "
                            f"embd=<type>, output=<type> (llama-cpp-python {_version()})")
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)):
        raise RuntimeError(f"llama_model_quantize {src.name} -> {ftype} failed")


def _cached(key: str, name: str, make) -> tuple[Path, bool]:
    """Returns (path of cache entry gguf/key/name, whether `make(tmp_path)` had to write it)."""
    final = cache.entry("gguf", key)
    if cache.verified(final) and (final / name).exists():
        return final / name, False
    with cache.atomic_dir(final) as tmp:
        make(tmp / name)
    return final / name, True


def type_mix(path: str) -> dict:
    """Returns {type_mix, bits_per_weight, mixed, weights_bytes, kernel_types} of a GGUF's tensors.

    bits_per_weight = 8 x tensor data bytes / elements over every tensor (norms included), the
    effective density of the real file; `mixed` is True when 2-D weights use >1 quantized type.
    """
    from gguf import GGUFReader

    try:
        tensors = GGUFReader(path).tensors
    except Exception as e:  # truncated or foreign file: name it, say the fix
        raise UserError(f"'{path}' is not a readable GGUF file ({type(e).__name__}: {e}); "
                        "delete it to rebuild, or point the suite at another file") from None
    mix = Counter(t.tensor_type.name for t in tensors)
    n_bytes = sum(int(t.n_bytes) for t in tensors)
    n_elem = sum(int(t.n_elements) for t in tensors)
    by_bytes = Counter()
    for t in tensors:
        if len(t.shape) == 2:
            by_bytes[t.tensor_type.name] += int(t.n_bytes)
    quant = [k for k in by_bytes if k not in FLOAT_TYPES]
    return {"type_mix": dict(mix), "bits_per_weight": 8 * n_bytes / n_elem,
            "mixed": len(quant) > 1, "weights_bytes": n_bytes,
            "kernel_types": "/".join(k for k, _ in by_bytes.most_common())}


def tokenizer_agreement(gguf_path: str, hf_dir: str, text: str) -> float:
    """Returns how alike llama.cpp's and the HF tokenizer's ids for `text` are (1.0: identical).

    The score is difflib's ratio 2·M / (len_a + len_b), M = tokens in matching runs. llama.cpp
    tokenizes as Llama.tokenize(add_bos=False, special=False) does, from a vocab-only load
    (Llama(vocab_only=True) would still make a context and warn about it).
    """
    from transformers import AutoTokenizer

    lc = _llama_cpp()
    params = lc.llama_model_default_params()
    params.vocab_only = True
    model = lc.llama_model_load_from_file(str(gguf_path).encode(), params)
    if not model:
        raise RuntimeError(f"llama.cpp could not read the vocabulary of {gguf_path}")
    try:
        data = text.encode()
        buf = (lc.llama_token * (len(data) + 1))()
        n = lc.llama_tokenize(lc.llama_model_get_vocab(model), data, len(data), buf, len(buf),
                              False, False)
        a = list(buf[:n])
    finally:
        lc.llama_model_free(model)
    b = AutoTokenizer.from_pretrained(hf_dir)(text, add_special_tokens=False).input_ids
    return 1.0 if a == b else difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


class GGUFBackend(Backend):
    """Runs a GGUF with llama.cpp: logits() through Llama.eval, prefill/decode via llama_decode."""

    def _artifact(self) -> tuple[Path, bool]:
        """Returns the GGUF path and whether this call made it (False: cached or user-given)."""
        if self.variant.artifact:
            path = Path(self.variant.artifact).expanduser()
            if not path.is_file():
                raise UserError(f"{self.variant.format.name}: artifact '{path}' is not a file; "
                                "give a local .gguf path")
            return path, False
        _llama_cpp()  # Skip before a long download when the runtime is missing anyway
        version, ftype = _version(), self.variant.format.param
        (f16_key, f16_name), quant = self._entries()
        f16, fresh = _cached(f16_key, f16_name, lambda out: convert_f16(self.variant.model_dir, out, version))
        if ftype == "F16":
            return f16, fresh
        return _cached(*quant, lambda out: quantize(f16, out, ftype, self.variant.threads))

    def _entries(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """Returns the (cache key, file name) of the F16 conversion and of this format's file."""
        version, ftype = _version(), self.variant.format.param
        f16_key = cache.content_key(self.variant.model_digest, "F16", version)
        name = "model-" + re.sub(r"[^\w.]", "-", ftype) + ".gguf"
        return (f16_key, "model-F16.gguf"), (cache.content_key(f16_key, ftype, version), name)

    def cached_artifact(self) -> str:
        if self.variant.artifact:
            path = Path(self.variant.artifact).expanduser()
            return str(path) if path.is_file() else ""
        key, name = self._entries()[self.variant.format.param != "F16"]
        final = cache.entry("gguf", key)
        return str(final / name) if cache.verified(final, quiet=True) and (final / name).exists() else ""

    def build(self) -> None:
        from quantbench.inputs.corpus import load_text

        t0 = time.perf_counter()
        path, fresh = self._artifact()
        self.path, mix = str(path), type_mix(str(path))
        self.weights, self.kernel_types = mix["weights_bytes"], mix["kernel_types"]
        self.info.update(artifact=self.path, build_s=time.perf_counter() - t0 if fresh else 0.0,
                         gguf_type_mix=mix["type_mix"], bits_per_weight=mix["bits_per_weight"],
                         gguf_mixed=mix["mixed"], llama_cpp_version=_version(),
                         # the arithmetic predicts from the file's real density, since llama.cpp
                         # picks per-tensor fallbacks (Q4_K_M on 576-wide rows is mostly Q5_0)
                         bits_unquantized=mix["bits_per_weight"])
        if self.variant.format.group_size:  # a block format (MXFP4: 32 weights per scale)
            self.info["group_size"] = self.variant.format.group_size
        say(f"[gguf] {path.name}: {mix['type_mix']}, {mix['bits_per_weight']:.3f} bits/weight"
            + (f", built in {self.info['build_s']:.1f} s" if fresh else " (cached)"))
        self.info["tokenizer_agree"] = tokenizer_agreement(
            self.path, self.variant.model_dir, load_text(self.variant.suite.corpus)[:2000])

    def load(self) -> None:
        llama_cpp = self.llama_cpp = _llama_cpp()
        cuda = self.variant.device.startswith("cuda")
        if cuda and not llama_cpp.llama_supports_gpu_offload():
            raise Skip("CUDA asked for but this llama-cpp-python has no usable GPU offload: built "
                       "without CUDA (reinstall it with CMAKE_ARGS=-DGGML_CUDA=on), or its CUDA "
                       "runtime/cuBLAS not found or newer than the driver (see LD_LIBRARY_PATH)")
        s = self.variant.suite
        depth = max(s.depths, default=0)  # the untimed fill sits in the same cells
        n_ctx = max(s.n_ctx, depth + max(s.prompt_lengths), depth + s.gen_prompt_tokens + s.gen_tokens
                    + CTX_SLACK)
        n_gpu_layers = -1 if cuda else 0
        # K and V in one type; quantized V needs flash attention, which is on below.
        self.kv_type = self.variant.format.kv_type or "f16"
        kv_id = GGML_KV_TYPE[self.kv_type]
        self.kernel_path = self.variant.format.kernel_path
        if not self.kernel_path and not cuda and not backends.ISOLATED \
                and extra_bufts_crash(self.path, self.variant.threads):
            # In a process whose crash would take more than this variant (pytest, a notebook): the
            # probe said the default path dies here, so take the safer one and say so.
            self.kernel_path = "norepack"
            self.info["kernel_fallback"] = ("extra buffer types crash a batched eval on this CPU "
                                            "(probed in a child process); loaded with them off")
        _kv_logged.clear()
        _buffers.clear()
        # Llama() reads its defaults through the submodule (llama.py: import llama_cpp.llama_cpp)
        api = sys.modules["llama_cpp.llama_cpp"]
        real = api.llama_model_default_params
        if self.kernel_path == "norepack":
            api.llama_model_default_params = _no_extra_bufts(api)
        try:
            self._make_llama(llama_cpp, n_ctx, n_gpu_layers, kv_id)
        finally:
            api.llama_model_default_params = real
        self.n_vocab = self.llm.n_vocab()
        self.bctx, self.batched = None, False  # the batched-decode context, made on first use
        self.kv_logged = _kv_logged[-1] if _kv_logged else None
        from quantbench.arith.formulas import KV_TYPE_BITS

        flags = system_flags(llama_cpp.llama_print_system_info().decode("utf-8", "replace"))
        self.info.update(n_gpu_layers=n_gpu_layers,
                         kernel=kernel_from_buffers(_buffers) or f"llama.cpp:{'CUDA' if cuda else 'CPU'}",
                         openmp_runtime=openmp_runtime(),
                         kernel_detail={"buffers_bytes": dict(_buffers), "weight_types": self.kernel_types,
                                        "extra_bufts": self.kernel_path != "norepack",
                                        # what llama-bench's -b/-ub/-fa say on the reference side
                                        "n_ctx": n_ctx, "n_batch": n_ctx, "n_ubatch": n_ctx, "flash_attn": True,
                                        "system_info": {k: v for k, v in flags.items() if v != "0"},
                                        "source": "llama.cpp load_tensors buffer log + llama_print_system_info"},
                         kv_type=self.kv_type, kv_bytes_per_elem=KV_TYPE_BITS[self.kv_type] / 8,
                         kv_cache_source="computed from model metadata: 2 x n_layer x n_head_kv x "
                                         "head_dim x cells in use x bytes per element of kv_type")
        # what its attention iterates (arith.attended_cells): n_kv, padded, per sequence of the
        # context in use (the batched context's, while a batch runs: _use_ctx)
        self.info["kv_attend_pad"] = LLAMA_CPP_KV_PAD
        self.info["kv_cells_per_seq"] = self.main_cells = int(llama_cpp.llama_n_ctx_seq(self.llm.ctx))
        if self.kv_logged:  # llama.cpp's own account, beside the arithmetic's per-token figure
            self.info["kv_cache_bytes_per_token"] = self.kv_logged[0] / self.kv_logged[1]

    def probe_kernels(self) -> bool:
        """On CUDA, adds the kernels CUPTI saw (after the timed regions: see Backend.probe_kernels)."""
        if not self.variant.device.startswith("cuda"):
            return False
        self._probe_cuda()
        return True

    def _probe_cuda(self) -> None:
        """Adds the CUDA kernels an 8-token prefill and a decode step launched (CUPTI sees
        llama.cpp's kernels too): MMQ/MMVQ for quantized types, cuBLAS or its own mat-vec for F16."""
        from quantbench.backends import kernels

        try:
            ks = kernels.cuda_kernels(lambda: self.decode(self.prefill(list(range(100, 108)))))
        except Exception as e:  # no torch or no CUPTI: the buffer log still names the path
            self.info["kernel_detail"]["cuda_kernels_error"] = f"{type(e).__name__}: {e}"[:200]
            return
        self.info["kernel_detail"]["cuda_kernels"] = ks
        if label := kernels.cuda_label(ks):
            self.info["kernel"] = f"llama.cpp:CUDA-{label.removeprefix('llama.cpp-')}"

    def _make_llama(self, llama_cpp, n_ctx: int, n_gpu_layers: int, kv_id: int) -> None:
        self.llm = llama_cpp.Llama(
            self.path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=self.variant.threads,
            n_threads_batch=self.variant.threads, n_gpu_layers=n_gpu_layers,
            # One GPU, the one named: llama.cpp would otherwise split layers over all it sees.
            split_mode=llama_cpp.LLAMA_SPLIT_MODE_NONE, main_gpu=int(self.variant.device[5:] or 0),
            # Flash attention matches llama-perplexity's default; without it ppl moves in the 3rd digit.
            flash_attn=True, logits_all=True, seed=0, verbose=False, type_k=kv_id, type_v=kv_id)

    def weights_bytes(self) -> int:
        """Returns the GGUF's tensor data bytes (not the file size, which adds vocab and metadata)."""
        return self.weights

    def logits(self, ids: list[int]) -> np.ndarray:
        if len(ids) > self.llm.n_ctx():
            raise ValueError(f"window of {len(ids)} tokens exceeds n_ctx {self.llm.n_ctx()}")
        self.llm.reset()  # eval then drops every cached position from 0 on
        if len(ids) > 1:
            crash_hook("gguf", self.kernel_path)
        self.llm.eval(ids)  # the ids as given: no BOS added, no retokenizing
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def _decode(self, ids: list[int]) -> int:
        # llama_batch_get_one asks logits for the last token only: Llama.eval with logits_all
        # would also run lm_head on every prompt position, which llama-bench does not time.
        if len(ids) > 1:
            crash_hook("gguf", self.kernel_path)
        arr = (self.llama_cpp.llama_token * len(ids))(*ids)
        if rc := self.llama_cpp.llama_decode(self.llm.ctx,
                                             self.llama_cpp.llama_batch_get_one(arr, len(ids))):
            raise RuntimeError(f"llama_decode returned {rc}")
        row = self.llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return int(np.ctypeslib.as_array(row, shape=(self.n_vocab,)).argmax())

    def prefill(self, ids: list[int]) -> int:
        if self.batched:  # back from a batched context: records name the main context's cells again
            self.info["kv_cells_per_seq"] = self.main_cells
        lc, self.batched = self.llama_cpp, False
        lc.llama_memory_clear(lc.llama_get_memory(self.llm.ctx), True)
        return self._decode(ids)

    def decode(self, token: int) -> int:
        return self._decode([token])

    def extend(self, ids: list[int]) -> int:
        self.batched = False
        return self._decode(ids)

    def prefill_batch(self, ids: list[int], batch: int) -> list[int]:
        """Prefills `batch` sequences in a context of their own (n_seq_max = batch), as
        llama-batched-bench does: one llama_batch with every prompt token, each tagged with its
        sequence, logits kept for each sequence's last position."""
        lc = self.llama_cpp
        if self.bctx is None or self.bctx_batch != batch:
            self._free_batch_ctx()
            s = self.variant.suite
            depth = max(s.depths, default=0) if s.cross_batches_depths else 0
            p = lc.llama_context_default_params()
            p.n_ctx = batch * (depth + s.gen_prompt_tokens + s.gen_tokens + CTX_SLACK)
            p.n_batch = p.n_ubatch = max(batch * max(len(ids), depth, s.gen_prompt_tokens), batch)
            p.n_seq_max = batch
            p.n_threads = p.n_threads_batch = self.variant.threads
            p.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
            p.type_k = p.type_v = GGML_KV_TYPE[self.kv_type]
            self.bctx = lc.llama_init_from_model(self.llm.model, p)
            if not self.bctx:
                raise RuntimeError(f"llama.cpp could not make a context for {batch} sequences")
            self.bctx_batch = batch
            self.batch_buf = lc.llama_batch_init(p.n_batch, 0, batch)
            self.batch_cells = int(lc.llama_n_ctx_seq(self.bctx))
            self.batched = False  # a new context: name its cells below
        if not self.batched:  # the cells per sequence its attention iterates: the batched context's
            self.info["kv_cells_per_seq"] = self.batch_cells
        lc.llama_memory_clear(lc.llama_get_memory(self.bctx), True)
        self.bpos, self.batched = len(ids), True
        return self._decode_seqs([(seq, pos, t) for seq in range(batch) for pos, t in enumerate(ids)])

    def extend_batch(self, ids: list[int], batch: int) -> list[int]:
        start, self.bpos = self.bpos, self.bpos + len(ids)
        return self._decode_seqs([(seq, start + pos, t) for seq in range(batch) for pos, t in enumerate(ids)])

    def decode_batch(self, tokens: list[int]) -> list[int]:
        self.bpos += 1
        return self._decode_seqs([(seq, self.bpos - 1, t) for seq, t in enumerate(tokens)])

    def _decode_seqs(self, items: list[tuple[int, int, int]]) -> list[int]:
        """Decodes (sequence, position, token) items; returns each sequence's argmax at its last item."""
        lc, b = self.llama_cpp, self.batch_buf
        crash_hook("gguf", self.kernel_path)
        last = {seq: i for i, (seq, _, _) in enumerate(items)}
        for i, (seq, pos, tok) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0] = tok, pos, 1, seq
            b.logits[i] = last[seq] == i
        b.n_tokens = len(items)
        if rc := lc.llama_decode(self.bctx, b):
            raise RuntimeError(f"llama_decode returned {rc} for a batch of {len(last)} sequences")
        return [int(np.ctypeslib.as_array(lc.llama_get_logits_ith(self.bctx, last[seq]),
                                          shape=(self.n_vocab,)).argmax()) for seq in sorted(last)]

    def _free_batch_ctx(self) -> None:
        if getattr(self, "bctx", None) is not None:
            self.llama_cpp.llama_batch_free(self.batch_buf)
            self.llama_cpp.llama_free(self.bctx)
            self.bctx = None

    def kv_cache_bytes(self, allocated: bool = False) -> int | None:
        """Returns the bytes of the KV cells in use (allocated=True: of all n_ctx cells).

        No public llama.cpp call gives bytes, so: 2 (K,V) x n_layer x n_head_kv x head_dim x cells
        x bytes per element of kv_type (q8_0 8.5/8, q4_0 4.5/8: rows are whole blocks of 32);
        cells in use = Σ over sequences of (highest cached position + 1). For all n_ctx cells this
        equals llama.cpp's "llama_kv_cache: size" log line (info["kv_cache_bytes_per_token"] keeps
        it) on SmolLM2 for f16, q8_0 and q4_0. Sliding-window and recurrent caches are not modelled.
        """
        lc, m, meta = self.llama_cpp, self.llm.model, self.llm.metadata
        arch, head = meta.get("general.architecture"), lc.llama_model_n_embd(m) // lc.llama_model_n_head(m)
        k_plus_v = sum(int(meta.get(f"{arch}.attention.{x}_length", head)) for x in ("key", "value"))
        ctx = self.bctx if self.batched else self.llm.ctx  # the one last used
        if allocated:
            cells = lc.llama_n_ctx(ctx)
        else:
            mem = lc.llama_get_memory(ctx)
            seqs = self.bctx_batch if self.batched else 1
            cells = sum(lc.llama_memory_seq_pos_max(mem, q) + 1 for q in range(seqs))
        return round(lc.llama_model_n_layer(m) * lc.llama_model_n_head_kv(m) * k_plus_v * cells
                     * self.info["kv_bytes_per_elem"])

    def engine_s(self) -> float:
        """Returns llama.cpp's own time in llama_decode up to its synchronize, summed over both
        contexts: llama_perf_context's t_p_eval + t_eval (what llama-bench's timings cover)."""
        total = 0.0
        for c in (self.llm.ctx, self.bctx):
            if c is not None:
                p = self.llama_cpp.llama_perf_context(c)
                total += (p.t_p_eval_ms + p.t_eval_ms) / 1e3
        return total

    def sync(self) -> None:
        if self.variant.device.startswith("cuda"):
            self.llama_cpp.llama_synchronize(self.llm.ctx)
            if self.bctx is not None:
                self.llama_cpp.llama_synchronize(self.bctx)

    def close(self) -> None:
        self._free_batch_ctx()
        if getattr(self, "llm", None) is not None:
            self.llm.close()
            self.llm = None
