"""Arithmetic pinned to hand-checked numbers: Kipply's 52B example, Llama-3-8B, SmolLM2-135M."""
import math

import pytest

from quantbench import arith
from quantbench.arith import ModelShape
from quantbench.formats import FORMATS
from quantbench.hardware import DEVICES, GiB, Peaks

SMOL = ModelShape(n_layers=30, d_model=576, n_heads=9, n_kv_heads=3, head_dim=64, d_ff=1536,
                  vocab=49152, tied_embeddings=True, name="smollm2-135m")
LLAMA3_8B = ModelShape(n_layers=32, d_model=4096, n_heads=32, n_kv_heads=8, head_dim=128,
                       d_ff=14336, vocab=128256, tied_embeddings=False, name="llama-3-8b")
# A 2-core CPU like the reference machine: 25 GB/s copy, fp32 90 / bf16 200 GFLOP/s, no fp16 entry.
CPU = Peaks("cpu-test", {"fp32": 90e9, "bf16": 200e9}, 25e9, 16 * GiB, "measured")


# Kipply, "Transformer Inference Arithmetic": 52B, d_model 8192, 64 layers, 16-bit, MHA.
def test_kipply_kv_bytes_per_token():
    # 2 (K,V) × 2 bytes × 64 layers × 8192 (64 heads × 128) = 2,097,152
    assert arith.kv_cache_bytes(n_layers=64, n_kv_heads=64, head_dim=128) == 2_097_152


def test_kipply_kv_flops_per_token():
    assert arith.kv_flops_per_token(n_layers=64, d_model=8192) == 17_179_869_184


def test_kipply_a100_ops_per_byte():
    assert arith.ops_per_byte(312e12, 1.5e12) == pytest.approx(208)


def test_kipply_memory_bound_forward_69ms():
    weights = 52e9 * 2
    s, bound = arith.roofline_s(2 * 52e9 * 100, weights, 312e12, 1.5e12)  # 100 tokens < 208
    assert bound == "memory"
    assert s == pytest.approx(104e9 / 1.5e12) and round(s * 1e3) == 69


def test_kipply_8000_tokens_on_three_a100s():
    # 3 × 40 GB − 104 GB = 16 GB spare; 16e9 / 2,097,152 = 7629.4; Kipply's 2 MB → "8,000".
    assert arith.max_kv_tokens(40e9, 104e9, 2_097_152, n_devices=3) == 7629
    assert arith.max_kv_tokens(40e9, 104e9, 2e6, n_devices=3) == 8000


def test_roofline_bound_switches_at_device_ratio():
    # equal at 208 tokens per 2 bytes/param; 207 memory, 209 compute
    w = 104e9
    assert arith.roofline_s(2 * 52e9 * 207, w, 312e12, 1.5e12)[1] == "memory"
    s, bound = arith.roofline_s(2 * 52e9 * 1000, w, 312e12, 1.5e12)
    assert bound == "compute" and s == pytest.approx(1000 * 104e9 / 312e12)  # 333 ms


# Grouped-query attention: the KV term uses n_kv_heads.
def test_llama3_8b_kv_bytes_per_token():
    assert arith.kv_cache_bytes(32, 8, 128) == 131_072
    assert arith.kv_cache_bytes(32, 32, 128) == 4 * 131_072  # n_heads formula: 4× too much


def test_smollm2_kv_bytes_and_mha_overcount():
    assert arith.kv_cache_bytes(30, 3, 64) == 23_040
    assert arith.kv_cache_bytes(30, 9, 64) == 69_120 == 3 * 23_040
    # DynamicCache matched 2·30·3·64·bytes·T·B to the byte (REFERENCE.md): fp32, T 512, B 2
    assert arith.kv_cache_bytes(30, 3, 64, seq_len=512, batch=2, bytes_per_elem=4) == 47_185_920


def test_smollm2_params():
    c = arith.params_by_component(SMOL)
    assert c == {"embeddings": 28_311_552,  # 49152 × 576
                 "attention": 26_542_080,   # 30 × (2·576·576 + 2·576·192)
                 "mlp": 79_626_240,         # 30 × 3·576·1536
                 "norms": 35_136,           # (30·2 + 1) × 576
                 "lm_head": 0}
    assert sum(c.values()) == arith.params_total(SMOL) == 134_515_008


