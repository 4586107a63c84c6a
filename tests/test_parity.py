"""Parity's table logic on canned output of llama-bench and llama-perplexity (this machine's, 0.3.36)."""
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from quantbench import parity
from quantbench.parity import Measure

DATA = Path(__file__).parent / "data"


def test_llama_bench_json_gives_median_tok_s():
    text = (DATA / "llama-bench-q4_0.json").read_text()
    raw = {("pp512" if r["n_gen"] == 0 else "tg64"): r["samples_ts"] for r in json.loads(text)}
    got = parity.parse_llama_bench("main: some banner line\n" + text)  # chatter before the JSON
    assert set(got) == {"pp512", "tg64"}
    for k in got:
        assert got[k]["tok_s"] == statistics.median(raw[k]) and got[k]["threads"] == 2
    assert got["tg64"]["model_filename"].endswith("model-Q4_0.gguf")
    with pytest.raises(ValueError, match="no JSON array"):
        parity.parse_llama_bench("error: failed to load model")


def test_llama_perplexity_logs_give_ppl_kld_and_top1():
    f16 = parity.parse_llama_perplexity((DATA / "llama-perplexity-f16.log").read_text())
    assert f16 == {"chunks": 3, "n_ctx": 512, "ppl": 11.23, "ppl_stderr": 1.05305}
    q4 = parity.parse_llama_perplexity((DATA / "llama-perplexity-q4_0-kld.log").read_text())
    assert q4["ppl"] == 13.884604 and q4["kld_mean"] == 0.238888 and q4["chunks"] == 3
    assert math.isclose(q4["top1_agree"], 0.76993)
    with pytest.raises(ValueError, match="no perplexity"):
        parity.parse_llama_perplexity("main: error: unable to load model")


def _rec(fmt, workload, **kw):
    return {"format": fmt, "workload": workload, "status": "ok", **kw}


def test_quantbench_measures_take_batch_one_depth_zero_and_the_engine_time():
    recs = [_rec("gguf-q4_0", "pp512", prefill_tok_s=900.0, engine_prefill_s=0.5),
            _rec("gguf-q4_0", "tg64", decode_tok_s=200.0, engine_decode_s=0.0049),
            _rec("gguf-q4_0", "tg64x4", decode_tok_s=500.0),
            _rec("gguf-q4_0", "tg64@d512", decode_tok_s=150.0),
            _rec("gguf-q4_0", "ppl512", ppl=13.9, kld_reference="gguf-f16", kld_mean=0.24),
            _rec("gguf-f16", "ppl512", ppl=11.2, kld_reference="gguf-f16", kld_mean=0.0),
            {**_rec("bf16", "tg64", decode_tok_s=30.0), "status": "failed"}]
    got = {(m.format, m.metric, m.side): m.value for m in parity.quantbench_measures(recs, 1)}
    assert got == {("gguf-q4_0", "pp512", "quantbench"): 900.0, ("gguf-q4_0", "pp512", "engine"): 1024.0,
                   ("gguf-q4_0", "tg64", "quantbench"): 200.0, ("gguf-q4_0", "tg64", "engine"): 1 / 0.0049,
                   ("gguf-q4_0", "ppl", "quantbench"): 13.9, ("gguf-q4_0", "kld", "quantbench"): 0.24,
                   ("gguf-f16", "ppl", "quantbench"): 11.2}  # the reference's own KLD is no comparison


