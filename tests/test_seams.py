"""The seams where untyped data used to cross a boundary: CLI -> suite, runner -> worker,
record -> disk -> report. Each test here failed on the code before its fix."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from quantbench.cli import main
from quantbench.core import records
from quantbench.core.errors import UserError
from quantbench.core.suite import Suite, Workload, load_suite
from quantbench.core.variant import Reference, Variant
from quantbench.track import compare

ROOT = Path(__file__).parent.parent


def _run_args(*argv):
    return main.build_parser().parse_args(["run", *argv])


# bug 1: a flag and a --set of the same key merge; the flag wins; never a traceback
def test_flag_and_set_of_one_key_merge(capsys):
    s = main._suite(_run_args("--set", "threads=2", "--threads", "1"))
    assert s.threads == 1
    assert "overrides --set threads=2" in capsys.readouterr().err
    s = main._suite(_run_args("--set", "threads=2", "--set", "model=tiny", "--set", 'formats=["bf16"]',
                             "--set", 'devices=["cpu"]'))
    assert (s.threads, s.model, s.formats, s.devices) == (2, "tiny", ("bf16",), ("cpu",))
    s = main._suite(_run_args("--set", 'formats=["bf16"]', "--formats", "fp32,gguf-q8_0"))
    assert s.formats == ("fp32", "gguf-q8_0")


# bug 4: the defaults give the timing gate enough samples to fire
def test_default_sample_counts_let_the_timing_gate_fire():
    for n in (Suite().min_samples, load_suite(ROOT / "suites/quick.toml").min_samples):
        worst = compare.mann_whitney_greater([2.0 + i for i in range(n)], [1.0 - i / 10 for i in range(n)])
        assert worst < compare.ALPHA, n
    assert compare.mann_whitney_greater([4, 5, 6], [1, 2, 3]) > compare.ALPHA  # why 3 was too few


# bug 6: a hub failure keeps its first line (401 vs 404), with the token redacted
def test_hub_error_keeps_the_first_line_and_redacts_tokens(monkeypatch):
    import huggingface_hub

    from quantbench.inputs import models

    def boom(*a, **k):
        raise RuntimeError("401 Client Error: gated repo, token hf_AbCdEfGhIjKlMnOp rejected\nmore")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", boom)
    with pytest.raises(UserError) as e:
        models.resolve("org/gated-model")
    msg = str(e.value)
    assert "401 Client Error: gated repo" in msg and "<redacted>" in msg and "hf_AbCd" not in msg
    assert "more" not in msg


# bug 7: when NVML fails the GPU is still named (from torch), and the record says why
def test_gpu_info_says_why_nvml_failed(monkeypatch):
    import torch

    class Props:
        name, total_memory = "NVIDIA H100 80GB HBM3", 80 * 2**30

    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Props)
    info = records.gpu_info()
    assert info["gpu"] == "NVIDIA H100 80GB HBM3" and info["gpu_memory_bytes"] == 80 * 2**30
    assert "NVML unavailable" in info["gpu_info_error"]


# bug 8: a variant cut short by the quality budget is marked partial; ppl is compared on common windows
def test_partial_quality_is_marked_and_compared_on_common_windows():
    from quantbench.measure.timing import score_windows

    class Slow:
        def logits(self, ids):
            import time

            time.sleep(0.05)
            return np.zeros((len(ids), 8), np.float32)

    w = [[1, 2, 3, 4, 5, 6, 7, 0]] * 4
    out = score_windows(Slow(), w, budget_s=0.01)
    assert out["ppl_windows"] == 1 and out["ppl_windows_asked"] == 4 and out["ppl_partial"]
    assert out["window_tokens"] == 3 and math.isclose(out["ppl"], 8.0, rel_tol=1e-6)


def _ppl_rec(fmt, nll, t=256, **kw):
    return {"model": "m", "format": fmt, "device": "cpu", "workload": "ppl512", "status": "ok",
            "schema_version": records.SCHEMA_VERSION, "window_nll": nll, "window_tokens": t, "n_ctx": 512,
            "ppl_windows": len(nll), "ppl": math.exp(sum(nll) / (len(nll) * t)), **kw}


def test_report_ppl_is_over_the_windows_every_variant_scored():
    import pandas as pd

    from quantbench.report.pivot import pivot
    from quantbench.report.render import table

    easy, hard = 256 * math.log(10), 256 * math.log(20)  # later windows are harder text
    full = _ppl_rec("fp32", [easy] * 10 + [hard] * 10)
    short = _ppl_rec("bf16", [easy * 1.01] * 10 + [hard * 1.01], ppl_partial=True)
    t = table(pivot(pd.DataFrame([full, short]))).set_index("format")
    assert full["ppl"] > 14 and short["ppl"] < 12  # what the records say: a gap from the windows
    assert math.isclose(t.loc["fp32", "ppl"], math.exp((10 * easy + hard) / (11 * 256)), rel_tol=1e-9)
    assert t.loc["bf16", "ppl"] > t.loc["fp32", "ppl"]  # the weights' gap, on the same 11 windows
    assert t.loc["bf16", "ppl_windows"] == 11 and t.loc["bf16", "ppl_partial"]


def test_compare_ppl_uses_common_windows():
    base = _ppl_rec("fp32", [256 * math.log(10)] * 5 + [256 * math.log(20)] * 5)
    new = _ppl_rec("fp32", [256 * math.log(10)] * 5)  # same model, cut short
    res = compare.compare([base], [new])
    row = res.table[res.table.metric == "ppl"].iloc[0]
    assert math.isclose(row["base"], 10.0) and math.isclose(row["new"], 10.0) and res.ok


# compare: a metric that went NaN or missing is a regression
@pytest.mark.parametrize("new", [float("nan"), None])
def test_compare_nan_or_missing_metric_is_a_regression(new):
    base = _ppl_rec("fp32", [256.0], kld_mean=0.01, weights_bytes=100)
    res = compare.compare([base], [{**base, "kld_mean": new, "weights_bytes": new}])
    assert not res.ok and len(res.regressions) == 2


# bug 9: a line that is not JSON names the file and the line; a torn last line is set aside loudly
def test_bad_lines_name_file_and_line(tmp_path, capsys):
    p = tmp_path / "r.jsonl"
    p.write_text("this is not json\n")
    with pytest.raises(UserError, match=r"r.jsonl:1: not a JSON record"):
        records.read(p)
    p.write_text('{"model": "m", "form')
    assert records.read(p) == []
    assert "r.jsonl:1: an unterminated last line" in capsys.readouterr().err


# The record schema
def test_schema_rejects_unknown_fields_and_wrong_types():
    ok = {"schema_version": 2, "model": "m", "format": "fp32", "device": "cpu", "workload": "tg64",
          "status": "ok", "decode_tok_s": 12, "decode_samples_s": [0.1, 0.2]}
    records.validate(ok)
    with pytest.raises(records.SchemaError, match="unknown field 'decode_tok'"):
        records.validate({**ok, "decode_tok": 1.0})
    with pytest.raises(records.SchemaError, match="'decode_tok_s' must be float, got str"):
        records.validate({**ok, "decode_tok_s": "12"})
    with pytest.raises(records.SchemaError, match="'weights_bytes' must be int, got float"):
        records.validate({**ok, "weights_bytes": 1.5})
    with pytest.raises(records.SchemaError, match="status must be ok, skipped or failed"):
        records.validate({**ok, "status": "maybe"})
    with pytest.raises(records.SchemaError, match="missing 'workload'"):
        records.validate({k: v for k, v in ok.items() if k != "workload"})


def test_synthetic_report_records_follow_the_schema(tmp_path):
    from synthetic import synthetic

    for path in synthetic(tmp_path):
        for f in [Path(path)] if Path(path).is_file() else Path(path).glob("*.jsonl"):
            for r in records.read(f):
                records.validate(r)
                if r.get("peaks"):  # the layout real runs write (hardware.Peaks)
                    assert {"name", "flop_s", "bandwidth_bytes_s"} <= set(r["peaks"])


# Value types at the process boundary
@pytest.mark.parametrize("name", ["load", "pp512", "tg64", "tg64x8", "ppl512", "tg64@d4096", "pp512x2@d1024"])
def test_workload_names_round_trip(name):
    assert str(Workload.parse(name)) == name


def test_workload_parse_rejects_what_is_not_one():
    for bad in ("tg", "pp-5", "x8", "tg64x", "prefill"):
        with pytest.raises(ValueError):
            Workload.parse(bad)
    assert Workload.parse("tg64x8") == Workload("tg", 64, 8)
    assert [str(w) for w in Suite(decode_batches=(4,)).workloads()] == ["load", "pp128", "pp512", "tg64",
                                                                        "tg64x4", "ppl512"]


def test_variant_round_trips_through_json():
    from quantbench.core.formats import get_format

    suite = Suite(decode_batches=(4,))
    v = Variant("m", "/d", "abc", get_format("bf16"), "cpu", 2, suite, workloads=tuple(suite.workloads()),
                data="/data.npz", tokens_path="/t.npy", calib_start=10240, corpus_key="k",
                reference=Reference("fp32", "/ref.npy", "read"), partial="/p.jsonl", base={"model": "m"})
    assert Variant.from_json(v.to_json()) == v
    assert json.loads(v.to_json())["workloads"] == ["load", "pp128", "pp512", "tg64", "tg64x4", "ppl512"]


def test_one_reference_order_for_runner_and_report():
    from quantbench.measure import runner
    from quantbench.report import pivot

    assert runner.REFERENCE_ORDER is pivot.REFERENCE_ORDER


def test_one_error_handler_compare_bad_input_exits_2(tmp_path, capsys):
    rc = main.main(["compare", str(tmp_path / "nope.jsonl"), str(tmp_path / "nope.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: compare:")


# bug 3: the report shows each record's own model_note, not a note picked by the model's name
def test_report_notes_come_from_the_records():
    import pandas as pd

    from quantbench.report.render import render_markdown

    base = {"format": "fp32", "device": "cpu", "workload": "load", "status": "ok", "schema_version": 2}
    shape = {**base, "model": "shape:smollm2-135m", "model_note": "shape:smollm2-135m: random weights"}
    tiny = {**base, "model": "tiny", "model_note": "tiny: carries Q4_1 rounding"}
    md = render_markdown(pd.DataFrame([shape]))
    assert "random weights" in md and "Q4_1" not in md
    assert "carries Q4_1 rounding" in render_markdown(pd.DataFrame([tiny]))


# bug 5: only the project's own missing-dependency error skips; any other ImportError fails
@pytest.mark.parametrize("exc,status", [
    (ImportError("cannot import name 'StaticCache' from 'transformers'"), "failed"),
    (None, "skipped"),  # MissingDependency, made below
])
def test_worker_skips_only_missing_dependencies(tmp_path, monkeypatch, exc, status):
    from quantbench.backends.dummy import DummyBackend
    from quantbench.core.errors import MissingDependency
    from quantbench.measure import worker

    err = exc or MissingDependency("gptqmodel is not installed; install it with `pip install x`")

    class Broken(DummyBackend):
        def load(self):
            raise err

    monkeypatch.setattr(worker, "get_backend_class", lambda name: Broken)
    monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "d.npz"
    np.savez(data, windows=np.zeros((1, 8), np.int32), prompt=np.arange(16, dtype=np.int32))
    suite = Suite(formats=("dummy",), prompt_lengths=(8,), n_ctx=8, ppl_windows=1)
    from quantbench.core.formats import get_format

    v = Variant("m", str(tmp_path), "d", get_format("dummy"), "cpu", 1, suite, workloads=(Workload("load"),),
                data=str(data), calib_start=8, corpus_key="k", partial=str(tmp_path / "p.jsonl"),
                base={"schema_version": records.SCHEMA_VERSION, "model": "m"})
    (tmp_path / "job.json").write_text(v.to_json())
    assert worker.main(str(tmp_path / "job.json")) == 0
    [rec] = records.read(tmp_path / "p.jsonl")
    assert rec["status"] == status and str(err).splitlines()[0] in rec["reason"]


# The package's rooms, lowest first: a module imports only from its own room or a lower one
# (docs/code.md). quantbench/__init__.py, the public API, is exempt.
ROOMS = ["core", "arith", "inputs", "backends", "measure", "report", "track", "parity", "cli"]


def _room(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "quantbench" or len(parts) < 2 or parts[1] in ("__init__", "__main__"):
        return None
    return ROOMS.index(parts[1])


def test_no_module_imports_from_a_higher_room():
    import ast
    upward = []
    for path in sorted((ROOT / "quantbench").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        mine = _room(".".join(rel.parts))
        if mine is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("quantbench"):
                targets = [node.module] if node.module != "quantbench" else [
                    f"quantbench.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("quantbench.")]
            for t in targets:
                room = _room(t)
                if room is not None and room > mine:
                    upward.append(f"{rel}: {t}")
    assert not upward, upward
    assert {p.name for p in (ROOT / "quantbench").iterdir() if p.is_dir() and p.name != "__pycache__"} \
        == set(ROOMS) - {"parity"}
