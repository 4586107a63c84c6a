"""Sweep axes (depths, batches, models, threads), the fitted step-time model and the knee."""
import dataclasses

import numpy as np
import pytest

from quantbench.arith import fit, formulas
from quantbench.arith.hardware import Peaks
from quantbench.arith.shapes import shape_from_config
from quantbench.core import records
from quantbench.core.errors import UserError
from quantbench.core.formats import get_format
from quantbench.core.suite import Suite, Workload, load_suite
from quantbench.measure import runner


def test_workload_names_round_trip():
    for name in ("load", "pp512", "pp512@d4096", "tg64", "tg64x8", "tg64@d4096", "tg64x8@d1024@t2",
                 "load@t1", "ppl512@t2"):
        assert str(Workload.parse(name)) == name
    assert Workload.parse("tg64x8@d4096@t2") == Workload("tg", 64, 8, 4096, 2)
    with pytest.raises(ValueError):
        Workload.parse("tg64@t2@d4096")  # depth comes before threads


def test_depths_and_batches_expand_like_llama_bench():
    s = Suite(prompt_lengths=(128,), gen_tokens=64, decode_batches=(8,), depths=(1024, 4096), n_ctx=512)
    assert [str(w) for w in s.workloads()] == [
        "load", "pp128", "pp128@d1024", "pp128@d4096", "tg64", "tg64x8", "tg64@d1024", "tg64@d4096",
        "ppl512"]
    crossed = dataclasses.replace(s, cross_batches_depths=True)
    assert "tg64x8@d4096" in [str(w) for w in crossed.workloads()]
    assert len(crossed.workloads()) == len(s.workloads()) + 2


def test_threads_list_tags_workloads_and_quality_runs_once():
    s = Suite(prompt_lengths=(32,), gen_tokens=8, n_ctx=64, threads=(1, 2))
    assert [str(w) for w in s.workloads()] == ["load@t1", "pp32@t1", "tg8@t1", "ppl64@t1",
                                              "load@t2", "pp32@t2", "tg8@t2"]
    assert s.thread_list == (1, 2) and s.thread_count() == 1 and s.thread_count(2) == 2
    assert Suite(threads=3).thread_list == (3,)
    assert [str(w) for w in Suite(threads=3).workloads()][0] == "load"


def test_suite_file_with_every_axis(tmp_path):
    p = tmp_path / "arith.toml"
    p.write_text('models = ["tiny", "shape:smollm2-360m"]\nthreads = [1, 2]\ndepths = [256]\n'
                 'decode_batches = [4, 64]\nformats = ["bf16", "gguf-q4_0"]\n'
                 '[model_overrides."shape:smollm2-360m"]\nformats = ["gguf-q4_0"]\ndepths = []\n')
    s = load_suite(p)
    assert s.threads == (1, 2) and s.models == ("tiny", "shape:smollm2-360m")
    a, b = s.per_model()
    assert (a.model, a.formats, a.depths) == ("tiny", ("bf16", "gguf-q4_0"), (256,))
    assert (b.model, b.formats, b.depths) == ("shape:smollm2-360m", ("gguf-q4_0",), ())
    assert b.decode_batches == (4, 64) and b.threads == (1, 2)
    assert s.suite_hash != dataclasses.replace(s, model_overrides={}).suite_hash


@pytest.mark.parametrize("body,msg", [
    ("threads = [0, 2]", "threads must be 0"),
    ('threads = ["2"]', "key 'threads' must be a list"),
    ("depths = [0, 1024]", "depths must be >= 1"),
    ("depths = [1024, 1024]", "depths lists 1024 twice"),
    ('models = ["tiny"]\n[model_overrides.other]\nformats = ["bf16"]', "names 'other', which is not in"),
    ('models = ["tiny"]\n[model_overrides.tiny]\nn_ctxx = 3', "unknown key 'n_ctxx'"),
    ('models = ["tiny"]\n[model_overrides.tiny]\nmodel = "x"', "cannot set model"),
    ("models = [1]", "key 'models' must be a list"),
])
def test_bad_axes_are_one_line_errors(tmp_path, body, msg):
    p = tmp_path / "bad.toml"
    p.write_text(body + "\n")
    with pytest.raises(UserError, match=msg):
        load_suite(p)


def test_known_ladder_shapes():
    # parameter counts of the real checkpoints (config.json on the Hub, counted on the meta device)
    for name, params in (("smollm2-135m", 134_515_008), ("smollm2-360m", 361_821_120),
                         ("qwen2.5-0.5b", 494_032_768), ("llama-3.2-1b", 1_235_814_400)):
        assert formulas.params_total(shape_from_config(f"shape:{name}", exact=False)) == params


# --- the arithmetic at depth, and the knee

def test_knee_reproduces_kipply_208():
    # A100: 312 TFLOP/s fp16 over 1.5 TB/s; fp16 weights, 2 bytes read and 2 FLOPs per weight
    assert formulas.knee_batch(312e12, 1.5e12, 2) == pytest.approx(208)
    assert formulas.knee_batch(312e12, 1.5e12, 0.5) == pytest.approx(52)  # 4-bit: a 4x lower knee


