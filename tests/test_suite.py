import dataclasses
import json
import tomllib
from pathlib import Path

import pytest

from quantbench.core.errors import UserError
from quantbench.core.formats import FORMATS, get_format
from quantbench.core.suite import Suite, json_schema, load_suite, parse_sets

SUITES = sorted((Path(__file__).resolve().parents[1] / "suites").glob("*.toml"))


def test_shipped_suites_parse():
    s = load_suite("suites/default.toml")
    assert s.name == "default" and s.model == "embedded:smollm2-135m"
    assert len(s.formats) == 11 and s.prompt_lengths == (128, 512) and s.n_ctx == 512
    ci = load_suite("suites/ci.toml")
    assert ci.model == "tiny" and set(ci.formats) == set(s.formats)


def test_unknown_key_names_the_fix(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text('formats = ["fp32"]\nn_ctxx = 256\n')
    with pytest.raises(UserError, match="unknown key 'n_ctxx' \\(did you mean 'n_ctx'\\?\\)"):
        load_suite(p)


@pytest.mark.parametrize("body,msg", [
    ('n_ctx = "512"', "key 'n_ctx' must be an integer"),
    ('formats = "fp32"', "key 'formats' must be a list"),
    ('time_budget_s = true', "key 'time_budget_s' must be a number"),
    ('formats = ["fp23"]', "unknown format 'fp23': did you mean 'fp32'"),
    ('devices = ["tpu"]', "unknown device 'tpu'"),
    ('n_ctx = 511', "n_ctx must be even"),
    ('decode_batches = [1, 8]', "decode_batches must be >= 2"),
    ('n_ctx = [', "not valid TOML"),
])
def test_malformed_suites(tmp_path, body, msg):
    p = tmp_path / "bad.toml"
    p.write_text(body + "\n")
    with pytest.raises(UserError, match=msg.replace("(", "\\(").replace("?", "\\?")):
        load_suite(p)


def test_missing_suite_file():
    with pytest.raises(UserError, match="not found"):
        load_suite("suites/nope.toml")


def test_hash_tracks_every_setting():
    a = Suite()
    assert a.suite_hash == Suite().suite_hash
    assert a.suite_hash != a.with_overrides(n_ctx=256).suite_hash
    assert a.with_overrides(formats=["fp32"]).formats == ("fp32",)


def test_formats_table():
    assert get_format("gguf-q4_k_m").param == "Q4_K_M"
    assert get_format("gguf-q6_k").bits_per_weight == 6.5625  # a type outside the table
    assert FORMATS["gptq-4b"].bits_per_weight == 4 + 20 / 64


def test_compiled_twin_of_a_format():
    f = get_format("bnb-nf4+compiled")
    assert f.compiled and f.base == "bnb-nf4" and not get_format("bnb-nf4").compiled
    assert (f.bits_per_weight, f.backend, f.compute_dtype) == (4.5, "bnb", "bf16")
    with pytest.raises(UserError, match="llama-cpp-python has no torch.compile decode path; use 'gguf-q4_0'"):
        get_format("gguf-q4_0+compiled")
    with pytest.raises(UserError, match="unknown format 'fp61'"):
        get_format("fp61+compiled")


def test_set_overrides_any_key():
    from quantbench.core.suite import parse_sets

    got = parse_sets(["n_ctx=256", "gptq_kernel=gptq_triton", "prompt_lengths=[64, 128]",
                      "time_budget_s=2.5", 'corpus="file:x.txt"'])
    assert got == {"n_ctx": 256, "gptq_kernel": "gptq_triton", "prompt_lengths": (64, 128),
                   "time_budget_s": 2.5, "corpus": "file:x.txt"}
    assert Suite().with_overrides(**got).n_ctx == 256
    with pytest.raises(UserError, match="--set: unknown key 'n_ctxx' \\(did you mean 'n_ctx'\\?\\)"):
        parse_sets(["n_ctxx=256"])
    with pytest.raises(UserError, match="--set: key 'n_ctx' must be an integer"):
        parse_sets(["n_ctx=big"])
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        parse_sets(["n_ctx"])


def test_kv_types_axis_expands_gguf_formats():
    from quantbench.measure.runner import plan

    s = Suite(formats=("bf16", "gguf-q4_0"), kv_types=("f16", "q8_0", "q4_0"))
    assert [f for _, f in plan(s)] == ["bf16", "gguf-q4_0", "gguf-q4_0+kv-q8_0", "gguf-q4_0+kv-q4_0"]
    assert parse_sets(['kv_types=["q8_0"]']) == {"kv_types": ("q8_0",)}
    with pytest.raises(UserError, match="kv_types"):
        Suite(kv_types=("q5_1",))
    f = get_format("gguf-q4_0+kv-q8_0")
    assert (f.base, f.kv_type, f.param) == ("gguf-q4_0", "q8_0", "Q4_0")
    with pytest.raises(UserError, match="needs a gguf"):
        get_format("bf16+kv-q8_0")


# Computed by the suite code before its checks were generated from field metadata (issue 24d):
# records, the build cache and resume find each other by these, so a re-arrangement must keep them;
# a content change moves its suite's entry on purpose (arith-cpu: batches 2 to 64, then depth 1024
# and a 10 s budget, issue 27).
HASHES = {"arith-cpu": "31475c78e56c", "ci": "8d5d729f0f1d", "default": "16ea647f3a1a",
          "formats-2026": "538c101036d8", "gpu-compiled": "995649d7a9a9", "gpu-default": "9384a7ed1868",
          "gpu-quick": "afb7eadb12f0", "gpu-sweep": "7d4e830547db", "hub-8b": "4091daef5361",
          "kv": "21b4ebba1890", "parity": "4c0cfff08c72", "quick": "b77ec94da5c3"}


def test_suite_hashes_do_not_change():
    assert Suite().suite_hash == "98af54455742"
    assert {p.stem: load_suite(p).suite_hash for p in SUITES if p.stem in HASHES} == HASHES
    ladder = [s.suite_hash for s in load_suite("suites/arith-cpu.toml").per_model()]
    assert ladder == ["4ff1a2c54ecc", "7678668ace2f", "ef0994792897", "5b58f7d0ec8c"]


def test_schema_declares_every_key_with_its_default():
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert list(schema["properties"]) == [f.name for f in dataclasses.fields(Suite)]
    for f in dataclasses.fields(Suite):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        prop = schema["properties"][f.name]
        assert prop["default"] == json.loads(json.dumps(default, default=list)), f.name
        assert prop["description"] == f.metadata["doc"]
    props = schema["properties"]
    assert props["placement"]["enum"] == ["spread", "each"]
    assert props["decode_batches"]["items"] == {"type": "integer", "minimum": 2}
    assert props["n_ctx"] == {**props["n_ctx"], "type": "integer", "minimum": 8, "multipleOf": 2}
    assert (props["time_budget_s"]["minimum"], props["time_budget_s"]["exclusiveMinimum"]) == (0, True)
    assert props["formats"]["minItems"] == 1 and props["formats"]["uniqueItems"] is True
    assert [p["type"] for p in props["threads"]["anyOf"]] == ["integer", "array"]
    over = props["model_overrides"]["additionalProperties"]["properties"]
    assert "n_ctx" in over and "models" not in over and "name" not in over


def test_every_shipped_suite_loads_and_uses_only_schema_keys():
    props = json_schema()["properties"]
    assert len(SUITES) >= 12
    for p in SUITES:
        load_suite(p)
        data = tomllib.loads(p.read_text(encoding="utf-8"))
        assert [k for k in data if k not in props] == [], p.name


def _validator():
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft4Validator.check_schema(json_schema())
    return jsonschema.Draft4Validator(json_schema())


def test_every_shipped_suite_validates_against_the_json_schema():
    v = _validator()
    for p in SUITES:
        errors = [e.message for e in v.iter_errors(tomllib.loads(p.read_text(encoding="utf-8")))]
        assert errors == [], p.name


# What one key says, the loader and the JSON schema refuse alike (rules between keys are the loader's).
@pytest.mark.parametrize("body,msg", [
    ("n_ctxx = 256", "unknown key 'n_ctxx' (did you mean 'n_ctx'?)"),
    ('n_ctx = "512"', "key 'n_ctx' must be an integer"),
    ("n_ctx = 511", "n_ctx must be even"),
    ("n_ctx = 4", "n_ctx must be >= 8"),
    ('formats = "fp32"', "key 'formats' must be a list of strings"),
    ("formats = []", "formats is empty; name at least one"),
    ('formats = ["bf16", "bf16"]', "formats lists bf16 twice"),
    ("time_budget_s = 0", "time_budget_s must be > 0"),
    ("time_budget_s = true", "key 'time_budget_s' must be a number"),
    ('devices = ["tpu"]', "unknown device 'tpu'; use 'cpu', 'cuda', 'cuda:N' or 'xpu'"),
    ('devices = ["cuda:x"]', "unknown device 'cuda:x'"),
    ("decode_batches = [1, 8]", "decode_batches must be >= 2, got [1, 8]; batch 1 is always measured"),
    ('threads = ["2"]', "key 'threads' must be a list of integers"),
    ('threads = "2"', "key 'threads' must be an integer or a list of integers"),
    ("threads = -1", "threads must be >= 0"),
    ('omp_wait_policy = "busy"', "omp_wait_policy 'busy' unknown; use default, passive or active"),
    ('kv_types = ["q5_1"]', "kv_types ['q5_1'] unknown; use f32, f16, bf16, q8_0 or q4_0"),
    ('node_kinds = ["amx"]', "node_kinds ['amx'] are not Ray resource labels"),
    ('models = ["tiny"]\n[model_overrides.tiny]\nn_ctx = 257', "n_ctx must be even"),
    ('models = ["tiny"]\n[model_overrides.tiny]\nmodels = ["x"]', "cannot set models"),
    ("[artifacts]\ngguf-q4_0 = 3", "key 'artifacts' must be a table of strings"),
])
def test_loader_and_json_schema_refuse_alike(tmp_path, body, msg):
    p = tmp_path / "bad.toml"
    p.write_text(body + "\n")
    with pytest.raises(UserError) as e:
        load_suite(p)
    assert msg in str(e.value)
    assert list(_validator().iter_errors(tomllib.loads(body))) != []
