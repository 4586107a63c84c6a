"""`quantbench estimate` / `devices` through cmd_* with a Namespace, on a tiny local config."""
import argparse
import json
import re

import pytest

from quantbench.arith import hardware
from quantbench.arith.hardware import GiB, Peaks
from quantbench.cli import arith
from quantbench.cli.arith import estimate
from quantbench.core.errors import UserError

# 2 layers, d 64, 4 heads / 2 KV heads of 16, FFN 128, vocab 256, untied: 106,816 params
TINY = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
            max_position_embeddings=64, tie_word_embeddings=False,
            bos_token_id=1, eos_token_id=2, pad_token_id=0)
KEYS = {"params", "weights_bytes", "kv_cache_bytes_per_token", "kv_cache_bytes", "flops_per_token",
        "device_ops_per_byte", "prefill_s", "decode_s_per_token", "decode_tok_s", "bound",
        "max_kv_tokens"}


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def _run(capsys, **kw):
    args = argparse.Namespace(**{"seq_len": 512, "batch": 1, "devices": 1, "json": True, **kw})
    assert arith.cmd_estimate(args) == 0
    out = capsys.readouterr().out
    return json.loads(out) if args.json else out


def test_estimate_json_h100(capsys, config):
    r = _run(capsys, model=config, format="bf16", device="h100-sxm", seq_len=8, batch=2)
    assert KEYS <= set(r)
    assert r["params"] == 106_816
    assert r["weights_bytes"] == 213_632                 # 2 bytes × 106,816
    assert r["kv_cache_bytes_per_token"] == 256          # 2 × 2 layers × 2 kv × 16 × 2 bytes
    assert r["kv_cache_bytes"] == 4_096                  # × 8 tokens × 2 sequences
    assert r["flops_per_token"] == 184_320               # 2 × 90,112 + 4·2·8·4·16
    assert r["device_ops_per_byte"] == pytest.approx(989.5e12 / 3.35e12)
    assert r["bound"] == "memory" and r["prefill_bound"] == "memory"
    # the untied input table (256 × 64 × 2 B = 32,768) is gathered row by row, not read
    assert r["decode_s_per_token"] == pytest.approx((213_632 - 32_768 + 4_096) / 3.35e12)
    assert r["decode_tok_s"] == pytest.approx(2 / r["decode_s_per_token"])
    assert r["prefill_s"] == pytest.approx((213_632 - 32_768 + 4_096) / 3.35e12)
    assert r["max_kv_tokens"] == 335_543_485            # (80 GiB − 213,632) // 256


def test_estimate_tensor_parallel_and_fp32_kv(capsys, config):
    r = _run(capsys, model=config, format="fp32", device="a100-40gb-sxm", devices=2)
    assert r["kv_bytes_per_elem"] == 4 and r["kv_cache_bytes_per_token"] == 512
    assert r["weights_bytes"] == 427_264
    assert r["max_kv_tokens"] == (2 * 40 * GiB - 427_264) // 512 == 167_771_325
    assert r["bandwidth_bytes_s"] == 2 * 1555e9
    assert r["peak_flop_s"] == 2 * 19.5e12  # fp32 format: fp32 peak, not tensor cores


def test_estimate_table(capsys, config):
    out = _run(capsys, model=config, format="gptq-4b", device="l4", json=False)
    assert "106,816 params" in out and "256 B" in out and "memory-bound" in out


def test_estimate_local_uses_cached_calibration(capsys, config, monkeypatch, tmp_path):
    monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake(device="cpu", seconds=6.0, threads=0):
        calls.append(device)
        return Peaks("local-cpu-test", {"fp32": 90e9, "bf16": 200e9}, 25e9, 16 * GiB, "measured")

    monkeypatch.setattr(hardware, "calibrate", fake)
    # the run-start probe reads what the calibration's did: the cache holds
    monkeypatch.setattr(hardware, "probe", lambda device="cpu", threads=0: {
        "bandwidth_bytes_s": 25e9, "fp32_flop_s": 90e9, "others_busy_pct": 0.0})
    for _ in range(2):
        r = _run(capsys, model=config, format="fp16", device="local-cpu")
    assert calls == ["cpu"]  # measured once, then read from the cache
    assert list((tmp_path / "cache" / "calibration").glob("*-cpu-*.json"))
    assert r["peaks_source"] == "measured"
    assert r["peak_flop_s"] == 90e9  # no fp16 measured: falls back to fp32
    assert r["decode_s_per_token"] == pytest.approx((213_632 - 32_768 + 512 * 256) / 25e9)


def test_unknown_names_are_user_errors(capsys, config):
    hint = "unknown device 'h100': did you mean 'h100-sxm' or 'h100-pcie'.*quantbench devices"
    with pytest.raises(UserError, match=hint):
        _run(capsys, model=config, format="bf16", device="h100")
    with pytest.raises(UserError, match="unknown format"):
        _run(capsys, model=config, format="bf61", device="h100-sxm")
    with pytest.raises(UserError, match="--batch must be"):
        _run(capsys, model=config, format="bf16", device="h100-sxm", batch=0)