def test_llama3_8b_params_untied():
    c = arith.params_by_component(LLAMA3_8B)
    assert c["lm_head"] == c["embeddings"] == 525_336_576
    assert arith.params_total(LLAMA3_8B) == 8_030_261_248


def test_smollm2_weights_bytes():
    assert arith.weights_bytes(SMOL, 32, 32) == 538_060_032
    assert arith.weights_bytes(SMOL, 16, 16) == 269_030_016
    # block linears 106,168,320 at 4.3125 bits + embeddings and norms 28,346,688 at 16 bits
    assert arith.weights_bytes(SMOL, 4.3125, 16) == 57_231_360 + 56_693_376 == 113_924_736


def test_weights_bytes_uses_exact_params_total():
    # 1,000 extra parameters (say biases) stay unquantized: + 2,000 bytes at 16 bits
    exact = ModelShape(**{**SMOL.__dict__, "params_total": 134_516_008})
    assert arith.weights_bytes(exact, 4.3125, 16) == 113_924_736 + 2_000


def test_smollm2_flops():
    # 2 × (106,168,320 block linears + 28,311,552 lm_head) = 268,959,744;
    # attention 4·30·9·64 = 69,120 per position attended
    assert arith.flops_per_token(SMOL, 0) == 268_959_744
    assert arith.flops_per_token(SMOL, 512) == 268_959_744 + 69_120 * 512 == 304_349_184
    # prefill 512: 512 × 268,959,744 + 69,120 × (512·513/2)
    assert arith.prefill_flops(SMOL, 512) == 137_707_388_928 + 9_077_391_360


def test_decode_on_25gb_s_cpu():
    s, bound = arith.decode_s_per_token(SMOL, 0, 269_030_016, 200e9, 25e9)
    assert bound == "memory" and 1 / s == pytest.approx(25e9 / 269_030_016)  # 92.9 tok/s
    s512, _ = arith.decode_s_per_token(SMOL, 512, 269_030_016, 200e9, 25e9)
    assert s512 == pytest.approx((269_030_016 + 512 * 23_040) / 25e9)  # 11.23 ms


def test_decode_batch_turns_compute_bound_on_h100():
    # bf16 bytes 269,030,016 vs B × 268,959,744 FLOPs: crossover B = 295.45 on h100-sxm
    h = DEVICES["h100-sxm"]
    args = (SMOL, 0, 269_030_016, h.flop_s["bf16"], h.bandwidth_bytes_s)
    assert arith.decode_s_per_token(*args, batch=295)[1] == "memory"
    assert arith.decode_s_per_token(*args, batch=296)[1] == "compute"


def test_capacity_tensor_parallel():
    w = arith.weights_bytes(LLAMA3_8B, 16, 16)
    assert w == 16_060_522_496
    one = arith.max_kv_tokens(40 * GiB, w, 131_072)
    two = arith.max_kv_tokens(40 * GiB, w, 131_072, n_devices=2)
    assert one == 205_147  # (42,949,672,960 − 16,060,522,496) // 131,072
    assert two == 532_827  # (2 × 42,949,672,960 − 16,060,522,496) // 131,072
    assert arith.max_kv_tokens(40 * GiB, w, 131_072, reserve_bytes=2 * GiB) == 188_763
    assert arith.max_kv_tokens(8 * GiB, w, 131_072) == 0  # weights alone do not fit


def test_predicted_tg_means_over_contexts():
    r = arith.predicted_fields(SMOL, FORMATS["bf16"], CPU, "tg", n_prompt=0, n_gen=2)
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
    assert arith.prefill_flops(SMOL, 512, logits_kept=1) == 108_716_359_680 + 56_623_104 + 9_077_391_360
    assert arith.prefill_flops(SMOL, 512) - arith.prefill_flops(SMOL, 512, logits_kept=1) == (
        511 * 2 * 28_311_552)  # scoring every position (ppl) adds lm_head for the other 511


