"""The README documents what the code does: every record field, format, suite key and command."""
import dataclasses
from pathlib import Path

from quantbench.formats import FORMATS
from quantbench.records import FIELDS
from quantbench.suite import Suite

README = Path(__file__).parent.parent.joinpath("README.md").read_text()


def test_readme_documents_every_record_field():
    assert [k for k in FIELDS if f"`{k}`" not in README] == []


def test_readme_documents_every_format_and_suite_key():
    assert [f for f in FORMATS if f != "dummy" and f"`{f}`" not in README] == []
    assert [f.name for f in dataclasses.fields(Suite) if f"`{f.name}`" not in README] == []


def test_readme_shows_the_two_commands():
    assert "python3 -m nox -s bench" in README and "python3 -m nox -s tests" in README
