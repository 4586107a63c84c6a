"""HQQ backend: half-quadratic 4-bit weights (no calibration data), quantized once with hqq's own
HF wrapper (`AutoHQQHFModel`) and cached as hqq saves it (qmodel.pt + config.json).

Not transformers' `HqqConfig`: transformers 5.25 raises "QuantizationMethod.HQQ is not available
yet" when loading with it. On CPU HQQ has no fused kernel: every forward unpacks the 4-bit codes
and dequantizes the weight (bf16 scale/zero per group of 64) before a dense matmul; the record's
kernel says so.
"""
from __future__ import annotations

from quantbench.backends.hf import SavedQuantBackend


class HQQBackend(SavedQuantBackend):
    library = "hqq"
    install = "DISABLE_CUDA=1 pip install --no-deps hqq==0.2.8.post1 einops termcolor (nox installs it)"

    def dtype(self):
        return self._torch().bfloat16

    def _quant_config(self):
        from hqq.core.quantize import BaseQuantizeConfig

        return BaseQuantizeConfig(nbits=int(self.variant.format.param), group_size=self.variant.format.group_size)

    def _quantize(self, out) -> None:
        from hqq.models.hf.base import AutoHQQHFModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch().set_num_threads(self.variant.threads)
        model = AutoModelForCausalLM.from_pretrained(self.variant.model_dir, dtype=self.dtype())
        AutoHQQHFModel.quantize_model(model, quant_config=self._quant_config(), compute_dtype=self.dtype(),
                                      device=self.variant.device)
        self._check(model, self.variant.model_dir)
        AutoHQQHFModel.save_quantized(model, str(out))
        AutoTokenizer.from_pretrained(self.variant.model_dir).save_pretrained(str(out))

    def load_model(self):
        from hqq.models.hf.base import AutoHQQHFModel

        path = self.info["artifact"]  # set by build()
        model = AutoHQQHFModel.from_quantized(path, compute_dtype=self.dtype(), device=self.variant.device)
        self._check(model, path)
        self._torch().set_num_threads(self.variant.threads)
        return model

    def weights_bytes(self) -> int:
        """Returns parameter/buffer bytes plus HQQ's scales and zeros, kept in each layer's `meta`
        dict (not parameters or buffers)."""
        total = super().weights_bytes()
        for m in self.model.modules():
            for v in (getattr(m, "meta", None) or {}).values() if type(m).__name__ == "HQQLinear" else ():
                total += v.nbytes if hasattr(v, "nbytes") else 0
        return total

    def quantized_layers(self, model) -> list[str]:
        return [n for n, m in model.named_modules() if type(m).__name__ == "HQQLinear"]

    def kernel_name(self, kernel: str, detail: dict) -> str:
        from hqq.core.quantize import HQQLinear

        backend = str(getattr(HQQLinear, "backend", "")).rpartition(".")[2]
        detail["hqq_backend"] = backend
        detail["execution"] = "dequantized per call"
        return f"hqq:{backend or 'default'} dequantized per call ({kernel})"