def test_predicted_pp_picks_compute_dtype_with_fp32_fallback():
    flops = 117_850_374_144  # prefill_flops(SMOL, 512, logits_kept=1): a prefill keeps 1 logit row
    bf16 = arith.predicted_fields(SMOL, FORMATS["bf16"], CPU, "pp", n_prompt=512)
    assert bf16["bound"] == "compute"
    assert bf16["prefill_tok_s_predicted"] == pytest.approx(512 / (flops / 200e9))  # 868.9
    assert bf16["peak_flop_s"] == 200e9
    fp16 = arith.predicted_fields(SMOL, FORMATS["fp16"], CPU, "pp", n_prompt=512)
    assert fp16["prefill_tok_s_predicted"] == pytest.approx(512 / (flops / 90e9))  # no fp16: fp32
    assert fp16["ttft_s_predicted"] == pytest.approx(flops / 90e9)
    assert fp16["kv_cache_bytes_predicted"] == 512 * 23_040
    assert fp16["arith_intensity"] == pytest.approx(flops / (269_030_016 + 512 * 23_040))


def test_predicted_ppl_and_load():
    ppl = arith.predicted_fields(SMOL, FORMATS["fp32"], CPU, "ppl", n_ctx=512, kv_bytes_per_elem=4)
    assert ppl["kv_cache_bytes_predicted"] == 512 * 46_080
    assert "decode_tok_s_predicted" not in ppl and "ttft_s_predicted" not in ppl
    load = arith.predicted_fields(SMOL, FORMATS["gptq-4b"], CPU, "load", n_ctx=512)
    assert load["weights_bytes_predicted"] == 113_924_736 and load["bound"] == "memory"
    with pytest.raises(ValueError, match="kind"):
        arith.predicted_fields(SMOL, FORMATS["fp32"], CPU, "train")


def test_shape_validation_names_the_case():
    with pytest.raises(ValueError, match="tiny: n_heads 9 is not a multiple of n_kv_heads 2"):
        ModelShape(1, 8, 9, 2, 4, 8, 10, True, name="tiny")


def test_device_table_ratios():
    a100 = DEVICES["a100-40gb-sxm"]
    assert a100.flop_s["bf16"] == 312e12 and a100.bandwidth_bytes_s == 1555e9
    assert math.isclose(arith.ops_per_byte(a100.flop_s["bf16"], 1.5e12), 208)
    assert "bf16" not in DEVICES["t4"].flop_s  # Turing: falls back to fp32 in predictions
    assert arith.peak_for(DEVICES["t4"], "bf16") == 8.1e12


def test_gpu_names_map_to_spec_rows():
    from quantbench.hardware import spec_for_gpu

    assert spec_for_gpu("NVIDIA H100 80GB HBM3").name == "h100-sxm"
    assert spec_for_gpu("NVIDIA H100 PCIe").name == "h100-pcie"
    assert spec_for_gpu("NVIDIA A100-SXM4-80GB").name == "a100-80gb-sxm"
    assert spec_for_gpu("NVIDIA L4").name == "l4" and spec_for_gpu("NVIDIA L40S").name == "l40s"
    assert spec_for_gpu("Some Other Card") is None


def test_kernel_peaks_pick_what_the_kernels_compute_in():
    from quantbench.formats import compute_dtypes, get_format

    # the busy calibration: int8 0.84 GOP/s alone predicted pp512 at 2.9 tok/s for GGUF
    busy = Peaks("cpu", {"fp32": 75e9, "bf16": 140e9, "int8": 0.84e9}, 7.53e9, 16 * GiB, "measured")
    q4 = get_format("gguf-q4_0")
    assert compute_dtypes(q4, "cpu") == ("fp32", "bf16", "int8")
    assert arith.peak_for(busy, compute_dtypes(q4, "cpu")) == 140e9  # the fastest GEMM measured
    assert arith.peak_for(busy, q4.compute_dtype) == 0.84e9  # what the format alone would say
    assert compute_dtypes(get_format("gguf-f16"), "cuda:1") == ("fp16", "int8")
    assert compute_dtypes(get_format("bnb-int8"), "cpu") == ("int8", "fp32")
    assert arith.peak_for(busy, ("int8", "fp32")) == 75e9
    assert compute_dtypes(get_format("bnb-int8"), "cuda") == ("int8",)  # cuBLASLt igemm
    assert compute_dtypes(get_format("bf16+compiled"), "cpu") == ("bf16",)
    pp = arith.predicted_fields(SMOL, q4, busy, "pp", n_prompt=512,
                                compute_dtypes=compute_dtypes(q4, "cpu"))
    assert pp["peak_flop_s"] == 140e9 and pp["bound"] == "compute"
    assert pp["prefill_tok_s_predicted"] == pytest.approx(512 * 140e9 / 117_850_374_144)  # 608