def test_table_medians_over_rounds_ratio_and_targets():
    bench = parity.parse_llama_bench((DATA / "llama-bench-q4_0.json").read_text())
    ms = [Measure("gguf-q4_0", k, "reference", rnd, v["tok_s"] * f, "llama-bench")
          for rnd, f in ((1, 1.0), (2, 1.02), (3, 0.98)) for k, v in bench.items()]
    # quantbench: decode at parity, prefill 10 % short (a miss), three rounds each
    ms += [Measure("gguf-q4_0", "tg64", "quantbench", r, bench["tg64"]["tok_s"] * x) for r, x in
           ((1, 0.99), (2, 1.0), (3, 0.5))]
    ms += [Measure("gguf-q4_0", "pp512", "quantbench", r, bench["pp512"]["tok_s"] * 0.9) for r in (1, 2, 3)]
    ms += [Measure("gguf-q4_0", "ppl", "quantbench", 1, 13.90), Measure("gguf-q4_0", "ppl", "reference", 1,
                                                                       13.884604, "llama-perplexity"),
           Measure("gguf-q4_0", "kld", "quantbench", 1, 0.27), Measure("gguf-q4_0", "kld", "reference", 1,
                                                                      0.238888, "llama-perplexity"),
           Measure("bf16", "tg64", "quantbench", 1, 30.0)]  # no reference: no row
    t = parity.parity_table(ms).set_index(["format", "metric"])
    assert len(t) == 4
    tg = t.loc[("gguf-q4_0", "tg64")]
    # the ratio pairs each round with its own reference: 0.99/1.0, 1.0/1.02, 0.5/0.98 -> median 1/1.02;
    # the slow third round does not drag it below the target, the medians of the sides alone would
    assert math.isclose(tg.ratio, 1 / 1.02) and tg.ok and tg.rounds == 3 and tg.tool == "llama-bench"
    assert math.isclose(tg.quantbench / tg.reference, 0.99)
    assert math.isclose(t.loc[("gguf-q4_0", "pp512")].ratio, 0.9) and not t.loc[("gguf-q4_0", "pp512")].ok
    assert t.loc[("gguf-q4_0", "ppl")].ok  # 0.11 % off, within 0.5 %
    assert not t.loc[("gguf-q4_0", "kld")].ok  # 13 % off, outside 10 %
    md = parity.parity_markdown(t.reset_index())
    assert md.count("**MISS**") == 2 and "| gguf-q4_0 | tg64 | llama-bench |" in md


def test_a_ratio_off_target_is_judged_against_its_rounds_spread():
    """Seven rounds: the CI of the median ratio is the extreme rounds' (P(Bin(7, 1/2) <= 0) = 0.8 %);
    a median off target whose CI reaches 0.97-1.03 is 'within noise', one whose CI does not is a MISS."""
    assert parity.ratio_ci([1.0] * 5) is None  # under 6 rounds: no CI
    assert parity.ratio_ci([0.9, 1.1, 1.0, 0.95, 1.2, 0.8, 1.05]) == (0.8, 1.2)
    assert parity.ratio_ci(list(range(1, 10))) == (2, 8)  # 9 rounds: one dropped from each end
    ms = []
    for rnd, (a, b) in enumerate(zip((1.15, 0.89, 1.04, 0.93, 1.05, 1.3, 0.96),  # median 1.04, spans
                                     (0.90, 0.92, 0.91, 0.93, 0.89, 0.94, 0.90), strict=True), 1):  # 0.91
        ms += [Measure("gguf-q8_0", "tg64", "reference", rnd, 100.0, "llama-bench"),
               Measure("gguf-q8_0", "tg64", "quantbench", rnd, 100.0 * a),
               Measure("gguf-q8_0", "pp512", "reference", rnd, 100.0, "llama-bench"),
               Measure("gguf-q8_0", "pp512", "quantbench", rnd, 100.0 * b)]
    t = parity.parity_table(ms).set_index(["format", "metric"])
    tg, pp = t.loc[("gguf-q8_0", "tg64")], t.loc[("gguf-q8_0", "pp512")]
    assert math.isclose(tg.ratio, 1.04) and tg.ratio_ci == (0.89, 1.3) and tg.verdict == "within noise"
    assert math.isclose(pp.ratio, 0.91) and pp.ratio_ci == (0.89, 0.94) and pp.verdict == "MISS"
    assert not tg.ok and not pp.ok  # neither meets the target: `quantbench parity` exits 1
    md = parity.parity_markdown(t.reset_index())
    assert "| 0.890–1.300 |" in md and "within noise" in md and md.count("**MISS**") == 1


def test_bench_argv_matches_quantbenchs_protocol(tmp_path):
    argv = parity.BenchRun("m.gguf", 2, 512, 64).argv(tmp_path)
    assert argv[0] == str(tmp_path / "bin" / "llama-bench")
    flags = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert flags == {"-m": "m.gguf", "-t": "2", "-p": "512", "-n": "64", "-fa": "1", "-r": "5", "-ngl": "0",
                     "--repack": "1", "-o": "json"}
    # the harness variant's kernel path: extra buffer types off -> llama-bench --repack 0
    rec = {"kernel": "llama.cpp:CPU", "kernel_detail": {"extra_bufts": False}}
    off = parity.BenchRun("m.gguf", 2, 512, 64, repack=parity.repacks(rec)).argv(tmp_path)
    assert off[off.index("--repack") + 1] == "0"
    assert parity.repacks({"kernel": "llama.cpp F16 (CPU)"})  # schema-2 records ran the default


