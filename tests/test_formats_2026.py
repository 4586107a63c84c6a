"""torchao, HQQ and GGUF MXFP4 on the tiny model: build (cold cache) -> load -> forward -> ppl, the
kernel each names, and predicted weight bytes against the artifact on disk."""
import math

import numpy as np
import pytest

from quantbench.arith import formulas
from quantbench.arith.shapes import shape_from_config
from quantbench.backends import Skip, get_backend_class
from quantbench.core.formats import Layout, get_format
from quantbench.core.suite import Suite
from quantbench.core.variant import Variant
from quantbench.inputs import corpus
from quantbench.measure.timing import score_windows

pytestmark = pytest.mark.slow

SUITE = Suite(name="f2026-test", n_ctx=128, ppl_windows=3)
# Tiny = SmolLM2-135M cut to 2 layers: 7,077,888 decoder Linear weights (see test_gptq.py),
# 10,368 output rows; embeddings (tied) 49152 x 576.
LINEAR_PARAMS = 7_077_888
ROWS = 10_368
EMBED = 49152 * 576


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
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QUANTBENCH_CACHE", str(tmp_path_factory.mktemp("qb-cache")))
        yield


def backend(tiny, tokens_path, fmt: str):
    f = get_format(fmt)
    variant = Variant(tiny.name, tiny.dir, tiny.digest, f, "cpu", SUITE.thread_count(), SUITE,
                      tokens_path=tokens_path, calib_start=SUITE.n_ctx * SUITE.ppl_windows, corpus_key=SUITE.corpus)
    return get_backend_class(f.backend)(variant)


@pytest.fixture(scope="module")
def fp32_ppl(tiny, tokens_path, windows):
    b = backend(tiny, tokens_path, "fp32")
    b.load()
    out = score_windows(b, windows, budget_s=1e9)
    b.close()
    return out["ppl"]