def test_predicted_step_reads_weights_plus_depth_of_kv():
    s = shape_from_config("shape:smollm2-135m", exact=False)
    fmt = get_format("bf16")
    peaks = Peaks("cpu", {"fp32": 1e11, "bf16": 1e11}, 1e10, 1e11, "measured")
    w = formulas.weights_bytes(s, 16, 16)
    kv_token = 23_040  # 2 x 30 layers x 3 KV heads x 64 x 2 bytes
    r = formulas.predicted_fields(s, fmt, peaks, "tg", n_prompt=16, n_gen=2, depth=4096)
    # two steps at contexts 4112 and 4113: mean bytes = weights + 4112.5 tokens of KV
    assert r["decode_step_bytes_predicted"] == pytest.approx(w + 4112.5 * kv_token)
    assert r["kv_cache_bytes_predicted"] == (4096 + 18) * kv_token
    r0 = formulas.predicted_fields(s, fmt, peaks, "tg", n_prompt=16, n_gen=2)
    slope = (1 / r["decode_tok_s_predicted"] - 1 / r0["decode_tok_s_predicted"]) / 4096
    assert slope == pytest.approx(kv_token / 1e10)  # seconds per cached token: its KV over bandwidth
    pp = formulas.predicted_fields(s, fmt, peaks, "pp", n_prompt=512, depth=1024)
    assert pp["kv_cache_bytes_predicted"] == 1536 * kv_token
    assert pp["flops_per_token"] == formulas.prefill_flops(s, 512, 1024, logits_kept=1) // 512
    # knee: peak/bw x bytes per weight / FLOPs per weight; bf16 on 10 FLOP/byte ~ 10
    assert r0["knee_batch_predicted"] == pytest.approx(10 * w / (2 * (formulas.flops_per_token(s, 0) / 2)),
                                                       rel=1e-9)


# --- the fit

W, KV, F = 270_000_000, 23_040, 2 * 134e6
ATT = 4 * 30 * 576  # attention FLOPs per cached token: 4 · layers · heads · head_dim
# a CPU whose GEMM climbs with M (AMX-like): 5 GFLOP/s reading weights at M = 1, 150 at M = 64
PEAKS = Peaks("cpu", {"fp32": 80e9, "bf16": 160e9}, 10e9, 1e11, "measured",
              gemm_flop_s_by_m={"bf16": {"1": 5e9, "4": 18e9, "16": 60e9, "64": 150e9}})
# 10 ms per step, 0.5 ms per sequence, attention at 20 GFLOP/s, matmuls 1.3x the calibrated GEMM
TRUE = fit.Fit(0.010, 0.0005, 20e9, 1.3, 0)
GRID = [(0, 1), (0, 2), (0, 4), (0, 8), (0, 16), (0, 32), (0, 64), (1024, 1), (2048, 1), (4096, 1), (8192, 1)]


def _gemm(b):
    return formulas.gemm_flop_s_at(PEAKS, ("bf16", "fp32"), b)


def _points(noise: float, seed: int = 1, truth=TRUE):
    rng = np.random.default_rng(seed)
    out = []
    for d, b in GRID:
        p = fit.Point(f"tg64x{b}@d{d}", d, b, b * (d + 40) * ATT, b * F, _gemm(b), 1.0, b * (d + 40) * KV)
        t = truth.step_s(p) * (1 + noise * rng.standard_normal())
        out.append(dataclasses.replace(p, step_s=t))
    return out


def test_gemm_rate_interpolates_between_calibrated_m():
    assert _gemm(1) == 5e9 and _gemm(64) == 150e9 and _gemm(256) == 150e9  # ends held flat
    assert _gemm(2) == pytest.approx((5e9 * 18e9) ** 0.5)  # halfway between M = 1 and 4 in log-log
    assert _gemm(8) == pytest.approx((18e9 * 60e9) ** 0.5)
    assert formulas.gemm_flop_s_at(PEAKS, ("fp32",), 4) is None  # fp32 not calibrated by M


def test_weight_stream_interpolates_between_calibrated_widths():
    peaks = dataclasses.replace(PEAKS, gemv_bytes_s_by_k={"bf16": {"512": 8e9, "2048": 18e9}, "fp32": {"512": 9e9}})
    assert formulas.gemv_bytes_s_at(peaks, ("bf16", "fp32"), 1024) == pytest.approx((8e9 * 18e9) ** 0.5)
    assert formulas.gemv_bytes_s_at(peaks, ("bf16",), 4096) == 18e9  # the ends held flat
    assert formulas.gemv_bytes_s_at(peaks, ("fp16", "fp32"), 2048) == 9e9  # the first dtype calibrated
    assert formulas.gemv_bytes_s_at(PEAKS, ("bf16",), 576) is None
    s = formulas.ModelShape(n_layers=2, d_model=1024, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128,
                            vocab=100, tied_embeddings=True, name="t")
    r = formulas.predicted_fields(s, get_format("bf16"), peaks, "tg", n_prompt=8, n_gen=4, compute_dtypes=("bf16",))
    assert r["decode_gemv_bytes_s"] == pytest.approx(12e9)
    assert "decode_gemv_bytes_s" not in formulas.predicted_fields(s, get_format("bf16"), PEAKS, "tg", n_prompt=8,
                                                                  n_gen=4, compute_dtypes=("bf16",))


