"""Configs exactly as the Hub ships them (tests/data/hub-configs/, one per supported family).

They leave out what transformers' config class fills in: a Gemma-3 text_config has no vocab_size,
no layer pattern and (4B) no head counts; Gemma-2 does not say its embeddings are tied. Each is
read through transformers' class for its model_type and checked against an independent formula
written out here, and the published count of the model card.
"""
import json
from dataclasses import replace
from pathlib import Path

import pytest

from quantbench.arith import formulas, shapes
from quantbench.cli.main import main
from quantbench.core.errors import UserError

HUB = Path(__file__).parent / "data" / "hub-configs"
TEXT = "google--gemma-3-27b-it.text_config"


def dense_params(V, d, L, h, kv, hd, ff, tied, norms=2, qkv_bias=False, qk_norm=False,
                 experts=0, ff_expert=0):
    """Returns the parameters of a pre-norm decoder with a gated (SwiGLU/GeGLU) MLP.

    Per layer: q and o are d x h*hd, k and v d x kv*hd (+ biases on q/k/v), the MLP 3 x d x ff
    (or E experts of 3 x d x ff_expert plus a d x E router), `norms` RMSNorm weights of d, and q/k
    norms of hd. Plus the embedding (and an untied head) and the final norm."""
    attn = 2 * d * h * hd + 2 * d * kv * hd + (h * hd + 2 * kv * hd if qkv_bias else 0)
    mlp = experts * 3 * d * ff_expert + d * experts if experts else 3 * d * ff
    layer = attn + mlp + norms * d + (2 * hd if qk_norm else 0)
    return V * d * (1 if tied else 2) + d + L * layer


