"""The report's page as data: a Section is a heading and its blocks (paragraphs, tables, figures);
templates/report.html.j2 renders the list of sections as HTML (the blocks through blocks.html.j2, in
the frame of base.html.j2, which the trend page shares), `markdown` renders one as markdown.
A section is added to the report by appending one Section (docs/report.md says how)."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache


@dataclass(frozen=True)
class Head:
    """A header cell: its text, HTML class ("s": text, left-aligned), and whether markdown aligns
    its column right (numbers)."""
    text: str
    cls: str = ""
    right: bool = False


@dataclass(frozen=True)
class Cell:
    """A body cell: its text, HTML class, data-v (the value a click on the header sorts by; None:
    none), colspan (0: none) and whether it is bold (a missed target)."""
    text: str
    cls: str = ""
    sort: str | None = None
    span: int = 0
    bold: bool = False


@dataclass(frozen=True)
class Row:
    cells: tuple[Cell, ...]
    cls: str | None = None


@dataclass(frozen=True)
class Table:
    """A table: header, rows, HTML id and class; scroll: wrapped in a horizontally scrolling div."""
    head: tuple[Head, ...]
    rows: tuple[Row, ...]
    id: str = ""
    cls: str = ""
    scroll: bool = True
    kind: str = "table"


@dataclass(frozen=True)
class Para:
    """A paragraph of text, with its HTML class ("foot": a footnote, "check": a check line)."""
    text: str
    cls: str = ""
    kind: str = "para"


@dataclass(frozen=True)
class Figures:
    """A sub-heading over a grid of inline SVG plots (the SVG is the report's own markup)."""
    heading: str
    svgs: tuple[str, ...]
    kind: str = "figures"


@dataclass(frozen=True)
class Section:
    """A heading (h2) and its blocks, in order."""
    title: str
    blocks: tuple = field(default_factory=tuple)


def table_markdown(t: Table) -> str:
    """Returns t as a markdown pipe table (no trailing newline)."""
    def line(cells):
        return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"

    out = [line(h.text for h in t.head), "|" + "|".join("---:" if h.right else "---" for h in t.head) + "|"]
    out += [line((f"**{c.text}**" if c.bold else c.text).replace("|", "\\|") for c in r.cells) for r in t.rows]
    return "\n".join(out)


def markdown(s: Section) -> str:
    """Returns a section's blocks as markdown, blank-line separated (its heading is the caller's)."""
    out = []
    for b in s.blocks:
        if isinstance(b, Table):
            out.append(table_markdown(b))
        elif isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, Figures):
            out.append(f"### {b.heading}\n\n({len(b.svgs)} plots in the HTML report)")
    return "\n\n".join(out)


@cache
def environment(*packages: str):
    """Returns the jinja2 environment (autoescaped) over the `templates` folder of each package
    (e.g. "quantbench.track"), then quantbench/report/templates: a page in a higher room extends
    base.html.j2 and imports blocks.html.j2 from here."""
    import jinja2

    loader = jinja2.ChoiceLoader([jinja2.PackageLoader(p, "templates") for p in (*packages, "quantbench.report")])
    return jinja2.Environment(loader=loader, autoescape=True, trim_blocks=True, lstrip_blocks=True,
                              undefined=jinja2.StrictUndefined)


def template_text(name: str) -> str:
    """Returns a file of the templates folder as text (the report's CSS and scripts)."""
    from importlib.resources import files

    return files("quantbench.report").joinpath("templates", name).read_text(encoding="utf-8")


def render(template: str, *packages: str, **context) -> str:
    """Returns templates/<template> rendered with context, looked up in packages' templates folders
    before the report's."""
    return environment(*packages).get_template(template).render(**context)
