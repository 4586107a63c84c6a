"""GPTQModel backend on the tiny model: real GPTQ and AWQ quantization (cold cache), load, size, ppl.

Quantization runs into a fresh cache each time (GPTQ ~5 s, AWQ ~30 s on 2 cores); the first run
on a machine also JIT-compiles GPTQModel's CPU pack/int4 kernels (~2 min, cached in ~/.cache).
"""
import dataclasses
import math

import numpy as np
import pytest

pytest.importorskip("gptqmodel", reason="gptqmodel not installed; install quantbench[gptq]")

from quantbench.backends.gptq import GPTQBackend, kernel_backend, pick_group_size  # noqa: E402
from quantbench.backends.hf import HFBackend  # noqa: E402
from quantbench.core.errors import UserError  # noqa: E402
from quantbench.core.formats import get_format  # noqa: E402
from quantbench.core.suite import Suite  # noqa: E402
from quantbench.core.variant import Variant  # noqa: E402
from quantbench.inputs import corpus  # noqa: E402
from quantbench.measure.timing import score_windows  # noqa: E402

pytestmark = pytest.mark.slow

# group_size 128 on purpose: 576 = 4.5 x 128, so the backend must fall back to 64.
SUITE = Suite(name="gptq-test", n_ctx=128, ppl_windows=3, group_size=128, calib_samples=8,
              calib_tokens=128, awq_calib_samples=4, awq_calib_tokens=128)
N_VOCAB = 49152
# Tiny = SmolLM2-135M cut to 2 layers. Quantized Linear weights per layer:
# q, o 576x576; k, v 576x192; gate, up 576x1536; down 1536x576.
LINEAR_PARAMS = 2 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536)  # 7,077,888
FP16_LINEAR_BYTES = 2 * LINEAR_PARAMS  # 14,155,776


