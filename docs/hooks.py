"""mkdocs hook: fills each `<!-- quantbench:NAME -->` marker of a page with the table the code
generates (quantbench/cli/reference.py), so the reference pages cannot drift from the code.
Imports quantbench from this checkout without installing it (no torch needed)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quantbench.cli import reference  # noqa: E402


def on_page_markdown(markdown, page, config, files):
    return reference.expand(markdown, page.file.src_path)
