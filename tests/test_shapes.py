"""shape_from_config on tiny config.json files: family mapping and the exact meta-device count."""
import json

import pytest

from quantbench import arith, shapes
from quantbench.errors import UserError

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
    c = arith.params_by_component(s)
    # attention 2 × (2·64·64 + 2·64·32); mlp 2 × 3·64·128; norms 5 × 64
    assert c == {"embeddings": 16_384, "attention": 24_576, "mlp": 49_152, "norms": 320,
                 "lm_head": 16_384}
    # the formula is what estimate uses for llama: it must equal the meta-device count
    assert shapes.count_params(shapes.load_config(str(tmp_path / "config.json"))) \
        == sum(c.values()) == arith.params_total(s) == 106_816


def test_qwen2_tiny_counts_qkv_bias_and_ties(tmp_path):
    d = {"model_type": "qwen2", **TINY, "tie_word_embeddings": True}
    _write(tmp_path, d)
    s = shapes.shape_from_config(str(tmp_path))  # a model directory
    assert s.qkv_bias and s.tied_embeddings
    # llama tiny − lm_head 16,384 + q/k/v biases 2 × (4 + 2·2) × 16 = 256
    assert shapes.count_params(shapes.load_config(str(tmp_path))) \
        == sum(arith.params_by_component(s).values()) == arith.params_total(s) == 90_688


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
    assert s.params_total - sum(arith.params_by_component(s).values()) == 3_520


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
        return arith.params_total(s), shapes.count_params(shapes.load_config(f"shape:{name}"))

    assert both("smollm2-135m") == (134_515_008,) * 2
    s = shapes.shape_from_config("shape:llama-3-8b")
    assert both("llama-3-8b") == (8_030_261_248,) * 2 and (s.n_kv_heads, s.head_dim) == (8, 128)
    assert arith.kv_cache_bytes(s.n_layers, s.n_kv_heads, s.head_dim) == 131_072
    assert both("llama-3.2-1b") == (1_235_814_400,) * 2
    assert both("qwen2.5-7b") == (7_615_616_512,) * 2


def test_dict_input_without_torch_count():
    s = shapes.shape_from_config(shapes.KNOWN_SHAPES["smollm2-135m"], exact=False)
    assert s.params_total is None and arith.params_total(s) == 134_515_008


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
