"""ModelShape from a Hugging Face config: local dir, config.json, hub id, dict, or `shape:NAME`.

Attribute names differ per family; `FAMILIES` holds the differences as data. params_total is
exact: for FORMULA_EXACT families arith's formula, which tests/test_shapes.py pins to the
meta-device model; for the others the model is built on the meta device (no memory, no weights
read) and its unique parameters counted, so tied embeddings count once. A multimodal config
(gemma3) is read through its text_config; `shape:NAME@layers=N` keeps the first N layers.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, replace
from pathlib import Path

from quantbench.arith.formulas import ModelShape
from quantbench.core.errors import UserError


@dataclass(frozen=True)
class Family:
    """How one model_type's config maps to a ModelShape. A str flag names the config attribute
    that holds it (attention_bias, bias, mlp_bias); a bool is fixed for the family."""
    d_ff: str = "intermediate_size"
    gated: bool = True
    norms: int = 2
    qkv_bias: bool | str = False
    o_bias: bool | str = False
    qk_norm: bool = False
    sinks: bool = False
    norm_bias: bool = False
    mlp_bias: bool | str = False
    # MoE: config attributes for (experts, experts per token, expert width); None is dense.
    moe: tuple[str, str, str] | None = None
    router_bias: bool = False
    # Shared (always-on) experts of the expert width: a count, or the config attribute holding it.
    shared: int | str = "n_shared_experts"
    mla: bool = False


_MIXTRAL = ("num_local_experts", "num_experts_per_tok", "intermediate_size")
_DEEPSEEK = ("n_routed_experts", "num_experts_per_tok", "moe_intermediate_size")
FAMILIES: dict[str, Family] = {
    "llama": Family(qkv_bias="attention_bias", o_bias="attention_bias", mlp_bias="mlp_bias"),
    "mistral": Family(),
    "mixtral": Family(moe=_MIXTRAL),
    "qwen2": Family(qkv_bias=True),
    "qwen3": Family(qkv_bias="attention_bias", o_bias="attention_bias", qk_norm=True),
    "qwen3_moe": Family(qkv_bias="attention_bias", o_bias="attention_bias", qk_norm=True,
                        moe=("num_experts", "num_experts_per_tok", "moe_intermediate_size")),
    "gpt2": Family("n_inner", gated=False),  # n_inner None means 4 · n_embd
    "opt": Family("ffn_dim", gated=False),
    "phi": Family(gated=False, norms=1),  # parallel attention + MLP, one norm
    "phi3": Family(),  # fused qkv and gate_up: same counts
    "gemma": Family(),
    "gemma2": Family(norms=4),  # pre/post norms around attention and MLP
    "gemma3_text": Family(norms=4, qk_norm=True),
    # gpt-oss: biases on q/k/v/o, the experts and the router; a sink logit per head.
    "gpt_oss": Family(qkv_bias=True, o_bias=True, sinks=True, mlp_bias=True, router_bias=True,
                      moe=("num_local_experts", "num_experts_per_tok", "intermediate_size")),
    # Falcon: LayerNorms with biases, plain GELU MLP, `bias` on every linear, MQA in 7B.
    "falcon": Family("ffn_hidden_size", gated=False, qkv_bias="bias", o_bias="bias",
                     norm_bias=True, mlp_bias="bias"),
    # DeepSeek: MLA + MoE with shared experts. V3's e_score_correction_bias (E per layer, in the
    # checkpoint) is a buffer in transformers, so the meta count and this leave it out.
    "deepseek_v2": Family(moe=_DEEPSEEK, mla=True),
    "deepseek_v3": Family(moe=_DEEPSEEK, mla=True),
    # Llama 4: experts of intermediate_size plus one shared, dense layers of intermediate_size_mlp
    # off `moe_layers`, chunked attention on the RoPE layers; q/k L2 norms have no weights.
    "llama4_text": Family("intermediate_size_mlp", qkv_bias="attention_bias",
                          o_bias="attention_bias", shared=1,
                          moe=("num_local_experts", "num_experts_per_tok", "intermediate_size")),
}
# Multimodal configs whose language model is counted: model_type → its text_config's type.
TEXT_CONFIG_OF = {"gemma3": "gemma3_text", "llama4": "llama4_text"}

# Families whose parameter formula matches the meta-device count exactly (tests/test_shapes.py
# checks it), so `estimate` answers without importing torch's model classes.
FORMULA_EXACT = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "gemma", "gemma2",
                 "gemma3_text", "gpt_oss", "falcon", "deepseek_v2", "deepseek_v3", "llama4_text")

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
    "qwen3-8b": dict(  # Qwen/Qwen3-8B: q/k RMSNorms, untied
        model_type="qwen3", hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
        tie_word_embeddings=False, max_position_embeddings=40960, rope_theta=1000000.0),
    "qwen3-30b-a3b": dict(  # Qwen/Qwen3-30B-A3B: 128 experts, top 8, published 30.5B / 3.3B
        model_type="qwen3_moe", hidden_size=2048, intermediate_size=6144,
        moe_intermediate_size=768, num_hidden_layers=48, num_attention_heads=32,
        num_key_value_heads=4, head_dim=128, vocab_size=151936, num_experts=128,
        num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
        tie_word_embeddings=False, max_position_embeddings=40960, rope_theta=1000000.0),
    "mixtral-8x7b": dict(  # mistralai/Mixtral-8x7B-v0.1: published 46.7B total / 12.9B active
        model_type="mixtral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, num_local_experts=8,
        num_experts_per_tok=2, tie_word_embeddings=False, max_position_embeddings=32768,
        rope_theta=1000000.0, sliding_window=None),
    "mistral-7b-v0.1": dict(  # mistralai/Mistral-7B-v0.1: every layer a 4,096-token window
        model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, sliding_window=4096,
        tie_word_embeddings=False, max_position_embeddings=32768, rope_theta=10000.0),
    "deepseek-v3": dict(  # deepseek-ai/DeepSeek-V3: published 671B total / 37B active, FP8
        model_type="deepseek_v3", hidden_size=7168, intermediate_size=18432,
        moe_intermediate_size=2048, num_hidden_layers=61, num_attention_heads=128,
        num_key_value_heads=128, n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8,
        first_k_dense_replace=3, moe_layer_freq=1, n_group=8, topk_group=4,
        routed_scaling_factor=2.5, norm_topk_prob=True, q_lora_rank=1536, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, vocab_size=129280,
        tie_word_embeddings=False, max_position_embeddings=163840, rope_theta=10000.0,
        quantization_config={"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                             "weight_block_size": [128, 128]}),
    "deepseek-v2-lite": dict(  # deepseek-ai/DeepSeek-V2-Lite: published 15.7B / 2.4B, no q_lora
        model_type="deepseek_v2", hidden_size=2048, intermediate_size=10944,
        moe_intermediate_size=1408, num_hidden_layers=27, num_attention_heads=16,
        num_key_value_heads=16, n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6,
        first_k_dense_replace=1, moe_layer_freq=1, q_lora_rank=None, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, vocab_size=102400,
        tie_word_embeddings=False, max_position_embeddings=163840, rope_theta=10000.0),
    "gemma-3-27b": dict(  # google/gemma-3-27b-it (multimodal; its text_config is counted)
        model_type="gemma3", text_config=dict(
            model_type="gemma3_text", hidden_size=5376, intermediate_size=21504,
            num_hidden_layers=62, num_attention_heads=32, num_key_value_heads=16, head_dim=128,
            vocab_size=262208, sliding_window=1024, sliding_window_pattern=6,
            query_pre_attn_scalar=168, max_position_embeddings=131072, rope_theta=1000000.0)),
    "gpt-oss-20b": dict(  # openai/gpt-oss-20b: published 20.9B / 3.6B, experts in MXFP4
        model_type="gpt_oss", hidden_size=2880, intermediate_size=2880, num_hidden_layers=24,
        num_attention_heads=64, num_key_value_heads=8, head_dim=64, vocab_size=201088,
        num_local_experts=32, num_experts_per_tok=4, sliding_window=128,
        layer_types=["sliding_attention", "full_attention"] * 12, tie_word_embeddings=False,
        max_position_embeddings=131072, rope_theta=150000.0,
        quantization_config={"quant_method": "mxfp4", "modules_to_not_convert": [
            "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
            "lm_head"]}),
    "llama-4-scout": dict(  # meta-llama/Llama-4-Scout-17B-16E (multimodal; text_config counted)
        model_type="llama4", text_config=dict(
            model_type="llama4_text", hidden_size=5120, intermediate_size=8192,
            intermediate_size_mlp=16384, num_hidden_layers=48, num_attention_heads=40,
            num_key_value_heads=8, head_dim=128, vocab_size=202048, num_local_experts=16,
            num_experts_per_tok=1, interleave_moe_layer_step=1, attention_chunk_size=8192,
            use_qk_norm=True, tie_word_embeddings=False, max_position_embeddings=10485760,
            rope_theta=500000.0)),
    "falcon-7b": dict(  # tiiuae/falcon-7b: multi-query (one KV head), parallel attention
        model_type="falcon", hidden_size=4544, num_hidden_layers=32, num_attention_heads=71,
        vocab_size=65024, multi_query=True, parallel_attn=True, new_decoder_architecture=False,
        bias=False, alibi=False),
}


# The fields a config must name itself: transformers fills in the rest from its config class (a
# Gemma-3 text_config ships no vocab_size, heads or layer pattern), but a bare
# {"model_type": "llama"} would silently be Llama-2-7B, so width and depth must be written.
REQUIRED_FIELDS = {"hidden size": ("hidden_size", "n_embd", "d_model"),
                   "layer count": ("num_hidden_layers", "n_layer", "num_layers")}
# Without transformers' defaults (no config class for the model_type) these must be written too.
REQUIRED_RAW = {**REQUIRED_FIELDS, "attention heads": ("num_attention_heads", "n_head"),
                "vocabulary size": ("vocab_size",)}
# Fields that, when present, must be whole numbers ≥ 1 (0 KV heads is not "full attention", and
# an FFN width of 0 is not "4·d").
POSITIVE_INTS = ("hidden_size", "n_embd", "d_model", "num_hidden_layers", "n_layer", "num_layers",
                 "num_attention_heads", "n_head", "num_key_value_heads", "vocab_size",
                 "intermediate_size", "ffn_dim", "n_inner", "head_dim", "moe_intermediate_size",
                 "num_local_experts", "num_experts", "n_routed_experts", "num_experts_per_tok")


def check_config_dict(d, where: str, required: dict = REQUIRED_FIELDS) -> None:
    """Raises UserError naming the first missing or degenerate shape field of a config dict
    (as written, or as transformers filled it in)."""
    if not isinstance(d, dict):
        raise UserError(f"{where}: a config must be a JSON object of fields, got a {type(d).__name__}")
    for what, names in required.items():
        if not any(d.get(n) is not None for n in names):
            raise UserError(f"{where}: no {what} ({' / '.join(names)}); pass the model's full config.json")
    for k in POSITIVE_INTS:
        v = d.get(k)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"{where}: '{k}' must be a whole number ≥ 1, got {v!r}")
    d_model = next((d[n] for n in ("hidden_size", "n_embd", "d_model") if d.get(n)), None)
    heads = next((d[n] for n in ("num_attention_heads", "n_head") if d.get(n)), None)
    if d_model and heads and not d.get("head_dim") and d_model % heads:
        raise UserError(f"{where}: hidden size {d_model} is not a multiple of {heads} attention heads "
                        "and no 'head_dim' is given")
    kv = d.get("num_key_value_heads")
    if kv and heads and heads % kv:
        raise UserError(f"{where}: {heads} attention heads do not split into {kv} KV-head groups "
                        "(num_key_value_heads must divide num_attention_heads)")


class RawConfig:
    """A config dict read as written, attributes None where absent: the reader when transformers
    has no config class for the model_type (so none of its defaults apply)."""

    def __init__(self, d: dict):
        self.__dict__.update(d)

    def __getattr__(self, name):  # only called for attributes the dict did not set
        return None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _config_class(kind: str):
    """Returns transformers' config class for a model_type, or None (no transformers, or one too
    old to know the type)."""
    try:
        from transformers import CONFIG_MAPPING
    except ImportError:
        return None
    return CONFIG_MAPPING[kind] if kind in CONFIG_MAPPING else None


def _config_from_dict(d: dict, where: str):
    """Returns the config of a dict as the hub ships it, through transformers' config class for
    its model_type (AutoConfig.for_model), so the fields it leaves out get transformers' defaults."""
    if not isinstance(d, dict):
        check_config_dict(d, where)
    kind = d.get("model_type")
    if kind in TEXT_CONFIG_OF and isinstance(d.get("text_config"), dict):
        # A multimodal checkpoint: count its language model; the stored format stays.
        extra = {k: d[k] for k in ("quantization_config",) if k in d}
        d = {**d["text_config"], "model_type": TEXT_CONFIG_OF[kind], **extra}
        kind = d["model_type"]
    if kind not in FAMILIES:
        raise UserError(f"{where}: model_type {kind!r} is not supported; "
                        f"supported: {', '.join([*FAMILIES, *TEXT_CONFIG_OF])}")
    cls = _config_class(kind)
    if cls is None:
        import warnings

        try:
            from transformers import __version__ as version
        except ImportError:
            version = "not installed"
        warnings.warn(f"{where}: transformers ({version}) has no config class for model_type "
                      f"{kind!r}; reading the config as written, without transformers' defaults "
                      "(upgrade transformers to read configs that leave fields out)", stacklevel=3)
        check_config_dict(d, where, REQUIRED_RAW)
        return RawConfig(d)
    check_config_dict(d, where)
    try:
        config = cls(**{k: v for k, v in d.items() if k != "model_type"})
    except (TypeError, ValueError) as e:  # transformers' own validators, in one line
        cause = str(e.__cause__ or e).strip().splitlines()
        raise UserError(f"{where}: transformers rejects this {kind} config: {cause[-1] if cause else e}") from None
    filled = {n: getattr(config, n, None) for n in ("hidden_size", "num_hidden_layers",
                                                     "num_attention_heads", "vocab_size")}
    check_config_dict(filled, f"{where} (with transformers' {kind} defaults)", REQUIRED_RAW)
    return config


