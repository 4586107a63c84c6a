"""The report reads its columns from the record schema's Display metadata and the one DERIVED table
(quantbench/report/columns.py); its HTML comes from templates and structured tables."""
import dataclasses
import re
from pathlib import Path

import pytest
from synthetic import synthetic

from quantbench import parity
from quantbench.core import records
from quantbench.core.records import SCHEMA
from quantbench.parity import Measure
from quantbench.report import columns, pivot, render, tables
from quantbench.report.tables import Para, Section

GPU_RESULTS = sorted(str(p) for p in Path("results/gpu").glob("*.jsonl"))


def _tables(tmp_path):
    files = synthetic(tmp_path)
    yield render.table(pivot.pivot(records.read_results(*files)))
    gpu = next(Path(files[1]).glob("*.jsonl"))  # a batched decode column, the datasheet SoL and energy
    extra = [dict(r, workload="tg64x8", batch=8, decode_tok_s=6.5 * r["decode_tok_s"],
                  decode_sol_frac_spec=0.5, decode_energy_j_per_tok=0.01)
             for r in records.read(gpu) if r["workload"] == "tg64"]
    records.append(gpu, extra)
    yield render.table(pivot.pivot(records.read_results(*files)))
    if GPU_RESULTS:  # the committed H200 records: a sweep, several models
        yield render.table(pivot.pivot(records.read_results(*GPU_RESULTS)))


def test_every_shown_column_comes_from_the_schema_or_derived(tmp_path):
    seen = set()
    for t in _tables(tmp_path):
        shown = render.display_columns(t)
        assert shown and len(shown) < len(t.columns)  # the CSV carries more than the table shows
        for name, header, fmt in shown:
            seen.add(name)
            if name in columns.DERIVED:
                assert (header, fmt) == (columns.DERIVED[name].header, columns.DERIVED[name].fmt)
                continue
            field = re.sub(r"@(pp|b)\d+$", "", name)  # a per-workload family: its field's Display
            d = next(f.display for f in SCHEMA.values() if f.display and (f.display.column or f.name) == field)
            assert header.startswith(d.header) and fmt == d.fmt, name
    # the numbers people read, each from its declaration
    assert {"weights_mb", "decode_tok_s", "decode_tok_s@b8", "prefill_tok_s@pp512", "dppl_pct", "ppl",
            "decode_sol_frac", "decode_sol_frac_spec", "decode_mj_per_tok", "top1_agree_pct"} <= seen


def test_headers_and_scales_are_the_schema_display():
    heads = {c.name: c for c in columns.COLUMNS if isinstance(c, columns.Column)}
    assert heads["weights_mb"].header == SCHEMA["weights_bytes"].display.header == "weights MB"
    assert heads["decode_p50_ms"].value({"decode_p50_s": 0.0125}) == pytest.approx(12.5)
    assert heads["weights_mb"].value({"weights_bytes": 269_000_000}) == 269.0
    assert heads["top1_agree_pct"].value({"top1_agree": 0.875}) == 87.5
    assert heads["kernel"].value({"kernel": float("nan")}) == ""  # pandas' NaN for an absent text
    # every schema field that carries a Display is a column, so no metadata sits unused
    used = {c.field if isinstance(c, columns.Family) else c.reads[0]
            for c in columns.COLUMNS if isinstance(c, columns.Family) or c.source == "schema"}
    assert used == {f.name for f in SCHEMA.values() if f.display}
    # a derived column never hides a schema field the report displays
    assert not {n for n in columns.DERIVED if n in SCHEMA and SCHEMA[n].display}


def test_a_renamed_schema_field_fails_loudly():
    schema = dict(SCHEMA)
    schema["weights_size"] = dataclasses.replace(schema.pop("weights_bytes"), name="weights_size")
    with pytest.raises(KeyError, match="'weights_bytes', which records.SCHEMA lacks"):
        columns.build(schema)
    schema = dict(SCHEMA, kld_mean=dataclasses.replace(SCHEMA["kld_mean"], display=None))
    with pytest.raises(KeyError, match="'kld_mean', whose schema entry has no Display"):
        columns.build(schema)
    assert len(columns.build(SCHEMA)) == len(columns.COLUMNS)