# format -> (kernel, execution, ppl band against fp32, exact quantized-linear bytes)
CASES = {
    "torchao-int8wo": ("torchao:dequantized per call", "dequantized per call", 1.02,
                       LINEAR_PARAMS + 4 * ROWS),
    "torchao-w8a8": ("torchao:_int_mm", "int8 x int8 GEMM (torch._int_mm)", 1.02, LINEAR_PARAMS + 4 * ROWS),
    "torchao-int4wo": ("torchao:_weight_int4pack_mm_for_cpu", "fused int4 GEMM (_weight_int4pack_mm_for_cpu)",
                       1.35, LINEAR_PARAMS // 2 + 2 * 2 * LINEAR_PARAMS // 64),
    "hqq-4b": ("hqq:PYTORCH dequantized per call", "dequantized per call", 1.35,
               LINEAR_PARAMS // 2 + 2 * 2 * LINEAR_PARAMS // 64),
}


@pytest.fixture(scope="module")
def built(tiny, tokens_path, fresh_cache):
    out = {}
    for fmt in CASES:
        b = backend(tiny, tokens_path, fmt)
        try:
            b.build()
        except Skip as e:
            pytest.skip(str(e))
        b.load()
        out[fmt] = b
    yield out
    for b in out.values():
        b.close()


@pytest.mark.parametrize("fmt", list(CASES))
def test_build_load_forward_ppl(built, fp32_ppl, windows, fmt):
    b = built[fmt]
    kernel, execution, band, _ = CASES[fmt]
    assert b.info["kernel"].startswith(kernel) and b.info["kernel_detail"]["execution"] == execution
    assert b.info["quantized_layers"] == 14  # 7 projections x 2 layers: none skipped
    assert b.info.get("group_size", 0) == get_format(fmt).group_size  # 64 for int4/hqq; int8: per row
    assert b.info["build_s"] > 0
    ppl = score_windows(b, windows, budget_s=1e9)["ppl"]
    # tiny's ppl is huge (2 layers) and moves both ways under quantization: only the upper band
    assert math.isfinite(ppl) and ppl <= fp32_ppl * band, (ppl, fp32_ppl)


@pytest.mark.parametrize("fmt", list(CASES))
def test_predicted_bytes_match_the_artifact(tiny, built, fmt):
    b, quantized = built[fmt], CASES[fmt][3]
    f = get_format(fmt)
    # The quantized linears hold exactly what their layout says (scale per row, or scale+zero per 64).
    assert math.isclose(8 * quantized / LINEAR_PARAMS, f.bits_per_weight, rel_tol=0.01)
    predicted = formulas.weights_bytes_of(shape_from_config(tiny.dir), f)
    assert abs(predicted / b.info["artifact_bytes"] - 1) < 0.02, (predicted, b.info["artifact_bytes"])
    assert abs(predicted / b.weights_bytes() - 1) < 0.02, (predicted, b.weights_bytes())


def test_w8a8_is_smoothquant_calibrated_and_the_cache_keeps_it(built):
    """torchao-w8a8 is built with torchao's SmoothQuant: each decoder Linear's weight carries the
    per-input-channel 1/s it multiplies into the activation before rounding it to int8, and the
    pickled artifact the backend loaded from still holds it."""
    b = built["torchao-w8a8"]
    assert b.info["kernel_detail"]["recipe"] == "smoothquant-0.5"
    assert (b.info["calib_samples"], b.info["calib_tokens"]) == (32, 512)
    linears = {n: m for n, m in b.model.named_modules() if ".layers." in n and hasattr(m, "in_features")}
    assert len(linears) == 14
    for m in linears.values():
        pre = m.weight.act_pre_scale
        assert pre is not None and tuple(pre.shape)[-1] == m.in_features
        assert float(pre.min()) > 0 and float(pre.max() / pre.min()) > 2  # channels really rescaled


def test_second_build_is_a_cache_hit(tiny, tokens_path, built):
    for fmt in CASES:
        b = backend(tiny, tokens_path, fmt)
        b.build()
        assert (b.info["build_s"], b.info["artifact"]) == (0.0, built[fmt].info["artifact"])


def test_group_size_that_skips_layers_fails_loudly(tiny, tokens_path, fresh_cache):
    import dataclasses

    b = backend(tiny, tokens_path, "torchao-int4wo")
    b.variant = dataclasses.replace(b.variant, format=dataclasses.replace(b.variant.format, group_size=128))
    # 576-wide inputs are not divisible by 128: only the two down_proj (1536 wide) get quantized
    with pytest.raises(RuntimeError, match=r"left 12 decoder Linear layers unquantized .* \(2 quantized"):
        b.build()


def test_mxfp4_gguf_is_mxfp4_throughout(tiny, tokens_path, fp32_ppl, windows, fresh_cache):
    """llama.cpp's MXFP4_MOE with pure = true on a dense model and token_embd overridden to Q8_0:
    every decoder 2-D tensor MXFP4 (17 bytes per 32 weights = 4.25 bits), the tied embeddings Q8_0
    (34 bytes per 32), the norms F32; measured on tiny: 14 MXFP4 + 1 Q8_0 + 5 F32 tensors."""
    pytest.importorskip("llama_cpp")
    b = backend(tiny, tokens_path, "gguf-mxfp4")
    b.build()
    assert b.info["gguf_type_mix"] == {"MXFP4": 14, "Q8_0": 1, "F32": 5}  # 2 layers x 7; tied embeddings
    # bytes: linears 7,077,888 x 17/32, embeddings 28,311,552 x 34/32, norms 2,880 x 4
    assert b.weights == 7_077_888 * 17 // 32 + EMBED * 34 // 32 + 5 * 576 * 4
    predicted = formulas.weights_bytes_of(shape_from_config(tiny.dir), get_format("gguf-mxfp4"))
    assert abs(predicted / b.weights - 1) < 0.02, (predicted, b.weights)
    b.load()
    try:
        assert b.info["kernel"].startswith("llama.cpp:")
        ppl = score_windows(b, windows, budget_s=1e9)["ppl"]
        assert math.isfinite(ppl) and ppl <= fp32_ppl * 1.35, (ppl, fp32_ppl)  # the 4-bit band
    finally:
        b.close()


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "bnb-int8", "bnb-nf4"])
def test_predicted_bytes_match_memory(tiny, tokens_path, fmt):
    """Formats quantized at load (bitsandbytes) or not at all have no artifact of their own: the
    per-tensor prediction against the loaded weights, within 2 %. bnb's tables keep the dtype the
    model was loaded in (fp32 for int8 on CPU, bf16 for NF4), as its backend reports."""
    import dataclasses

    if fmt.startswith("bnb"):
        pytest.importorskip("bitsandbytes")
    b = backend(tiny, tokens_path, fmt)
    b.load()
    try:
        f = get_format(fmt)
        if not f.embed_layout:
            f = dataclasses.replace(f, bits_unquantized=b.info["bits_unquantized"])
        if fmt == "bnb-nf4":  # absmax bf16 where the fused CPU kernel repacked, else fp32
            assert b.info["weights_layout"] in ([4, 64, 16, 0], [4, 64, 32, 0])
            f = dataclasses.replace(f, layout=Layout(*b.info["weights_layout"]))
        predicted = formulas.weights_bytes_of(shape_from_config(tiny.dir), f)
        assert abs(predicted / b.weights_bytes() - 1) < 0.02, (predicted, b.weights_bytes())
    finally:
        b.close()
