"""compressed-tensors backend: W8A8 (int8 weights per channel + int8 activations per token, dynamic)
and W4A16 (int4 weights, group 64), quantized by llmcompressor's `oneshot` and saved compressed:
`int-quantized` (int8 weights) or `pack-quantized` (8 int4 codes per int32), bf16 scales, no zero
points (symmetric). Both are calibrated on corpus tokens after the evaluation windows (CALIB),
the way llmcompressor's own examples make the checkpoints vLLM serves (RECIPES): W4A16 with
`GPTQModifier`; W8A8 with `SmoothQuantModifier` (strength 0.8: each input channel of a linear
is divided by a smoothing factor and its weight column multiplied by it, moving activation range
into the weights before int8 per-token quantization) and then GPTQ. Data-free min-max rounding put
SmolLM2 at +43 % ppl over fp32 for W4A16 (beyond the 4-bit band) and +2.8 % for W8A8 (beyond the
8-bit band). The CUDA presets (fp8 / nvfp4) stay data-free, a `QuantizationModifier` with a
min-max observer.

Runs in the backend environment 'compressed-tensors' (envs.ENVS: llmcompressor pins transformers
5.17). Real int kernels for this format are vLLM's; transformers loads the compressed tensors and
decompresses every Linear to a dense bf16 weight on the first forward, so on CPU this measures the
artifact's quality and size on disk, at dense bf16 speed and memory. W8A8's activations are still
quantized per token (quantize-dequantize) by compressed-tensors' forward hook. The record says
"dense (decompressed)" and carries both sizes: `artifact_bytes` (compressed, on disk) and
`weights_bytes` (dense, in memory); kernel_detail adds `weights_bytes_compressed` (as loaded,
before the first forward) and the dtype of the weights after it.
"""
from __future__ import annotations

from quantbench.backends.hf import SavedQuantBackend

# The calibration (W4A16, W8A8) is SavedQuantBackend.CALIB: 32 x 512 tokens of the corpus after the
# evaluation windows (half the GPTQModel suite default's samples: llmcompressor's sequential pipeline
# on CPU is the slower one). Each calibrated format's llmcompressor recipe, as its modifiers in order
# (SavedQuantBackend.RECIPES: they key the cache).
RECIPES = {"w4a16": ("gptq",), "w8a8": ("smoothquant-0.8", "gptq")}
# llmcompressor preset schemes for the CUDA formats (data-free: weights only need min-max).
PRESETS = {"fp8": "FP8_DYNAMIC", "nvfp4": "NVFP4A16"}
# The kernel vLLM serves each with, by the GPU's compute capability (lowest first): vLLM's
# compressed-tensors schemes (CompressedTensorsW8A8Int8 / W4A16Sparse24 / WNA16 / W8A8Fp8 /
# W4A16Fp4 / W4A4Fp4) pick these. Unverified here (no GPU): docs/gpu.md.
VLLM_KERNELS = {
    "w8a8": ((75, "cutlass_scaled_mm (int8)"),),
    "w4a16": ((80, "Marlin (gptq_marlin_gemm)"), (90, "Machete")),
    "fp8": ((80, "Marlin fp8 (weight-only)"), (89, "cutlass_scaled_mm (fp8)")),
    "nvfp4": ((80, "Marlin fp4 (weight-only)"), (100, "cutlass_fp4_gemm")),
}


def vllm_kernel(param: str, capability: tuple[int, int]) -> str:
    """Returns the kernel vLLM runs a compressed-tensors format with on a GPU of this compute
    capability, or "" when that GPU is below every kernel's minimum."""
    cc = capability[0] * 10 + capability[1]
    fits = [name for least, name in VLLM_KERNELS[param] if cc >= least]
    return fits[-1] if fits else ""


def scheme(param: str, group_size: int) -> dict | str:
    """Returns the llmcompressor config group of a format's param (w8a8 / w4a16), or the name of
    its preset scheme (fp8 / nvfp4)."""
    if param in PRESETS:
        return PRESETS[param]
    weights = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel"}
    if param == "w4a16":
        weights = {**weights, "num_bits": 4, "strategy": "group", "group_size": group_size}
        return {"targets": ["Linear"], "weights": weights}
    acts = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True}
    return {"targets": ["Linear"], "weights": weights, "input_activations": acts}


