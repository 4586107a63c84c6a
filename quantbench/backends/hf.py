"""transformers backend: fp32 / bf16 / fp16 weights, eager or compiled decode.

The bitsandbytes and GPTQModel backends reuse this one and override only how the model loads.
"""
from __future__ import annotations

import inspect

import numpy as np

from quantbench.backends import Backend, Skip

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class HFBackend(Backend):
    """Runs a transformers AutoModelForCausalLM with a DynamicCache, one token per decode step."""

    def _torch(self):
        import torch

        return torch

    def load_model(self):
        """Returns the loaded model (subclasses change how)."""
        from transformers import AutoModelForCausalLM

        torch = self._torch()
        model = AutoModelForCausalLM.from_pretrained(
            self.ctx.model_dir, dtype=getattr(torch, DTYPES[self.ctx.format.param]))
        return model.to(self.ctx.device)

    def load(self) -> None:
        torch = self._torch()
        if self.ctx.device.startswith("cuda") and not torch.cuda.is_available():
            raise Skip("CUDA asked for but torch sees no GPU (CPU build or no driver)")
        torch.set_num_threads(self.ctx.threads)
        torch.manual_seed(0)
        self.model = self.load_model().eval()
        self.cache = None
        # transformers renamed past_key_values to cache (5.24); accept both.
        params = inspect.signature(self.model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.info.setdefault("kernel", f"torch {self.ctx.format.param} eager")

    def weights_bytes(self) -> int:
        """Returns bytes of unique parameter and buffer storages (tied weights counted once)."""
        seen, total = set(), 0
        for t in [*self.model.parameters(), *self.model.buffers()]:
            s = t.untyped_storage()
            if s.data_ptr() not in seen:
                seen.add(s.data_ptr())
                total += s.nbytes()
        return total

    def _ids(self, ids):
        return self._torch().tensor([ids], dtype=self._torch().long, device=self.ctx.device)

    def logits(self, ids: list[int]) -> np.ndarray:
        torch = self._torch()
        with torch.inference_mode():
            out = self.model(input_ids=self._ids(ids), use_cache=False)
        return out.logits[0].float().cpu().numpy()

    def prefill(self, ids: list[int]) -> int:
        from transformers import DynamicCache

        torch = self._torch()
        self.cache = DynamicCache(config=self.model.config)
        with torch.inference_mode():
            out = self.model(input_ids=self._ids(ids), use_cache=True, logits_to_keep=1,
                             **{self.cache_kw: self.cache})
        return int(out.logits[0, -1].argmax())

    def decode(self, token: int) -> int:
        torch = self._torch()
        with torch.inference_mode():
            out = self.model(input_ids=self._ids([token]), use_cache=True,
                             **{self.cache_kw: self.cache})
        return int(out.logits[0, -1].argmax())

    def kv_cache_bytes(self) -> int | None:
        if self.cache is None:
            return None
        total = 0
        for layer in self.cache.layers:
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if t is not None and hasattr(t, "nbytes"):
                    total += t.nbytes
        return total

    def sync(self) -> None:
        if self.ctx.device.startswith("cuda"):
            self._torch().cuda.synchronize()

    def close(self) -> None:
        self.model = self.cache = None
