"""llama.cpp backend on the tiny model: real conversion, quantization, type mixes and ppl vs transformers.

The first run downloads the llama-cpp-python sdist (~75 MB, for convert_hf_to_gguf.py) once.
"""
import dataclasses

import numpy as np
import pytest

pytest.importorskip("llama_cpp", reason="llama_cpp not installed; install quantbench[gguf]")
pytest.importorskip("gguf", reason="gguf not installed; install quantbench[gguf]")

from quantbench.backends.gguf import GGUFBackend  # noqa: E402
from quantbench.backends.hf import HFBackend  # noqa: E402
from quantbench.core.formats import get_format  # noqa: E402
from quantbench.core.suite import Suite  # noqa: E402
from quantbench.core.variant import Variant  # noqa: E402
from quantbench.measure.timing import score_windows  # noqa: E402

pytestmark = pytest.mark.slow

SUITE = Suite(name="gguf-test", n_ctx=128, ppl_windows=3, prompt_lengths=(64,), gen_tokens=8)
# Tiny = SmolLM2-135M cut to 2 layers: hidden 576, FFN 1536, 3 KV heads x 64, vocab 49152.
N_VOCAB = 49152
# Bits per weight of each block layout (ggml-common.h): Q8_0 = 32 int8 + one f16 scale per 32
# -> (32 + 2) * 8 / 32 = 8.5; Q4_0 = 16 bytes of nibbles + f16 scale -> 18 * 8 / 32 = 4.5;
# Q4_K = 144 bytes per 256 -> 4.5; Q5_0 = 22 bytes / 32 -> 5.5; Q6_K = 210 bytes / 256 -> 6.5625.


@pytest.fixture(scope="module")
def tiny():
    from quantbench.inputs.models import resolve

    return resolve("tiny")


@pytest.fixture(scope="module")
def windows(tiny):
    from quantbench.inputs import corpus

    ids = corpus.token_ids(tiny.dir, tiny.digest, SUITE.corpus)
    return corpus.windows(ids, SUITE.n_ctx, SUITE.ppl_windows, corpus.bos_first(tiny.dir))


def variant(tiny, fmt: str) -> Variant:
    return Variant(tiny.name, tiny.dir, tiny.digest, get_format(fmt), "cpu", 2, SUITE)


@pytest.fixture(scope="module")
def built(tiny):
    out = {}
    for fmt in ("gguf-f16", "gguf-q8_0", "gguf-q4_0", "gguf-q4_k_m"):
        b = GGUFBackend(variant(tiny, fmt))
        b.build()
        out[fmt] = b
    return out


def test_type_mix_and_bits(built):
    f16, q8, q4, q4km = (built[f].info for f in ("gguf-f16", "gguf-q8_0", "gguf-q4_0", "gguf-q4_k_m"))
    # 2 layers x 2 norms + the final norm stay F32; tied embeddings: no output.weight.
    assert f16["gguf_type_mix"] == {"F16": 15, "F32": 5}
    assert not f16["gguf_mixed"]
    assert f16["bits_per_weight"] == pytest.approx(16.0, abs=0.01)  # F32 norms: 2881 of 35M
    assert set(q8["gguf_type_mix"]) == {"Q8_0", "F32"} and not q8["gguf_mixed"]
    assert q8["bits_per_weight"] == pytest.approx(8.5, abs=0.01)
    # Q4_0 keeps token_embd (also the output head) at a higher type: between 4.5 and 8.5.
    assert "Q4_0" in q4["gguf_type_mix"]
    assert 4.5 < q4["bits_per_weight"] < 8.5
    # Q4_K_M on 576-wide rows (not a multiple of 256) falls back to Q5_0/Q8_0.
    mix = q4km["gguf_type_mix"]
    assert q4km["gguf_mixed"] and {"Q5_0", "Q6_K"} <= set(mix), mix
    assert 4.5 < q4km["bits_per_weight"] < 8.5
    for b in built.values():
        assert b.info["tokenizer_agree"] == 1.0


@pytest.mark.parametrize("fmt", ["gguf-f16", "gguf-q8_0", "gguf-q4_0"])
def test_predicted_bytes_match_the_file(tiny, built, fmt):
    """The arithmetic prices each tensor from the format's layout (not from the file): F16 / Q8_0
    (34 bytes per 32) / Q4_0 (18 per 32) linears, token_embd in F16 / Q8_0 / Q8_0 (llama.cpp's
    Q6_K for the output tensor falls back to Q8_0 on 576-wide rows), F32 norms; within 2 % of the
    file's tensor bytes (the file adds its tokenizer to them)."""
    from quantbench.arith import formulas
    from quantbench.arith.shapes import shape_from_config
    from quantbench.core.formats import get_format

    b = built[fmt]
    predicted = formulas.weights_bytes_of(shape_from_config(tiny.dir), get_format(fmt))
    assert abs(predicted / b.weights_bytes() - 1) < 0.02, (predicted, b.weights_bytes())
    if fmt == "gguf-q4_0":
        assert b.info["gguf_type_mix"] == {"Q4_0": 14, "Q8_0": 1, "F32": 5}


def test_second_build_is_a_cache_hit(tiny, built):
    b = GGUFBackend(variant(tiny, "gguf-q4_k_m"))
    b.build()
    assert b.info["build_s"] == 0.0
    assert b.info["artifact"] == built["gguf-q4_k_m"].info["artifact"]