def recipe(param: str, group: dict) -> list:
    """Returns llmcompressor's modifiers for a calibrated format (RECIPES[param], in order)."""
    from llmcompressor.modifiers.quantization import GPTQModifier

    mods = []
    for step in RECIPES[param]:
        if step.startswith("smoothquant-"):
            from llmcompressor.modifiers.smoothquant import SmoothQuantModifier

            mods.append(SmoothQuantModifier(smoothing_strength=float(step.removeprefix("smoothquant-"))))
        elif step == "gptq":
            mods.append(GPTQModifier(config_groups={"group_0": group}, ignore=["lm_head"]))
        else:
            raise ValueError(f"unknown recipe step {step!r}")
    return mods


class CompressedTensorsBackend(SavedQuantBackend):
    RECIPES = RECIPES
    library = "llmcompressor"
    install = "quantbench env build compressed-tensors"

    def dtype(self):
        return self._torch().bfloat16

    def _quantize(self, out) -> None:
        from llmcompressor import oneshot
        from llmcompressor.modifiers.quantization import QuantizationModifier
        from transformers import AutoModelForCausalLM, AutoTokenizer

        fmt = self.variant.format
        self._torch().set_num_threads(self.variant.threads)
        model = AutoModelForCausalLM.from_pretrained(self.variant.model_dir, dtype=self.dtype())
        group = scheme(fmt.param, fmt.group_size)
        if isinstance(group, str):
            oneshot(model=model, recipe=[QuantizationModifier(targets="Linear", scheme=group, ignore=["lm_head"])])
        elif not self.calibrated():  # no dataset: a data-free pipeline
            oneshot(model=model, recipe=[QuantizationModifier(config_groups={"group_0": group}, ignore=["lm_head"])])
        else:
            from datasets import Dataset

            n, tokens = self.CALIB
            ids = self.calibration(n, tokens)
            data = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})
            oneshot(model=model, dataset=data, num_calibration_samples=len(ids), max_seq_length=tokens,
                    recipe=recipe(fmt.param, group))
        self._check(model, self.variant.model_dir)
        model.save_pretrained(str(out), save_compressed=True)
        AutoTokenizer.from_pretrained(self.variant.model_dir).save_pretrained(str(out))

    def quantized_layers(self, model) -> list[str]:
        return [n for n, m in model.named_modules() if getattr(m, "quantization_scheme", None) is not None]

    def load_model(self):
        from quantbench.backends.hf import tensor_bytes

        model = super().load_model()
        seen = {t.untyped_storage().data_ptr(): tensor_bytes(t) for t in [*model.parameters(), *model.buffers()]}
        self.loaded = {"weights_bytes_compressed": sum(seen.values())}  # as loaded, before the forward
        with self._torch().inference_mode():  # the first forward decompresses (every device alike)
            model(input_ids=self._torch().tensor([[1, 2]], device=self.variant.device))
        layer = next(m for m in model.modules() if getattr(m, "quantization_scheme", None) is not None)
        self.loaded["weights_dtype"] = str(layer.weight.dtype).removeprefix("torch.")  # bfloat16: dense
        return model

    def kernel_name(self, kernel: str, detail: dict) -> str:
        """Returns `compressed-tensors:dense (decompressed) (<dense kernel>)`; kernel_detail names the
        kernel vLLM would serve this artifact with on this GPU (CUDA only)."""
        detail.update(execution="dense (decompressed)", **self.loaded)
        if self.variant.device.startswith("cuda"):
            cap = self._torch().cuda.get_device_capability(self.variant.device)
            detail["vllm_kernel"] = vllm_kernel(self.variant.format.param, cap) or "none for this GPU"
        if self.calibrated():
            detail["recipe"] = self.recipe()
        if self.variant.format.param == "w8a8":
            detail["activations"] = "int8 per token, quantize-dequantize before the dense matmul"
        return f"compressed-tensors:dense (decompressed) ({kernel})"
