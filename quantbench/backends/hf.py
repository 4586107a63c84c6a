"""transformers backend: fp32 / bf16 / fp16 weights, eager or compiled decode.

The bitsandbytes and GPTQModel backends reuse this one and override only how the model loads.
"""
from __future__ import annotations

import inspect
import time

import numpy as np

from quantbench.backends import Backend, Skip

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


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
        self.cache, self.engine_total_s = None, 0.0
        # transformers renamed past_key_values to cache (5.24); accept both.
        params = inspect.signature(self.model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self._probe_kernels()
        if self.ctx.format.compiled:
            self._setup_compiled()
        # What the loaded model really stores outside the quantized linears, and its KV dtype:
        # the arithmetic predicts from these (bnb-int8 on CPU keeps fp32 embeddings, say).
        emb = self.model.get_input_embeddings().weight
        self.info["bits_unquantized"] = emb.element_size() * 8
        self.info["kv_bytes_per_elem"] = torch.empty((), dtype=self.model.dtype).element_size()

    def _probe_step(self) -> None:
        """Runs an 8-token prefill and one cached decode step (what the kernel probe observes)."""
        from transformers import DynamicCache

        torch = self._torch()
        ids = torch.arange(100, 108, device=self.ctx.device)[None]
        cache = DynamicCache(config=self.model.config)
        with torch.inference_mode():
            self.model(input_ids=ids, use_cache=True, **{self.cache_kw: cache})
            self.model(input_ids=ids[:, :1], use_cache=True, **{self.cache_kw: cache})

    def _probe_kernels(self) -> None:
        """Sets info kernel and kernel_detail from what the engine ran (backends.kernels)."""
        from quantbench.backends import kernels

        dtype = SHORT.get(self.ctx.format.param, self.ctx.format.param)
        kernel, detail = kernels.probe(self._probe_step, self.ctx.device, dtype)
        self.info["kernel"], self.info["kernel_detail"] = self.kernel_name(kernel, detail), detail

    def kernel_name(self, kernel: str, detail: dict) -> str:
        """Returns the record's kernel name from the probe's (subclasses name their own library)."""
        return kernel

    def weights_bytes(self) -> int:
        """Returns bytes of unique parameter and buffer storages (tied weights counted once)."""
        seen, total = set(), 0
        for t in [*self.model.parameters(), *self.model.buffers()]:
            s = t.untyped_storage()
            if s.data_ptr() not in seen:
                seen.add(s.data_ptr())
                total += s.nbytes()
        return total

    def _forward(self, fn, **kw):
        """Returns fn(**kw) under inference_mode, its wall time (device synced) added to the
        engine clock: what the model's forward costs, apart from the harness's tensors and argmax."""
        torch = self._torch()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = fn(**kw)
        self.sync()
        self.engine_total_s += time.perf_counter() - t0
        return out

    def engine_s(self) -> float:
        return self.engine_total_s

    def _ids(self, ids):
        return self._torch().tensor([ids], dtype=self._torch().long, device=self.ctx.device)

    def logits(self, ids: list[int]) -> np.ndarray:
        torch = self._torch()
        with torch.inference_mode():
            out = self.model(input_ids=self._ids(ids), use_cache=False)
            return out.logits[0].float().cpu().numpy()

    def _setup_compiled(self) -> None:
        """Static KV cache + torch.compile'd decode step, as gpt-fast does (CUDA graphs on GPU)."""
        from transformers import StaticCache

        torch, s = self._torch(), self.ctx.suite
        max_len = max(*s.prompt_lengths, s.n_ctx, s.gen_prompt_tokens + s.gen_tokens) + 8
        self.static = StaticCache(config=self.model.config, max_cache_len=max_len)
        mode = "reduce-overhead" if self.ctx.device.startswith("cuda") else "default"
        self.step = torch.compile(self.model.forward, mode=mode, fullgraph=True)
        # the probe saw the eager kernels; the compiled graph fuses around the same matmuls
        self.info["kernel_detail"]["eager_kernel"] = self.info["kernel"]
        self.info["kernel"] = f"torch.compile({mode}):{self.info['kernel']}"

    def _prefill_static(self, ids: list[int]) -> int:
        torch = self._torch()
        self.cache, self.pos = self.static, len(ids)
        pos = torch.arange(len(ids), device=self.ctx.device)
        with torch.inference_mode():  # its tensors were made in inference mode
            self.static.reset()
        out = self._forward(self.model, input_ids=self._ids(ids), cache_position=pos, use_cache=True,
                            logits_to_keep=1, **{self.cache_kw: self.static})
        return int(out.logits[0, -1].argmax())

    def _decode_static(self, token: int) -> int:
        torch = self._torch()
        pos = torch.tensor([self.pos], device=self.ctx.device)
        self.pos += 1
        out = self._forward(self.step, input_ids=self._ids([token]), cache_position=pos,
                            use_cache=True, **{self.cache_kw: self.static})
        return int(out.logits[0, -1].argmax())

    def prefill(self, ids: list[int]) -> int:
        if self.ctx.format.compiled:
            return self._prefill_static(ids)
        return self.prefill_batch(ids, 1)[0]

    def decode(self, token: int) -> int:
        if self.ctx.format.compiled:
            return self._decode_static(token)
        return self.decode_batch([token])[0]

    def prefill_batch(self, ids: list[int], batch: int) -> list[int]:
        """Returns each sequence's next token; the eager path, batch 1 included."""
        from transformers import DynamicCache

        if self.ctx.format.compiled:
            raise Skip("batched decode runs eager only: the static cache is sized for one sequence")
        torch = self._torch()
        self.cache = DynamicCache(config=self.model.config)
        out = self._forward(self.model, input_ids=torch.tensor([ids] * batch, device=self.ctx.device),
                            use_cache=True, logits_to_keep=1, **{self.cache_kw: self.cache})
        return out.logits[:, -1].argmax(-1).tolist()

    def extend(self, ids: list[int]) -> int:
        return self.extend_batch(ids, 1)[0]

    def extend_batch(self, ids: list[int], batch: int) -> list[int]:
        """Returns each sequence's next token after feeding ids on top of the DynamicCache."""
        if self.ctx.format.compiled:
            raise Skip("depth sweeps run eager only: the static cache is sized for the suite's prompts")
        torch = self._torch()
        out = self._forward(self.model, input_ids=torch.tensor([ids] * batch, device=self.ctx.device),
                            use_cache=True, logits_to_keep=1, **{self.cache_kw: self.cache})
        return out.logits[:, -1].argmax(-1).tolist()

    def decode_batch(self, tokens: list[int]) -> list[int]:
        torch = self._torch()
        out = self._forward(self.model, input_ids=torch.tensor([[t] for t in tokens], device=self.ctx.device),
                            use_cache=True, **{self.cache_kw: self.cache})
        return out.logits[:, -1].argmax(-1).tolist()

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
