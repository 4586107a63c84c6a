"""torchao backend: int8 weight-only, int8 dynamic-activation + int8 weight (W8A8) and int4
weight-only, through transformers' `TorchAoConfig`, quantized once and cached.

CPU kernels (torchao 0.18 on torch 2.13): W8A8 runs `torch._int_mm` on int8 activations quantized
per token on every call; int4 runs `aten._weight_int4pack_mm_for_cpu` on the CPU packing
(`Int4OpaqueTensor`, torchao's prototype int4 config; bf16 activations); int8 weight-only has no
fused kernel in eager mode and dequantizes the weight on every call before a dense matmul. The
record's kernel says which of these the profiler saw.

W8A8 is calibrated: torchao's SmoothQuant (RECIPES; prototype in 0.18) observes each decoder
Linear's input over corpus tokens after the evaluation windows (CALIB), moves part of each input
channel's range into the weight (s_j = max|X_j|^a / max|W_j|^(1-a)), then quantizes the weight
and keeps 1/s as the Int8Tensor's `act_pre_scale`, multiplied into the activation before it is
rounded to int8 per token. Without it the activations' outlier channels cost +3.5 % ppl on the
embedded model, with it +1.1 % (docs/formats.md).
"""
from __future__ import annotations

from quantbench.backends.hf import SavedQuantBackend

# variant.format.param -> model dtype on CPU. int4's CPU kernel takes bf16 only; the int8 ones run
# an fp32 model there. On CUDA every config runs a bf16 model (torchao's GPU kernels take bf16).
DTYPE = {"int8wo": "float32", "w8a8": "float32", "int4wo": "bfloat16"}
# Calibrated params: the recipe applied before quantizing (SavedQuantBackend.RECIPES: it keys the
# cache and is recorded as kernel_detail.recipe). 0.5 is torchao's default strength (and the
# SmoothQuant paper's). Calibrated over SavedQuantBackend.CALIB, as compressed-tensors' W8A8 is.
RECIPES = {"w8a8": ("smoothquant-0.5",)}
# Profiler ops that do the quantized matmul, and what they mean for the record.
FUSED_OPS = {"aten::_int_mm": "int8 x int8 GEMM (torch._int_mm)",
             "aten::_weight_int4pack_mm_for_cpu": "fused int4 GEMM (_weight_int4pack_mm_for_cpu)",
             "aten::_weight_int4pack_mm": "fused int4 GEMM (tinygemm)"}


def dtype_name(param: str, device: str) -> str:
    """Returns the torch dtype name the model is loaded in for a torchao format on device."""
    return "bfloat16" if device.startswith("cuda") else DTYPE[param]


def config_spec(param: str, device: str, group_size: int) -> tuple[str, dict]:
    """Returns (torchao config class, its arguments) for a format on device (cpu, cuda:N).

    CUDA (unverified here): int4 in the tile-packed layout of tinygemm
    (`aten::_weight_int4pack_mm`); int8 weight-only and W8A8 as on CPU, W8A8 running
    `torch._int_mm` on cuBLASLt. CPU: int4 in the prototype Int4OpaqueTensor packing
    (`_weight_int4pack_mm_for_cpu`)."""
    if param == "int8wo":
        return "Int8WeightOnlyConfig", {}
    if param == "w8a8":
        return "Int8DynamicActivationInt8WeightConfig", {}
    if device.startswith("cuda"):
        return "Int4WeightOnlyConfig", {"group_size": group_size, "int4_packing_format": "tile_packed_to_4d"}
    return "PrototypeInt4WeightOnlyConfig", {"group_size": group_size}