def test_cached_artifact_is_the_file_a_build_finds(tiny, built):
    # a fleet's build task asks this in its own process instead of spawning a worker
    for fmt, b in built.items():
        assert GGUFBackend(variant(tiny, fmt)).cached_artifact() == b.path
    other = dataclasses.replace(variant(tiny, "gguf-q4_0"), model_digest="0" * 64)
    assert GGUFBackend(other).cached_artifact() == ""  # another model's file is not there


def test_logits_prefill_decode_and_kv(built, windows):
    b = built["gguf-q8_0"]
    b.load()
    try:
        w = windows[0]
        logits = b.logits(w)
        assert logits.shape == (len(w), N_VOCAB) and logits.dtype == np.float32
        assert np.isfinite(logits).all()
        # prefill's last-token path gives the same greedy token as the all-positions path
        tok = b.prefill(w[:64])
        assert tok == int(b.logits(w[:64])[-1].argmax())
        b.prefill(w[:64])
        assert b.decode(tok) == int(b.logits(w[:64] + [tok])[-1].argmax())
        # 65 cells in use (64 prompt + 1 decoded): 2 x 2 layers x 3 KV heads x 64 x 65 x 2 bytes;
        # n_ctx = 128, padded by llama.cpp to 256 cells, is what it allocated
        assert b.kv_cache_bytes() == 2 * 2 * 3 * 64 * 65 * 2 == 99_840
        assert b.kv_cache_bytes(allocated=True) == 2 * 2 * 3 * 64 * 256 * 2 == 393_216
        assert b.weights_bytes() < 0.6 * built["gguf-f16"].weights_bytes()
        # named from llama.cpp's buffer log: plain CPU buffers, or repacked ones where it repacks Q8_0
        assert b.info["kernel"] in ("llama.cpp:CPU", "llama.cpp:CPU_REPACK", "llama.cpp:AMX")
        assert b.info["kernel_detail"]["buffers_bytes"], b.info["kernel_detail"]
        assert b.info["kernel_detail"]["weight_types"].startswith("Q8_0")
    finally:
        b.close()


def test_f16_ppl_matches_transformers(tiny, built, windows):
    ppl = {}
    for name, b in (("gguf", built["gguf-f16"]), ("hf", HFBackend(variant(tiny, "fp32")))):
        b.load()
        try:
            ppl[name] = score_windows(b, windows, budget_s=600)["ppl_full"]
        finally:
            b.close()
    assert ppl["gguf"] == pytest.approx(ppl["hf"], rel=0.005), ppl


def test_missing_runtime_and_gpu_are_skips(tiny, built, monkeypatch):
    import llama_cpp

    from quantbench.backends import Skip

    if not llama_cpp.llama_supports_gpu_offload():
        b = GGUFBackend(dataclasses.replace(variant(tiny, "gguf-q8_0"), device="cuda"))  # a Variant is frozen
        b.path = built["gguf-q8_0"].path
        with pytest.raises(Skip, match="no usable GPU offload: built without CUDA"):
            b.load()
    monkeypatch.setitem(__import__("sys").modules, "llama_cpp", None)  # import now fails
    with pytest.raises(Skip, match=r"install quantbench\[gguf\]"):
        GGUFBackend(variant(tiny, "gguf-q8_0")).load()


def test_batched_decode_matches_one_sequence(built):
    # 3 copies of one prompt in one llama_batch (own context, n_seq_max 3) give each sequence
    # the tokens the single-sequence path gives, step after step.
    b = built["gguf-q8_0"]
    b.load()
    prompt = list(range(1, 17))
    one = [b.prefill(prompt)]
    for _ in range(5):
        one.append(b.decode(one[-1]))
    many = [b.prefill_batch(prompt, 3)]
    for _ in range(5):
        many.append(b.decode_batch(many[-1]))
    assert many == [[t] * 3 for t in one]
    assert b.kv_cache_bytes() > 0 and b.batched
    b.prefill(prompt)
    assert not b.batched  # kv_cache_bytes describes the context used last
    b.close()


@pytest.mark.parametrize("kv, bytes_per_token", [("f16", 1_536), ("q8_0", 816), ("q4_0", 432)])
def test_kv_types(tiny, built, kv, bytes_per_token):
    # tiny caches 2 (K,V) x 2 layers x 3 KV heads x 64 = 768 elements per token: 16, 8.5 and
    # 4.5 bits each (q8_0 / q4_0 blocks of 32 with an f16 scale)
    name = "gguf-q8_0" if kv == "f16" else f"gguf-q8_0+kv-{kv}"
    b = GGUFBackend(variant(tiny, name))
    b.build()
    assert b.info["artifact"] == built["gguf-q8_0"].info["artifact"]  # same weights
    b.load()
    try:
        assert b.info["kv_type"] == kv and b.info["kv_bytes_per_elem"] * 768 == bytes_per_token
        assert b.kv_cache_bytes(allocated=True) == bytes_per_token * 256  # n_ctx 128 padded to 256 cells
        # llama.cpp's own log line, to its 0.01 MiB
        assert b.info["kv_cache_bytes_per_token"] == pytest.approx(bytes_per_token, abs=0.01 * 2**20 / 256)
        assert b.prefill(list(range(100, 140))) >= 0  # quantized V runs (flash attention on)
        assert b.kv_cache_bytes() == bytes_per_token * 40  # the cells in use
        assert b.prefill_batch(list(range(100, 110)), 2)
    finally:
        b.close()
