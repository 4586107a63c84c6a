"""OpenVINO backend: int8 / int4 weight compression (NNCF) of an OpenVINO IR that optimum-intel
exports from the checkpoint, cached as `openvino_model.xml/.bin`, run by OpenVINO's CPU plugin.

Runs in the backend environment 'openvino' (envs.ENVS: optimum-intel pins transformers < 5.6).
optimum-intel does not int8-compress a model under 1B parameters unless asked, so the config is
always explicit. int4 uses group 64 (SmolLM2's 576 columns are not divisible by 128) and ratio
1.0 (every decoder Linear in int4); NNCF keeps the tied embeddings / lm_head in int8 (asymmetric,
per row), its backup mode. The CPU plugin keeps the weights compressed in memory and decompresses
them inside its FullyConnected kernels (brgemm); the record names the primitive it picked and the
plugin's defaults that change numerics (bf16 inference precision on CPUs with bf16, dynamic int8
activation quantization, u8 KV cache).
"""
from __future__ import annotations

import time
from collections import Counter

import numpy as np

from quantbench.backends import Backend, Skip

ARTIFACT = "openvino_model.bin"  # the weights; the .xml beside it is the graph
# Compiled-model properties that change numerics, recorded with the kernel.
NUMERIC_PROPERTIES = ("INFERENCE_PRECISION_HINT", "DYNAMIC_QUANTIZATION_GROUP_SIZE", "KEY_CACHE_PRECISION",
                      "VALUE_CACHE_PRECISION")
COMPRESSED_TYPES = ("u8", "i8", "u4", "i4", "nf4", "f8e4m3")


def ov_device(device: str) -> str:
    """Returns OpenVINO's device name for a quantbench device: cpu -> CPU, xpu[:N] -> GPU[.N] (an
    Intel GPU through OpenVINO's GPU plugin: wired, unverified here); CUDA has no OpenVINO plugin."""
    kind, _, index = device.partition(":")
    if kind == "cpu":
        return "CPU"
    if kind == "xpu":
        return f"GPU.{index}" if index else "GPU"
    raise Skip(f"OpenVINO runs on Intel/AMD CPUs ('cpu') and Intel GPUs ('xpu'), not {device}")


