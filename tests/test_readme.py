"""The README is the front door: short, the two commands, a picture, and links that resolve to the
docs pages (the reference tables live on the generated pages: tests/test_docs.py)."""
import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
README = ROOT.joinpath("README.md").read_text()


def test_readme_shows_the_two_commands():
    assert "python3 -m nox -s bench" in README and "python3 -m nox -s tests" in README


def test_readme_is_short():
    assert len(README.splitlines()) <= 200


def test_readme_links_resolve_and_reach_every_docs_page():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    assert [link for link in links if not (ROOT / link).exists()] == []
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")} - {"docs/index.md"}
    assert sorted(pages - set(links)) == []


def test_readme_screenshot_is_small():
    png = ROOT / "docs" / "img" / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 300_000


def test_readme_states_the_q4_1_caveat():
    assert "Q4_1" in README
