"""Arithmetic pinned to hand-checked numbers: Kipply's 52B example, Llama-3-8B, SmolLM2-135M."""
import math

import pytest

from quantbench.arith import formulas
from quantbench.arith.formulas import ModelShape
from quantbench.arith.hardware import DEVICES, GiB, Peaks
from quantbench.core.formats import FORMATS

SMOL = ModelShape(n_layers=30, d_model=576, n_heads=9, n_kv_heads=3, head_dim=64, d_ff=1536,
                  vocab=49152, tied_embeddings=True, name="smollm2-135m")
LLAMA3_8B = ModelShape(n_layers=32, d_model=4096, n_heads=32, n_kv_heads=8, head_dim=128,
                       d_ff=14336, vocab=128256, tied_embeddings=False, name="llama-3-8b")
# A 2-core CPU like the reference machine: 25 GB/s copy, fp32 90 / bf16 200 GFLOP/s, no fp16 entry.
CPU = Peaks("cpu-test", {"fp32": 90e9, "bf16": 200e9}, 25e9, 16 * GiB, "measured")


# Kipply, "Transformer Inference Arithmetic": 52B, d_model 8192, 64 layers, 16-bit, MHA.
def test_kipply_kv_bytes_per_token():
    # 2 (K,V) × 2 bytes × 64 layers × 8192 (64 heads × 128) = 2,097,152
    assert formulas.kv_cache_bytes(n_layers=64, n_kv_heads=64, head_dim=128) == 2_097_152


def test_kipply_a100_ops_per_byte():
    assert formulas.ops_per_byte(312e12, 1.5e12) == pytest.approx(208)


def test_kipply_memory_bound_forward_69ms():
    weights = 52e9 * 2
    s, bound = formulas.roofline_s(2 * 52e9 * 100, weights, 312e12, 1.5e12)  # 100 tokens < 208
    assert bound == "memory"
    assert s == pytest.approx(104e9 / 1.5e12) and round(s * 1e3) == 69


def test_kipply_8000_tokens_on_three_a100s():
    # 3 × 40 GB − 104 GB = 16 GB spare; 16e9 / 2,097,152 = 7629.4; Kipply's 2 MB → "8,000".
    assert formulas.max_kv_tokens(40e9, 104e9, 2_097_152, n_devices=3) == 7629
    assert formulas.max_kv_tokens(40e9, 104e9, 2e6, n_devices=3) == 8000


def test_roofline_bound_switches_at_device_ratio():
    # equal at 208 tokens per 2 bytes/param; 207 memory, 209 compute
    w = 104e9
    assert formulas.roofline_s(2 * 52e9 * 207, w, 312e12, 1.5e12)[1] == "memory"
    s, bound = formulas.roofline_s(2 * 52e9 * 1000, w, 312e12, 1.5e12)
    assert bound == "compute" and s == pytest.approx(1000 * 104e9 / 312e12)  # 333 ms


# Grouped-query attention: the KV term uses n_kv_heads.
def test_llama3_8b_kv_bytes_per_token():
    assert formulas.kv_cache_bytes(32, 8, 128) == 131_072
    assert formulas.kv_cache_bytes(32, 32, 128) == 4 * 131_072  # n_heads formula: 4× too much


def test_smollm2_kv_bytes_and_mha_overcount():
    assert formulas.kv_cache_bytes(30, 3, 64) == 23_040
    assert formulas.kv_cache_bytes(30, 9, 64) == 69_120 == 3 * 23_040
    # DynamicCache matched 2·30·3·64·bytes·T·B to the byte (REFERENCE.md): fp32, T 512, B 2
    assert formulas.kv_cache_bytes(30, 3, 64, seq_len=512, batch=2, bytes_per_elem=4) == 47_185_920


def test_smollm2_params():
    c = formulas.params_by_component(SMOL)
    assert c == {"embeddings": 28_311_552,  # 49152 × 576
                 "attention": 26_542_080,   # 30 × (2·576·576 + 2·576·192)
                 "mlp": 79_626_240,         # 30 × 3·576·1536
                 "norms": 35_136,           # (30·2 + 1) × 576
                 "lm_head": 0}
    assert sum(c.values()) == formulas.params_total(SMOL) == 134_515_008