class OpenVINOBackend(Backend):
    def _versions(self) -> dict:
        import importlib.metadata
        import importlib.util

        if importlib.util.find_spec("openvino") is None or importlib.util.find_spec("optimum.intel") is None:
            raise Skip("openvino / optimum-intel not installed here; `quantbench env build openvino`")
        return {p: importlib.metadata.version(p) for p in ("optimum-intel", "openvino", "nncf", "transformers")}

    def quant_config(self):
        from optimum.intel import OVWeightQuantizationConfig

        bits = int(self.variant.format.param)
        if bits == 8:  # per output channel, asymmetric; no group
            return OVWeightQuantizationConfig(bits=8)
        return OVWeightQuantizationConfig(bits=4, group_size=self.variant.format.group_size, ratio=1.0)

    def build(self) -> None:
        from quantbench.core import cache

        ov_device(self.variant.device)  # Skip on CUDA before exporting
        fmt, versions = self.variant.format, self._versions()
        final = cache.entry("quant", cache.content_key(self.variant.model_digest, "openvino", fmt.param,
                                                       fmt.group_size, sorted(versions.items())))
        self.build_once(final, f"exporting {self.variant.model_name} to OpenVINO with {fmt.param}-bit weights "
                        f"(optimum-intel {versions['optimum-intel']}, nncf {versions['nncf']})", self._export)
        self.info["artifact_bytes"] = (final / ARTIFACT).stat().st_size

    def _export(self, out) -> None:
        from optimum.intel import OVModelForCausalLM
        from transformers import AutoTokenizer

        model = OVModelForCausalLM.from_pretrained(self.variant.model_dir, export=True, compile=False,
                                                   quantization_config=self.quant_config())
        self._check(model.model, self.variant.model_dir)
        model.save_pretrained(str(out))
        AutoTokenizer.from_pretrained(self.variant.model_dir).save_pretrained(str(out))

    def _check(self, ov_model, where: str) -> None:
        """Raises unless every decoder MatMul reads compressed weights (NNCF skips a layer whose
        width the group size does not divide)."""
        fmt = self.variant.format
        want = "u8" if fmt.param == "8" else "u4"
        types = Counter(op.get_element_type().get_type_name() for op in ov_model.get_ops()
                        if op.get_type_name() == "Constant" and len(op.get_output_shape(0)) >= 2
                        and op.get_output_shape(0)[-1] > 1)
        # 2-D weights (3-D when grouped): 7 per layer, plus the tied embedding in int8
        n_linear = 7 * self._n_layers()
        if types[want] < n_linear:
            raise RuntimeError(f"{fmt.name}: nncf compressed {types[want]} weights to {want} in {where}, "
                               f"expected {n_linear} decoder Linear layers (group size {fmt.group_size or 'none'} "
                               f"must divide their in_features); weight types: {dict(types)}")
        self.info["quantized_layers"] = n_linear

    def _n_layers(self) -> int:
        import json
        from pathlib import Path

        return json.loads(Path(self.variant.model_dir, "config.json").read_text())["num_hidden_layers"]

    def load(self) -> None:
        from optimum.intel import OVModelForCausalLM

        path = self.info["artifact"]
        device = ov_device(self.variant.device)
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if device == "CPU":
            config["INFERENCE_NUM_THREADS"] = str(self.variant.threads)
        self.model = OVModelForCausalLM.from_pretrained(path, device=device, ov_config=config)
        self._check(self.model.model, path)
        self.past, self.n_past, self.engine_total_s = None, 0, 0.0
        self._probe_kernels()
        self.info["bits_unquantized"] = self.variant.format.bits_unquantized

    def _probe_kernels(self) -> None:
        """Sets info kernel from the CPU plugin's runtime graph after an 8-token prefill and one
        decode step: the primitive and weight precision of its FullyConnected nodes."""
        self.prefill(list(range(100, 108)))
        self.decode(108)
        request = self.model.request
        fc, detail = Counter(), {}
        for op in request.get_compiled_model().get_runtime_model().get_ops():
            rt = op.get_rt_info()
            if "primitiveType" in rt and rt["layerType"].astype(str) == "FullyConnected":
                fc[(rt["primitiveType"].astype(str), rt["runtimePrecision"].astype(str))] += 1
        compiled = request.get_compiled_model()
        for p in NUMERIC_PROPERTIES:
            try:
                v = compiled.get_property(p)
                detail[p.lower()] = v.to_string() if hasattr(v, "to_string") else str(v)
            except Exception:  # a property this plugin version does not have
                pass
        detail["fully_connected"] = {f"{prim} ({prec} weights)": n for (prim, prec), n in fc.most_common()}
        if not fc:  # the GPU plugin names its layers otherwise (unverified here)
            detail["execution"] = "compressed weights in the GPU plugin's kernels (not named by its runtime graph)"
            self.info["kernel"], self.info["kernel_detail"] = f"openvino:{ov_device(self.variant.device)}", detail
            return
        (prim, prec), _ = fc.most_common(1)[0]
        detail["execution"] = f"{prec} weights decompressed inside the kernel"
        self.info["kernel"] = f"openvino:CPU FullyConnected {prim} ({prec} weights decompressed in kernel)"
        self.info["kernel_detail"] = detail

    def weights_bytes(self) -> int:
        """Returns the bytes of the IR's constants: the compressed weights, scales and zero points
        the CPU plugin keeps in memory (it decompresses inside its kernels, not on load)."""
        return sum(op.get_byte_size() for op in self.model.model.get_ops() if op.get_type_name() == "Constant")

    def _run(self, ids: list[int], reset: bool):
        import torch

        if reset:
            self.past, self.n_past = None, 0
        t0 = time.perf_counter()
        out = self.model(input_ids=torch.tensor([ids]), past_key_values=self.past,
                         attention_mask=torch.ones(1, self.n_past + len(ids), dtype=torch.long))
        self.engine_total_s += time.perf_counter() - t0
        self.past, self.n_past = out.past_key_values, self.n_past + len(ids)
        return out.logits

    def engine_s(self) -> float:
        return self.engine_total_s

    def logits(self, ids: list[int]) -> np.ndarray:
        return self._run(ids, reset=True)[0].float().numpy()

    def prefill(self, ids: list[int]) -> int:
        return int(self._run(ids, reset=True)[0, -1].argmax())

    def decode(self, token: int) -> int:
        return int(self._run([token], reset=False)[0, -1].argmax())

    def extend(self, ids: list[int]) -> int:
        return int(self._run(ids, reset=False)[0, -1].argmax())

    def close(self) -> None:
        self.model = self.past = None