def _cut(d: dict, spec: str, where: str) -> dict:
    """Returns config dict d with `@layers=N` (and other `key=int` pairs) applied.

    A cut keeps the first N layers: per-layer lists are truncated and DeepSeek's leading dense
    layers capped, so `shape:qwen3-30b-a3b@layers=4` is the real model's first 4 layers.
    """
    d = {**d, "text_config": {**d["text_config"]}} if "text_config" in d else dict(d)
    inner = d.get("text_config", d)
    for item in spec.split(","):
        key, _, value = item.partition("=")
        key = {"layers": "num_hidden_layers"}.get(key.strip(), key.strip())
        if not value.strip().isdigit() or int(value) < 1:
            raise UserError(f"{where}: '{item}' is not KEY=N with N ≥ 1; e.g. @layers=4")
        inner[key] = int(value)
    n = inner.get("num_hidden_layers")
    if isinstance(inner.get("layer_types"), list):
        inner["layer_types"] = inner["layer_types"][:n]
    if "first_k_dense_replace" in inner:
        inner["first_k_dense_replace"] = min(inner["first_k_dense_replace"], n)
    if inner.get("mlp_only_layers"):
        inner["mlp_only_layers"] = [i for i in inner["mlp_only_layers"] if i < n]
    return d


def load_config(model):
    """Returns a transformers config for a dict, config object, `shape:NAME[@layers=N]`, path or
    hub id."""
    if isinstance(model, dict):
        return _config_from_dict(model, "config dict")
    if not isinstance(model, (str, Path)):
        return model  # already a transformers PretrainedConfig
    model = str(model)
    if model.startswith("shape:"):
        key, _, cut = model[6:].partition("@")
        if key not in KNOWN_SHAPES:
            close = difflib.get_close_matches(key, list(KNOWN_SHAPES), n=1)
            hint = f"did you mean 'shape:{close[0]}'? " if close else ""
            raise UserError(f"unknown shape '{key}': {hint}known: {', '.join(KNOWN_SHAPES)}")
        d = _cut(KNOWN_SHAPES[key], cut, model) if cut else KNOWN_SHAPES[key]
        return _config_from_dict(d, model)
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
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as e:  # hub errors (offline, 404, gated) are OSError subclasses
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"could not get the config of '{model}' from the Hugging Face Hub "
                        f"({first}): check the id and network, log in for gated models, or pass "
                        f"a local directory, a config.json or shape:NAME "
                        f"({', '.join(KNOWN_SHAPES)})") from None
    if config.model_type in TEXT_CONFIG_OF:
        return _config_from_dict(config.to_dict(), model)
    return config


