"""scripts/weight_error.py: its MXFP4 rounding is llama.cpp's (gguf-py's port of the reference C
quantizer) at the OCP exponent, and the best-of-two-exponents encoder never rounds further."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

spec = importlib.util.spec_from_file_location(
    "weight_error", Path(__file__).parent.parent / "scripts" / "weight_error.py")
weight_error = importlib.util.module_from_spec(spec)
spec.loader.exec_module(weight_error)


@pytest.fixture
def w():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 256)).astype(np.float32) * 0.02
    x[:, 7] *= 30  # an outlier column: a block whose largest weight sits far above the rest
    return x


def test_ocp_rounding_is_ggufs_mxfp4(w):
    import gguf.quants as q
    from gguf import GGMLQuantizationType as T

    blocks = w.reshape(-1, 32)
    exp = np.floor(np.log2(np.abs(blocks).max(1))) - 2
    ours = weight_error.mxfp4_round(blocks, exp).reshape(w.shape)
    ref = q.dequantize(q.quantize(w, T.MXFP4), T.MXFP4)
    assert np.abs(ours - ref).max() <= 1e-6 * np.abs(w).max()


def test_best_of_two_never_rounds_further(w):
    blocks = w.reshape(-1, 32)
    exp = np.floor(np.log2(np.abs(blocks).max(1))) - 2
    ocp = ((weight_error.mxfp4_round(blocks, exp) - blocks) ** 2).sum(1)
    best = ((weight_error.mxfp4_best_of_two(w).reshape(-1, 32) - blocks) ** 2).sum(1)
    assert (best <= ocp).all() and best.sum() < ocp.sum()  # some block picks the exponent above


def test_a_q41_dequantized_matrix_requantizes_to_q41_losslessly_until_degridded(w):
    """The embedded model was dequantized from Q4_1: its weights sit on a Q4_1 grid, which Q4_1 gives
    back exactly and `degrid` moves them off (the --controls baseline)."""
    import gguf.quants as q
    from gguf import GGMLQuantizationType as T

    def rel(x, t):
        return float(((q.dequantize(q.quantize(x, t), t) - x) ** 2).sum() / (x ** 2).sum())

    on_grid = q.dequantize(q.quantize(w, T.Q4_1), T.Q4_1)
    off = weight_error.degrid(on_grid, np.random.default_rng(1))
    assert rel(on_grid, T.Q4_1) < 1e-6 < 1e-4 < rel(off, T.Q4_1)
    assert rel(off, T.Q4_0) > rel(on_grid, T.Q4_0) * 0.5  # Q4_0 is not made lossless by either
    g = weight_error.gaussian_rows(w, np.random.default_rng(2))
    assert g.shape == w.shape and np.allclose(g.std(1), w.std(1), rtol=0.25)