@pytest.fixture(scope="module")
def tokens_path(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("tokens") / "ids.npy"
    np.save(path, corpus.token_ids(tiny.dir, tiny.digest, SUITE.corpus))
    return str(path)


@pytest.fixture(scope="module")
def windows(tiny, tokens_path):
    return corpus.windows(np.load(tokens_path), SUITE.n_ctx, SUITE.ppl_windows, corpus.bos_first(tiny.dir))


@pytest.fixture(scope="module")
def fresh_cache(tiny, tokens_path, tmp_path_factory):
    """Points QUANTBENCH_CACHE at an empty dir (after the tiny model and tokens are resolved)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QUANTBENCH_CACHE", str(tmp_path_factory.mktemp("qb-cache")))
        yield


def variant(tiny, tokens_path, fmt: str) -> Variant:
    return Variant(tiny.name, tiny.dir, tiny.digest, get_format(fmt), "cpu", SUITE.thread_count(),
                   SUITE, tokens_path=tokens_path, calib_start=SUITE.n_ctx * SUITE.ppl_windows,
                   corpus_key=SUITE.corpus)


@pytest.fixture(scope="module")
def built(tiny, tokens_path, fresh_cache):
    out = {}
    for fmt in ("gptq-4b", "awq-4b"):
        b = GPTQBackend(variant(tiny, tokens_path, fmt))
        b.build()
        b.load()
        out[fmt] = b
    yield out
    for b in out.values():
        b.close()


@pytest.fixture(scope="module")
def fp32_ppl(tiny, tokens_path, windows):
    # fp32 holds the fp16 checkpoint exactly; fp16 itself prefills ~50x slower on CPUs without
    # fp16 GEMM, so it is the reference here.
    b = HFBackend(variant(tiny, tokens_path, "fp32"))
    b.load()
    out = score_windows(b, windows, budget_s=1e9)
    b.close()
    return out["ppl"]


def test_group_size_falls_back():
    smol = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "head_dim": 64}
    assert pick_group_size(smol, 128) == 64
    assert pick_group_size(smol, 32) == 32  # never larger than asked
    llama7b = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32}
    assert pick_group_size(llama7b, 128) == 128
    assert pick_group_size({"hidden_size": 100, "intermediate_size": 300}, 128) is None


@pytest.mark.parametrize("fmt", ["gptq-4b", "awq-4b"])
def test_build_records_what_it_used(built, fmt):
    info = built[fmt].info
    assert info["group_size"] == 64
    calib = (8, 128) if fmt == "gptq-4b" else (4, 128)
    assert (info["calib_samples"], info["calib_tokens"]) == calib
    assert info["build_s"] > 0
    # The kernel is a QuantLinear class found in the loaded model (TorchCpuAvx512* on AVX512-BF16).
    assert info["kernel"].endswith("Linear") and "eager" not in info["kernel"]


@pytest.mark.parametrize("fmt", ["gptq-4b", "awq-4b"])
def test_second_build_is_a_cache_hit(tiny, tokens_path, built, fmt):
    b = GPTQBackend(variant(tiny, tokens_path, fmt))
    assert b.cached_artifact() == built[fmt].info["artifact"]  # what a fleet's build task asks first
    b.build()
    assert b.info["build_s"] == 0.0
    assert b.info["artifact"] == built[fmt].info["artifact"]


def test_premade_artifact(tiny, tokens_path, built):
    # Our cached checkpoints are plain GPTQ (v1) / AWQ GEMM checkpoints, as auto-gptq and autoawq
    # write them: passing one as a suite artifact loads it without quantizing.
    path = built["gptq-4b"].info["artifact"]
    c = variant(tiny, tokens_path, "gptq-4b")  # the artifact comes from the suite's [artifacts] table
    b = GPTQBackend(dataclasses.replace(c, suite=dataclasses.replace(c.suite, artifacts={"gptq-4b": path})))
    b.build()
    assert (b.info["artifact"], b.info["build_s"]) == (path, 0.0)
    b.load()
    assert b.info["group_size"] == 64 and b.info["kernel"] == built["gptq-4b"].info["kernel"]
    b.close()
    missing = dataclasses.replace(c, suite=dataclasses.replace(c.suite, artifacts={"gptq-4b": "./no/such/checkpoint"}))
    with pytest.raises(UserError, match="no/such/checkpoint"):
        GPTQBackend(missing).build()


@pytest.mark.parametrize("fmt,kernel,qlinear", [("gptq-4b", "gptq_torch", "TorchLinear"),
                                                 ("awq-4b", "awq_torch", "AwqTorchLinear")])
def test_suite_picks_the_kernel(tiny, tokens_path, built, fmt, kernel, qlinear):
    # gptq_kernel / awq_kernel pass GPTQModel a BACKEND instead of auto (which on an offline H100
    # picks Machete and fails); the record names the QuantLinear class that really ran.
    key = "awq_kernel" if fmt == "awq-4b" else "gptq_kernel"
    c = variant(tiny, tokens_path, fmt)
    b = GPTQBackend(dataclasses.replace(c, suite=SUITE.with_overrides(**{key: kernel})))
    b.build()
    b.load()
    assert b.info["kernel"] == f"gptqmodel:{qlinear}" and b.info["kernel"] != built[fmt].info["kernel"]
    assert b.info["kernel_detail"]["quant_linear"] == qlinear
    b.close()
    with pytest.raises(UserError, match="unknown GPTQModel kernel 'gptq_tritn'; use auto or one of"):
        kernel_backend("gptq_tritn")


@pytest.mark.parametrize("fmt", ["gptq-4b", "awq-4b"])
def test_logits_and_greedy_decode(built, windows, fmt):
    b = built[fmt]
    logits = b.logits(windows[0])
    assert logits.shape == (SUITE.n_ctx, N_VOCAB) and logits.dtype == np.float32
    assert np.isfinite(logits).all()
    tok = b.prefill(windows[0][:16])
    assert 0 <= b.decode(tok) < N_VOCAB


@pytest.mark.parametrize("fmt", ["gptq-4b", "awq-4b"])
def test_weights_bytes(built, fmt):
    b = built[fmt]
    quant = {id(t) for m in b.model.modules() if hasattr(m, "qweight")
             for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]}
    rest = sum(t.untyped_storage().nbytes() for t in [*b.model.parameters(), *b.model.buffers()]
               if id(t) not in quant)
    # Unquantized: tied embedding 49152 x 576 in bf16 + 5 RMSNorm weights of 576, bf16
    # + rotary inv_freq and original_inv_freq, 32 fp32 each.
    assert rest == 2 * N_VOCAB * 576 + 5 * 2 * 576 + 2 * 32 * 4
    linear_bytes = b.weights_bytes() - rest
    print(f"{fmt} ({b.info['kernel']}): quantized linears {linear_bytes:,} B = "
          f"{linear_bytes / FP16_LINEAR_BYTES:.3f} of fp16, "
          f"{8 * linear_bytes / LINEAR_PARAMS:.3f} bits/weight")
    # 4-bit codes alone are 7,077,888 / 2 = 3,538,944 bytes; fp16 is 14,155,776.
    assert LINEAR_PARAMS // 2 < linear_bytes < FP16_LINEAR_BYTES / 2
    if b.info["kernel"].startswith("TorchCpuAvx512"):
        # The AVX512 kernels repack to uint8 nibbles + one uint8 zero and one fp32 scale per
        # group of 64 (110,592 groups): 4 + 40/64 = 4.625 bits/weight at run time (the file
        # keeps fp16 scales, 4.3125). GPTQ adds g_idx, int32 per input channel: 2 x (6 x 576 +
        # 1536) x 4 = 39,936. The shift tables shared by all layers add a few hundred bytes.
        groups = LINEAR_PARAMS // 64
        g_idx = 2 * (6 * 576 + 1536) * 4 if fmt == "gptq-4b" else 0
        expect = LINEAR_PARAMS // 2 + groups * (1 + 4) + g_idx  # 4,091,904 (AWQ) / 4,131,840
        assert expect <= linear_bytes < expect + 1024


@pytest.mark.parametrize("fmt", ["gptq-4b", "awq-4b"])
def test_predicted_bytes_match_the_artifact(tiny, built, fmt):
    """The arithmetic's per-tensor price (int4 + fp16 scale + 4-bit zero per 64, bf16 embeddings
    and norms) against the checkpoint's safetensors on disk, within 2 %."""
    from quantbench.arith import formulas
    from quantbench.arith.shapes import shape_from_config
    from quantbench.backends.hf import files_bytes
    from quantbench.core.formats import get_format

    predicted = formulas.weights_bytes_of(shape_from_config(tiny.dir), get_format(fmt))
    on_disk = files_bytes(built[fmt].info["artifact"])
    assert abs(predicted / on_disk - 1) < 0.02, (predicted, on_disk)


