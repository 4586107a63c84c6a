"""The one variant type across the process boundary (core.variant), and the one place that
computes speed of light (arith.sol) read alike by the worker, the pivot and the report."""
import dataclasses
import io
import json
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantbench.arith import hardware, sol
from quantbench.core import records
from quantbench.core.formats import get_format
from quantbench.core.suite import Suite
from quantbench.core.variant import Reference, Variant
from quantbench.measure import runner


def _every_field_set() -> Variant:
    suite = Suite(name="full", formats=("gguf-q4_0+kv-q8_0",), devices=("cuda:1",), threads=(2, 6),
                  decode_batches=(4,), artifacts={"gguf-q4_0": "/models/m.gguf"})
    return Variant("smollm2", "/models/smollm2", "abc123", get_format("gguf-q4_0+kv-q8_0"), "cuda:1", 6, suite,
                   random_weights=True, workloads=tuple(suite.workloads()), data="/tmp/d.npz",
                   tokens_path="/cache/ids.npy", calib_start=10240, corpus_key="tok-k1",
                   reference=Reference("fp32", "/cache/ref.npy", "read", "why not"), partial="/tmp/p.jsonl",
                   base={"model": "smollm2", "env": {"gpu": "NVIDIA H100"}, "peaks_spec": {"name": "h100"}},
                   peaks={"name": "local", "flop_s": {"fp32": 1e12}, "bandwidth_bytes_s": 2e10},
                   kernel_fallback="gguf-q4_0 crashed on llama.cpp:AMX")


def test_a_variant_with_every_field_set_round_trips_through_json():
    v = _every_field_set()
    for f in dataclasses.fields(Variant):  # a new field fails here until this test sets it
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        assert getattr(v, f.name) != default, f.name
    text = v.to_json()
    assert Variant.from_json(text) == v
    d = json.loads(text)  # plain JSON: the format by name, workloads by their short names
    assert d["format"] == "gguf-q4_0+kv-q8_0" and d["workloads"][:2] == ["load@t2", "pp128@t2"]
    back = Variant.from_json(text)
    assert back.format.kv_type == "q8_0" and back.artifact == "/models/m.gguf"
    assert back.tag == "[gguf-q4_0+kv-q8_0/cuda:1]"


def test_only_the_backends_fields_are_positional():
    with pytest.raises(TypeError):
        Variant("m", "", "", get_format("dummy"), "cpu", 1, Suite(), "/ids.npy")  # tokens_path by name only


SUITE = Suite(name="variant-test", model="dummy", formats=("dummy",), prompt_lengths=(16,), gen_tokens=8,
              gen_prompt_tokens=4, n_ctx=16, ppl_windows=1, kld_tokens=16, min_samples=2, time_budget_s=0.5,
              threads=1)
PEAKS = dataclasses.asdict(hardware.Peaks("local", {"fp32": 1e13}, 2e10, 8e9, "measured", threads=1))
SPEC = dataclasses.asdict(hardware.Peaks("datasheet", {"fp32": 1e13}, 8e10, 8e9, "spec"))


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """Returns (the variant the runner made, the records the worker process wrote from its JSON)."""
    tmp = tmp_path_factory.mktemp("variant")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QUANTBENCH_CACHE", str(tmp / "cache"))
        data = tmp / "data.npz"
        np.savez(data, windows=np.arange(1, 17, dtype=np.int32)[None], prompt=np.arange(1, 40, dtype=np.int32))
        model = types.SimpleNamespace(name="m", dir="shape:smollm2-135m", digest="d0", random_weights=False)
        base = {"schema_version": records.SCHEMA_VERSION, "model": "m", "run_id": "r1", "env": {}}
        r = runner._Run(SUITE, model, runner.Output(tmp / "r.jsonl", False), set(), base, SUITE.workloads(), tmp,
                        SUITE.suite_hash, data, tmp / "ids.npy", "tok-k", {("cpu", 1): PEAKS})
        v = r.variant("cpu", "dummy", SUITE.workloads(), "dummy", 1, kernel_fallback="asked for by the test")
        v = dataclasses.replace(v, base={**v.base, "peaks_spec": SPEC})  # as a GPU in the devices table
        ended = runner._measure(r, v, "dummy-cpu", {})  # writes the JSON, runs the worker process on it
        assert ended.rc == 0, ended
        return v, records.read(Path(v.partial))