def test_llama3_8b_params_untied():
    c = formulas.params_by_component(LLAMA3_8B)
    assert c["lm_head"] == c["embeddings"] == 525_336_576
    assert formulas.params_total(LLAMA3_8B) == 8_030_261_248


def test_smollm2_weights_bytes():
    assert formulas.weights_bytes(SMOL, 32, 32) == 538_060_032
    assert formulas.weights_bytes(SMOL, 16, 16) == 269_030_016
    # block linears 106,168,320 at 4.3125 bits + embeddings and norms 28,346,688 at 16 bits
    assert formulas.weights_bytes(SMOL, 4.3125, 16) == 57_231_360 + 56_693_376 == 113_924_736


def test_layout_prices_codes_and_scales_per_group():
    from quantbench.core.formats import MXFP4, Q8_0, Layout

    assert Q8_0.tensor_bits(576, 576) / 8 == 576 * 576 * 34 / 32 == 352_512  # 34 bytes per 32
    assert MXFP4.tensor_bits(576, 1536) / 8 == 576 * 1536 * 17 / 32 == 470_016
    # a scale per row: 32 bits over a 576-wide row, over a 1536-wide one
    assert Layout(8, 0, 32).tensor_bits(1536, 576) == 1536 * 576 * 8 + 1536 * 32
    assert Layout(4, 64, 16, 4).tensor_bits(576, 1536) == 576 * 1536 * 4 + 576 * 24 * 20
    assert Layout(16).tensor_bits(3, 5) == 240  # no groups without a scale


def test_smollm2_weights_bytes_per_tensor():
    # gguf-mxfp4: block linears 106,168,320 x 17/32, tied embeddings 28,311,552 x 34/32 (Q8_0),
    # norms 35,136 in F32
    assert formulas.weights_bytes_of(SMOL, FORMATS["gguf-mxfp4"]) == 56_401_920 + 30_081_024 + 140_544
    # torchao int8: int8 linears + an fp32 scale per output row (4,608 rows of 576 wide and 576
    # of 1536 per layer, 30 layers), fp32 embeddings and norms
    assert formulas.weights_bytes_of(SMOL, FORMATS["torchao-int8wo"]) == \
        106_168_320 + 4 * 5_184 * 30 + 4 * 28_311_552 + 4 * 35_136 == 220_177_152
    assert formulas.linear_bits_per_weight(SMOL, FORMATS["torchao-int8wo"]) == pytest.approx(8.0469, abs=1e-4)
    # without a layout: the old two-number price
    assert formulas.weights_bytes_of(SMOL, FORMATS["gguf-q4_k_m"]) == formulas.weights_bytes(SMOL, 4.85, 16)


def test_formats_2026_suite_is_priced_tensor_by_tensor():
    from quantbench.core.suite import load_suite

    suite = load_suite("suites/formats-2026.toml")
    assert [f for f in suite.formats if FORMATS[f].layout is None] == []


def test_weights_bytes_uses_exact_params_total():
    # 1,000 extra parameters (say biases) stay unquantized: + 2,000 bytes at 16 bits
    exact = ModelShape(**{**SMOL.__dict__, "params_total": 134_516_008})
    assert formulas.weights_bytes(exact, 4.3125, 16) == 113_924_736 + 2_000


def test_smollm2_flops():
    # 2 × (106,168,320 block linears + 28,311,552 lm_head) = 268,959,744;
    # attention 4·30·9·64 = 69,120 per position attended
    assert formulas.flops_per_token(SMOL, 0) == 268_959_744
    assert formulas.flops_per_token(SMOL, 512) == 268_959_744 + 69_120 * 512 == 304_349_184
    # prefill 512: 512 × 268,959,744 + 69,120 × (512·513/2)
    assert formulas.prefill_flops(SMOL, 512) == 137_707_388_928 + 9_077_391_360


def test_decode_on_25gb_s_cpu():
    s, bound = formulas.decode_s_per_token(SMOL, 0, 269_030_016, 200e9, 25e9)
    assert bound == "memory" and 1 / s == pytest.approx(25e9 / 269_030_016)  # 92.9 tok/s
    s512, _ = formulas.decode_s_per_token(SMOL, 512, 269_030_016, 200e9, 25e9)
    assert s512 == pytest.approx((269_030_016 + 512 * 23_040) / 25e9)  # 11.23 ms