class TorchAOBackend(SavedQuantBackend):
    RECIPES = RECIPES
    library = "torchao"
    install = "pip install 'torchao>=0.18' (nox installs it with the GPTQ requirements)"

    def dtype(self):
        return getattr(self._torch(), dtype_name(self.variant.format.param, self.variant.device))

    def quant_config(self):
        import torchao.quantization
        from transformers import TorchAoConfig

        name, kwargs = config_spec(self.variant.format.param, self.variant.device, self.variant.format.group_size)
        if name.startswith("Prototype"):  # the CPU layout lives in the prototype namespace in 0.18
            from torchao.prototype.quantization.int4 import inference_workflow as module
        else:
            module = torchao.quantization
        return TorchAoConfig(quant_type=getattr(module, name)(**kwargs))

    def _quantize(self, out) -> None:
        if not self.calibrated():
            return super()._quantize(out)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch = self._torch()
        torch.set_num_threads(self.variant.threads)
        model = AutoModelForCausalLM.from_pretrained(self.variant.model_dir, dtype=self.dtype(),
                                                     device_map=self.variant.device).eval()
        (step,) = self.RECIPES[self.variant.format.param]
        smooth_quant(model, self.calibration(*self.CALIB), float(step.removeprefix("smoothquant-")))
        self._check(model, self.variant.model_dir)
        self.save(model, out)
        AutoTokenizer.from_pretrained(self.variant.model_dir).save_pretrained(str(out))

    def quantized_layers(self, model) -> list[str]:
        import torch

        return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                and type(m.weight).__name__ not in ("Parameter", "Tensor")]

    def kernel_name(self, kernel: str, detail: dict) -> str:
        """Returns `torchao:<op>` for a fused quantized matmul the profiler saw, else
        `torchao:dequantized per call (<dense kernel>)`."""
        ops = [o["op"] for o in detail["top_ops"]]
        fused = next((op for op in FUSED_OPS if op in ops), None)
        detail["weight_type"] = sorted({type(m.weight).__name__ for m in self.model.modules()
                                        if hasattr(m, "weight") and type(m.weight).__name__ not in
                                        ("Parameter", "Tensor")})
        if self.calibrated():
            detail["recipe"] = self.recipe()
        if fused:
            detail["execution"] = FUSED_OPS[fused]
            return f"torchao:{fused.removeprefix('aten::')}"
        detail["execution"] = "dequantized per call"
        return f"torchao:dequantized per call ({kernel})"

    # torchao 0.18 cannot write its CPU int4 layout (Int4OpaqueTensor) to safetensors, nor does
    # transformers know a SmoothQuant model's config, so those artifacts are the pickled state dict
    # (torch.save) beside config.json, loaded into a skeleton made on the meta device: no fp32
    # weights are read or quantized again.
    PICKLED = "model-state.pt"

    def _pickled(self) -> bool:
        cpu_int4 = self.variant.format.param == "int4wo" and not self.variant.device.startswith("cuda")
        return self.calibrated() or cpu_int4

    def save(self, model, out) -> None:
        if not self._pickled():
            return super().save(model, out)
        torch = self._torch()
        model.config.save_pretrained(str(out))
        torch.save(model.state_dict(), out / self.PICKLED)

    def load_model(self):
        if not self._pickled():
            return super().load_model()
        from pathlib import Path

        from transformers import AutoConfig, AutoModelForCausalLM

        torch, path = self._torch(), self.info["artifact"]
        config = AutoConfig.from_pretrained(path)
        config.quantization_config = None
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=self.dtype())
        state = torch.load(Path(path, self.PICKLED), weights_only=False, map_location=self.variant.device)
        model.load_state_dict(state, assign=True, strict=False)
        model.tie_weights()
        # Non-persistent buffers (rotary inv_freq) are not in a state dict: remake their modules.
        for name, m in list(model.named_modules()):
            if any(b.is_meta for b in m.buffers(recurse=False)):
                parent, _, attr = name.rpartition(".")
                with torch.device(self.variant.device):
                    setattr(model.get_submodule(parent), attr, type(m)(config=model.config))
        if missing := [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]:
            raise RuntimeError(f"{path}: {self.PICKLED} lacks {missing[:3]}")
        self._check(model, path)
        torch.set_num_threads(self.variant.threads)
        return model


def decoder_linear(module, fqn: str) -> bool:
    """quantize_'s filter: the decoder's Linear layers (the tied lm_head stays as loaded, as
    TorchAoConfig leaves it)."""
    import torch

    return isinstance(module, torch.nn.Linear) and ".layers." in f".{fqn}"


def smooth_quant(model, samples: list[list[int]], alpha: float) -> None:
    """Quantizes model's decoder Linears in place to W8A8 with torchao's SmoothQuant at strength
    alpha: observers inserted (prepare), one forward per calibration sample, then convert."""
    import torch
    from torchao.prototype.smoothquant import SmoothQuantConfig
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    base = Int8DynamicActivationInt8WeightConfig()
    quantize_(model, SmoothQuantConfig(base, step="prepare", alpha=alpha), filter_fn=decoder_linear)
    device = next(model.parameters()).device
    with torch.inference_mode():
        for ids in samples:
            model(torch.tensor([ids], device=device))
    quantize_(model, SmoothQuantConfig(base, step="convert", alpha=alpha),
              filter_fn=lambda m, fqn: type(m).__name__ == "SmoothQuantObservedLinear")
