"""The CUDA paths. The compiled-decode logic is checked on the CPU; the rest needs a GPU."""
import pytest

from quantbench.backends.hf import HFBackend
from quantbench.core import records
from quantbench.core.formats import get_format
from quantbench.core.suite import Suite
from quantbench.core.variant import Variant
from quantbench.measure import runner


def _greedy(model, device, compiled, n=12):
    s = Suite(model="tiny", prompt_lengths=(32,), n_ctx=64, gen_tokens=16)
    fmt = get_format("fp32+compiled" if compiled else "fp32")
    b = HFBackend(Variant("tiny", model.dir, model.digest, fmt, device, 2, s))
    b.load()
    out = [b.prefill(list(range(1, 17)))]
    for _ in range(n):
        out.append(b.decode(out[-1]))
    return out, b


def test_compiled_static_cache_decode_matches_eager(tiny):
    eager, _ = _greedy(tiny, "cpu", False)
    compiled, b = _greedy(tiny, "cpu", True)
    assert compiled == eager
    assert b.info["kernel"] == "torch.compile(default):torch:mkl-fp32"  # the eager kernel it compiled around
    # the static cache is allocated up front for the longest context of the suite (64 + 8)
    assert b.kv_cache_bytes() == 2 * 2 * 3 * 64 * 4 * 72


def test_batched_decode_matches_one_sequence(tiny):
    one, b = _greedy(tiny, "cpu", False, n=5)
    many = [b.prefill_batch(list(range(1, 17)), 3)]
    for _ in range(5):
        many.append(b.decode_batch(many[-1]))
    assert many == [[t] * 3 for t in one]
    # 3 sequences of 16 + 5 tokens, fp32 K and V of 2 layers x 3 heads x 64
    assert b.kv_cache_bytes() == 3 * 21 * 2 * 2 * 3 * 64 * 4


def test_shape_model_times_without_quality(tmp_path):
    out = tmp_path / "r.jsonl"
    suite = Suite(name="s", model="shape:smollm2-135m", formats=("bf16",), prompt_lengths=(16,),
                  gen_tokens=4, min_samples=1, time_budget_s=1.0, n_ctx=32, ppl_windows=1)
    runner.run(suite, out)
    got = {r["workload"]: r for r in records.read(out)}
    assert got["tg4"]["status"] == "ok" and got["tg4"]["model"] == "shape:smollm2-135m"
    assert got["ppl32"]["status"] == "skipped" and "random weights" in got["ppl32"]["reason"]
    # the real config's weights: 134,515,008 params in bf16 (+ 256 B of rotary buffers)
    assert got["load"]["weights_bytes"] == 134_515_008 * 2 + 256


def test_eager_and_compiled_side_by_side_in_one_run(tmp_path):
    out = tmp_path / "r.jsonl"
    suite = Suite(name="s", model="tiny", formats=("fp32", "fp32+compiled"), prompt_lengths=(16,),
                  gen_tokens=4, min_samples=1, time_budget_s=5.0, n_ctx=32, ppl_windows=1)
    runner.run(suite, out)
    tg = {r["format"]: r for r in records.read(out) if r["workload"] == "tg4"}
    assert tg["fp32"]["status"] == tg["fp32+compiled"]["status"] == "ok"
    assert tg["fp32"]["kernel"] == "torch:mkl-fp32"  # MKL's sgemm, read from the profiler's aten::mm
    assert tg["fp32+compiled"]["kernel"] == "torch.compile(default):torch:mkl-fp32"
    # same weights, same predicted roofline: only the measured speed may differ
    assert tg["fp32"]["decode_tok_s_predicted"] == tg["fp32+compiled"]["decode_tok_s_predicted"]


@pytest.mark.gpu
def test_every_format_on_cuda(tmp_path, tiny):
    out = tmp_path / "r.jsonl"
    suite = Suite(name="gpu-tiny", model="tiny", devices=("cuda",),
                  formats=("fp16", "bf16", "bnb-int8", "bnb-nf4", "gptq-4b", "awq-4b",
                           "gguf-f16", "gguf-q4_0"), prompt_lengths=(64,), gen_tokens=16,
                  n_ctx=128, ppl_windows=2, calib_samples=8, calib_tokens=128,
                  awq_calib_samples=8, awq_calib_tokens=128,
                  # Triton kernels build nothing; auto (Machete on Hopper) JIT-builds for minutes
                  gptq_kernel="gptq_triton", awq_kernel="awq_gemm_triton")
    runner.run(suite, out)
    recs = records.read(out)
    bad = {(r["format"], r["workload"]): r["reason"] for r in recs if r["status"] != "ok"}
    assert not bad
    kernels = {r["format"]: r["kernel"] for r in recs if r["workload"] == "load"}
    assert kernels["gptq-4b"] == "TritonV2Linear" and kernels["awq-4b"] == "AwqGEMMTritonLinear"
    assert kernels["gguf-q4_0"].endswith("(CUDA)")
    for r in recs:
        assert r["device"] == "cuda" and r["env"].get("gpu")
        if r["workload"] == "load" and r["backend"] != "gguf":
            assert r["peak_device_bytes"] > 0


@pytest.mark.gpu
def test_compiled_decode_on_cuda(tiny):
    eager, _ = _greedy(tiny, "cuda", False)
    compiled, b = _greedy(tiny, "cuda", True)
    assert compiled == eager and "reduce-overhead" in b.info["kernel"]
