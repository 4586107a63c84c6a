import pytest

from quantbench.core.errors import UserError
from quantbench.core.formats import FORMATS, get_format
from quantbench.core.suite import Suite, load_suite, parse_sets


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