def test_fit_recovers_known_parameters():
    exact = fit.fit(_points(0.0))
    assert exact.fixed_s == pytest.approx(0.010, rel=1e-6)
    assert exact.seq_s == pytest.approx(0.0005, rel=1e-6)
    assert exact.attn_flop_s == pytest.approx(20e9, rel=1e-6)
    assert exact.gemm_scale == pytest.approx(1.3, rel=1e-6)
    b1 = _points(0.0)[0]
    for seed in range(8):  # 2 % noise on every point
        f = fit.fit(_points(0.02, seed))
        assert f.attn_flop_s == pytest.approx(20e9, rel=0.12)
        # At small M the GEMM rate grows almost as M, so M(B) / G(B) is nearly flat there and the
        # matmul term trades against t_fixed: what the data fix is their sum at batch 1 (the weights'
        # read plus overhead), tightly, and k_mm loosely, by the batches where the GEMM saturates.
        at_b1 = f.terms_s(b1)["fixed"] + f.terms_s(b1)["gemm"]
        assert at_b1 == pytest.approx(0.010 + 1.3 * F / 5e9, rel=0.02)
        assert f.gemm_scale == pytest.approx(1.3, rel=0.35)
        assert 0 <= f.fixed_s < 0.04 and 0 <= f.seq_s < 0.0015
        # held out, 2 % noise grows to up to ~13 % at batch 64 (t_seq and k_mm trade off where G
        # saturates): why the sampler aims each point's median at ±3 %
        assert max(map(abs, fit.holdout_errors(_points(0.02, seed)).values())) < 0.2


def test_fit_term_by_term_at_a_point():
    p = _points(0.0)[6]  # batch 64, depth 0
    terms = TRUE.terms_s(p)
    assert terms["fixed"] == 0.010 and terms["seq"] == pytest.approx(64 * 0.0005)
    assert terms["attn"] == pytest.approx(64 * 40 * ATT / 20e9)
    assert terms["gemm"] == pytest.approx(1.3 * 64 * F / 150e9)
    assert TRUE.gemm_eff_flop_s(150e9) == pytest.approx(150e9 / 1.3)


def test_fit_keeps_every_term_non_negative():
    # step time falling with depth (noise) cannot buy a negative attention cost: that term drops out
    pts = [fit.Point(f"tg@d{d}", d, 1, (d + 40) * ATT, F, _gemm(1), 0.05 - d * 1e-7) for d in (0, 512, 2048)]
    pts += [fit.Point(f"tgx{b}", 0, b, b * 40 * ATT, b * F, _gemm(b), 0.05 + b * 0.002) for b in (8, 32)]
    f = fit.fit(pts)
    assert f.attn_flop_s is None and min(f.coef()) >= 0 and f.fixed_s > 0


def _subsets_nnls(A: np.ndarray) -> np.ndarray:
    """The hand-written NNLS fit.py used before scipy: least squares on every subset of columns,
    the best non-negative one wins. Kept as the reference scipy.optimize.nnls must agree with."""
    import itertools

    best = (np.zeros(A.shape[1]), float(A.shape[0]))
    for k in range(1, A.shape[1] + 1):
        for cols in itertools.combinations(range(A.shape[1]), k):
            x_sub, *_ = np.linalg.lstsq(A[:, cols], np.ones(A.shape[0]), rcond=None)
            if (x_sub < 0).any():
                continue
            x = np.zeros(A.shape[1])
            x[list(cols)] = x_sub
            loss = float(((A @ x - 1) ** 2).sum())
            if loss < best[1]:
                best = (x, loss)
    return best[0]


def test_scipy_nnls_gives_the_coefficients_of_the_subset_search():
    falling = [fit.Point(f"tg@d{d}", d, 1, (d + 40) * ATT, F, _gemm(1), 0.05 - d * 1e-7) for d in (0, 512, 2048)]
    falling += [fit.Point(f"tgx{b}", 0, b, b * 40 * ATT, b * F, _gemm(b), 0.05 + b * 0.002) for b in (8, 32)]
    flat = [fit.Point(f"tgx{b}", 0, b, b * 40 * ATT, b * F, _gemm(b), 0.05 * (1 + 0.01 * (-1) ** b))
            for b in (1, 2, 4, 8)]
    sets = [_points(0.0), falling, flat] + [_points(0.05, seed) for seed in range(6)]
    dropped = set()
    for pts in sets:
        t = np.array([p.step_s for p in pts])
        cols = np.array([p.columns() for p in pts])
        scale = np.where(cols.max(axis=0) > 0, cols.max(axis=0), 1.0)
        want = _subsets_nnls(cols / scale / t[:, None]) / scale
        got = fit.fit(pts).coef()
        for v, w in zip(got, want, strict=True):
            assert (v == 0) == (w == 0) and v == pytest.approx(w, rel=1e-6, abs=1e-15)
        dropped |= {i for i in range(4) if want[i] == 0}
    assert dropped  # a term fitted to 0 was among the cases
    # the ladder's two-term fit: the old code's fallback (best single term) on a negative solution
    layers, bytes_ = np.array([30.0, 32.0, 16.0]), np.array([270e6, 724e6, 2.47e9])
    for t in (1e-3 * layers + bytes_ / 8e9, np.array([0.05, 0.04, 0.2]), np.array([0.05, 0.03, 0.01])):
        A = np.stack([layers / t, bytes_ / t], axis=1)
        assert fit.fit_layers(layers, bytes_, t) == pytest.approx(tuple(_subsets_nnls(A)), rel=1e-7)
    assert (np.linalg.lstsq(A, np.ones(3), rcond=None)[0] < 0).any()  # the last one needed the fallback