def test_a_key_the_pivot_lacks_fails_loudly(tmp_path):
    p = pivot.pivot(records.read_results(*synthetic(tmp_path)))
    with pytest.raises(KeyError, match="dppl_pct reads 'dppl_pct'"):
        render.table(p.drop(columns="dppl_pct"))
    with pytest.raises(KeyError, match="declared in neither"):
        columns.shown(["format", "dppl_percent"])


def test_templates_ship_with_the_package():
    pyproject = Path("pyproject.toml").read_text()
    assert re.search(r'"jinja2>=3\.1"', pyproject)
    for name in ("base.html.j2", "blocks.html.j2", "report.html.j2", "report.css", "sort.js", "error.js"):
        assert tables.template_text(name).strip(), name
    assert tables.environment("quantbench.track").get_template("trend.html.j2")  # the trend page's
    assert "document.body.dataset.ready" in render.SORT_JS and "window.onerror" in render.ERROR_JS


def test_an_appended_section_renders_after_the_verdict_and_text_is_escaped(tmp_path):
    df = records.read_results(*synthetic(tmp_path))
    sec = Section("Machines", (Para("two <hosts> & one file", "foot"),))
    html = render.render_html(df, sections=[sec])
    assert '<h2>Machines</h2>\n<p class="foot">two &lt;hosts&gt; &amp; one file</p>' in html
    heads = re.findall(r"<h2>([^<]*)</h2>", html)
    # the synthetic records span two hosts: the formats both ran are compared across them
    assert heads == ["Verdict", "Machines", "Variants", "Machines compared", "Skipped and failed", "Plots"]
    md = render.render_markdown(df, sections=[sec])
    assert "\n## Machines\n\ntwo <hosts> & one file\n" in md


def test_parity_rows_feed_the_report_and_the_markdown(tmp_path):
    t = parity.parity_table([Measure("gguf-q4_0", "tg64", "quantbench", 1, 90.0),
                             Measure("gguf-q4_0", "tg64", "reference", 1, 100.0, "llama-bench"),
                             Measure("gguf-q4_0", "ppl", "quantbench", 1, 13.9),
                             Measure("gguf-q4_0", "ppl", "reference", 1, 13.9, "llama-perplexity")])
    rows = parity.parity_rows(t)
    # one round: no CI of the median ratio ("—"), so an off-target ratio is a MISS
    assert [[c.text for c in r.cells][:10] for r in rows.rows] == [
        ["gguf-q4_0", "ppl", "llama-perplexity", "13.9000", "—", "13.9000", "1.000", "—", "within 0.5%", "ok"],
        ["gguf-q4_0", "tg64", "llama-bench", "90.0", "—", "100", "0.900", "—", "0.97–1.03", "MISS"]]
    assert [r.cells[9].bold for r in rows.rows] == [False, True]
    md = parity.parity_markdown(t)
    assert "| gguf-q4_0 | tg64 | llama-bench | 90.0 | — | 100 | 0.900 | — | 0.97–1.03 | **MISS** |" in md
    html = render.render_html(records.read_results(*synthetic(tmp_path)), sections=[parity.parity_section(t)])
    sec = html.split("<h2>Parity with the engines&#39; own benchmarks</h2>")[1].split("<h2>")[0]
    assert "<td><b>MISS</b></td>" in sec and "<td>ok</td>" in sec and "|" not in sec
    assert sec.count("<tr>") == 3 and "1 / the median step." in sec
    assert "a ratio above 1.03 is flagged with where they differ. ⁹ the 95 % CI" in sec
    assert "MISS, they can.</p>" in sec