def test_decode_batch_turns_compute_bound_on_h100():
    # bf16 bytes 269,030,016 vs B × 268,959,744 FLOPs: crossover B = 295.45 on h100-sxm
    h = DEVICES["h100-sxm"]
    args = (SMOL, 0, 269_030_016, h.flop_s["bf16"], h.bandwidth_bytes_s)
    assert formulas.decode_s_per_token(*args, batch=295)[1] == "memory"
    assert formulas.decode_s_per_token(*args, batch=296)[1] == "compute"


def test_capacity_tensor_parallel():
    w = formulas.weights_bytes(LLAMA3_8B, 16, 16)
    assert w == 16_060_522_496
    one = formulas.max_kv_tokens(40 * GiB, w, 131_072)
    two = formulas.max_kv_tokens(40 * GiB, w, 131_072, n_devices=2)
    assert one == 205_147  # (42,949,672,960 − 16,060,522,496) // 131,072
    assert two == 532_827  # (2 × 42,949,672,960 − 16,060,522,496) // 131,072
    assert formulas.max_kv_tokens(40 * GiB, w, 131_072, reserve_bytes=2 * GiB) == 188_763
    assert formulas.max_kv_tokens(8 * GiB, w, 131_072) == 0  # weights alone do not fit


def test_predicted_tg_means_over_contexts():
    r = formulas.predicted_fields(SMOL, FORMATS["bf16"], CPU, "tg", n_prompt=0, n_gen=2)
    # steps at context 0 and 1: mean bytes 269,030,016 + 23,040 / 2
    assert r["decode_tok_s_predicted"] == pytest.approx(25e9 / 269_041_536)
    assert r["kv_cache_bytes_predicted"] == 2 * 23_040
    assert r["weights_bytes_predicted"] == 269_030_016
    assert r["bound"] == "memory"
    assert r["flops_per_token"] == 268_959_744 + 69_120 // 2
    # ttft: prefill of one token, memory-bound: weights + 1 token of KV
    assert r["ttft_s_predicted"] == pytest.approx((269_030_016 + 23_040) / 25e9)


def test_prefill_keeps_the_last_logits_only():
    # 512 × 2 × 106,168,320 block linears + 1 × 2 × 28,311,552 lm_head + attention 9,077,391,360
    assert formulas.prefill_flops(SMOL, 512, logits_kept=1) == 108_716_359_680 + 56_623_104 + 9_077_391_360
    assert formulas.prefill_flops(SMOL, 512) - formulas.prefill_flops(SMOL, 512, logits_kept=1) == (
        511 * 2 * 28_311_552)  # scoring every position (ppl) adds lm_head for the other 511


def test_predicted_pp_picks_compute_dtype_with_fp32_fallback():
    flops = 117_850_374_144  # prefill_flops(SMOL, 512, logits_kept=1): a prefill keeps 1 logit row
    bf16 = formulas.predicted_fields(SMOL, FORMATS["bf16"], CPU, "pp", n_prompt=512)
    assert bf16["bound"] == "compute"
    assert bf16["prefill_tok_s_predicted"] == pytest.approx(512 / (flops / 200e9))  # 868.9
    assert bf16["peak_flop_s"] == 200e9
    fp16 = formulas.predicted_fields(SMOL, FORMATS["fp16"], CPU, "pp", n_prompt=512)
    assert fp16["prefill_tok_s_predicted"] == pytest.approx(512 / (flops / 90e9))  # no fp16: fp32
    assert fp16["ttft_s_predicted"] == pytest.approx(flops / 90e9)
    assert fp16["kv_cache_bytes_predicted"] == 512 * 23_040
    assert fp16["arith_intensity"] == pytest.approx(flops / (269_030_016 + 512 * 23_040))


