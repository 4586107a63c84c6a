"""GPTQModel backend: GPTQ and AWQ int4 checkpoints, quantized once from the FP16 model and cached.

Quantization runs on variant.device (CPU: bf16, ~5x faster than fp16 on CPUs without fp16 GEMM;
CUDA: fp16). Loading goes through `GPTQModel.load`, which picks the fastest kernel it has for the
device (on AVX512-BF16 CPUs `TorchCpuAvx512Linear` / `TorchCpuAvx512AwqLinear`, which need bf16
activations); the HF model inside the wrapper then runs through HFBackend unchanged.
Pre-made checkpoints (variant.artifact: local path or hub id, GPTQModel/auto-gptq/autoawq) load the
same way.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import time
from pathlib import Path

from quantbench.backends import Skip, say
from quantbench.backends.hf import HFBackend
from quantbench.core import cache
from quantbench.core.errors import UserError

BITS = 4
CALIB_BATCH = 8  # calibration samples per forward while quantizing
# Build time on the reference 2-core machine (docs/results.md, "Timings": SmolLM2-135M, GPTQ
# 64 x 512 in 182 s, AWQ 8 x 256 in 506 s), for the ETA a run prints before it builds: (seconds per
# parameter, seconds per parameter x calibration token). GPTQ's time follows the tokens it runs;
# AWQ's is its per-layer clipping search, nearly independent of the calibration size.
BUILD_S_PER_PARAM = {"gptq": (0.0, 4.1e-11), "awq": (3.8e-6, 0.0)}
GROUP_FALLBACKS = (64, 32)  # tried after suite.group_size, largest first
# GPTQ: symmetric, no act-order (desc_act reorders columns and slows every CPU kernel).
# AWQ: asymmetric with zero points, the layout autoawq and vLLM use.
SYM = {"gptq": True, "awq": False}


def linear_in_features(config: dict) -> list[int]:
    """Returns the in_features of the decoder's Linear layers (q/k/v/gate/up, o_proj, down_proj)."""
    hidden = config["hidden_size"]
    heads = config.get("num_attention_heads")
    head_dim = config.get("head_dim") or (hidden // heads if heads else hidden)
    out = {hidden, config.get("intermediate_size", hidden)}
    if heads:
        out.add(heads * head_dim)
    return sorted(out)


def pick_group_size(config: dict, wanted: int) -> int | None:
    """Returns the largest of (wanted, 64, 32) dividing every quantized Linear's in_features.

    A group must not straddle rows: SmolLM2's 576 = 4.5 x 128, so g128 fails there and g64 is used.
    """
    sizes = linear_in_features(config)
    for g in sorted({wanted, *GROUP_FALLBACKS}, reverse=True):
        if g <= wanted and all(n % g == 0 for n in sizes):
            return g
    return None


def gptqmodel_version() -> str:
    """Returns the installed gptqmodel version, or raises Skip naming the install command."""
    # GPTQModel defaults to (cores + 1) // 2 CPU workers but its loader pool asks for 2, so a
    # 2-core machine crashes ("requests 2 workers but parent 'cpu' only has 1") without this.
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, ((os.cpu_count() or 1) + 1) // 2)))
    if importlib.util.find_spec("gptqmodel") is None:
        raise Skip("gptqmodel not installed; `pip install quantbench[gptq]` (see noxfile)")
    return importlib.metadata.version("gptqmodel")


def premade(artifact: str) -> str:
    """Returns a pre-made checkpoint's local path (resolved) or hub id; a missing path raises."""
    path = Path(artifact).expanduser()
    if path.exists():
        return str(path.resolve())
    if artifact.startswith((".", "/", "~")) or artifact.count("/") != 1:
        raise UserError(f"GPTQ/AWQ artifact '{artifact}' is neither a local checkpoint directory nor "
                        "a hub id (org/name); fix `artifacts` in the suite")
    return artifact


def runtime_bits_per_weight(model) -> float:
    """Returns 8 x bytes held by the quantized layers / their weight count, as loaded.

    CPU kernels repack 4-bit codes and widen scales to fp32 (4.625 bits at g64 against the
    file's 4.3125), so the arithmetic predicts memory from the layout that actually runs.
    """
    n_bytes = n_weights = 0
    for m in model.modules():
        if hasattr(m, "qweight"):
            n_weights += m.in_features * m.out_features
            n_bytes += sum(t.nbytes for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)])
    return 8 * n_bytes / n_weights if n_weights else 0.0