def test_parity_refuses_formats_it_cannot_compare(tmp_path):
    suite = tmp_path / "p.toml"
    suite.write_text('name = "p"\nmodel = "tiny"\nformats = ["gguf-q4_0", "bnb-int8"]\n')
    r = subprocess.run([sys.executable, "-m", "quantbench", "parity", "--suite", str(suite),
                        "--out-dir", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "drop bnb-int8" in r.stderr


def test_per_run_rate_is_llama_benchs_estimator():
    """tokens / total time per repetition, median over repetitions; a slow step lowers it, unlike
    quantbench's 1 / median step."""
    steps = [0.01, 0.01, 0.01, 0.01, 0.01, 0.04, 0.01, 0.01, 0.01]  # three repetitions of 3 steps
    assert math.isclose(parity._per_run_tok_s(steps, 3), 100.0)  # rates 100, 50, 100
    recs = [_rec("gguf-q4_0", "tg4", decode_tok_s=100.0, decode_samples_s=steps)]
    got = {m.side: m.value for m in parity.quantbench_measures(recs, 1)}
    assert got == {"quantbench": 100.0, "per_run": 100.0}
    recs[0]["decode_samples_s"] = [0.01, 0.01, 0.04, 0.01, 0.01, 0.04]
    assert math.isclose(parity.quantbench_measures(recs, 1)[1].value, 50.0)


def test_both_sides_state_their_kernel_path():
    bench = parity.parse_llama_bench((DATA / "llama-bench-q4_0.json").read_text())
    # llama-bench's own JSON: repack on, 2 threads, a 512-token prompt in one micro-batch of 512
    assert parity.path_text(bench["pp512"]["path"]) == "repack=1 threads=2 ubatch=512 fa=1 depth=0 kv=f16"
    assert parity.path_text(bench["tg64"]["path"]) == "repack=1 threads=2 fa=1 depth=0 kv=f16"  # one token
    rec = {"workload": "pp512", "threads": 2, "kv_type": "f16", "backend": "gguf",
           "kernel_detail": {"extra_bufts": False, "n_ubatch": 1024, "n_batch": 1024, "flash_attn": True}}
    qb = parity.path_text(parity.harness_path(rec))
    assert qb == "repack=0 threads=2 ubatch=512 fa=1 depth=0 kv=f16"
    assert parity.path_diff(qb, parity.path_text(bench["pp512"]["path"])) == "repack 0 vs 1"
    assert parity.path_diff(qb, "threads=2") == ""  # keys one side does not state are not compared


def _paths_table(qb_path, ref_path, ratio):
    ms = [Measure("gguf-q4_0", "tg64", "reference", r, 100.0, "llama-bench", ref_path) for r in (1, 2)]
    ms += [Measure("gguf-q4_0", "tg64", "quantbench", r, 100.0 * ratio, path=qb_path) for r in (1, 2)]
    return parity.parity_table(ms).set_index(["format", "metric"]).loc[("gguf-q4_0", "tg64")]


def test_a_ratio_above_parity_is_flagged_with_where_the_paths_differ():
    row = _paths_table("repack=1 threads=2 fa=1 depth=0", "repack=0 threads=2 fa=1 depth=0", 1.18)
    assert not row.ok and row.note == "faster than the engine's own benchmark: paths differ in repack 1 vs 0"
    row = _paths_table("repack=0 threads=2", "repack=0 threads=2", 1.18)
    assert not row.ok and "same stated path: unexplained" in row.note
    row = _paths_table("repack=0 threads=2", "repack=0 threads=2", 1.01)
    assert row.ok and row.note == "" and row.target == "0.97–1.03"
    md = parity.parity_markdown(parity.parity_table(
        [Measure("gguf-q4_0", "tg64", "reference", 1, 100.0, "llama-bench", "repack=0 threads=4"),
         Measure("gguf-q4_0", "tg64", "quantbench", 1, 99.0, path="repack=0 threads=2")]))
    assert "| repack=0 threads=2 | repack=0 threads=4 | paths differ in threads 2 vs 4 |" in md


def test_gguf_records_name_the_openmp_runtime():
    from quantbench.backends.gguf import openmp_runtime

    maps = ("7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0\n"
            "7f02-7f03 r--p 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0\n"
            "7f04-7f05 r-xp 00000000 08:01 2 /opt/torch/lib/libiomp5.so\n"
            "7f06-7f07 rw-p 00000000 00:00 0 \n7f08-7f09 r-xp 00000000 08:01 3 /usr/lib/libm.so.6\n")
    assert openmp_runtime(maps) == ("libgomp.so.1.0.0 (/usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0); "
                                    "libiomp5.so (/opt/torch/lib/libiomp5.so)")
    assert openmp_runtime("") == ""