def test_predicted_ppl_and_load():
    ppl = formulas.predicted_fields(SMOL, FORMATS["fp32"], CPU, "ppl", n_ctx=512, kv_bytes_per_elem=4)
    assert ppl["kv_cache_bytes_predicted"] == 512 * 46_080
    assert "decode_tok_s_predicted" not in ppl and "ttft_s_predicted" not in ppl
    load = formulas.predicted_fields(SMOL, FORMATS["gptq-4b"], CPU, "load", n_ctx=512)
    assert load["weights_bytes_predicted"] == 113_924_736 and load["bound"] == "memory"
    with pytest.raises(ValueError, match="kind"):
        formulas.predicted_fields(SMOL, FORMATS["fp32"], CPU, "train")


def test_shape_validation_names_the_case():
    with pytest.raises(ValueError, match="tiny: n_heads 9 is not a multiple of n_kv_heads 2"):
        ModelShape(1, 8, 9, 2, 4, 8, 10, True, name="tiny")


def test_device_table_ratios():
    a100 = DEVICES["a100-40gb-sxm"]
    assert a100.flop_s["bf16"] == 312e12 and a100.bandwidth_bytes_s == 1555e9
    assert math.isclose(formulas.ops_per_byte(a100.flop_s["bf16"], 1.5e12), 208)
    assert "bf16" not in DEVICES["t4"].flop_s  # Turing: falls back to fp32 in predictions
    assert formulas.peak_for(DEVICES["t4"], "bf16") == 8.1e12


def test_gpu_names_map_to_spec_rows():
    from quantbench.arith.hardware import spec_for_gpu

    assert spec_for_gpu("NVIDIA H100 80GB HBM3").name == "h100-sxm"
    assert spec_for_gpu("NVIDIA H100 PCIe").name == "h100-pcie"
    assert spec_for_gpu("NVIDIA A100-SXM4-80GB").name == "a100-80gb-sxm"
    assert spec_for_gpu("NVIDIA L4").name == "l4" and spec_for_gpu("NVIDIA L40S").name == "l40s"
    assert spec_for_gpu("Some Other Card") is None


def test_kernel_peaks_pick_what_the_kernels_compute_in():
    from quantbench.core.formats import compute_dtypes, get_format

    # the busy calibration: int8 0.84 GOP/s alone predicted pp512 at 2.9 tok/s for GGUF
    busy = Peaks("cpu", {"fp32": 75e9, "bf16": 140e9, "int8": 0.84e9}, 7.53e9, 16 * GiB, "measured")
    q4 = get_format("gguf-q4_0")
    assert compute_dtypes(q4, "cpu") == ("fp32", "bf16", "int8")
    assert formulas.peak_for(busy, compute_dtypes(q4, "cpu")) == 140e9  # the fastest GEMM measured
    assert formulas.peak_for(busy, q4.compute_dtype) == 0.84e9  # what the format alone would say
    assert compute_dtypes(get_format("gguf-f16"), "cuda:1") == ("fp16", "int8")
    assert compute_dtypes(get_format("bnb-int8"), "cpu") == ("int8", "fp32")
    assert formulas.peak_for(busy, ("int8", "fp32")) == 75e9
    assert compute_dtypes(get_format("bnb-int8"), "cuda") == ("int8",)  # cuBLASLt igemm
    assert compute_dtypes(get_format("bf16+compiled"), "cpu") == ("bf16",)
    # GPTQModel's CPU kernels outran bf16's GEMM on a CPU without bf16 units (Zen 3: 19 GFLOP/s bf16,
    # 137 fp32): the faster of the two bounds them; torchao W8A8 as bnb-int8
    zen3 = Peaks("cpu", {"fp32": 137e9, "bf16": 19e9, "int8": 2.4e9}, 28e9, 16 * GiB, "measured")
    for fmt in ("gptq-4b", "awq-4b"):
        assert compute_dtypes(get_format(fmt), "cpu") == ("bf16", "fp32")
        assert formulas.peak_for(zen3, compute_dtypes(get_format(fmt), "cpu")) == 137e9
    assert formulas.peak_for(busy, compute_dtypes(get_format("gptq-4b"), "cpu")) == 140e9  # bf16 where faster
    assert compute_dtypes(get_format("gptq-4b"), "cuda") == ("bf16",)  # its compute_dtype: unchanged
    assert compute_dtypes(get_format("torchao-w8a8"), "cpu") == ("int8", "fp32")
    pp = formulas.predicted_fields(SMOL, q4, busy, "pp", n_prompt=512,
                                compute_dtypes=compute_dtypes(q4, "cpu"))
    assert pp["peak_flop_s"] == 140e9 and pp["bound"] == "compute"
    assert pp["prefill_tok_s_predicted"] == pytest.approx(512 * 140e9 / 117_850_374_144)  # 608