def test_the_worker_reads_what_the_runner_wrote(measured):
    v, recs = measured
    assert v.reference.role == "write" and v.calib_start == 16 and v.corpus_key == "tok-k"
    assert [r["workload"] for r in recs] == ["load", "pp16", "tg8", "ppl16"]
    for r in recs:
        assert r["status"] == "ok", r["reason"]
        assert (r["format"], r["device"], r["threads"], r["kernel_fallback"]) == ("dummy", "cpu", 1,
                                                                                  "asked for by the test")
        assert (r["model"], r["run_id"], r["peaks"], r["peaks_spec"]) == ("m", "r1", PEAKS, SPEC)
    ppl = recs[-1]  # the reference format writes the log-probs where the variant said
    assert ppl["kld_reference"] == "dummy" and np.load(v.reference.path).shape == (ppl["kld_tokens"], 1 << 16)
    assert recs[0]["weights_bytes_predicted"] > 0  # the shape and the peaks reached the prediction


SOL = ("prefill_sol_frac", "decode_sol_frac", "decode_sol_frac_spec")


def test_worker_pivot_and_report_show_the_same_sol(measured):
    from quantbench.report import pivot, render

    _, recs = measured
    pp, tg = recs[1], recs[2]
    # the worker's numbers are the formula's ...
    assert pp["prefill_sol_frac"] == pp["prefill_tok_s"] / pp["prefill_tok_s_predicted"]
    assert tg["decode_sol_frac"] == tg["decode_tok_s"] / tg["decode_tok_s_predicted"]
    assert tg["decode_sol_frac_spec"] == tg["decode_tok_s"] / tg["decode_tok_s_predicted_spec"]
    assert tg["decode_tok_s_predicted_spec"] == pytest.approx(4 * tg["decode_tok_s_predicted"], rel=0.05)
    # ... and arith.sol's, recomputed from the record's own figures
    bare = [{k: x for k, x in r.items() if k not in SOL and not k.startswith("sol_suspect")} for r in recs]
    for r, b in zip(recs, bare, strict=True):
        assert {k: r[k] for k in sol.sol_fields(b)} == sol.sol_fields(b)
    want = {"prefill_sol_frac": pp["prefill_sol_frac"], "decode_sol_frac": tg["decode_sol_frac"],
            "decode_sol_frac_spec": tg["decode_sol_frac_spec"]}
    # the pivot reads them, and computes the same from records written without them
    for rs in (recs, bare):
        row = pivot.pivot(pd.json_normalize(rs)).iloc[0]
        assert {k: row[k] for k in SOL} == want
    # the report's table (CSV, full precision) shows the same numbers
    csv = pd.read_csv(io.StringIO(render.render_csv(pd.json_normalize(recs)))).iloc[0]
    assert {k: csv[k] for k in SOL} == pytest.approx(want, rel=1e-12)


def test_every_attribute_a_backend_reads_off_its_variant_exists():
    """Backends in their own environments (OpenVINO, compressed-tensors, AutoRound) are skipped
    where those are not built, as in CI: a name read off the Variant that it does not have would
    only fail there, at build time. Each `variant.NAME` in quantbench/backends/ is checked here."""
    import re

    from quantbench.core.variant import Variant

    names = {f.name for f in dataclasses.fields(Variant)} | {n for n in dir(Variant) if not n.startswith("_")}
    src = Path(__file__).resolve().parents[1] / "quantbench" / "backends"
    read = {(p.name, m) for p in src.glob("*.py")
            for m in re.findall(r"\bvariant\.([A-Za-z_]\w*)", p.read_text())}
    assert len(read) > 30  # the pattern finds the backends' reads
    assert sorted(x for x in read if x[1] not in names) == []