# file: (params by the formula above or by hand, published figure it rounds to)
DENSE = {
    "meta-llama--Llama-3.1-8B": dense_params(128256, 4096, 32, 32, 8, 128, 14336, False),  # 8.03B
    "meta-llama--Llama-3.2-1B": dense_params(128256, 2048, 16, 32, 8, 64, 8192, True),     # 1.24B
    "HuggingFaceTB--SmolLM2-135M": dense_params(49152, 576, 30, 9, 3, 64, 1536, True),     # 135M
    "mistralai--Mistral-7B-v0.1": dense_params(32000, 4096, 32, 32, 8, 128, 14336, False),  # 7.24B
    "Qwen--Qwen2.5-0.5B": dense_params(151936, 896, 24, 14, 2, 64, 4864, True, qkv_bias=True),
    "Qwen--Qwen2.5-7B": dense_params(152064, 3584, 28, 28, 4, 128, 18944, False, qkv_bias=True),
    "Qwen--Qwen3-8B": dense_params(151936, 4096, 36, 32, 8, 128, 12288, False, qk_norm=True),
    # Phi-3 fuses qkv and gate_up: the same counts as separate matrices
    "microsoft--Phi-3-mini-4k-instruct": dense_params(32064, 3072, 32, 32, 32, 96, 8192, False),
    # Gemma-2: tie_word_embeddings left out (transformers' default: tied), 4 norms per layer
    "google--gemma-2-2b": dense_params(256000, 2304, 26, 8, 4, 256, 9216, True, norms=4),
    # Gemma-3: vocab 262,208 and every default below come from Gemma3TextConfig
    "google--gemma-3-27b-it": dense_params(262208, 5376, 62, 32, 16, 128, 21504, True, norms=4,
                                           qk_norm=True),
    TEXT: dense_params(262208, 5376, 62, 32, 16, 128, 21504, True, norms=4, qk_norm=True),
    # 4B text_config names only width, depth and FFN: 8 heads, 4 KV heads of 256 are defaults
    "google--gemma-3-4b-it.text_config": dense_params(262208, 2560, 34, 8, 4, 256, 10240, True,
                                                      norms=4, qk_norm=True),
    "mistralai--Mixtral-8x7B-v0.1": dense_params(32000, 4096, 32, 32, 8, 128, 0, False,
                                                 experts=8, ff_expert=14336),
    "Qwen--Qwen3-30B-A3B": dense_params(151936, 2048, 48, 32, 4, 128, 0, False, qk_norm=True,
                                        experts=128, ff_expert=768),
    # Falcon-7B by hand: tied 65,024 x 4,544 embedding; per layer fused MQA qkv 4,544 x
    # (4,544 + 2 x 64), dense 4,544^2, MLP 2 x 4 x 4,544^2, one LayerNorm with bias; final LN
    "tiiuae--falcon-7b": 65024 * 4544 + 2 * 4544
    + 32 * (4544 * (4544 + 128) + 4544**2 + 8 * 4544**2 + 2 * 4544),
}
PUBLISHED = {  # model cards, in billions (rounded as published)
    "meta-llama--Llama-3.1-8B": 8.03, "meta-llama--Llama-3.2-1B": 1.24,
    "HuggingFaceTB--SmolLM2-135M": 0.135, "mistralai--Mistral-7B-v0.1": 7.24,
    "Qwen--Qwen2.5-0.5B": 0.494, "Qwen--Qwen2.5-7B": 7.61, "Qwen--Qwen3-8B": 8.19,
    "microsoft--Phi-3-mini-4k-instruct": 3.82, "google--gemma-2-2b": 2.61,
    "mistralai--Mixtral-8x7B-v0.1": 46.7, "Qwen--Qwen3-30B-A3B": 30.5, "tiiuae--falcon-7b": 6.92,
    "deepseek-ai--DeepSeek-V3": 671, "openai--gpt-oss-20b": 20.9,
}
# (layers, KV heads, head dim) for KV bytes per token = 2 (K, V) x layers x KV heads x dim x 2 B
KV = {
    "meta-llama--Llama-3.1-8B": (32, 8, 128), "meta-llama--Llama-3.2-1B": (16, 8, 64),
    "HuggingFaceTB--SmolLM2-135M": (30, 3, 64), "mistralai--Mistral-7B-v0.1": (32, 8, 128),
    "Qwen--Qwen2.5-0.5B": (24, 2, 64), "Qwen--Qwen2.5-7B": (28, 4, 128),
    "Qwen--Qwen3-8B": (36, 8, 128), "microsoft--Phi-3-mini-4k-instruct": (32, 32, 96),
    "google--gemma-2-2b": (26, 4, 256), "google--gemma-3-27b-it": (62, 16, 128),
    TEXT: (62, 16, 128), "google--gemma-3-4b-it.text_config": (34, 4, 256),
    "mistralai--Mixtral-8x7B-v0.1": (32, 8, 128), "Qwen--Qwen3-30B-A3B": (48, 4, 128),
    "tiiuae--falcon-7b": (32, 1, 64), "openai--gpt-oss-20b": (24, 8, 64),
}


def test_every_family_has_a_hub_config():
    families = {shapes.load_config(str(f)).model_type for f in HUB.glob("*.json")}
    # gpt2, opt, phi, gemma(1), deepseek_v2 and llama4 are covered by tests/test_shapes.py only
    assert families >= {"llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "phi3",
                        "gemma2", "gemma3_text", "gpt_oss", "falcon", "deepseek_v3"}


@pytest.mark.parametrize("name", list(DENSE))
def test_params_from_hub_config(name):
    s = shapes.shape_from_config(str(HUB / f"{name}.json"), exact=False)
    assert formulas.params_total(s) == DENSE[name]
    if name in PUBLISHED:
        assert DENSE[name] / 1e9 == pytest.approx(PUBLISHED[name], rel=0.005)


@pytest.mark.parametrize("name", list(KV))
def test_kv_bytes_per_token_from_hub_config(name):
    layers, kv, hd = KV[name]
    s = shapes.shape_from_config(str(HUB / f"{name}.json"), exact=False)
    assert formulas.kv_bytes(s, seq_len=1, batch=1, bytes_per_elem=2) == 2 * layers * kv * hd * 2


