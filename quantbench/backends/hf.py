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
            self.variant.model_dir, dtype=getattr(torch, DTYPES[self.variant.format.param]))
        return model.to(self.variant.device)

    def load(self) -> None:
        torch = self._torch()
        if self.variant.device.startswith("cuda") and not torch.cuda.is_available():
            raise Skip("CUDA asked for but torch sees no GPU (CPU build or no driver)")
        torch.set_num_threads(self.variant.threads)
        torch.manual_seed(0)
        self.model = self.load_model().eval()
        self.cache, self.engine_total_s = None, 0.0
        # transformers renamed past_key_values to cache (5.24); accept both.
        params = inspect.signature(self.model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        if self.variant.device.startswith("cuda"):
            # CUPTI stays attached after a CUDA profile and slows every later launch (an eager
            # decode step on an H200: 32.9 -> 42.2 ms), so on CUDA the probe runs after the timed
            # regions (probe_kernels); until then the kernel is the dtype's.
            self.info["kernel"] = f"torch:cuda-{self.probe_dtype()}"
            self.info["kernel_detail"] = {"probe": "after the timed regions"}
        else:
            self._probe_kernels()
        if self.variant.format.compiled:
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
        ids = torch.arange(100, 108, device=self.variant.device)[None]
        cache = DynamicCache(config=self.model.config)
        with torch.inference_mode():
            self.model(input_ids=ids, use_cache=True, **{self.cache_kw: cache})
            self.model(input_ids=ids[:, :1], use_cache=True, **{self.cache_kw: cache})

    def _probe_kernels(self) -> None:
        """Sets info kernel and kernel_detail from what the engine ran (backends.kernels)."""
        from quantbench.backends import kernels

        try:
            kernel, detail = kernels.probe(self._probe_step, self.variant.device, self.probe_dtype())
        except Exception as e:  # a profiler that cannot attach (CUPTI busy, a sandbox) fails no variant
            self.info["kernel"] = f"torch:{self.probe_dtype()}"
            self.info["kernel_detail"] = {"probe_error": f"{type(e).__name__}: {e}"[:200]}
            return
        self.info["kernel"], self.info["kernel_detail"] = self.kernel_name(kernel, detail), detail

    def probe_kernels(self) -> bool:
        if not self.variant.device.startswith("cuda"):
            return False  # probed at load
        self._probe_kernels()
        if self.variant.format.compiled:
            self._name_compiled()
        return True

    def _name_compiled(self) -> None:
        """Names the compiled path after the eager kernels the probe saw (the compiled graph fuses
        around the same matmuls)."""
        self.info["kernel_detail"]["eager_kernel"] = self.info["kernel"]
        self.info["kernel"] = f"torch.compile({self.compile_mode}):{self.info['kernel']}"

    def probe_dtype(self) -> str:
        """Returns the short name of the dtype the matmuls run in (fp32, bf16, fp16)."""
        return SHORT.get(self.variant.format.param, self.variant.format.param)

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
        return self._torch().tensor([ids], dtype=self._torch().long, device=self.variant.device)

    def logits(self, ids: list[int]) -> np.ndarray:
        torch = self._torch()
        with torch.inference_mode():
            out = self.model(input_ids=self._ids(ids), use_cache=False)
            return out.logits[0].float().cpu().numpy()

    def _setup_compiled(self) -> None:
        """Static KV cache + torch.compile'd decode step, as gpt-fast does (CUDA graphs on GPU)."""
        from transformers import StaticCache

        torch, s = self._torch(), self.variant.suite
        max_len = max(*s.prompt_lengths, s.n_ctx, s.gen_prompt_tokens + s.gen_tokens) + 8
        self.static = StaticCache(config=self.model.config, max_cache_len=max_len)
        mode = self.compile_mode = "reduce-overhead" if self.variant.device.startswith("cuda") else "default"
        self.step = torch.compile(self.model.forward, mode=mode, fullgraph=True)
        self._name_compiled()

    def _prefill_static(self, ids: list[int]) -> int:
        torch = self._torch()
        self.cache, self.pos = self.static, len(ids)
        pos = torch.arange(len(ids), device=self.variant.device)
        with torch.inference_mode():  # its tensors were made in inference mode
            self.static.reset()
        out = self._forward(self.model, input_ids=self._ids(ids), cache_position=pos, use_cache=True,
                            logits_to_keep=1, **{self.cache_kw: self.static})
        return int(out.logits[0, -1].argmax())

    def _decode_static(self, token: int) -> int:
        torch = self._torch()
        pos = torch.tensor([self.pos], device=self.variant.device)
        self.pos += 1
        out = self._forward(self.step, input_ids=self._ids([token]), cache_position=pos,
                            use_cache=True, **{self.cache_kw: self.static})
        return int(out.logits[0, -1].argmax())

    def prefill(self, ids: list[int]) -> int:
        if self.variant.format.compiled:
            return self._prefill_static(ids)
        return self.prefill_batch(ids, 1)[0]

    def decode(self, token: int) -> int:
        if self.variant.format.compiled:
            return self._decode_static(token)
        return self.decode_batch([token])[0]

    def prefill_batch(self, ids: list[int], batch: int) -> list[int]:
        """Returns each sequence's next token; the eager path, batch 1 included."""
        from transformers import DynamicCache

        if self.variant.format.compiled:
            raise Skip("batched decode runs eager only: the static cache is sized for one sequence")
        torch = self._torch()
        self.cache = DynamicCache(config=self.model.config)
        out = self._forward(self.model, input_ids=torch.tensor([ids] * batch, device=self.variant.device),
                            use_cache=True, logits_to_keep=1, **{self.cache_kw: self.cache})
        return out.logits[:, -1].argmax(-1).tolist()

    def extend(self, ids: list[int]) -> int:
        return self.extend_batch(ids, 1)[0]

    def extend_batch(self, ids: list[int], batch: int) -> list[int]:
        """Returns each sequence's next token after feeding ids on top of the DynamicCache."""
        if self.variant.format.compiled:
            raise Skip("depth sweeps run eager only: the static cache is sized for the suite's prompts")
        torch = self._torch()
        out = self._forward(self.model, input_ids=torch.tensor([ids] * batch, device=self.variant.device),
                            use_cache=True, logits_to_keep=1, **{self.cache_kw: self.cache})
        return out.logits[:, -1].argmax(-1).tolist()

    def decode_batch(self, tokens: list[int]) -> list[int]:
        torch = self._torch()
        out = self._forward(self.model, input_ids=torch.tensor([[t] for t in tokens], device=self.variant.device),
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
        if self.variant.device.startswith("cuda"):
            self._torch().cuda.synchronize()

    def close(self) -> None:
        self.model = self.cache = None


def tensor_bytes(t) -> int:
    """Returns the bytes a tensor holds, looking inside tensor subclasses (torchao's quantized
    weights wrap int8/int4 data and scales that have no storage of their own on the wrapper)."""
    if hasattr(t, "__tensor_flatten__") and type(t).__name__ not in ("Parameter", "Tensor"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names if getattr(t, n) is not None)
    return t.untyped_storage().nbytes()


def files_bytes(path, patterns=("*.safetensors", "*.bin", "*.pt")) -> int:
    """Returns the bytes of the weight files in an artifact directory (not its tokenizer/config)."""
    from pathlib import Path

    return sum(p.stat().st_size for pat in patterns for p in Path(path).glob(pat))


class SavedQuantBackend(HFBackend):
    """A transformers quantization config applied once to the checkpoint, the quantized model
    saved to the cache (as GPTQ/AWQ are) and loaded from there. Subclasses name the library and
    the config and say how many Linear layers really were quantized."""

    library = ""  # import name, also the pip name in the skip reason
    install = ""  # the command that installs it
    # Calibrated params: format.param -> the recipe's steps in order (they key the cache and are
    # recorded as kernel_detail.recipe). A calibrated build sees CALIB = (samples, tokens) of the
    # corpus after the evaluation windows (self.calibration).
    RECIPES: dict[str, tuple[str, ...]] = {}
    CALIB = (32, 512)

    def dtype(self):
        raise NotImplementedError

    def probe_dtype(self) -> str:
        return SHORT[str(self.dtype()).removeprefix("torch.")]

    def quant_config(self):
        """Returns the transformers quantization config of variant.format."""
        raise NotImplementedError

    def quantized_layers(self, model) -> list[str]:
        """Returns the names of the Linear layers the library replaced or quantized."""
        raise NotImplementedError

    def _version(self) -> str:
        import importlib.metadata
        import importlib.util

        if importlib.util.find_spec(self.library) is None:
            raise Skip(f"{self.library} not installed; {self.install}")
        return importlib.metadata.version(self.library)

    def _target(self):
        import transformers

        from quantbench.core import cache

        fmt = self.variant.format
        key = cache.content_key(self.variant.model_digest, fmt.backend, fmt.param, fmt.group_size,
                                f"{self.library} {self._version()}", f"transformers {transformers.__version__}")
        entry = cache.entry("quant", key)
        if not self.calibrated():
            return entry
        return cache.entry("quant", cache.content_key(entry.name, *self.RECIPES[fmt.param], *self.CALIB,
                                                      self.variant.corpus_key))

    def calibrated(self) -> bool:
        """Returns whether this format is quantized over corpus tokens (its param is in RECIPES)."""
        return self.variant.format.param in self.RECIPES

    def recipe(self) -> str:
        """Returns the calibrated format's recipe as recorded (steps joined by " + "), else ""."""
        return " + ".join(self.RECIPES[self.variant.format.param]) if self.calibrated() else ""

    def cached_artifact(self) -> str:
        from quantbench.core import cache

        final = self._target()
        return str(final) if cache.verified(final, quiet=True) else ""

    def build(self) -> None:
        final = self._target()
        self.build_once(final, f"quantizing {self.variant.model_name} with {self.library} {self._version()}",
                        self._quantize)
        self.info["artifact_bytes"] = files_bytes(final)
        if self.calibrated():  # a cached build was made with these too (they key it)
            self.info.update(calib_samples=self.CALIB[0], calib_tokens=self.CALIB[1])

    def _quantize(self, out) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch().set_num_threads(self.variant.threads)
        model = AutoModelForCausalLM.from_pretrained(self.variant.model_dir, dtype=self.dtype(),
                                                     device_map=self.variant.device,
                                                     quantization_config=self.quant_config())
        self._check(model, self.variant.model_dir)
        self.save(model, out)
        AutoTokenizer.from_pretrained(self.variant.model_dir).save_pretrained(str(out))

    def save(self, model, out) -> None:
        """Writes the quantized model into the cache entry `out` (subclasses may change how)."""
        model.save_pretrained(str(out))

    def _check(self, model, where: str) -> None:
        """Raises unless every decoder Linear was quantized (a library may skip a layer whose width
        its group size does not divide, and say so only at INFO level)."""
        import torch

        done = set(self.quantized_layers(model))
        missed = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                  and ".layers." in f".{n}" and n not in done]
        if not done or missed:
            raise RuntimeError(f"{self.variant.format.name}: {self.library} left {len(missed)} decoder "
                               f"Linear layers unquantized in {where} ({len(done)} quantized; e.g. "
                               f"{missed[:2]}); group size {self.variant.format.group_size or 'default'} "
                               "must divide their in_features")
        self.info["quantized_layers"] = len(done)

    def load_model(self):
        from transformers import AutoModelForCausalLM

        path = self.info["artifact"]  # set by build()
        model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype(), device_map=self.variant.device)
        self._check(model, path)
        self._torch().set_num_threads(self.variant.threads)
        return model

    def weights_bytes(self) -> int:
        """Returns bytes of unique parameters and buffers, inside tensor subclasses too."""
        seen, total = set(), 0
        for t in [*self.model.parameters(), *self.model.buffers()]:
            key = id(t) if hasattr(t, "__tensor_flatten__") and type(t).__name__ != "Parameter" \
                else t.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += tensor_bytes(t)
        return total
