import json

import pytest

from quantbench import read_results
from quantbench.core import records
from quantbench.core.errors import UserError


def _rec(fmt, workload="tg64", **kw):
    return {"schema_version": 1, "model": "m", "format": fmt, "device": "cpu",
            "workload": workload, "status": "ok", "env": {"cpu": "x", "torch": "2.13"}, **kw}


def test_append_read_roundtrip(tmp_path):
    p = tmp_path / "r.jsonl"
    records.append(p, [_rec("fp32", decode_tok_s=10.0, decode_samples_s=[0.1, 0.1])])
    records.append(p, [_rec("bf16", decode_tok_s=12.5)])
    got = records.read(p)
    assert [r["format"] for r in got] == ["fp32", "bf16"]
    assert got[0]["decode_samples_s"] == [0.1, 0.1]
    assert records.key(got[1]) == ("m", "bf16", "cpu", "tg64")


def test_gzipped_results_read_as_the_plain_file_and_a_bad_one_says_so(tmp_path):
    import gzip

    p = tmp_path / "r.jsonl"
    records.append(p, [_rec("fp32", decode_tok_s=10.0), _rec("bf16", decode_tok_s=12.5)])
    gz = tmp_path / "r.jsonl.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    assert records.read(gz) == records.read(p)
    assert list(read_results(gz)["format"]) == ["fp32", "bf16"]
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(p.read_bytes())  # named .gz, not compressed
    with pytest.raises(UserError, match="not a readable gzip file"):
        records.read(bad)


def test_truncated_last_line_is_skipped_but_corrupt_middle_is_not(tmp_path):
    p = tmp_path / "r.jsonl"
    records.append(p, [_rec("fp32")])
    with open(p, "a") as f:
        f.write('{"model": "m", "form')  # a crash mid-write
    assert len(records.read(p)) == 1
    p.write_text('garbage\n' + json.dumps(_rec("fp32")) + "\n")
    with pytest.raises(UserError, match="r.jsonl:1: not a JSON record"):
        records.read(p)


def test_read_results_dataframe(tmp_path):
    p = tmp_path / "r.jsonl"
    records.append(p, [_rec("fp32", decode_tok_s=10.0), _rec("bf16", decode_tok_s=12.5)])
    df = read_results(p)
    assert list(df["format"]) == ["fp32", "bf16"]
    assert df["decode_tok_s"].sum() == 22.5
    assert (df["env.torch"] == "2.13").all()
    assert len(read_results(tmp_path)) == 2  # a directory of JSONL files


def test_environment_block():
    env = records.environment()
    for k in ("cpu", "cpu_physical_cores", "ram_bytes", "python", "torch", "transformers",
              "git_commit"):
        assert k in env
    assert env["cpu_physical_cores"] >= 1 and env["ram_bytes"] > 1 << 30


def test_git_commit_names_a_copied_tree(monkeypatch):
    from quantbench.core import records

    records.git_commit.cache_clear()
    monkeypatch.setenv("QUANTBENCH_GIT_COMMIT", "93d8332abcde")
    try:
        assert records.git_commit() == "93d8332abcde"
    finally:
        records.git_commit.cache_clear()
    monkeypatch.delenv("QUANTBENCH_GIT_COMMIT")
    got = records.git_commit()
    records.git_commit.cache_clear()
    # a checkout: 12 hex digits, +dirty when tracked files differ from HEAD
    assert got == "" or len(got.split("+")[0]) == 12 and got.split("+")[1:] in ([], ["dirty"])
