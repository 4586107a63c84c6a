"""pytest-benchmark guards for the harness's own hot paths (`nox -s perf`).

In the normal test run benchmarks are disabled (each body runs once as a plain test); `nox -s
perf` enables them, saves the timings and fails on a 25 % median slowdown against the last run.
"""
import numpy as np
import pytest

from quantbench.arith import formulas
from quantbench.arith.hardware import DEVICES
from quantbench.backends.dummy import DummyBackend
from quantbench.core import records
from quantbench.core.formats import get_format
from quantbench.core.suite import Suite
from quantbench.core.variant import Variant
from quantbench.measure.timing import log_softmax, score_windows

SMOL = formulas.ModelShape(n_layers=30, d_model=576, n_heads=9, n_kv_heads=3, head_dim=64, d_ff=1536,
                        vocab=49152, tied_embeddings=True)


@pytest.fixture(scope="module")
def dummy():
    b = DummyBackend(Variant("m", "", "", get_format("dummy"), "cpu", 1, Suite()))
    b.load()
    return b


def test_scoring_loop(benchmark, dummy):
    rng = np.random.default_rng(0)
    windows = rng.integers(0, 49152, size=(2, 512)).tolist()
    ref = np.zeros((256, dummy.vocab), dtype=np.float16)
    out = benchmark(score_windows, dummy, windows, 60.0, None, 256, ref)
    assert out["ppl_windows"] == 2 and out["reference_rows"] == 256


def test_log_softmax(benchmark):
    x = np.random.default_rng(0).standard_normal((512, 49152)).astype(np.float32)
    lp = benchmark(log_softmax, x)
    assert np.allclose(np.exp(lp).sum(-1), 1.0, atol=1e-3)


def test_record_writing(benchmark, tmp_path):
    rec = {"model": "m", "format": "fp32", "device": "cpu", "workload": "tg64", "status": "ok", "schema_version": 2,
           "decode_samples_s": [0.01] * 320, "env": records.environment()}
    path = tmp_path / "r.jsonl"
    benchmark(records.append, path, [rec] * 10)
    assert records.read(path)[0]["decode_samples_s"][0] == 0.01


def test_arithmetic(benchmark):
    peaks = DEVICES["h100-sxm"]
    out = benchmark(formulas.predicted_fields, SMOL, get_format("bf16"), peaks, "tg", n_prompt=16,
                    n_gen=64)
    assert out["bound"] == "memory" and out["decode_tok_s_predicted"] > 1000


def test_report_rendering(benchmark, tmp_path):
    from synthetic import synthetic

    from quantbench import read_results
    from quantbench.report import render

    df = read_results(*synthetic(tmp_path))
    html = benchmark(render.render_html, df)
    assert html.count('class="plot"') >= 10