def test_held_out_points_and_their_errors():
    pts = _points(0.0)
    assert [p.workload for p in fit.held_out(pts)] == ["tg64x64@d0", "tg64x1@d8192"]
    # exact points: the fit on the other 9 predicts both to rounding
    errs = fit.holdout_errors(pts)
    assert set(errs) == {"tg64x64@d0", "tg64x1@d8192"} and max(map(abs, errs.values())) < 1e-6
    # one held-out point off by +10 %: its error is -1/11 of the prediction, the fit never saw it
    bumped = [dataclasses.replace(p, step_s=p.step_s * 1.1) if p.workload == "tg64x1@d8192" else p
              for p in pts]
    assert fit.holdout_errors(bumped)["tg64x1@d8192"] == pytest.approx(1 / 1.1 - 1, abs=1e-6)
    # the middle depth (2048 of 5) and the middle batch (8 of 7): interpolation
    assert [p.workload for p in fit.interpolated(pts)] == ["tg64x8@d0", "tg64x1@d2048"]
    assert max(map(abs, fit.holdout_errors(pts, fit.interpolated).values())) < 1e-6


def test_a_flat_gemm_misses_the_largest_batch():
    """Why the matmul term is priced by M: step times made with a GEMM that speeds up 30x from
    M = 1 to 64, fitted as if the rate were flat, mispredict batch 64 held out (by 9 %: t_seq
    absorbs part of it); priced at G(B), exact."""
    flat = [dataclasses.replace(p, gemm_flop_s=80e9) for p in _points(0.0)]
    assert abs(fit.holdout_errors(flat)["tg64x64@d0"]) > 0.08
    assert abs(fit.holdout_errors(_points(0.0))["tg64x64@d0"]) < 1e-6


def test_knees_of_the_fit_and_the_plateau():
    # the matmul term at the largest batch's rate equals the fixed 10 ms at B = 0.010 × 150e9 / (1.3 F)
    assert TRUE.knee_batch(F, 150e9) == pytest.approx(0.010 * 150e9 / (1.3 * F)) == pytest.approx(4.31, abs=0.01)
    assert fit.plateau_knee({1: 10, 2: 19, 4: 30, 8: 36, 16: 39, 32: 40}) == 8  # 36 >= 0.9 x 40
    assert fit.plateau_knee({1: 10}) is None


def _records(pts):
    return [{"status": "ok", "workload": p.workload, "depth": p.depth, "batch": p.batch,
             "decode_step_bytes_predicted": W + p.kv_bytes, "decode_step_attn_flops_predicted": p.attn_flops,
             "decode_step_matmul_flops_predicted": p.matmul_flops, "decode_gemm_flop_s": p.gemm_flop_s,
             "decode_step_flops_predicted": p.attn_flops + p.matmul_flops,
             "decode_tok_s": p.batch / p.step_s, "weights_bytes_predicted": W} for p in pts]


def test_annotate_writes_fit_fields_on_decode_records():
    recs = _records(_points(0.0))
    recs.append({"status": "ok", "workload": "pp128"})
    fit.annotate(recs)
    assert recs[0]["fit_fixed_s"] == pytest.approx(0.010) and recs[0]["fit_points"] == 11
    assert recs[0]["fit_seq_s"] == pytest.approx(0.0005) and recs[0]["fit_attn_flop_s"] == pytest.approx(20e9)
    assert recs[6]["fit_gemm_flop_s"] == pytest.approx(150e9 / 1.3)  # batch 64's effective GEMM rate
    # fixed + matmuls at batch 1: 10 ms + 1.3 × 268 MFLOP / 5 GFLOP/s = 79.7 ms for 270 MB
    assert recs[0]["fit_bandwidth_bytes_s"] == pytest.approx(W / (0.010 + 1.3 * F / 5e9))
    # attention as bytes: 20 GFLOP/s × 23,040 B / 69,120 FLOP per token = 6.7 GB/s
    assert recs[10]["fit_kv_bandwidth_bytes_s"] == pytest.approx(20e9 * KV / ATT)
    assert sum(recs[6]["fit_terms_s"].values()) == pytest.approx(recs[6]["fit_step_s"])
    assert abs(recs[3]["fit_rel_err"]) < 1e-6 and "holdout_rel_err" not in recs[3]
    assert abs(recs[6]["holdout_rel_err"]) < 1e-6  # tg64x64, held out
    assert abs(recs[3]["interp_rel_err"]) < 1e-6 and "interp_rel_err" not in recs[6]  # tg64x8: middle
    assert recs[0]["knee_batch_fit"] == pytest.approx(TRUE.knee_batch(F, 150e9), rel=1e-6)
    assert "fit_fixed_s" not in recs[-1]
    for r in recs:  # every field is in the schema
        records.validate({"schema_version": 4, "model": "m", "format": "f", "device": "cpu", **r})