# Mixture of experts, hand-checkable: d 8, 2 layers, 2 heads / 1 KV head of 4, vocab 10, untied,
# 4 experts of width 6 (gated), 2 per token.
MOE = ModelShape(n_layers=2, d_model=8, n_heads=2, n_kv_heads=1, head_dim=4, d_ff=6, vocab=10,
                 tied_embeddings=False, name="moe-tiny", n_experts=4, n_experts_per_token=2,
                 d_ff_expert=6)


def test_moe_tiny_params_by_hand():
    assert formulas.params_by_component(MOE) == {
        "embeddings": 80, "lm_head": 80,
        "attention": 384,  # 2 × (q,o 2·8·8 + k,v 2·8·4)
        "mlp": 0,          # no dense layer, no shared expert
        "experts": 1_152,  # 2 layers × 4 experts × 3·8·6
        "router": 64,      # 2 × 4·8
        "norms": 40}       # (2·2 + 1) × 8
    assert formulas.params_total(MOE) == 1_800
    assert formulas.params_active(MOE) == 1_800 - 1_152 // 2 == 1_224  # half the experts idle
    # active matmuls: attention 384 + 2 of 4 experts 576 + router 64 + lm_head 80
    assert formulas.flops_per_token(MOE, 0) == 2 * 1_104


def test_expected_distinct_experts():
    assert formulas.expected_experts(4, 2, 1) == 2            # one token: its k experts
    assert formulas.expected_experts(4, 2, 2) == 3            # 4 · (1 − (1/2)²)
    assert formulas.expected_experts(4, 2, 3) == 3.5          # 4 · (1 − 1/8)
    assert formulas.expected_experts(8, 2, 64) == pytest.approx(8 * (1 - 0.75 ** 64))
    assert formulas.expected_experts(128, 8, 1) == pytest.approx(8)
    assert formulas.expected_experts(128, 8, 16) == pytest.approx(128 * (1 - (120 / 128) ** 16))


def test_moe_decode_reads_expected_experts():
    w = formulas.weights_bytes(MOE, 16, 16)
    ex = formulas.expert_weights_bytes(MOE, 16, 16)
    assert (w, ex) == (3_600, 2_304)
    assert formulas.weights_read_bytes(MOE, w, ex, 1) == 3_600 - 2_304 // 2 == 2_448
    assert formulas.weights_read_bytes(MOE, w, ex, 2) == 3_600 - 2_304 // 4 == 3_024  # 3 of 4
    s, bound = formulas.decode_s_per_token(MOE, 0, w, 1e12, 1e3, batch=2, experts_bytes=ex)
    assert bound == "memory" and s == pytest.approx(3_024 / 1e3)
    # experts_bytes 0 (caller without the split) reads everything, as a dense model would
    assert formulas.decode_s_per_token(MOE, 0, w, 1e12, 1e3)[0] == pytest.approx(3.6)
    # an untied input table is looked up, not read
    assert formulas.embedding_gather_bytes(MOE, 16) == 160
    assert formulas.weights_read_bytes(MOE, w, ex, 2, 160) == 3_024 - 160


def test_moe_experts_priced_apart():
    # MXFP4 experts (4.25 bits) beside 16-bit attention: 1,152·4.25 + (1,800 − 1,152)·16 bits
    assert formulas.weights_bytes(MOE, 16, 16, bits_experts=4.25) == (4_896 + 10_368) // 8 == 1_908


def test_mixtral_8x7b_published_counts():
    mixtral = ModelShape(n_layers=32, d_model=4096, n_heads=32, n_kv_heads=8, head_dim=128,
                         d_ff=14336, vocab=32000, tied_embeddings=False, n_experts=8,
                         n_experts_per_token=2, d_ff_expert=14336)
    # Mixtral of Experts (2024): 46.7B total, 12.9B active
    assert formulas.params_total(mixtral) == 46_702_792_704
    assert formulas.params_active(mixtral) == 12_879_925_248