@pytest.mark.parametrize("fmt", ["gptq-4b", "awq-4b"])
def test_ppl_close_to_fp32(built, windows, fp32_ppl, fmt):
    ppl = score_windows(built[fmt], windows, budget_s=1e9)["ppl"]
    print(f"{fmt}: ppl {ppl:.1f} vs fp32 {fp32_ppl:.1f}")
    assert math.isfinite(ppl)
    # The 2-layer cut has a huge ppl; 4-bit g64 moves it by a few percent, never by 1.5x.
    assert fp32_ppl / 1.5 < ppl < fp32_ppl * 1.5


def test_cpu_without_onednn_bf16_quantizes_in_fp32(tiny, tokens_path, built, windows, fp32_ppl, monkeypatch):
    """On a CPU where torch has no oneDNN bf16 GEMM (a Zen 3), GPTQModel quantizes in fp32, under
    its own cache key, and the model it makes scores like the bf16 one."""
    import quantbench.backends.gptq as gptq

    assert built["gptq-4b"].info["quantize_dtype"] == "bfloat16"  # this CPU has oneDNN bf16
    monkeypatch.setattr(gptq, "bf16_gemm_fast", lambda torch: False)
    b = GPTQBackend(variant(tiny, tokens_path, "gptq-4b"))
    assert b.cached_artifact() == ""  # not the bf16 build's entry
    b.build()
    assert b.info["quantize_dtype"] == "float32" and b.info["build_s"] > 0
    assert b.info["artifact"] != built["gptq-4b"].info["artifact"]
    b.load()
    try:
        ppl = score_windows(b, windows, budget_s=1e9)["ppl"]
    finally:
        b.close()
    assert fp32_ppl / 1.5 < ppl < fp32_ppl * 1.5