def test_records_without_kernel_terms_are_not_fitted():
    recs = _records(_points(0.0))
    for r in recs:  # schema <= 3: no split of the step's FLOPs
        del r["decode_step_attn_flops_predicted"], r["decode_step_matmul_flops_predicted"]
    fit.annotate(recs)
    assert not any("fit_fixed_s" in r for r in recs)


def test_predicted_fields_split_the_step_by_kernel():
    s = formulas.ModelShape(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128,
                            vocab=100, tied_embeddings=True, name="t")
    fmt = get_format("bf16")
    r = formulas.predicted_fields(s, fmt, PEAKS, "tg", n_prompt=8, n_gen=4, batch=4, depth=100,
                                  compute_dtypes=("bf16",))
    # contexts 108..111 held, mean 109.5; 4 · 4 heads · 16 = 256 FLOPs per token per layer, 2 layers
    assert r["decode_step_attn_flops_predicted"] == pytest.approx(4 * 109.5 * 256 * 2)
    assert r["decode_step_attn_flops_predicted"] + r["decode_step_matmul_flops_predicted"] == \
        pytest.approx(r["decode_step_flops_predicted"])
    assert r["decode_gemm_flop_s"] == 18e9  # M = 4
    assert "attn_flop_s_calibrated" not in r  # this calibration has no attention figure
    # the attention kernel's own dtype, not the faster fp32 (the arith-cpu run: bf16 4.6 GFLOP/s
    # alone, fp32 36, and bf16's fitted rate 3.6)
    peaks = dataclasses.replace(PEAKS, attn_flop_s={"bf16": 4.6e9, "fp32": 36e9})
    kw = dict(n_prompt=8, n_gen=4, batch=4, depth=100)
    assert formulas.predicted_fields(s, fmt, peaks, "tg", compute_dtypes=("bf16",), **kw)[
        "attn_flop_s_calibrated"] == 4.6e9
    assert formulas.predicted_fields(s, get_format("fp32"), peaks, "tg", compute_dtypes=("fp32",), **kw)[
        "attn_flop_s_calibrated"] == 36e9
    peaks = dataclasses.replace(PEAKS, attn_flop_s={"fp32": 36e9})  # no bf16 figure: fp32's
    assert formulas.predicted_fields(s, fmt, peaks, "tg", compute_dtypes=("bf16",), **kw)[
        "attn_flop_s_calibrated"] == 36e9


def test_llama_cpp_attention_counts_the_padded_cells_it_iterates():
    """llama.cpp attends over n_kv cells: the cells in use rounded up to 256, at least 256, capped
    at the cache's cells per sequence (llama_kv_cache::get_n_kv)."""
    assert [formulas.attended_cells(u, 256, 2176) for u in (1, 48, 256, 257, 300, 2096)] == \
        [256, 256, 256, 512, 512, 2176]
    assert formulas.attended_cells(48, 256, 128) == 128  # a batched context's smaller stream
    assert formulas.attended_cells(48) == 48  # no padding: the tokens held
    s = formulas.ModelShape(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128,
                            vocab=100, tied_embeddings=True, name="t")
    fmt = get_format("gguf-q4_0")
    kw = dict(n_prompt=8, n_gen=4, batch=4, compute_dtypes=("fp32",))
    # depth 0: contexts 8..11, so 9..12 cells in use, each step iterating 256 of the 2176
    r = formulas.predicted_fields(s, fmt, PEAKS, "tg", kv_pad=256, kv_cells=2176, **kw)
    assert r["decode_step_attn_flops_predicted"] == 4 * 256 * 256 * 2  # batch · cells · 4·H·h · layers
    assert formulas.predicted_fields(s, fmt, PEAKS, "tg", **kw)["decode_step_attn_flops_predicted"] == \
        pytest.approx(4 * 9.5 * 256 * 2)
    # depth 250: 259..262 cells in use, 512 iterated; the matmul half does not move
    deep = formulas.predicted_fields(s, fmt, PEAKS, "tg", kv_pad=256, kv_cells=2176, depth=250, **kw)
    assert deep["decode_step_attn_flops_predicted"] == 4 * 512 * 256 * 2
    assert deep["decode_step_matmul_flops_predicted"] == r["decode_step_matmul_flops_predicted"]


# --- end to end: the dummy backend through the runner, and real KV bytes at depth on `tiny`

