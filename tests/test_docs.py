"""The docs site's reference pages are generated from the code: every record field, suite key,
format, default gate and subcommand appears, each with a description; the build imports no torch."""
import argparse
import dataclasses
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from quantbench.cli import reference
from quantbench.cli.main import build_parser
from quantbench.core import records
from quantbench.core.formats import FORMATS, KERNEL_PATHS
from quantbench.core.suite import Suite
from quantbench.track import compare

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def page(name: str) -> str:
    return reference.expand((DOCS / name).read_text(encoding="utf-8"), name)


def test_every_schema_field_and_suite_key_has_a_description():
    assert [f.name for f in records.SCHEMA.values() if not f.meaning.strip()] == []
    assert [f.name for f in dataclasses.fields(Suite) if not f.metadata.get("doc", "").strip()] == []


def test_records_page_holds_the_generated_field_table():
    text = page("records.md")
    assert records.schema_markdown() in text
    assert [k for k in records.SCHEMA if f"`{k}`" not in text] == []


def test_suites_page_documents_every_key_with_its_default():
    text = page("suites.md")
    for f in dataclasses.fields(Suite):
        row = next((line for line in text.splitlines() if line.startswith(f"| `{f.name}` |")), None)
        assert row is not None, f.name
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert reference._toml_value(default) in row, (f.name, row)


def test_committed_suite_schema_is_current():
    # stale after a suite key changed: run `python -m quantbench.cli.reference` and commit the file
    assert reference.SCHEMA_PATH == ROOT / "suites" / "suite.schema.json"
    assert reference.SCHEMA_PATH.read_text(encoding="utf-8") == reference.suite_schema()


def test_suites_page_says_how_editors_use_the_schema():
    text = page("suites.md")
    assert "#:schema ./suite.schema.json" in text and "suite.schema.json" in text


def test_formats_page_documents_every_format_and_kernel_path():
    text = page("formats.md")
    assert [f for f in FORMATS if f != "dummy" and f"`{f}`" not in text] == []
    assert [p for p in KERNEL_PATHS if f"`{p}`" not in text] == []


def test_tracking_page_holds_the_default_gates():
    text = page("tracking.md")
    for name, m in compare.METRICS.items():
        assert f"| `{name}` |" in text
        if m.default:
            assert f"`{m.default}`" in text


def test_cli_page_holds_every_subcommand_help():
    text = page("cli.md")
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert [n for n in sub.choices if f"## quantbench {n}" not in text] == []
    assert "--history DIR" in text and "--fail METRIC:THRESHOLD" in text


def test_unknown_marker_fails_the_build():
    with pytest.raises(KeyError, match="unknown generated section 'nope'"):
        reference.expand("<!-- quantbench:nope -->", "x.md")


def test_every_page_is_in_the_nav_and_every_marker_is_known():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    assert [p for p in pages if p not in nav] == []
    for p in pages:
        page(p)  # raises on an unknown marker


def test_generating_the_reference_imports_no_torch():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from quantbench.cli import reference; "
            "[g() for g in reference.GENERATORS.values()]; "
            "print(sorted(m for m in ('torch', 'pandas', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_documented_quantbench_commands_parse():
    """Every `quantbench SUBCOMMAND ...` line in a docs code block parses with the real parser."""
    parser = build_parser()
    seen = 0
    for p in sorted(DOCS.glob("*.md")):
        for block in re.findall(r"```(?:bash|text|sh)?\n(.*?)```", p.read_text(encoding="utf-8"), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                m = re.match(r"\s*(?:\.nox/\w+/bin/)?quantbench ((?:run|report|compare|track|trend|"
                             r"formats|devices|estimate|parity)\b.*)", line)
                if not m or "usage:" in line:
                    continue
                argv = shlex.split(re.sub(r"\[.*?\]|#.*", "", m[1]))
                args = parser.parse_args(argv)
                assert args.func.__name__.endswith(argv[0]), line
                seen += 1
    assert seen >= 10