def test_devices_table(capsys):
    from quantbench.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["devices"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line.split() for line in lines if line.startswith("h100-sxm"))
    assert row == ["h100-sxm", "989.5", "3350", "80", "295"]
    assert next(line.split() for line in lines if line.startswith("t4"))[1] == "-"
    args = parser.parse_args(["estimate", "--model", "shape:smollm2-135m", "--format", "bf16",
                              "--device", "h100-sxm", "--json"])
    assert args.func is arith.cmd_estimate and args.seq_len == 512


def test_calibrate_cpu_is_short_and_sane():
    import time

    t0 = time.perf_counter()
    p = hardware.calibrate("cpu", seconds=1.0)
    assert time.perf_counter() - t0 < 10
    assert p.source == "measured" and p.bandwidth_bytes_s > 1e8 and p.flop_s["fp32"] > 1e8
    # the decode-shaped figures: GEMM at M = 1 (a weight read) at least, and attention alone
    assert p.gemm_flop_s_by_m["fp32"]["1"] > 1e7
    assert set(p.gemm_flop_s_by_m["fp32"]) <= {str(m) for m in hardware.GEMM_MS}
    assert p.attn_flop_s["fp32"] > 1e7


def test_gemm_by_m_covers_every_decode_batch_for_float_and_int8():
    """Each power of two a decode sweep runs is calibrated itself (kernels step with their tiles,
    so a log-log curve between fewer M misses them), int8 through torch._int_mm as bitsandbytes'
    LLM.int8 runs it on AVX-512 CPUs; a decode batch's G is then the figure at its own M."""
    import torch

    from quantbench.arith import formulas

    assert hardware.GEMM_MS == (1, 2, 4, 8, 16, 32, 64)
    for dtype in (torch.float32, torch.int8):
        by_m = hardware._gemm_by_m(torch, dtype, "cpu", 20.0, lambda: None, stack_bytes=4 * 2**20)
        assert list(by_m) == [str(m) for m in hardware.GEMM_MS]
        assert all(v > 1e7 for v in by_m.values())
        peaks = hardware.Peaks("t", {"fp32": 1e11}, 1e10, 1e9, gemm_flop_s_by_m={"int8": by_m})
        for m in (2, 8, 32):
            assert formulas.gemm_flop_s_at(peaks, ("int8",), m) == pytest.approx(by_m[str(m)], rel=1e-9)


def test_estimate_kv_types(capsys, config):
    r = _run(capsys, model=config, format="gguf-q4_0", device="h100-sxm", kv_type="q8_0")
    assert r["kv_type"] == "q8_0" and r["kv_cache_bytes_per_token"] == 136  # 256 × 8.5 / 16
    r = _run(capsys, model=config, format="gguf-q4_0", device="h100-sxm", kv_type="q4_0")
    assert r["kv_cache_bytes_per_token"] == 72                             # 256 × 4.5 / 16
    assert r["kv_cache_bytes"] == 72 * 512
    assert _run(capsys, model=config, format="gguf-q4_0", device="h100-sxm")["kv_type"] == "f16"
    assert _run(capsys, model=config, format="bf16", device="h100-sxm")["kv_type"] == "bf16"


def test_estimate_moe_mixtral(capsys):
    r = _run(capsys, model="shape:mixtral-8x7b", format="bf16", device="h100-sxm", seq_len=1)
    assert (r["params"], r["params_active"]) == (46_702_792_704, 12_879_925_248)
    assert r["weights_bytes"] == 93_405_585_408 and r["experts"]["weights_bytes"] == 90_194_313_216
    one, two = r["moe_decode_by_batch"][:2]
    assert (one["batch"], one["experts_expected"]) == (1, 2.0)
    # batch 1 reads exactly the active parameters (2 bytes each) but the gathered input table
    table = 2 * 131_072_000
    assert one["weights_read_bytes"] == 93_405_585_408 - table - 90_194_313_216 * 6 // 8 \
        == 2 * 12_879_925_248 - table
    assert two["experts_expected"] == 3.5  # 8 · (1 − (3/4)²)
    assert two["weights_read_bytes"] == 93_405_585_408 - table - 90_194_313_216 * 4.5 / 8
    assert [x["batch"] for x in r["moe_decode_by_batch"]] == [1, 2, 4, 8, 16, 32, 64]
    out = _run(capsys, model="shape:mixtral-8x7b", format="bf16", device="h100-sxm", json=False)
    assert "12,879,925,248 active" in out and "2 of 8 experts per token in 32 layers" in out