def test_gemma3_text_config_gets_transformers_defaults():
    """The bare text_config as shipped: no vocab_size, no layer pattern, no rope_theta."""
    raw = json.loads((HUB / f"{TEXT}.json").read_text())
    assert not {"vocab_size", "sliding_window_pattern", "layer_types"} & set(raw)
    s = shapes.shape_from_config(str(HUB / f"{TEXT}.json"), exact=False)
    assert s.vocab == 262208 and s.tied_embeddings
    # default pattern: 5 local (1,024-token window) layers, then one global
    assert s.windows == ((1024,) * 5 + (0,)) * 10 + (1024,) * 2
    full = shapes.shape_from_config(str(HUB / "google--gemma-3-27b-it.json"), exact=False)
    assert replace(full, name="") == replace(s, name="")  # the full config reads its text_config


def test_windows_and_defaults_of_other_families():
    read = {n: shapes.shape_from_config(str(HUB / f"{n}.json"), exact=False)
            for n in ("google--gemma-2-2b", "openai--gpt-oss-20b", "mistralai--Mistral-7B-v0.1")}
    assert read["google--gemma-2-2b"].windows == (4096, 0) * 13  # Gemma2Config's layer_types
    assert read["openai--gpt-oss-20b"].windows == (128, 0) * 12
    assert read["mistralai--Mistral-7B-v0.1"].windows == (4096,) * 32


def test_moe_mla_hub_configs_match_the_meta_counts():
    """DeepSeek-V3 (MLA, FP8 stored) and gpt-oss-20b (MXFP4 experts) as shipped give the counts
    tests/test_shapes.py pins to transformers' meta-device model for the curated shapes."""
    ds = shapes.shape_from_config(str(HUB / "deepseek-ai--DeepSeek-V3.json"), exact=False)
    assert (formulas.params_total(ds), formulas.params_active(ds)) == (671_026_404_352, 37_552_282_624)
    # MLA: the latent cache is kv_lora_rank + rope dim per layer; decompressed K (192) and V (128)
    assert formulas.kv_bytes(ds, layout="latent") == 61 * (512 + 64) * 2
    assert formulas.kv_bytes(ds) == 61 * 128 * (192 + 128) * 2
    oss = shapes.shape_from_config(str(HUB / "openai--gpt-oss-20b.json"), exact=False)
    assert (formulas.params_total(oss), formulas.params_active(oss)) == (20_914_757_184, 4_187_440_704)
    fmt, bits = shapes.stored_format(str(HUB / "openai--gpt-oss-20b.json"))
    assert bits == 4.25 and fmt.name == "stored-mxfp4-experts"


def test_estimate_reads_the_bare_text_config(capsys):
    assert main(["estimate", "--model", str(HUB / f"{TEXT}.json"), "--format", "bf16",
                 "--device", "h100-sxm"]) == 0
    out = capsys.readouterr().out
    assert f"({DENSE[TEXT]:,} params)" in out and "52 layers windowed at 1024 tokens" in out


def test_without_a_config_class_the_config_is_read_as_written(monkeypatch):
    """An older transformers without the model_type's class: the current reader, with a warning;
    a config that leaves fields to transformers then names what it misses."""
    monkeypatch.setattr(shapes, "_config_class", lambda kind: None)
    with pytest.warns(UserWarning, match="no config class for model_type 'llama'"):
        s = shapes.shape_from_config(str(HUB / "meta-llama--Llama-3.1-8B.json"), exact=False)
    assert formulas.params_total(s) == DENSE["meta-llama--Llama-3.1-8B"]
    with pytest.warns(UserWarning), pytest.raises(UserError, match="no vocabulary size"):
        shapes.shape_from_config(str(HUB / f"{TEXT}.json"), exact=False)
