"""shape_from_config on tiny config.json files: family mapping and the exact meta-device count."""
import json

import pytest

from quantbench.arith import formulas, shapes
from quantbench.core.errors import UserError

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, max_position_embeddings=32,
            bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _write(tmp_path, d, name="config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(d))
    return path


def test_llama_tiny_formula_is_exact(tmp_path):
    s = shapes.shape_from_config(str(_write(tmp_path, {"model_type": "llama", **TINY,
                                                       "tie_word_embeddings": False})))
    assert (s.n_layers, s.d_model, s.n_heads, s.n_kv_heads, s.head_dim, s.d_ff, s.vocab) == \
        (2, 64, 4, 2, 16, 128, 256)
    assert s.gated_mlp and not s.tied_embeddings
    c = formulas.params_by_component(s)
    # attention 2 × (2·64·64 + 2·64·32); mlp 2 × 3·64·128; norms 5 × 64
    assert c == {"embeddings": 16_384, "attention": 24_576, "mlp": 49_152, "norms": 320,
                 "lm_head": 16_384}
    # the formula is what estimate uses for llama: it must equal the meta-device count
    assert shapes.count_params(shapes.load_config(str(tmp_path / "config.json"))) \
        == sum(c.values()) == formulas.params_total(s) == 106_816


def test_qwen2_tiny_counts_qkv_bias_and_ties(tmp_path):
    d = {"model_type": "qwen2", **TINY, "tie_word_embeddings": True}
    _write(tmp_path, d)
    s = shapes.shape_from_config(str(tmp_path))  # a model directory
    assert s.qkv_bias and s.tied_embeddings
    # llama tiny − lm_head 16,384 + q/k/v biases 2 × (4 + 2·2) × 16 = 256
    assert shapes.count_params(shapes.load_config(str(tmp_path))) \
        == sum(formulas.params_by_component(s).values()) == formulas.params_total(s) == 90_688


def test_gpt2_tiny_meta_count(tmp_path):
    d = {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 256,
         "n_positions": 32, "bos_token_id": 1, "eos_token_id": 2}
    s = shapes.shape_from_config(str(_write(tmp_path, d)))
    assert (s.d_model, s.n_heads, s.n_kv_heads, s.head_dim, s.d_ff) == (64, 4, 4, 16, 256)
    assert not s.gated_mlp and s.tied_embeddings
    # wte 16,384 + wpe 2,048 + 2 × (ln 128 + c_attn 12,480 + c_proj 4,160 + ln 128
    #   + c_fc 16,640 + c_proj 16,448) + ln_f 128
    assert s.params_total == 118_528
    # the formula leaves out wpe 2,048, linear biases 1,152 and LayerNorm biases 320
    assert s.params_total - sum(formulas.params_by_component(s).values()) == 3_520


def test_opt_tiny_meta_count(tmp_path):
    d = {"model_type": "opt", "hidden_size": 64, "ffn_dim": 256, "num_hidden_layers": 2,
         "num_attention_heads": 4, "vocab_size": 256, "max_position_embeddings": 32,
         "word_embed_proj_dim": 64, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    s = shapes.shape_from_config(str(_write(tmp_path, d)))
    assert (s.d_ff, s.n_kv_heads, s.gated_mlp, s.tied_embeddings) == (256, 4, False, True)
    # tokens 16,384 + positions (32 + 2 offset) × 64 + 2 × (q,k,v,o 4 × 4,160 + ln 128
    #   + fc1 16,640 + fc2 16,448 + ln 128) + final ln 128
    assert s.params_total == 118_656


def test_known_shapes_are_exact():
    def both(name):  # the formula estimate uses, and the meta-device count
        s = shapes.shape_from_config(f"shape:{name}")
        return formulas.params_total(s), shapes.count_params(shapes.load_config(f"shape:{name}"))

    assert both("smollm2-135m") == (134_515_008,) * 2
    s = shapes.shape_from_config("shape:llama-3-8b")
    assert both("llama-3-8b") == (8_030_261_248,) * 2 and (s.n_kv_heads, s.head_dim) == (8, 128)
    assert formulas.kv_cache_bytes(s.n_layers, s.n_kv_heads, s.head_dim) == 131_072
    assert both("llama-3.2-1b") == (1_235_814_400,) * 2
    assert both("qwen2.5-7b") == (7_615_616_512,) * 2


def test_dict_input_without_torch_count():
    s = shapes.shape_from_config(shapes.KNOWN_SHAPES["smollm2-135m"], exact=False)
    assert s.params_total is None and formulas.params_total(s) == 134_515_008


def test_errors_are_user_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="did you mean 'shape:llama-3-8b'"):
        shapes.shape_from_config("shape:llama-3-8")
    with pytest.raises(UserError, match="no such file"):
        shapes.shape_from_config(str(tmp_path / "missing" / "config.json"))
    with pytest.raises(UserError, match="model_type 'bert' is not supported"):
        shapes.shape_from_config(str(_write(tmp_path, {"model_type": "bert"})))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        shapes.shape_from_config(str(tmp_path / "empty"))

    import transformers

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)
    with pytest.raises(UserError, match="could not get the config of 'org/model'.*shape:NAME"):
        shapes.shape_from_config("org/model")