def test_moe_shape_validation():
    with pytest.raises(ValueError, match="n_experts_per_token"):
        ModelShape(**{**MOE.__dict__, "n_experts_per_token": 5})
    with pytest.raises(ValueError, match="windows"):
        ModelShape(**{**MOE.__dict__, "windows": (4,)})


# Multi-head latent attention, hand-checkable: d 16, 1 layer, 2 heads, nope 4 + rope 2 (head 6),
# v 4, kv_lora 8, no q_lora.
MLA = ModelShape(n_layers=1, d_model=16, n_heads=2, n_kv_heads=2, head_dim=6, d_ff=8, vocab=10,
                 tied_embeddings=True, name="mla-tiny", kv_lora_rank=8, qk_rope_head_dim=2,
                 v_head_dim=4)


def test_mla_tiny_by_hand():
    c = formulas.params_by_component(MLA)
    # q 16·2·6 192 + kv_a 16·(8+2) 160 + kv_b 8·2·(4+4) 128 + o 2·4·16 128
    assert c["attention"] == 608
    assert c["norms"] == 3 * 16 + 8  # 2 block norms + final, + kv_a_layernorm of kv_lora
    assert formulas.kv_elems_per_layer(MLA, "latent") == 10        # kv_lora + rope
    assert formulas.kv_elems_per_layer(MLA, "decompressed") == 20  # 2 heads × (K 6 + V 4)
    assert formulas.kv_bytes(MLA, 100, 1, 2, "latent") == 2_000
    assert formulas.attn_flops_per_position(MLA, "latent") == 72      # 2·2·(8+2) + 2·2·8
    assert formulas.attn_flops_per_position(MLA, "decompressed") == 40  # 2·2·6 + 2·2·4
    with pytest.raises(ValueError, match="kv layout"):
        formulas.kv_elems_per_layer(MLA, "compressed")


def test_deepseek_v3_published_counts_and_latent_cache():
    ds = ModelShape(n_layers=61, d_model=7168, n_heads=128, n_kv_heads=128, head_dim=192,
                    d_ff=18432, vocab=129280, tied_embeddings=False, n_experts=256,
                    n_experts_per_token=8, d_ff_expert=2048, d_ff_shared=2048, n_dense_layers=3,
                    q_lora_rank=1536, kv_lora_rank=512, qk_rope_head_dim=64,
                    v_head_dim=128)
    # DeepSeek-V3 report: 671B total, 37B activated per token (the MTP module is extra)
    assert formulas.params_total(ds) == 671_026_404_352
    assert formulas.params_active(ds) == 37_552_282_624
    # 61 × 576 × 2 B latent vs 61 × 128 × (192 + 128) × 2 B decompressed: 71× less
    assert formulas.kv_bytes(ds, layout="latent") == 70_272
    assert formulas.kv_bytes(ds, layout="decompressed") == 4_997_120


# Sliding windows, hand-checkable: 3 layers (window 4, full, window 4), 1 KV head of 2.
WIN = ModelShape(n_layers=3, d_model=4, n_heads=1, n_kv_heads=1, head_dim=2, d_ff=4, vocab=10,
                 tied_embeddings=True, name="win-tiny", windows=(4, 0, 4))


def test_window_kv_and_flops_by_hand():
    assert formulas.held_tokens(WIN, 3) == 9            # every layer below its window
    assert formulas.held_tokens(WIN, 10) == 4 + 10 + 4
    assert formulas.kv_bytes(WIN, 10, 1, 2) == 4 * 18 * 2  # 2·1·2 elements per layer per token
    # decode at T = 10 attends 18 positions at 4·1·2 FLOPs each
    assert formulas.flops_per_token(WIN, 10) - formulas.flops_per_token(WIN, 0) == 8 * 18
    # prefill 10 from empty: windowed layers 1+2+3+4+4·6 = 34, the full one 55
    assert formulas.prefill_flops(WIN, 10) - 10 * formulas.flops_per_token(WIN, 0) == 8 * (34 + 55 + 34)
    # after 2 cached tokens: windowed 3+4·9 = 39 each, full 10·2 + 55 = 75
    assert formulas.prefill_flops(WIN, 10, n_past=2) - 10 * formulas.flops_per_token(WIN, 0) \
        == 8 * (39 + 75 + 39)