def kernel_backend(name: str):
    """Returns {"backend": BACKEND(name)} for GPTQModel, {} for "auto"; unknown names raise."""
    if name == "auto":
        return {}
    from gptqmodel import BACKEND

    try:
        return {"backend": BACKEND(name)}
    except ValueError:
        names = ", ".join(b.value for b in BACKEND if b.value.startswith(("gptq", "awq")))
        raise UserError(f"unknown GPTQModel kernel '{name}'; use auto or one of {names}") from None


def _no_kernel(e: Exception) -> bool:
    msg = str(e)
    return msg.startswith(("No auto-select kernels", "No valid quant linear"))


def bf16_gemm_fast(torch) -> bool:
    """Returns whether torch runs bf16 matmuls on this CPU through oneDNN (AVX-512 or AMX), not
    its reference kernel."""
    return bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
                and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class GPTQBackend(HFBackend):
    """GPTQ / AWQ int4 through GPTQModel; variant.format.param is the method ("gptq" or "awq")."""

    @property
    def method(self) -> str:
        return self.variant.format.param

    def _dtype(self):
        torch = self._torch()
        return torch.float16 if self.variant.device.startswith("cuda") else torch.bfloat16

    def _quant_dtype(self):
        """Returns the dtype GPTQModel quantizes in: the load dtype, but fp32 on a CPU where torch
        has no oneDNN bf16 GEMM (no AVX-512, e.g. Zen 3). There bf16 matmuls fall back to
        a reference kernel: 37 against fp32's 191 GFLOP/s with oneDNN off on the Zen 4 (F.linear
        512 x 576 x 1536, 2 threads), and the Zen 3's calibration ran 28 min against ~3 estimated."""
        torch = self._torch()
        if self.variant.device.startswith("cuda") or bf16_gemm_fast(torch):
            return self._dtype()
        return torch.float32

    def build_estimate_s(self) -> float:
        """Returns the seconds building this artifact should take (0 when cached or given), scaled
        from the reference machine's measured build times (BUILD_S_PER_PARAM)."""
        if self.variant.artifact:
            return 0.0
        final, _, n, t = self._target()
        if final is None or cache.verified(final, quiet=True):
            return 0.0
        from quantbench.arith.formulas import params_total
        from quantbench.arith.shapes import shape_from_config

        params = params_total(shape_from_config(self.variant.model_dir, exact=False))
        per_param, per_param_token = BUILD_S_PER_PARAM[self.method]
        return params * (per_param + per_param_token * n * t)

    def _target(self):
        """Returns (cache dir, group size, calibration samples, tokens); dir None when no group fits."""
        variant, s = self.variant, self.variant.suite
        config = json.loads(Path(variant.model_dir, "config.json").read_text())
        group = pick_group_size(config, variant.format.group_size or s.group_size)
        n, t = ((s.awq_calib_samples, s.awq_calib_tokens) if self.method == "awq"
                else (s.calib_samples, s.calib_tokens))
        if group is None:
            return None, None, n, t
        calib = self.calibration(n, t)
        # a fp32 quantization keys its own entry; the bf16/fp16 keys stay those of earlier builds
        fp32 = ("quantized in float32",) if self._quant_dtype() == self._torch().float32 else ()
        key = cache.content_key(variant.model_digest, self.method, BITS, group, SYM[self.method],
                                cache.content_key(calib), f"gptqmodel {gptqmodel_version()}", CALIB_BATCH,
                                *fp32)
        return cache.entry("quant", key), group, n, t

    def cached_artifact(self) -> str:
        if self.variant.artifact:
            return ""  # premade() checks and may convert it: the worker does that
        final = self._target()[0]
        return str(final) if final is not None and cache.verified(final, quiet=True) else ""

    def build(self) -> None:
        version = gptqmodel_version()
        if self.variant.artifact:
            self.info.update(artifact=premade(self.variant.artifact), build_s=0.0)
            return
        variant, s = self.variant, self.variant.suite
        final, group, n, t = self._target()
        if group is None:
            config = json.loads(Path(variant.model_dir, "config.json").read_text())
            raise Skip(f"no group size of {s.group_size}/64/32 divides in_features "
                       f"{linear_in_features(config)}; pass a pre-made checkpoint in `artifacts`")
        calib = self.calibration(n, t)
        self.info.update(group_size=group, calib_samples=n, calib_tokens=t, sym=SYM[self.method],
                         quantize_dtype=str(self._quant_dtype()).removeprefix("torch."))
        self.info["artifact"] = str(final)
        if cache.verified(final):
            self.info["build_s"] = 0.0
            return
        say(f"[quantbench] {self.method} {BITS}-bit g{group} quantizing {variant.model_name} on "
            f"{variant.device}, calibration {n} x {t} tokens (gptqmodel {version}) ...")
        t0 = time.perf_counter()
        with cache.atomic_dir(final) as tmp:
            self._quantize(group, calib, tmp)
        self.info["build_s"] = time.perf_counter() - t0
        say(f"[quantbench] {self.method} built in {self.info['build_s']:.1f} s -> {final}")

    def _quantize(self, group: int, calib: list[list[int]], out: Path) -> None:
        """Quantizes variant.model_dir with GPTQModel and saves checkpoint + tokenizer into `out`."""
        from gptqmodel import AWQConfig, GPTQConfig, GPTQModel
        from transformers import AutoTokenizer

        torch = self._torch()
        torch.set_num_threads(self.variant.threads)
        # No disk offload (a 135M-1B model fits in RAM; offload re-reads each layer from disk) and
        # no packing overlapped with the next layer's forward (on 2 cores it only oversubscribes).
        speed = {"offload_to_disk": False, "wait_for_submodule_finalizers": True}
        if self.method == "awq":
            qcfg = AWQConfig(bits=BITS, group_size=group, sym=SYM["awq"], **speed)
        else:
            qcfg = GPTQConfig(bits=BITS, group_size=group, desc_act=False, sym=SYM["gptq"], **speed)
        model = GPTQModel.load(self.variant.model_dir, qcfg, device=self.variant.device, dtype=self._quant_dtype())
        # On CUDA, AWQ packs through its GEMM extension, a ~1 min JIT build; the torch packer writes
        # the same layout (it is what CPUs use), so the build is not needed to quantize.
        pack = (kernel_backend("awq_torch") if self.method == "awq" and self.variant.device.startswith("cuda")
                else {})
        # Batches of equal-length samples: 8x fewer Python round trips; the Hessian is still
        # accumulated per sample, so the result is the batch-1 one up to bf16 rounding.
        model.quantize([{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in calib],
                       batch_size=CALIB_BATCH, **pack)
        model.save(str(out))
        AutoTokenizer.from_pretrained(self.variant.model_dir).save_pretrained(str(out))
        del model

    def load_model(self):
        """Returns the HF model inside GPTQModel's wrapper, its quantized layers already repacked."""
        gptqmodel_version()
        from gptqmodel import GPTQModel

        torch = self._torch()
        path = self.info["artifact"]  # set by build()
        s = self.variant.suite
        kernel = kernel_backend(s.awq_kernel if self.method == "awq" else s.gptq_kernel)
        try:
            self.wrapper = GPTQModel.load(path, device=self.variant.device, dtype=self._dtype(), **kernel)
        except ValueError as e:
            if _no_kernel(e):
                raise Skip(f"gptqmodel has no {self.method} kernel for {self.variant.device}: {e}") from e
            raise
        model = self.wrapper.model
        torch.set_num_threads(self.variant.threads)  # loading may change the thread count
        qcfg = getattr(self.wrapper, "quantize_config", None)
        if qcfg is not None:
            self.info.setdefault("group_size", int(qcfg.group_size))
            self.info.setdefault("sym", bool(qcfg.sym))
        # CPU kernels repack qweight/qzeros and widen scales to fp32 on their first forward; do it
        # now so weights_bytes and the first timed sample see the layout that actually runs.
        with torch.inference_mode():
            model(input_ids=torch.tensor([[0, 1]], device=self.variant.device), use_cache=False)
        kernels = sorted({type(m).__name__ for m in model.modules() if hasattr(m, "qweight")})
        if not kernels:
            raise RuntimeError(f"{path}: loaded model has no quantized layers (not a GPTQ/AWQ checkpoint?)")
        self.qlinear = "+".join(kernels)
        self.info["bits_per_weight"] = runtime_bits_per_weight(model)
        return model

    def kernel_name(self, kernel: str, detail: dict) -> str:
        """Returns `gptqmodel:<the QuantLinear class(es) it selected>`, GPTQModel's own choice."""
        detail["quant_linear"] = self.qlinear
        return f"gptqmodel:{self.qlinear}"

    def close(self) -> None:
        super().close()
        self.wrapper = None