def test_runner_sweeps_threads_and_depths(tmp_path, tiny):
    suite = Suite(name="sw", model="tiny", formats=("dummy",), prompt_lengths=(16,), gen_tokens=4,
                  gen_prompt_tokens=4, min_samples=2, time_budget_s=1.0, n_ctx=32, ppl_windows=1,
                  kld_tokens=0, decode_batches=(2, 4, 8), depths=(32, 64), threads=(1, 2))
    out = runner.run(suite, tmp_path / "r.jsonl")
    got = {r["workload"]: r for r in records.read(out)}
    assert set(got) == {str(w) for w in suite.workloads()}
    assert all(r["status"] == "ok" for r in got.values()), {k: r["reason"] for k, r in got.items()}
    assert got["tg4@d64@t2"]["threads"] == 2 and got["tg4@d64@t1"]["threads"] == 1
    assert got["tg4@d64@t2"]["depth"] == 64 and got["load@t1"]["depth"] == 0
    assert got["pp16@d64@t1"]["n_prompt"] == 16
    # every decode record of a variant carries the fit over its 6 points; the held-out ones theirs
    assert all(got[f"{w}@t1"]["fit_points"] == 6 for w in ("tg4", "tg4x2", "tg4x4", "tg4x8", "tg4@d64"))
    assert {w for w in got if "holdout_rel_err" in got[w]} == {"tg4x8@t1", "tg4@d64@t1", "tg4x8@t2",
                                                              "tg4@d64@t2"}
    assert got["tg4@t1"]["peaks"]["name"].endswith("-1t") and got["tg4@t2"]["peaks"]["name"].endswith("-2t")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["bf16", "gguf-q8_0"])
def test_kv_bytes_at_depth_equal_the_prediction(tiny, fmt):
    from quantbench.backends import get_backend_class
    from quantbench.core.variant import Variant

    suite = Suite(prompt_lengths=(32,), gen_tokens=8, n_ctx=64, depths=(200,), decode_batches=(3,),
                  cross_batches_depths=True)
    f = get_format(fmt)
    if f.backend == "gguf":
        pytest.importorskip("llama_cpp")
    b = get_backend_class(f.backend)(Variant(tiny.name, tiny.dir, tiny.digest, f, "cpu", 2, suite))
    b.build()
    b.load()
    ids = list(range(100, 400))
    try:
        def predicted(tokens, batch=1):  # tiny: 2 layers x 3 KV heads x 64, 16-bit cache
            return formulas.kv_cache_bytes(2, 3, 64, tokens, batch, 2)

        b.prefill(ids[:200])
        assert b.kv_cache_bytes() == predicted(200)
        if f.backend == "gguf":  # what its attention iterates: n_kv padded to 256, per sequence
            assert b.info["kv_attend_pad"] == 256 and b.info["kv_cells_per_seq"] == b.llm.n_ctx()
        tok = b.extend(ids[200:232])
        assert b.kv_cache_bytes() == predicted(232) == 232 * 1536
        b.decode(tok)
        assert b.kv_cache_bytes() == predicted(233)
        b.prefill_batch(ids[:200], 3)
        if f.backend == "gguf":  # three streams of their own (kv_unified off), each a third
            n = b.llama_cpp.llama_n_ctx(b.bctx)
            assert b.info["kv_cells_per_seq"] == n // 3 >= 200 + 16 + 8 + 8
        toks = b.extend_batch(ids[200:216], 3)
        assert b.kv_cache_bytes() == predicted(216, 3)
        b.decode_batch(toks)
        assert b.kv_cache_bytes() == predicted(217, 3)
        # the same greedy token whether the prompt came at once or on top of a filled cache
        assert tok == b.prefill(ids[:232])
        if f.backend == "gguf":  # back on the main context: its cells again
            assert b.info["kv_cells_per_seq"] == b.llm.n_ctx()
    finally:
        b.close()


# --- the report section, from synthetic sweep records written through the schema check

def _sweep_records(model, fmt, params, weights, bw_cal=10e9, sweep=True):
    """Decode records of one variant made by a known step model (t_fixed 12 ms, t_seq 0.5 ms,
    attention at 20 GFLOP/s, matmuls at 1.25x the GEMM calibrated by M: 2 bytes a param read at
    6 GB/s at M = 1), fitted by fit.annotate as the runner does."""
    truth = fit.Fit(0.012, 0.0005, 20e9, 1.25, 0)
    gemm = {"1": 2 * 6e9 * params / weights, "4": 20e9, "16": 60e9, "64": 120e9}
    grid = [(0, 1), (0, 4), (0, 16), (0, 64), (1024, 1), (4096, 1)] if sweep else [(0, 1)]
    peaks = {"name": "local-cpu-2t", "flop_s": {"fp32": 80e9}, "bandwidth_bytes_s": bw_cal,
             "memory_bytes": 8e9, "source": "measured", "gemm_flop_s_by_m": {"fp32": gemm},
             "attn_flop_s": {"fp32": 30e9}}
    out = []
    for d, b in grid:
        g = formulas.gemm_flop_s_at(Peaks(**peaks), ("fp32",), b)
        byt, att, mm = weights + b * (d + 40) * KV, b * (d + 40) * ATT, b * 2 * params
        fl = att + mm
        t = truth.step_s(fit.Point("", d, b, att, mm, g, 1.0))
        out.append({"schema_version": 4, "model": model, "format": fmt, "device": "cpu", "status": "ok",
                    "workload": str(Workload("tg", 32, b, d)), "depth": d, "batch": b, "threads": 2,
                    "env": {"host": "h"}, "peaks": peaks, "params": params, "n_layers": 30,
                    "weights_bytes_predicted": weights, "decode_step_bytes_predicted": byt,
                    "decode_step_flops_predicted": fl, "decode_step_attn_flops_predicted": att,
                    "decode_step_matmul_flops_predicted": mm, "decode_gemm_flop_s": g,
                    "decode_steps_timed": 62, "decode_ci95_rel": 0.025,
                    "attn_flop_s_calibrated": 30e9, "decode_tok_s": b / t,
                    "decode_tok_s_predicted": b / max(byt / bw_cal, fl / 80e9),
                    "decode_sol_frac": max(byt / bw_cal, fl / 80e9) / t,
                    "knee_batch_predicted": 80e9 / bw_cal * weights / (2 * params),
                    "timestamp": "2026-11-30T00:00:00Z"})
    out.append({"schema_version": 4, "model": model, "format": fmt, "device": "cpu", "status": "ok",
                "workload": "pp128@d1024", "depth": 1024, "threads": 2, "env": {"host": "h"},
                "kv_cache_bytes": 1152 * KV, "kv_cache_bytes_predicted": 1152 * KV})
    fit.annotate(out)
    return out