def count_params(config) -> int:
    """Returns unique parameters of AutoModelForCausalLM.from_config(config) built on meta."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    # parameters() skips repeats of one Parameter object, so a tied lm_head counts once.
    return sum(p.numel() for p in model.parameters())


def _flag(config, value: bool | str) -> bool:
    return bool(getattr(config, value, False)) if isinstance(value, str) else value


def _kv_heads(config, family: str, heads: int) -> int:
    if family == "falcon":  # falcon's attention: MQA unless the new (GQA) architecture
        if getattr(config, "new_decoder_architecture", False) or not config.multi_query:
            return getattr(config, "num_kv_heads", None) or heads
        return 1
    return getattr(config, "num_key_value_heads", None) or heads


def _norms(config, family: str, fam: Family) -> int:
    if family == "falcon":  # FalconDecoderLayer: ln_attn + ln_mlp, or input (+ post if serial)
        if config.new_decoder_architecture and (config.num_ln_in_parallel_attn or 2) == 2:
            return 2
        return 1 if config.parallel_attn else 2
    return fam.norms


def _dense_layers(config, family: str) -> int:
    """Returns how many layers of an MoE keep the dense MLP."""
    n = config.num_hidden_layers
    if family == "qwen3_moe":  # Qwen3MoeDecoderLayer: sparse unless listed or off the step
        only, step = set(config.mlp_only_layers or ()), config.decoder_sparse_step or 1
        return sum(1 for i in range(n) if i in only or (i + 1) % step)
    if family.startswith("deepseek"):  # DeepseekV3DecoderLayer: MoE from first_k_dense_replace
        return min(config.first_k_dense_replace or 0, n)
    if family == "llama4_text":
        return n - sum(1 for i in config.moe_layers if i < n)
    return 0


def _windows(config, family: str) -> tuple[int, ...]:
    """Returns the attention window per layer (0 = full) from layer_types or sliding_window."""
    w = getattr(config, "sliding_window", None) or 0
    # A chunked layer (llama4) attends within its chunk: at most the chunk, counted as a window.
    chunk = getattr(config, "attention_chunk_size", None) or 0
    types = getattr(config, "layer_types", None)
    if types:
        out = tuple({"sliding_attention": w, "chunked_attention": chunk}.get(t, 0) for t in types)
        return out if any(out) else ()
    if w and family in ("mistral", "mixtral"):  # every layer windowed, no layer_types
        return (w,) * config.num_hidden_layers
    return ()


def shape_from_config(model, exact: bool = True) -> ModelShape:
    """Returns the ModelShape of a model; params_total exact unless exact=False (no torch).

    `model`: a local model directory, a path to config.json, a hub id, a config dict, a
    transformers config, or `shape:NAME[@layers=N]` for a KNOWN_SHAPES entry.
    """
    config = load_config(model)
    family = config.model_type
    if family not in FAMILIES:
        raise UserError(f"{model}: model_type {family!r} is not supported; "
                        f"supported: {', '.join([*FAMILIES, *TEXT_CONFIG_OF])}")
    fam = FAMILIES[family]
    # Standard names work for gpt2 too: its attribute_map sends hidden_size to n_embd, etc.
    d, heads = config.hidden_size, config.num_attention_heads
    d_ff = getattr(config, fam.d_ff, None) or 4 * d
    moe = {}
    if fam.moe and getattr(config, fam.moe[0], None):
        e, k, width = (getattr(config, a) for a in fam.moe)
        shared = (fam.shared if isinstance(fam.shared, int)
                  else getattr(config, fam.shared, None) or 0) * width
        moe = dict(n_experts=e, n_experts_per_token=k, d_ff_expert=width, d_ff_shared=shared,
                   n_dense_layers=_dense_layers(config, family), router_bias=fam.router_bias)
    mla = {}
    head_dim = getattr(config, "head_dim", None) or d // heads
    if fam.mla:
        head_dim = config.qk_nope_head_dim + config.qk_rope_head_dim
        mla = dict(q_lora_rank=config.q_lora_rank or 0, kv_lora_rank=config.kv_lora_rank,
                   qk_rope_head_dim=config.qk_rope_head_dim, v_head_dim=config.v_head_dim)
    shape = ModelShape(
        n_layers=config.num_hidden_layers,
        d_model=d,
        n_heads=heads,
        n_kv_heads=heads if fam.mla else _kv_heads(config, family, heads),
        head_dim=head_dim,
        d_ff=d_ff,
        vocab=config.vocab_size,
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        gated_mlp=fam.gated,
        name=str(model) if isinstance(model, (str, Path)) else getattr(config, "name_or_path", ""),
        qkv_bias=_flag(config, fam.qkv_bias),
        norms_per_layer=_norms(config, family, fam),
        o_bias=_flag(config, fam.o_bias),
        norm_bias=fam.norm_bias,
        qk_norm=fam.qk_norm,
        attn_sinks=fam.sinks,
        mlp_bias=_flag(config, fam.mlp_bias),
        windows=_windows(config, family),
        **moe, **mla,
    )
    if not exact or family in FORMULA_EXACT:
        return shape
    return replace(shape, params_total=count_params(config))


# Bits per weight of checkpoints stored quantized, by quantization_config.quant_method.
# fp8 (DeepSeek-V3): e4m3 weights + one fp32 scale per weight_block_size block (128 × 128:
# 8 + 32 / 16,384 bits). mxfp4 (gpt-oss): OCP MX, 32 e2m1 codes + one e8m0 scale (4 + 8/32
# bits), experts only: modules_to_not_convert keeps attention, router, embeddings in bf16.
def stored_format(model):
    """Returns (Format, bits of the routed experts or None) of a checkpoint stored quantized
    (its config has a quantization_config: fp8, mxfp4), else None. Estimate prices weights with
    it by default."""
    from quantbench.core.formats import Format

    config = load_config(model)
    qc = getattr(config, "quantization_config", None)
    if qc is not None and not isinstance(qc, dict):
        qc = qc.to_dict()
    if not qc:
        return None
    method = qc.get("quant_method")
    if method == "fp8":
        rows, cols = qc.get("weight_block_size") or (1, 1)  # per-tensor scale: ~8 bits
        bits = 8 + 32 / (rows * cols)
        return Format(f"stored-fp8-block{rows}x{cols}", "hf", "transformers",
                      f"fp8 e4m3, fp32 scale per {rows}×{cols} block",
                      bits, 16, ("cuda",), compute_dtype="bf16"), None
    if method == "mxfp4":
        return Format("stored-mxfp4-experts", "hf", "transformers",
                      "MXFP4 experts (32 e2m1 + e8m0 scale), the rest bf16", 16, 16, ("cuda",),
                      compute_dtype="bf16"), 4.25
    raise UserError(f"{model}: quantization_config quant_method {method!r} has no bits-per-weight "
                    "entry; pass --format NAME (see `quantbench formats`)")

