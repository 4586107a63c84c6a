"""The variants table's columns, declared once, in order (COLUMNS): each is a record field shown
through the Display kept beside it in the schema (quantbench/core/records.py), a column the pivot
derives (DERIVED: Δppl %, Pareto, the SoL flags, ratios), or a family the pivot makes per workload
(prefill tok/s per prompt length, decode tok/s per batch). The HTML, markdown and CSV tables all
come from these; a renamed schema field or pivot key fails here, loudly, instead of showing "—".

A column with a header is shown; one without is carried by the CSV and the row's details line.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from quantbench.arith import sol
from quantbench.core.records import SCHEMA, Field
from quantbench.report.pivot import first, num

SOL_COLUMNS = tuple(sol.SOL_FIELDS)  # prefill_sol_frac, decode_sol_frac, decode_sol_frac_spec
ONE_VALUE, EMPTY = "one value", "empty"  # when a column is left out: every row the same, no row has one


@dataclass(frozen=True)
class Column:
    """One column: its name (the CSV's), header ('' : CSV and details line only), number format
    ('' : text), the pivot keys it reads, its value from a pivot row, where it is declared
    ("schema" or "derived"), what it means, and when the table leaves it out (ONE_VALUE, EMPTY)."""
    name: str
    header: str
    fmt: str
    reads: tuple[str, ...]
    value: Callable[[dict], object]
    source: str
    meaning: str = ""
    hide: str = ""


@dataclass(frozen=True)
class Family:
    """Columns the pivot makes per workload: pivot keys `<field><prefix><n>` (prefill_tok_s@pp512),
    ordered by n, shown with the field's Display header inside `header` ("{header} @pp{n}")."""
    field: str
    prefix: str
    header: str

    def columns(self, keys: Iterable[str], schema: dict[str, Field] = SCHEMA) -> list[Column]:
        d = _display(schema, self.field)
        pat = re.compile(re.escape(self.field + self.prefix) + r"(\d+)")
        found = sorted((int(m[1]), k) for k in set(keys) if (m := pat.fullmatch(k)))
        return [Column(k, self.header.format(header=d.header, n=n), d.fmt, (k,), _num(k), "schema",
                       schema[self.field].meaning) for n, k in found]


def _display(schema: dict[str, Field], name: str):
    if name not in schema:
        raise KeyError(f"the report shows record field '{name}', which records.SCHEMA lacks: "
                       "rename it in quantbench/report/columns.py too")
    if schema[name].display is None:
        raise KeyError(f"the report shows record field '{name}', whose schema entry has no Display")
    return schema[name].display


def _num(key: str) -> Callable[[dict], float | None]:
    return lambda r: num(r.get(key))


def _text(key: str) -> Callable[[dict], str]:
    return lambda r: first([r], key) or ""


def _scaled(key: str, scale: float) -> Callable[[dict], float | None]:
    # dividing by the power of ten keeps the figures bit-identical to bytes / 1e6
    if scale < 1:
        return lambda r: None if num(r.get(key)) is None else r[key] / round(1 / scale)
    return lambda r: None if num(r.get(key)) is None else r[key] * scale


def field(name: str, hide: str = "", schema: dict[str, Field] = SCHEMA) -> Column:
    """Returns the column of record field `name`, shown as its schema Display says (KeyError when
    the schema lacks the field or its Display)."""
    d, f = _display(schema, name), schema[name]
    if f.type in ("float", "int"):
        value = _scaled(name, d.scale) if d.scale != 1 else _num(name)
    elif f.type == "bool":
        value = lambda r: bool(r.get(name))  # noqa: E731
    else:
        value = _text(name)
    return Column(d.column or name, d.header, d.fmt, (name,), value, "schema", f.meaning, hide)


def sol_suspect(r: dict) -> str:
    """Returns why a row's speed-of-light fractions cannot be trusted ('' when they can): the
    record's own flag, or (records older than that flag) a fraction above 1."""
    return sol.suspect_reason(r)


def _derived(name, header, fmt, reads, value, meaning) -> Column:
    return Column(name, header, fmt, tuple(reads), value, "derived", meaning)


# Columns the pivot (quantbench/report/pivot.py) computes from several records or variants.
DERIVED: dict[str, Column] = {c.name: c for c in [
    _derived("ppl", "ppl ± stderr³", ".3f", ["ppl_common"], _num("ppl_common"),
             "perplexity over the windows every variant of the model and device scored"),
    _derived("ppl_windows", "", "", ["ppl_common_windows"], lambda r: r.get("ppl_common_windows"),
             "the windows that ppl covers"),
    _derived("ppl_stderr", "", "", ["ppl_stderr", "ppl_common_windows", "ppl_windows"],
             lambda r: num(r.get("ppl_stderr")) if r.get("ppl_common_windows") == r.get("ppl_windows")
             else None, "ppl's standard error, when those are all the windows this variant scored"),
    _derived("dppl_pct", "Δppl %¹", "+.2f", ["dppl_pct"], _num("dppl_pct"),
             "100 × (ppl / the reference's ppl − 1) on the windows both scored"),
    _derived("dppl_windows", "", "", ["dppl_windows"], _num("dppl_windows"), "the windows Δppl compares"),
    _derived("windows_max", "", "", ["windows_max"], lambda r: r.get("windows_max") or None,
             "the most windows this variant or its reference scored"),
    _derived("sol_suspect", "", "", ["sol_suspect_reason", *SOL_COLUMNS], sol_suspect,
             "why the SoL fractions cannot be trusted ('' when they can)"),
    _derived("reference", "", "", ["reference"], lambda r: r.get("reference"), "the format Δppl is against"),
    _derived("overhead_bound", "", "", ["overhead_bound"], lambda r: bool(r.get("overhead_bound")),
             "decode SoL below OVERHEAD_BOUND_SOL"),
    _derived("pareto", "", "", ["pareto"], lambda r: bool(r.get("pareto")), "in the Pareto set (quality vs size)"),
    _derived("decode_vs_eager", "", "", ["decode_vs_eager"], _num("decode_vs_eager"),
             "a +compiled twin's decode tok/s ÷ its eager format's"),
    _derived("decode_bound", "", "", ["decode_bound"], _text("decode_bound"), "the roof bounding decode"),
    _derived("prefill_bound", "", "", ["prefill_bound"], _text("prefill_bound"), "the roof bounding prefill"),
    _derived("prefill_sol_workload", "", "", ["prefill_sol_workload"], _text("prefill_sol_workload"),
             "the prompt prefill SoL is taken at (the longest)"),
    _derived("gguf_type_mix", "", "", ["type_mix"], lambda r: r.get("type_mix") or "",
             "GGUF tensor types and counts, as text"),
]}

PREFILL = Family("prefill_tok_s", "@pp", "{header} @pp{n}")
BATCHED = Family("decode_tok_s", "@b", "{header} ×{n} seqs")


def build(schema: dict[str, Field] = SCHEMA) -> tuple[Column | Family, ...]:
    """Returns the table's columns in order, resolved against `schema` (KeyError naming a field
    the schema lacks or does not display)."""
    def f(name, hide=""):
        return field(name, hide, schema)

    def d(name):
        return DERIVED[name]

    for fam in (PREFILL, BATCHED):
        _display(schema, fam.field)
    return (f("format"), f("device"), f("host", ONE_VALUE), f("model", ONE_VALUE), f("bits_per_weight"),
            f("weights_bytes"), f("peak_rss_bytes"), f("peak_device_bytes", EMPTY), PREFILL,
            f("decode_tok_s"), BATCHED, f("decode_p50_s"), f("decode_p90_s"),
            # the engine's own time per step (llama.cpp's counters, model.forward) and what the
            # harness adds on top of it: wall = engine + harness
            f("engine_decode_s"), f("harness_decode_s"), f("ttft_s"), f("decode_energy_j_per_tok", EMPTY),
            d("ppl"), d("ppl_windows"), d("ppl_stderr"), f("ppl_partial"), d("dppl_pct"), d("dppl_windows"),
            d("windows_max"), f("kld_mean"), f("top1_agree"), f("prefill_sol_frac"), f("decode_sol_frac"),
            f("decode_sol_frac_spec", EMPTY), d("sol_suspect"), d("reference"), f("status"), f("reason"),
            d("overhead_bound"), d("pareto"), d("decode_vs_eager"), f("kernel"), d("decode_bound"),
            d("prefill_bound"), d("prefill_sol_workload"), f("kernel_fallback"), f("crash_signal"),
            f("crash_upstream"), f("load_s"), f("build_s"), d("gguf_type_mix"))


COLUMNS = build()


def expand(keys: Iterable[str]) -> list[Column]:
    """Returns the columns of a table over pivot keys `keys`, families expanded (KeyError when a
    column reads a key the pivot lacks: a renamed pivot key must not become a column of "—")."""
    keys = list(keys)
    out = [x for c in COLUMNS for x in (c.columns(keys) if isinstance(c, Family) else [c])]
    have = set(keys)
    missing = sorted({f"{c.name} reads '{k}'" for c in out for k in c.reads if k not in have})
    if missing:
        raise KeyError("report columns read keys the pivot lacks: " + "; ".join(missing))
    return out


def shown(names: Iterable[str]) -> list[Column]:
    """Returns the shown (headed) columns among table column names, in their order."""
    by_name = {c.name: c for c in COLUMNS if isinstance(c, Column)}
    out = []
    for n in names:
        c = by_name.get(n) or next((x for fam in (PREFILL, BATCHED) for x in fam.columns([n])), None)
        if c is None:
            raise KeyError(f"table column '{n}' is declared in neither the schema nor DERIVED")
        if c.header:
            out.append(c)
    return out
