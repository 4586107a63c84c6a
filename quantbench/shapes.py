"""ModelShape from a Hugging Face config: local dir, config.json, hub id, dict, or `shape:NAME`.

Attribute names differ per family; `FAMILIES` holds the differences as data. params_total is
exact: the model is built on the meta device (no memory, no weights read) and its unique
parameters counted, so tied embeddings count once.
"""
from __future__ import annotations

import difflib
import json
from pathlib import Path

from quantbench.arith import ModelShape
from quantbench.errors import UserError

# family: (d_ff attribute, gated MLP, norms per block, q/k/v bias)
FAMILIES: dict[str, tuple[str, bool, int, bool]] = {
    "llama": ("intermediate_size", True, 2, False),
    "mistral": ("intermediate_size", True, 2, False),
    "qwen2": ("intermediate_size", True, 2, True),
    "gpt2": ("n_inner", False, 2, False),  # n_inner None means 4 · n_embd
    "opt": ("ffn_dim", False, 2, False),
    "phi": ("intermediate_size", False, 1, False),  # parallel attention + MLP, one norm
    "phi3": ("intermediate_size", True, 2, False),  # fused qkv and gate_up: same counts
    "gemma": ("intermediate_size", True, 2, False),
    "gemma2": ("intermediate_size", True, 4, False),  # pre/post norms around attn and MLP
}

# Families whose parameter formula matches the meta-device count exactly (tests/test_shapes.py
# checks it), so `estimate` answers without importing torch's model classes.
FORMULA_EXACT = ("llama", "mistral", "qwen2", "gemma", "gemma2")

# Real configs (the fields that set the shape), from each model's config.json on the Hub.
KNOWN_SHAPES: dict[str, dict] = {
    "smollm2-135m": dict(  # HuggingFaceTB/SmolLM2-135M-Instruct: 134,515,008 params
        model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152,
        tie_word_embeddings=True, max_position_embeddings=8192, rope_theta=100000.0),
    "smollm2-360m": dict(  # HuggingFaceTB/SmolLM2-360M: 361,821,120 params
        model_type="llama", hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
        num_attention_heads=15, num_key_value_heads=5, head_dim=64, vocab_size=49152,
        tie_word_embeddings=True, max_position_embeddings=8192, rope_theta=100000.0),
    "qwen2.5-0.5b": dict(  # Qwen/Qwen2.5-0.5B: 494,032,768 params (q/k/v carry biases)
        model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
        tie_word_embeddings=True, max_position_embeddings=32768, rope_theta=1000000.0),
    "llama-3.2-1b": dict(  # meta-llama/Llama-3.2-1B: 1,235,814,400 params
        model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
        tie_word_embeddings=True, max_position_embeddings=131072, rope_theta=500000.0),
    "llama-3-8b": dict(  # meta-llama/Meta-Llama-3-8B: 8,030,261,248 params
        model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
        tie_word_embeddings=False, max_position_embeddings=8192, rope_theta=500000.0),
    "qwen2.5-7b": dict(  # Qwen/Qwen2.5-7B: 7,615,616,512 params (q/k/v carry biases)
        model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
        tie_word_embeddings=False, max_position_embeddings=131072, rope_theta=1000000.0),
}


def _config_from_dict(d: dict, where: str):
    from transformers import CONFIG_MAPPING

    kind = d.get("model_type")
    if kind not in FAMILIES:
        raise UserError(f"{where}: model_type {kind!r} is not supported; "
                        f"supported: {', '.join(FAMILIES)}")
    return CONFIG_MAPPING[kind](**{k: v for k, v in d.items() if k != "model_type"})


def load_config(model):
    """Returns a transformers config for a dict, config object, `shape:NAME`, path or hub id."""
    if isinstance(model, dict):
        return _config_from_dict(model, "config dict")
    if not isinstance(model, (str, Path)):
        return model  # already a transformers PretrainedConfig
    model = str(model)
    if model.startswith("shape:"):
        key = model[6:]
        if key not in KNOWN_SHAPES:
            close = difflib.get_close_matches(key, list(KNOWN_SHAPES), n=1)
            hint = f"did you mean 'shape:{close[0]}'? " if close else ""
            raise UserError(f"unknown shape '{key}': {hint}known: {', '.join(KNOWN_SHAPES)}")
        return _config_from_dict(KNOWN_SHAPES[key], model)
    path = Path(model)
    if path.is_file():
        try:
            return _config_from_dict(json.loads(path.read_text()), model)
        except json.JSONDecodeError as e:
            raise UserError(f"{model}: not a JSON config ({e}); pass a config.json") from None
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{model}: no config.json in this directory; pass a Hugging Face "
                            "model directory, a config.json, a hub id or shape:NAME")
        return _config_from_dict(json.loads((path / "config.json").read_text()), model)
    if model.endswith(".json") or model.startswith((".", "/", "~")):
        raise UserError(f"{model}: no such file or directory")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as e:  # hub errors (offline, 404, gated) are OSError subclasses
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"could not get the config of '{model}' from the Hugging Face Hub "
                        f"({first}): check the id and network, log in for gated models, or pass "
                        f"a local directory, a config.json or shape:NAME "
                        f"({', '.join(KNOWN_SHAPES)})") from None


def count_params(config) -> int:
    """Returns unique parameters of AutoModelForCausalLM.from_config(config) built on meta."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    # parameters() skips repeats of one Parameter object, so a tied lm_head counts once.
    return sum(p.numel() for p in model.parameters())


def shape_from_config(model, exact: bool = True) -> ModelShape:
    """Returns the ModelShape of a model; params_total exact unless exact=False (no torch).

    `model`: a local model directory, a path to config.json, a hub id, a config dict, a
    transformers config, or `shape:NAME` for a KNOWN_SHAPES entry.
    """
    config = load_config(model)
    family = config.model_type
    if family not in FAMILIES:
        raise UserError(f"{model}: model_type {family!r} is not supported; "
                        f"supported: {', '.join(FAMILIES)}")
    ff_attr, gated, norms, qkv_bias = FAMILIES[family]
    # Standard names work for gpt2 too: its attribute_map sends hidden_size to n_embd, etc.
    d, heads = config.hidden_size, config.num_attention_heads
    d_ff = getattr(config, ff_attr, None) or 4 * d
    shape = ModelShape(
        n_layers=config.num_hidden_layers,
        d_model=d,
        n_heads=heads,
        n_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or d // heads,
        d_ff=d_ff,
        vocab=config.vocab_size,
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        gated_mlp=gated,
        name=str(model) if isinstance(model, (str, Path)) else getattr(config, "name_or_path", ""),
        qkv_bias=qkv_bias,
        norms_per_layer=norms,
    )
    if not exact or family in FORMULA_EXACT:
        return shape
    from dataclasses import replace

    return replace(shape, params_total=count_params(config))