def test_report_section_arithmetic_vs_measurement(tmp_path):
    from quantbench.report.render import arith_rows, write_report

    path = tmp_path / "sweep.jsonl"
    records.append(path, _sweep_records("embedded:smollm2-135m", "bf16", 134_515_008, 270_000_000))
    records.append(path, _sweep_records("embedded:smollm2-135m", "gguf-q4_0", 134_515_008, 90_000_000))
    for model, params in (("shape:smollm2-360m", 361_821_120), ("shape:llama-3.2-1b", 1_235_814_400)):
        records.append(path, _sweep_records(model, "bf16", params, 2 * params, sweep=False))
    rows, ladder = arith_rows(records.read_results(path))
    bf16 = next(r for r in rows if r["format"] == "bf16" and r["model"] == "embedded:smollm2-135m")
    # fixed: 12 ms of overhead alone (the matmul term prices the weights' read at M = 1)
    assert bf16["fixed_s"] == pytest.approx(0.012, rel=1e-6) and bf16["weights_s"] == pytest.approx(0.027)
    assert bf16["overhead_s"] == pytest.approx(0.012, rel=1e-6)
    assert bf16["seq_s"] == pytest.approx(0.0005, rel=1e-6) and bf16["gemm_scale"] == pytest.approx(1.25)
    assert (bf16["attn_flop_s"], bf16["attn_cal_flop_s"]) == (pytest.approx(20e9), 30e9)
    assert (bf16["gemm_top_flop_s"], bf16["gemm_top_cal_flop_s"]) == (pytest.approx(120e9 / 1.25), 120e9)
    # attention as bytes: 20 GFLOP/s over 69,120 FLOPs and 23,040 bytes per cached token
    assert bf16["kv_bandwidth_bytes_s"] == pytest.approx(20e9 * KV / ATT, rel=1e-6)
    # the KV slope: one cached token's attention at 20 GFLOP/s, measured; its bytes at 10 GB/s predicted
    assert bf16["kv_slope_s"] == pytest.approx(ATT / 20e9, rel=1e-3)
    assert bf16["kv_slope_predicted_s"] == pytest.approx(KV / 10e9, rel=1e-6)
    assert bf16["kv_bytes_match"] is True and set(bf16["holdout"]) == {"tg32x64", "tg32@d4096"}
    assert max(abs(e) for e in bf16["holdout"].values()) < 1e-6
    assert set(bf16["interp"]) == {"tg32x16", "tg32@d1024"}
    # the ladder: 135M and 360M fitted (t_layer · layers + bytes / BW_eff), the 1B predicted
    (lad,) = [x for x in ladder if x["format"] == "bf16"]
    assert lad["held_out"] == "shape:llama-3.2-1b" and lad["fitted_on"] == [
        "embedded:smollm2-135m", "shape:smollm2-360m"]
    html = open(write_report([str(path)], str(tmp_path / "r.html"))[0]).read()
    assert "<h2>Arithmetic vs measurement</h2>" in html and 'id="arith"' in html
    for plot in ("depth-embedded-smollm2-135m-h-cpu-t2", "batch-embedded-smollm2-135m-h-cpu-t2",
                 "ladder-h-cpu-t2"):
        assert f'id="{plot}"' in html
    md = (tmp_path / "r.md").read_text()
    assert "## Arithmetic vs measurement" in md and "| embedded:smollm2-135m | bf16 | 2 | 12.0 | 0.5 | 27.0 |" in md
    assert "| 20 / 30 | 1.25 |" in md  # attention fitted beside alone; k_mm
    assert "tg32x64 +0.0 % (62 steps, ±2.5 %)" in md  # what each held-out point rests on
    assert bf16["misses"] == [] and "held-out miss" not in md
    # the deepest bf16 point 40 % slower than its terms: the report names attention and its evidence
    recs = _sweep_records("embedded:smollm2-135m", "bf16", 134_515_008, 270_000_000)
    for r in recs:
        if r["workload"] == "tg32@d4096":
            r["decode_tok_s"] /= 1.4
    slow = tmp_path / "slow.jsonl"
    records.append(slow, recs)
    html = open(write_report([str(slow)], str(tmp_path / "s.html"))[0]).read()
    assert "Held-out misses beyond ±15 %" in html
    line = next(x for x in (tmp_path / "s.md").read_text().splitlines() if x.startswith("- held-out miss"))
    assert line.startswith("- held-out miss: bf16 (embedded:smollm2-135m) tg32@d4096: -28.6 % — attention")
    assert "GFLOP/s implied here against 20 fitted" in line