def _both(model):
    """Returns (formula count, meta-device count): estimate uses the first, the second is truth."""
    s = shapes.shape_from_config(model)
    return formulas.params_total(s), shapes.count_params(shapes.load_config(model))


# One tiny config per family; each family's formula must equal transformers' meta-device model.
FAMILY_TINY = {
    "qwen3": dict(model_type="qwen3", **TINY, head_dim=16, tie_word_embeddings=False),
    "qwen3_moe": dict(model_type="qwen3_moe", **TINY, head_dim=16, num_experts=4,
                      num_experts_per_tok=2, moe_intermediate_size=32, mlp_only_layers=[0]),
    "mixtral": dict(model_type="mixtral", **TINY, num_local_experts=4, num_experts_per_tok=2),
    "deepseek_v3": dict(model_type="deepseek_v3", **TINY, n_routed_experts=4, n_shared_experts=1,
                        num_experts_per_tok=2, moe_intermediate_size=16, first_k_dense_replace=1,
                        n_group=1, topk_group=1, q_lora_rank=16, kv_lora_rank=32,
                        qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8),
    "deepseek_v2": dict(model_type="deepseek_v2", **TINY, n_routed_experts=4, n_shared_experts=2,
                        num_experts_per_tok=2, moe_intermediate_size=16, first_k_dense_replace=1,
                        q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=8,
                        qk_rope_head_dim=8, v_head_dim=8),
    "gemma3": dict(model_type="gemma3", text_config=dict(
        model_type="gemma3_text", **TINY, head_dim=16, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"])),
    "gpt_oss": dict(model_type="gpt_oss", **TINY, head_dim=16, num_local_experts=4,
                    num_experts_per_tok=2, sliding_window=8,
                    layer_types=["sliding_attention", "full_attention"]),
    # dense MLP of 128 on layer 0, experts on layer 1; both RoPE layers chunked at 8 tokens
    "llama4": dict(model_type="llama4", text_config=dict(
        model_type="llama4_text", **TINY, head_dim=16, intermediate_size_mlp=128,
        num_local_experts=4, num_experts_per_tok=1, interleave_moe_layer_step=2,
        attention_chunk_size=8)),
    "falcon": dict(model_type="falcon", hidden_size=64, num_hidden_layers=2,
                   num_attention_heads=4, vocab_size=256, multi_query=True, parallel_attn=True,
                   bias=False, new_decoder_architecture=False),
    "falcon-40b-like": dict(model_type="falcon", hidden_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_kv_heads=2, vocab_size=256,
                            new_decoder_architecture=True, bias=True),
}


@pytest.mark.parametrize("name", list(FAMILY_TINY))
def test_family_formula_equals_meta_count(name):
    formula, meta = _both(dict(FAMILY_TINY[name]))
    assert formula == meta, f"{name}: formula {formula:,} vs meta {meta:,}"


# Real configs: the formula equals the meta-device count, and the count is the published one.
KNOWN_COUNTS = {  # name: (total, active per token), published figures in the comments
    "qwen3-8b": (8_190_735_360, 8_190_735_360),                # 8.2B
    "qwen3-30b-a3b": (30_532_122_624, 3_353_032_704),          # 30.5B total, 3.3B active
    "mixtral-8x7b": (46_702_792_704, 12_879_925_248),          # 46.7B, 12.9B
    "mistral-7b-v0.1": (7_241_732_096, 7_241_732_096),         # 7.24B
    "deepseek-v3": (671_026_404_352, 37_552_282_624),          # 671B, 37B
    "deepseek-v2-lite": (15_706_484_224, 2_661_150_208),       # 15.7B, 2.4B without embeddings
    "gemma-3-27b": (27_009_346_304, 27_009_346_304),           # 1,416M embeddings + 25,600M
    "gpt-oss-20b": (20_914_757_184, 4_187_440_704),            # 20.9B, 3.6B without embeddings
    "falcon-7b": (6_921_720_704, 6_921_720_704),               # 6.9B
    "llama-4-scout": (107_769_861_120, 17_172_894_720),        # 109B with vision, 17B active
}


@pytest.mark.parametrize("name", list(KNOWN_COUNTS))
def test_known_shape_counts(name):
    total, active = KNOWN_COUNTS[name]
    assert _both(f"shape:{name}") == (total, total)
    s = shapes.shape_from_config(f"shape:{name}")
    assert formulas.params_active(s) == active


def test_known_shapes_read_each_feature():
    ds = shapes.shape_from_config("shape:deepseek-v3")
    assert (ds.n_experts, ds.n_experts_per_token, ds.d_ff_expert, ds.d_ff_shared,
            ds.n_dense_layers, ds.n_moe_layers) == (256, 8, 2048, 2048, 3, 58)
    assert (ds.q_lora_rank, ds.kv_lora_rank, ds.qk_rope_head_dim, ds.head_dim, ds.v_head_dim) \
        == (1536, 512, 64, 192, 128)
    gemma = shapes.shape_from_config("shape:gemma-3-27b")  # multimodal config: its text_config
    assert gemma.qk_norm and gemma.norms_per_layer == 4 and gemma.n_layers == 62
    assert gemma.windows.count(1024) == 52 and gemma.windows[5] == 0  # every 6th layer global
    oss = shapes.shape_from_config("shape:gpt-oss-20b")
    assert oss.windows == (128, 0) * 12 and oss.attn_sinks and oss.router_bias and oss.mlp_bias
    falcon = shapes.shape_from_config("shape:falcon-7b")
    assert (falcon.n_kv_heads, falcon.head_dim, falcon.norms_per_layer) == (1, 64, 1)  # MQA
    mistral = shapes.shape_from_config("shape:mistral-7b-v0.1")
    assert mistral.windows == (4096,) * 32
    assert shapes.shape_from_config("shape:qwen3-8b").qk_norm
    scout = shapes.shape_from_config("shape:llama-4-scout")  # every 4th layer global (NoPE)
    assert scout.windows[:4] == (8192, 8192, 8192, 0) and scout.d_ff_shared == 8192
    tiny4 = shapes.shape_from_config(dict(FAMILY_TINY["llama4"]))
    assert (tiny4.n_dense_layers, tiny4.d_ff, tiny4.windows) == (1, 128, (8, 8))


def test_shape_cut():
    s = shapes.shape_from_config("shape:qwen3-30b-a3b@layers=4")
    assert (s.n_layers, s.n_experts, s.d_model) == (4, 128, 2048)
    # 4 layers of the real model: 48-layer total minus 44 layers' worth
    per_layer = (30_532_122_624 - 2 * 151_936 * 2048 - 2048) // 48
    assert formulas.params_total(s) == 4 * per_layer + 2 * 151_936 * 2048 + 2048 == 3_114_814_464
    assert _both("shape:qwen3-30b-a3b@layers=4")[1] == 3_114_814_464
    oss = shapes.shape_from_config("shape:gpt-oss-20b@layers=3")
    assert oss.windows == (128, 0, 128)
    assert shapes.shape_from_config("shape:deepseek-v3@layers=2").n_dense_layers == 2
    with pytest.raises(UserError, match="@layers=4"):
        shapes.shape_from_config("shape:qwen3-8b@layers=x")


def test_stored_format_from_quantization_config():
    fmt, experts = shapes.stored_format("shape:deepseek-v3")
    assert fmt.bits_per_weight == 8 + 32 / 16_384 and experts is None  # fp32 scale / 128×128
    fmt, experts = shapes.stored_format("shape:gpt-oss-20b")
    assert (fmt.bits_per_weight, experts) == (16, 4.25)  # MXFP4 experts, bf16 attention
    assert shapes.stored_format("shape:qwen3-8b") is None
    s = shapes.shape_from_config("shape:gpt-oss-20b")
    # published checkpoint ≈ 13.8 GB: expert matmuls 19,110,297,600 × 4.25 bits
    # + the other 1,804,459,584 parameters × 16 bits
    assert formulas.weights_bytes(s, 16, 16, bits_experts=4.25) \
        == 10_152_345_600 + 3_608_919_168 == 13_761_264_768


def test_active_without_embedding_table_matches_other_conventions():
    # gpt-oss (model card 3.6B) and DeepSeek-V2-Lite (2.4B) leave the input table out
    oss = shapes.shape_from_config("shape:gpt-oss-20b")
    assert formulas.params_active(oss, embeddings=False) == 4_187_440_704 - 201_088 * 2880 \
        == 3_608_307_264
    lite = shapes.shape_from_config("shape:deepseek-v2-lite")
    assert formulas.params_active(lite, embeddings=False) == 2_661_150_208 - 102_400 * 2048 \
        == 2_451_435_008
    smol = shapes.shape_from_config("shape:smollm2-135m")  # tied: the table is the lm_head
    assert formulas.params_active(smol, embeddings=False) == 134_515_008