def test_window_capacity():
    # 8 B per token per layer; 200 B spare: windowed layers cap at 2 × 32, the full one takes
    # the rest: 8·T + 2·8·min(T, 4) ≤ 200 → T = 17
    assert formulas.max_context_tokens(WIN, 1_000, 800, 2) == 17
    full_only = ModelShape(**{**WIN.__dict__, "windows": ()})
    assert formulas.max_context_tokens(full_only, 1_000, 800, 2) == 200 // 24 == 8
    every = ModelShape(**{**WIN.__dict__, "windows": (4, 4, 4)})
    assert formulas.max_context_tokens(every, 1_000, 800, 2) is None  # capped at 96 B: fits
    assert formulas.max_context_tokens(every, 1_000, 950, 2) == 2     # 50 B: 24·2 fits, 24·3 not


def test_gemma3_27b_window_cache():
    gemma = ModelShape(n_layers=62, d_model=5376, n_heads=32, n_kv_heads=16, head_dim=128,
                       d_ff=21504, vocab=262208, tied_embeddings=True,
                       windows=tuple(0 if (i + 1) % 6 == 0 else 1024 for i in range(62)))
    assert sum(1 for w in gemma.windows if w) == 52
    # 2·16·128·2 B = 8,192 B per layer per token; 32K context: 52·1024 + 10·32,768 tokens held
    assert formulas.kv_bytes(gemma, 32_768) == 8_192 * (52 * 1_024 + 10 * 32_768) == 3_120_562_176
    assert formulas.kv_bytes(gemma, 32_768) / formulas.kv_cache_bytes(62, 16, 128, 32_768) \
        == pytest.approx(380_928 / 2_031_616)  # 0.19 of a full-attention cache


def test_kv_types_block_scales():
    assert formulas.KV_TYPE_BITS["q8_0"] == 34 * 8 / 32 and formulas.KV_TYPE_BITS["q4_0"] == 18 * 8 / 32
    # Llama-3-8B per token: 131,072 B at f16; q8_0 69,632 B; q4_0 36,864 B
    assert formulas.kv_cache_bytes(32, 8, 128, bytes_per_elem=8.5 / 8) == 69_632
    assert formulas.kv_cache_bytes(32, 8, 128, bytes_per_elem=4.5 / 8) == 36_864


def test_predicted_fields_moe_window_mla():
    # tg at batch 2 on MOE reads 3 of 4 experts, all but the gathered 80-entry input table:
    # 3,024 − 160 bytes
    r = formulas.predicted_fields(MOE, FORMATS["bf16"], CPU, "tg", n_prompt=0, n_gen=1, batch=2)
    assert r["decode_tok_s_predicted"] == pytest.approx(2 / (2_864 / 25e9))
    assert r["kv_cache_bytes_predicted"] == formulas.kv_cache_bytes(2, 1, 4, 1, 2)
    w = formulas.predicted_fields(WIN, FORMATS["bf16"], CPU, "pp", n_prompt=10)
    assert w["kv_cache_bytes_predicted"] == 4 * 18 * 2
    m = formulas.predicted_fields(MLA, FORMATS["bf16"], CPU, "load", n_ctx=100, kv_layout="latent")
    assert m["kv_cache_bytes_predicted"] == 2_000
    assert m["kv_cache_bytes_per_token_predicted"] == 20  # 10 latent elements × 2 B
    # by backend: llama.cpp keeps the latent, transformers the per-head K and V
    gguf = formulas.predicted_fields(MLA, FORMATS["gguf-q8_0"], CPU, "load", n_ctx=100)
    hf = formulas.predicted_fields(MLA, FORMATS["bf16"], CPU, "load", n_ctx=100)
    assert (gguf["kv_cache_bytes_predicted"], hf["kv_cache_bytes_predicted"]) == (2_000, 4_000)