def test_ladder_fit_per_layer_overhead():
    # 1 ms per layer + bytes at 8 GB/s, exact: recovered, and a third model predicted to rounding
    layers, bytes_ = np.array([30.0, 32.0, 16.0]), np.array([270e6, 724e6, 2.47e9])
    t = 1e-3 * layers + bytes_ / 8e9
    c, a = fit.fit_layers(layers[:2], bytes_[:2], t[:2])
    assert c == pytest.approx(1e-3) and 1 / a == pytest.approx(8e9)
    rows = [{"host": "h", "device": "cpu", "format": "bf16", "threads": 2, "model": m, "params": p,
             "n_layers": n, "points": [{"depth": 0, "batch": 1, "bytes": b, "tok_s": 1 / s}]}
            for m, p, n, b, s in zip("abc", (1, 2, 3), layers, bytes_, t, strict=True)]
    (x,) = fit.ladder_holdout(rows)
    assert x["held_out"] == "c" and x["fitted_on"] == ["a", "b"]
    assert x["rel_err"] == pytest.approx(0, abs=1e-9)


def test_ladder_reports_the_stream_priced_alternative_beside_the_flat_fit():
    """Three rungs whose weights read at the calibrated rate of their width (x 1.25) plus 1 ms per
    layer: the stream-priced alternative recovers k_bw and predicts the largest exactly; the flat
    fit (the prediction, rel_err), fitted on the slow small rungs, predicts it too slow."""
    layers, bytes_ = np.array([30.0, 32.0, 24.0, 16.0]), np.array([270e6, 724e6, 988e6, 2.47e9])
    stream = np.array([9e9, 12e9, 12e9, 20e9])  # 576, 960, 896, 2048 wide
    t = 1e-3 * layers + 1.25 * bytes_ / stream
    rows = [{"host": "h", "device": "cpu", "format": "bf16", "threads": 2, "model": m, "params": p,
             "n_layers": n, "gemv_bytes_s": g, "points": [{"depth": 0, "batch": 1, "bytes": b, "tok_s": 1 / s}]}
            for m, p, n, b, s, g in zip("abcd", (1, 2, 3, 4), layers, bytes_, t, stream, strict=True)]
    (x,) = fit.ladder_holdout(rows)
    assert x["held_out"] == "d" and x["fitted_on"] == ["a", "b", "c"]
    assert x["stream_scale"] == pytest.approx(1.25) and x["rel_err_stream"] == pytest.approx(0, abs=1e-9)
    assert x["rel_err"] > 0.15 and x["stream_bytes_s"]["a"] == 9e9
    rows[0]["gemv_bytes_s"] = None  # one rung without the calibration: the flat fit alone
    (y,) = fit.ladder_holdout(rows)
    assert y["stream_scale"] is None and y["rel_err_stream"] is None and y["rel_err"] == x["rel_err"]


def test_a_held_out_miss_names_its_term_and_the_rate_the_measurement_implies():
    """Attention at the deepest depth made twice as slow as the fit on the rest says: the miss is
    the attention term's, and the rate the measurement implies is what is left of the step once the
    other fitted terms are subtracted. A batch point 30 % slower is the batch terms'."""
    pts = _points(0.0)
    deep = next(p for p in pts if p.workload == "tg64x1@d8192")
    t = TRUE.terms_s(deep)
    slow = dataclasses.replace(deep, step_s=deep.step_s + t["attn"])  # attention costs 2×
    big = next(p for p in pts if p.workload == "tg64x64@d0")
    slower = dataclasses.replace(big, step_s=big.step_s * 1.3)
    got = fit.diagnose([slow if p is deep else slower if p is big else p for p in pts])
    by = {m.workload: m for m in got}
    assert set(by) == {"tg64x1@d8192", "tg64x64@d0"}
    a = by["tg64x1@d8192"]
    assert a.term == "attn" and a.rel_err == pytest.approx(deep.step_s / slow.step_s - 1, abs=1e-6)
    assert a.fitted == pytest.approx(20e9, rel=1e-6) and a.implied == pytest.approx(10e9, rel=1e-6)
    assert a.term_measured_s == pytest.approx(2 * t["attn"], rel=1e-6)
    assert a.kv_bytes == deep.kv_bytes and "R_attn 10 GFLOP/s implied here against 20 fitted" in a.text()
    b = by["tg64x64@d0"]
    tb = TRUE.terms_s(big)
    assert b.term == "batch" and b.rel_err == pytest.approx(1 / 1.3 - 1, abs=1e-6)
    assert b.fitted == pytest.approx((tb["seq"] + tb["gemm"]) / 64, rel=1e-6)
    assert b.implied == pytest.approx((1.3 * big.step_s - tb["fixed"] - tb["attn"]) / 64, rel=1e-6)
    # within the bar: nothing to name
    assert fit.diagnose(pts) == [] and fit.diagnose([slow if p is deep else p for p in pts], bar=0.6) == []
