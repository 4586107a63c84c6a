"""bitsandbytes backend: LLM.int8 and NF4, quantized at load time from the FP16 checkpoint."""
from __future__ import annotations

import logging
import warnings

from quantbench.backends.hf import HFBackend


class BnbBackend(HFBackend):
    def load_model(self):
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        from quantbench.core.errors import require

        require("bitsandbytes", "bnb")
        torch = self._torch()
        # The CPU int8 path warns on every call (fp32 inputs cast to fp16): keep logs readable.
        warnings.filterwarnings("ignore", module="bitsandbytes")
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        if self.variant.format.param == "int8":
            cfg = BitsAndBytesConfig(load_in_8bit=True)
            dtype = torch.float16 if self.variant.device.startswith("cuda") else torch.float32
        else:
            # bnb's CPU 4-bit kernel computes in bf16 whatever is asked; say what runs.
            cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                     bnb_4bit_compute_dtype=torch.bfloat16)
            dtype = torch.bfloat16
        device_map = {"": self.variant.device if self.variant.device != "cuda" else 0}
        model = AutoModelForCausalLM.from_pretrained(
            self.variant.model_dir, quantization_config=cfg, dtype=dtype, device_map=device_map)
        return model

    def load(self) -> None:
        """Loads the model (its kernel probe runs a forward) and records the NF4 layout the weights
        then hold: bitsandbytes' fused CPU NF4 kernel (AVX512_BF16) repacks on the first forward,
        absmax fp32 -> bf16 (4 + 16/64 bits), elsewhere it stays fp32 (4 + 32/64)."""
        super().load()
        qs = next((getattr(p, "quant_state", None) for p in self.model.parameters()
                   if getattr(p, "quant_state", None) is not None), None)
        if qs is not None:
            self.info["weights_layout"] = [4, qs.blocksize, qs.absmax.element_size() * 8, 0]

    def kernel_name(self, kernel: str, detail: dict) -> str:
        """Returns `bnb:cpu-<ATen capability>` (bitsandbytes registers its CPU int8 kernel only at
        AVX512 and its fused NF4 one only with AVX512_BF16, asking ATen) or `bnb:cuda-<class>`."""
        if self.variant.device.startswith("cuda"):
            return "bnb:cuda-" + kernel.removeprefix("torch:cuda-")
        return f"bnb:cpu-{detail.get('cpu_capability', 'unknown').lower()}"

    def weights_bytes(self) -> int:
        """Returns storage bytes plus 4-bit quant-state absmax tensors, which are not parameters."""
        total = super().weights_bytes()
        for p in self.model.parameters():
            qs = getattr(p, "quant_state", None)
            if qs is not None and qs.absmax is not None:
                total += qs.absmax.nbytes
        return total