def test_estimate_mla_layout_and_stored_format(capsys):
    r = _run(capsys, model="shape:deepseek-v3", format=None, device="h100-sxm")
    assert r["format"] == "stored-fp8-block128x128" and "stored" in r["format_source"]
    # 669,065,609,216 linears at 8 + 1/512 bits; embeddings, lm_head, norms, router in bf16
    assert r["weights_bytes"] == 669_065_609_216 * 4097 // 4096 + 2 * 1_960_795_136 \
        == 673_150_545_584
    assert r["kv_layout"] == "decompressed" and r["kv_cache_bytes_per_token"] == 4_997_120
    assert r["kv_cache_bytes_per_token_by_layout"] == {"latent": 70_272,
                                                       "decompressed": 4_997_120}
    gguf = _run(capsys, model="shape:deepseek-v3", format="gguf-q4_0", device="h100-sxm",
                kv_type="q8_0")
    assert gguf["kv_layout"] == "latent" and gguf["kv_cache_bytes_per_token"] == 37_332  # 61·576·8.5/8
    forced = _run(capsys, model="shape:deepseek-v3", format="bf16", device="h100-sxm",
                  kv_layout="latent")
    assert forced["kv_cache_bytes"] == 70_272 * 512


def test_estimate_window_gemma3(capsys):
    r = _run(capsys, model="shape:gemma-3-27b", format="bf16", device="h100-sxm", seq_len=32_768)
    assert (r["window_layers"], r["windows"]) == (52, [1024])
    assert r["kv_cache_bytes_per_token"] == 62 * 8_192
    assert r["kv_cache_bytes"] == 8_192 * (52 * 1_024 + 10 * 32_768) == 3_120_562_176
    # (80 GiB − 54,018,692,608 B weights − 52 · 1,024 · 8,192 capped) // (10 · 8,192)
    assert r["max_kv_tokens"] == (80 * GiB - 54_018_692_608 - 436_207_616) // 81_920 == 383_843
    every = _run(capsys, model="shape:mistral-7b-v0.1", format="gguf-q4_0", device="h100-sxm")
    assert every["max_kv_tokens"] is None  # all 32 layers windowed at 4,096: the cache stops
    out = _run(capsys, model="shape:mistral-7b-v0.1", format="gguf-q4_0", device="h100-sxm",
               json=False)
    assert "unbounded (every layer windowed)" in out


def test_estimate_gpt_oss_stored_mxfp4(capsys):
    r = _run(capsys, model="shape:gpt-oss-20b", format=None, device="h100-sxm")
    assert r["format"] == "stored-mxfp4-experts" and r["weights_bytes"] == 13_761_264_768
    assert r["params_active_no_embeddings"] == 3_608_307_264  # the model card's 3.6B
    # 12 sliding (128) + 12 full layers, 2·8·64·2 B each, at 512 tokens
    assert r["kv_cache_bytes"] == 2_048 * (12 * 128 + 12 * 512)


def test_estimate_cut_shape(capsys):
    r = _run(capsys, model="shape:qwen3-30b-a3b@layers=4", format="bf16", device="h100-sxm")
    assert r["params"] == 3_114_814_464 and r["experts"]["moe_layers"] == 4


# Degenerate configs: one line naming the field, never a traceback or silently wrong numbers
@pytest.mark.parametrize("cfg,msg", [
    ({"num_attention_heads": 0}, "'num_attention_heads' must be a whole number ≥ 1, got 0"),
    ({"num_key_value_heads": 0}, "'num_key_value_heads' must be a whole number ≥ 1, got 0"),
    ({"intermediate_size": 0}, "'intermediate_size' must be a whole number ≥ 1, got 0"),
    ({"hidden_size": "576"}, "'hidden_size' must be a whole number ≥ 1, got '576'"),
    ({"hidden_size": 577}, "hidden size 577 is not a multiple of 9 attention heads"),
    ({"num_key_value_heads": 4}, "9 attention heads do not split into 4 KV-head groups"),
    ({"hidden_size": None}, "no hidden size"),
])
def test_degenerate_config_fields_are_named(tmp_path, cfg, msg):
    base = {"model_type": "llama", "hidden_size": 576, "num_attention_heads": 9, "num_hidden_layers": 2,
            "intermediate_size": 1536, "vocab_size": 100}
    body = {k: v for k, v in {**base, **cfg}.items() if v is not None}
    (tmp_path / "c.json").write_text(json.dumps(body))
    with pytest.raises(UserError, match=re.escape(msg)):
        estimate(str(tmp_path / "c.json"), "bf16", "h100-sxm")


@pytest.mark.parametrize("body", ['{"model_type": "llama"}', "[1, 2]", '"a string"'])
def test_configs_that_are_not_shapes(tmp_path, body):
    (tmp_path / "c.json").write_text(body)
    with pytest.raises(UserError, match="no hidden size|must be a JSON object"):
        estimate(str(tmp_path / "c.json"), "bf16", "h100-sxm")
