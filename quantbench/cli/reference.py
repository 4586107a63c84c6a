"""Reference tables for the docs site, generated from the code that defines them.

A docs page holds a marker `<!-- quantbench:NAME -->` on a line of its own; `expand` replaces it
with the markdown of GENERATORS[NAME]. The mkdocs hook (docs/hooks.py) calls it for every page, so
the record fields, suite keys, formats, default gates and CLI help on the site are the code's own.
Pure Python and numpy: nothing here imports torch (tests/test_docs.py checks it).
`python -m quantbench.cli.reference` writes the one generated file that is committed, the suites'
JSON schema (suites/suite.schema.json, which editors read; tests/test_docs.py fails when it is stale).
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

MARKER = re.compile(r"^<!-- quantbench:([a-z-]+) -->$", re.M)


def record_fields() -> str:
    """Returns the record field table (records.SCHEMA)."""
    from quantbench.core import records

    return records.schema_markdown()


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{}"
    return repr(v)


def _accepts(f: dataclasses.Field) -> str:
    """Returns a suite key's declared rules in words: `spread` or `each`, each ≥ 1, no repeats."""
    meta, many = f.metadata, "tuple" in str(f.type)
    each = "each " if many else ""
    out = []
    if meta.get("choices"):
        out.append(each + "one of " + ", ".join(f"`{c}`" for c in meta["choices"]))
    if meta.get("pattern"):
        out.append(f"{each}matches `{meta['pattern']}` (a regex)")
    for rule, op in (("ge", "≥"), ("gt", ">")):
        if meta.get(rule) is not None:
            out.append(f"{each}{op} {meta[rule]:g}")
    if meta.get("multiple_of"):
        out.append(each + ("even" if meta["multiple_of"] == 2 else f"a multiple of {meta['multiple_of']}"))
    if meta.get("non_empty"):
        out.append("not empty")
    if meta.get("unique"):
        out.append("no repeats")
    return "; ".join(out)


def suite_keys() -> str:
    """Returns the suite key table: key, type, default, accepted values, meaning (suite.Suite's
    field declarations, the same ones the loader checks and suite.schema.json carries)."""
    from quantbench.core import keys, suite

    rows = ["| key | type | default | accepts | meaning |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(suite.Suite):
        kind = " or ".join(t.toml for t in keys.types_of(f))
        rows.append(f"| `{f.name}` | {kind} | `{_toml_value(keys.default_of(f))}` | {_accepts(f)} | "
                    f"{f.metadata['doc']} |")
    return "\n".join(rows) + "\n"


def suite_schema() -> str:
    """Returns suites/suite.schema.json's text: the JSON schema of a suite file (suite.json_schema)."""
    import json

    from quantbench.core import suite

    return json.dumps(suite.json_schema(), indent=2, ensure_ascii=False) + "\n"


def formats_table() -> str:
    """Returns the formats table (formats.FORMATS), the extra llama.cpp types and the twins."""
    from quantbench.core import formats as fm

    rows = ["| format | backend | library | what it stores | bits/weight (nominal) | devices | "
            "computes in | environment | caveat |", "|---|---|---|---|---|---|---|---|---|"]
    for f in fm.FORMATS.values():
        if f.backend == "dummy":
            continue
        rows.append(f"| `{f.name}` | {f.backend} | {f.library} | {f.stores} | {f.bits_per_weight:g} | "
                    f"{', '.join(f.devices)} | {', '.join(fm.compute_dtypes(f, 'cpu'))} (CPU) | "
                    f"{f'`{f.env}`' if f.env else 'main'} | {f.caveat} |")
    extra = ", ".join(f"`gguf-{t.lower()}` ({b:g})" for t, b in fm.GGUF_EXTRA_BPW.items())
    paths = "\n".join(f"| `{k.name}` | {', '.join(k.backends)} | {k.what} | {k.upstream} |"
                      for k in fm.KERNEL_PATHS.values())
    safer = ", ".join(f"{b}: `{p}`" for b, p in fm.SAFER_PATH.items())
    return "\n".join(rows) + f"""

Any other llama.cpp type as `gguf-<type>`, with its nominal bits per weight: {extra}.

Twins of a format, each its own row in records, reports and compares:

- `<format>{fm.COMPILED}`: the same weights decoded with a static KV cache and `torch.compile`
  (backends {', '.join(fm.COMPILABLE_BACKENDS)}).
- `<gguf format>{fm.KV_SUFFIX}<type>`: llama.cpp's KV cache in one of {', '.join(fm.LLAMA_KV_TYPES)}
  (suite key `kv_types`).
- `<format>{fm.PATH_SUFFIX}<path>`: the same weights on another engine kernel path (suite key
  `kernel_paths`, or the crash fallback):

| path | backends | what changes | the engine's own switch |
|---|---|---|---|
{paths}

The safer path a crashed worker is retried on, per backend: {safer}.

The Δppl and KLD reference on each device is the first of {', '.join(f'`{r}`' for r in fm.REFERENCE_ORDER
                                                               if r != 'dummy')} that a suite runs.
"""


def default_gates() -> str:
    """Returns compare's metrics with their default gates (compare.METRICS)."""
    from quantbench.track import compare

    rows = ["| metric | better | default gate | judged on | floor |", "|---|---|---|---|---|"]
    for name, m in compare.METRICS.items():
        judged = f"raw samples `{m.samples}`" + (f" (p{m.quantile * 100:g})" if m.quantile != 0.5 else "") \
            if m.samples else "the value"
        rows.append(f"| `{name}` | {'higher' if m.higher_is_better else 'lower'} | "
                    f"{f'`{m.default}`' if m.default else 'reported, not gated'} | {judged} | "
                    f"{m.floor:g} |")
    return "\n".join(rows) + (f"\n\nTimings need a one-sided Mann–Whitney p < {compare.ALPHA} and the "
                              f"median past the gate; a history's learnt floor is {compare.FLOOR_Z:g} "
                              f"robust SDs of the change between successive runs, learnt from "
                              f"{compare.MIN_RUNS} runs on; the bootstrap CI uses {compare.BOOTSTRAP} "
                              f"resamples, seed {compare.SEED}.\n")


def cli_help() -> str:
    """Returns `quantbench --help` and every subcommand's help, as argparse prints them."""
    import argparse

    from quantbench.cli.main import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: fix it, so the page is stable
    try:
        parser = build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        out = ["```text", parser.format_help().rstrip(), "```"]
        for name, p in sub.choices.items():
            out += ["", f"## quantbench {name}", "", "```text", p.format_help().rstrip(), "```"]
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(out) + "\n"


GENERATORS = {"record-fields": record_fields, "suite-keys": suite_keys, "formats": formats_table,
              "default-gates": default_gates, "cli-help": cli_help}


def expand(markdown: str, where: str = "page") -> str:
    """Returns markdown with every `<!-- quantbench:NAME -->` line replaced by its generated text;
    an unknown NAME raises (mkdocs then fails the build)."""
    def one(m: re.Match) -> str:
        gen = GENERATORS.get(m[1])
        if gen is None:
            raise KeyError(f"{where}: unknown generated section '{m[1]}'; known: {', '.join(GENERATORS)}")
        return gen().rstrip("\n")
    return MARKER.sub(one, markdown)


SCHEMA_PATH = Path(__file__).resolve().parents[2] / "suites" / "suite.schema.json"


def main() -> None:
    """Writes suites/suite.schema.json from the Suite declarations."""
    SCHEMA_PATH.write_text(suite_schema(), encoding="utf-8")
    print(f"wrote {SCHEMA_PATH}")


if __name__ == "__main__":
    main()
