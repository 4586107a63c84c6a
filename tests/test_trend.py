"""Trend: ruptures proposes change points, compare.judge confirms them; the page is plain SVG."""
import math
import re
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from synthetic_history import ENV, commit, one_run, write_history

from quantbench.cli.main import main
from quantbench.report import plots
from quantbench.track import compare, history, trend

STEP_AT = 15
FIVE = ["decode_tok_s:-5%"]  # a 10% slowdown is under the -25% default gate: compare needs this too


def steps(t, metric):
    return [s for s in t.steps if s.metric == metric]


def test_change_points_by_hand():
    assert trend.change_points([10.0] * 10 + [11.0] * 10) == [10]
    assert trend.change_points([10.0] * 20) == []
    assert trend.change_points([10.0]) == []
    assert trend.change_points([0.0] * 5 + [0.5] * 5) == [5]  # zeros: no log, still found


def test_short_history_every_boundary_is_a_candidate():
    # three runs, the last one slow: the differences' MAD would be the step itself, so PELT alone
    # finds nothing; every boundary goes to compare instead (measured: bench, bench, bench + hog)
    assert trend.change_points([231.5, 233.8, 104.2]) == [1, 2]
    assert trend.change_points([10.0] * 6 + [5.0]) == [6]  # past SHORT_SERIES: PELT again


@pytest.mark.parametrize("seed", range(2))
def test_three_runs_step_at_the_last_only(tmp_path, seed):
    """`nox -s bench` twice, then once beside a CPU hog: the step is at the third run, nowhere else."""
    hist = write_history(tmp_path, 3, lambda i: {"slow": 2.0} if i == 2 else {}, seed=seed)
    t = trend.analyse(hist)
    assert t.steps and all((s.before.run, s.after.run) == (1, 2) and s.verdict == "REGRESSION" for s in t.steps)
    assert {s.metric for s in t.steps} >= {"decode_tok_s"}
    assert any(f"{commit(0)}->{commit(1)}: compare says" in u for u in t.unconfirmed)


@pytest.mark.parametrize("seed", range(3))
def test_planted_ten_percent_decode_step_found_at_k(tmp_path, seed):
    hist = write_history(tmp_path, 30, lambda i: {"slow": 1 / 0.9} if i >= STEP_AT else {}, seed=seed)
    t = trend.analyse(hist)  # the default gates: 5% floor, raised to what the history's noise says
    found = steps(t, "decode_tok_s")
    assert sorted(s.variant for s in found) == ["smollm2/bnb-nf4/cpu tg64", "smollm2/fp32/cpu tg64"]
    for s in found:
        assert (s.before.run, s.after.run) == (STEP_AT - 1, STEP_AT)
        assert (s.before.where.commit, s.after.where.commit) == (commit(STEP_AT - 1), commit(STEP_AT))
        assert s.verdict == "REGRESSION" and s.p < compare.ALPHA
        assert -0.14 < s.change < -0.06  # tok/s x 0.9
        # compare on the same two runs, with the same history, calls the same pair
        res = compare.compare(s.before.where.records(), s.after.where.records(), history_dir=hist)
        assert any(s.variant.split()[0].split("/")[1] in r and "decode_tok_s" in r for r in res.regressions)
        row = res.table[(res.table.metric == "decode_tok_s") & res.table.key.str.startswith(
            s.variant.split()[0] + "/tg64")]
        assert row.gate.tolist() == [s.gate] and f"gate {s.gate}" in s.line()
    assert t.steps == found  # nothing else moved
    # a fixed gate wider than the step (--fail) is respected: compare calls the pair ok
    t = trend.analyse(hist, ["decode_tok_s:-25%"])
    assert t.steps == []
    assert any(f"{commit(STEP_AT - 1)}->{commit(STEP_AT)}: compare says ok (gate -25% (--fail))" in u
               for u in t.unconfirmed)


def test_bnb_rss_noise_gets_its_own_floor_and_steps_are_still_found(tmp_path):
    """bnb-nf4 quantizes at load: its peak RSS moves ~10% run to run (833-1126 MB measured, see
    docs/tracking.md). Under a fixed +15% gate that noise makes steps; its learnt floor makes none, and the
    planted -10% decode step is still found."""
    rss = (980e6 * np.random.default_rng(1).lognormal(0, 0.12, 20)).astype(int)

    def run(i):
        return {"load_rss": {"bnb-nf4": int(rss[i])}, **({"slow": 1 / 0.9} if i >= 10 else {})}

    # five runs (every boundary a candidate): the noise alone crosses a fixed +15% gate
    short = write_history(tmp_path / "short", 5, run)
    assert steps(trend.analyse(short, ["peak_rss_bytes:+15%"]), "peak_rss_bytes")
    assert trend.analyse(short).steps == []
    hist = write_history(tmp_path, 20, run)
    t = trend.analyse(hist)
    assert {(s.metric, s.after.run) for s in t.steps} == {("decode_tok_s", 10)} and len(t.steps) == 2
    (key, gate), = [(k, g) for k, g in trend.learnt(t) if k[5] == "peak_rss_bytes"]
    assert key[2] == "bnb-nf4" and gate.source == "noise" and gate.threshold > 0.2
    floor = compare.noise_floor(rss)  # what the series says, computed from the planted values
    assert gate.threshold == floor.value and gate.label() == f"+{floor.value:.1%} (noise, 20 runs)"
    fp32 = t.gates[(key[0], "smollm2", "fp32", "cpu", "load", "peak_rss_bytes")]
    assert fp32.label() == "+15%"  # a quiet series keeps the default
    html = trend.render_html(t, str(hist))
    assert "Gates: what each series was judged against" in html and escape(gate.label()) in html


def test_planted_twenty_percent_step_in_a_real_bench(tmp_path):
    """The case that was missed: the committed CI baseline copied 8 times with +-3% run jitter
    on every timing sample, gguf-f16 decode 20% slower in the last 3. compare on runs 4 and 5
    calls it with the default gates; the trend finds it and nothing else."""
    base = history.records.read(Path(__file__).parents[1] / "results/baselines/ci-cpu.jsonl")
    rng = np.random.default_rng(3)
    for i, jitter in enumerate(rng.uniform(0.97, 1.03, 8)):
        out = []
        for r in base:
            slow = jitter / (0.8 if i >= 5 and r["format"] == "gguf-f16" else 1.0)
            r = {**r, "run_id": f"202611{1 + i:02d}T000000Z-{i}", "env": {**r["env"], "git_commit": commit(i)}}
            if r.get("decode_samples_s"):
                r["decode_samples_s"] = [s * slow for s in r["decode_samples_s"]]
                r["decode_tok_s"] = r["decode_tok_s"] / slow
            if r.get("prefill_samples_s"):
                r["prefill_samples_s"] = [s * jitter for s in r["prefill_samples_s"]]
                r["prefill_tok_s"] = r["prefill_tok_s"] / jitter
            out.append(r)
        history.records.append(tmp_path / f"run{i}.jsonl", out)
        history.track([tmp_path / f"run{i}.jsonl"], tmp_path / "h")
    res = compare.compare(history.records.read(tmp_path / "run4.jsonl"),
                          history.records.read(tmp_path / "run5.jsonl"))
    t = res.table[res.table.verdict == "REGRESSION"]
    assert sorted(t.key) == ["tiny/gguf-f16/cpu/tg16", "tiny/gguf-f16/cpu/tg16x4"]
    assert set(t.metric) == {"decode_tok_s"} and all(-0.25 < c < -0.15 for c in t.change)
    tr = trend.analyse(tmp_path / "h")
    assert {(s.variant, s.metric, s.after.run) for s in tr.steps} == {
        ("tiny/gguf-f16/cpu tg16", "decode_tok_s", 5),
        ("tiny/gguf-f16/cpu tg16x4", "decode_tok_s", 5)}


@pytest.mark.parametrize("seed", range(3))
def test_thirty_noise_only_runs_have_no_step(tmp_path, seed):
    hist = write_history(tmp_path, 30, seed=10 + seed)
    assert trend.analyse(hist, FIVE).steps == []
    # harsher: whole-run drift and per-repetition factors of 5%, under the default gates
    hist = write_history(tmp_path / "harsh", 30, lambda i: {"drift": 0.05, "rep_sigma": 0.05}, seed=seed)
    assert trend.analyse(hist).steps == []


def test_ppl_half_percent_step_found(tmp_path):
    # 11.64 -> 11.70 is +0.52%, past the +0.5% default gate; deterministic: no statistics
    hist = write_history(tmp_path, 20, lambda i: {"ppl": 11.70 if i >= 8 else 11.64})
    found = steps(trend.analyse(hist), "ppl")
    assert len(found) == 2 and {s.after.run for s in found} == {8}
    assert all(s.change == pytest.approx(11.70 / 11.64 - 1) and s.p is None for s in found)
    line = found[0].line()
    assert line.startswith("smollm2/")
    assert f"ppl512 perplexity +0.5% between {commit(7)} and {commit(8)} (REGRESSION; deterministic" in line


def test_small_ppl_step_follows_the_gate(tmp_path):
    hist = write_history(tmp_path, 12, lambda i: {"ppl": 11.675 if i >= 6 else 11.64})  # +0.3%
    assert steps(trend.analyse(hist), "ppl") == []
    assert len(steps(trend.analyse(hist, ["ppl:+0.2%"]), "ppl")) == 2


def test_library_upgrade_is_judged_named_and_breaks_the_line(tmp_path):
    newer = {"torch": "2.14.0"}
    hist = write_history(tmp_path, 12, lambda i: {"env": newer, "ppl": 11.76} if i >= 6 else {})
    assert len(list(hist.iterdir())) == 2  # two fingerprints in the history ...
    t = trend.analyse(hist)
    assert len({k[0] for k in t.series}) == 1  # ... one machine in the trend
    (s, _) = steps(t, "ppl")
    assert "torch 2.13.0+cpu->2.14.0" in s.line() and s.after.run == 6
    # ... but no line joins two fingerprints: each variant's line breaks at the upgrade
    html = trend.render_html(t, str(hist))
    ppl = html[html.index('id="trend-ppl-ppl512"'):]
    ppl = ppl[:ppl.index("</svg>")]
    paths = re.findall(r'<path class="series" data-machine="([^"]+)" d="([^"]+)"', ppl)
    assert sorted(m for m, _ in paths) == sorted(2 * [p.name for p in hist.iterdir()])  # 2 variants
    assert all(d.count("M") == 1 and d.count("L") == 5 for _, d in paths)  # 6 runs each side
    upgrade = re.findall(r'<line class="upgrade"[^>]*><title>([^<]*)</title>', ppl)
    assert upgrade == ["torch 2.13.0+cpu-&gt;2.14.0"]


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.svgs, self.titles, self._in_title = [], [], [], False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "svg":
            self.svgs.append(dict(attrs))
        self._in_title = tag == "title"

    def handle_data(self, data):
        if self._in_title:
            self.titles.append(data)

    def handle_endtag(self, tag):
        self._in_title = False


class _Content(HTMLParser):
    """A page's content: its tables (rows of cell texts), its headings, paragraphs, summaries and
    list items in order (text whitespace-collapsed, a list item with its class), its SVG markup."""
    TEXT = ("h1", "h2", "p", "summary", "li", "th", "td")

    def __init__(self, html: str):
        super().__init__()
        self.tables, self.blocks, self._text, self._cls = [], [], None, None
        self.feed(html)
        self.svgs = re.findall(r"<svg .*?</svg>", html, re.S)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in self.TEXT:
            self._text, self._cls = [], dict(attrs).get("class")

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag in self.TEXT and self._text is not None:
            text = " ".join("".join(self._text).split())
            if tag in ("th", "td"):
                self.tables[-1][-1].append(text)
            else:
                self.blocks.append((tag, self._cls if tag == "li" else None, text))
            self._text = None


STRING_BUILT = Path(__file__).parent / "data" / "trend-string-built.html"


def _string_built_history(tmp_path):
    """Returns the history that tests/data/trend-string-built.html shows (source "results/<history>
    & co"): 6 runs, decode 1.5x slower from run 3 with a torch upgrade, and 3 runs of a second
    machine. The page was rendered by the string-built trend.render_html (commit bddb567) before it
    moved to templates/trend.html.j2; re-render it from this history where the page's content
    changes on purpose."""
    hist = write_history(tmp_path, 6, lambda i: {"slow": 1.5, "env": {"torch": "2.14.0"}} if i >= 3 else {})
    write_history(tmp_path / "m2", 3, lambda i: {"env": {"cpu": "Intel Xeon Platinum 8480+"}}, hist=hist)
    return hist


def test_templated_page_says_what_the_string_built_one_said(tmp_path):
    t = trend.analyse(_string_built_history(tmp_path))
    html = trend.render_html(t, "results/<history> & co")
    new, old = _Content(html), _Content(STRING_BUILT.read_text(encoding="utf-8"))
    assert new.tables == old.tables and len(new.tables[0]) == 1 + 24  # the gates: head, 24 series
    assert new.blocks == old.blocks and [b[1] for b in new.blocks].count("REGRESSION") == 2
    assert new.svgs == old.svgs and len(new.svgs) == 6  # the panels, unchanged
    # autoescaped: markup in a value is text on the page, in a paragraph, a list item and a cell
    assert "<code>results/&lt;history&gt; &amp; co</code>" in html and "<history>" not in html
    key, gate = next(iter(t.gates.items()))
    t.gates[("<b>m</b>", *key[1:])] = gate
    t.unconfirmed.append("<script>alert(1)</script> & more")
    html = trend.render_html(t, "x")
    assert "<li>&lt;script&gt;alert(1)&lt;/script&gt; &amp; more</li>" in html and "<script>alert" not in html
    assert '<td class="s machine">&lt;b&gt;m&lt;/b&gt;</td>' in html and "<b>m</b>" not in html


def test_trend_page_has_panels_steps_and_hover(tmp_path, capsys):
    hist = write_history(tmp_path, 20, lambda i: {"slow": 1.10} if i >= 10 else {})
    out = tmp_path / "trend.html"
    assert main(["trend", str(hist), "-o", str(out), "--fail", *FIVE]) == 0
    printed = capsys.readouterr().out
    assert printed.count("step: ") == 2 and f"2 step(s) in 20 runs; trend: {out}" in printed
    html = out.read_text()
    page = _Page()
    page.feed(html)
    ids = [s["id"] for s in page.svgs]
    assert ids == ["trend-decode_tok_s-tg64", "trend-prefill_tok_s-pp512", "trend-ppl-ppl512",
                   "trend-kld_mean-ppl512", "trend-peak_rss_bytes-load", "trend-weights_bytes-load"]
    assert "http" not in re.sub(r'xmlns="http://www.w3.org/2000/svg"', "", html)  # offline
    hover = f"fp32 tg64 on {history.fingerprint(history.machine(ENV))}"
    assert any(t.startswith(hover) and f"at {commit(3)} (2026-11-01 03:00Z, run 3)" in t for t in page.titles)
    top = html[:html.index("<svg")]
    assert top.count('<li class="REGRESSION">') == 2 and f"between {commit(9)} and {commit(10)}" in top
    decode = html[html.index('id="trend-decode_tok_s-tg64"'):]
    decode = decode[:decode.index("</svg>")]
    assert decode.count('class="step"') == 2 and decode.count("<circle") == 2 * 20
    legend = re.findall(r"<text [^>]*>([^<]*)</text>", decode[decode.index('<g class="legend">'):])
    assert legend == ["bnb-nf4", "fp32"]  # one machine: a colour per variant


def test_two_machines_colour_per_machine(tmp_path):
    hist = write_history(tmp_path, 6)
    write_history(tmp_path, 6, lambda i: {"env": {"cpu": "Intel Xeon Platinum 8480+"}}, hist=hist)
    html = trend.render_html(trend.analyse(hist), str(hist))
    decode = html[html.index('id="trend-decode_tok_s-tg64"'):]
    decode = decode[:decode.index("</svg>")]
    legend = re.findall(r"<text [^>]*>([^<]*)</text>", decode[decode.index('<g class="legend">'):])
    assert legend == ["M1 amd-epyc-7763-2c-24g", "M2 intel-xeon-platinum"]
    colors = set(re.findall(r'<path class="series" [^>]*stroke="(#[0-9a-f]+)"', decode))
    assert colors == {plots.color_for(0), plots.color_for(1)}  # 4 lines, 2 colours


def test_empty_history_is_user_error(tmp_path, capsys):
    (tmp_path / "h").mkdir()
    assert main(["trend", str(tmp_path / "h")]) == 2
    assert "has no runs; add some with `quantbench track" in capsys.readouterr().err


def _commands(text: str) -> list[list[str]]:
    """Returns the argv of each `quantbench track|trend|compare|run` line (continuations joined)."""
    import shlex

    out = []
    for line in text.replace("\\\n", " ").splitlines():
        m = re.search(r"(?:^|\s)(?:\.nox/tests/bin/)?quantbench ((?:track|trend|compare|run) .*)", line)
        if m:
            out.append(shlex.split(re.sub(r"\[.*?\]|#.*", "", m.group(1))))
    return out


def test_documented_commands_parse():
    from pathlib import Path

    from quantbench.cli.main import build_parser

    root = Path(__file__).resolve().parents[1]
    page = (root / "docs" / "tracking.md").read_text()
    section = page[page.index("## Tracking regressions"):]
    cmds = _commands(section) + _commands((root / "docs" / "ci-example.yml").read_text())
    assert [c[0] for c in cmds] == ["run", "track", "compare", "trend", "compare", "trend"]
    for argv in cmds:
        args = build_parser().parse_args(argv)  # argparse exits on anything it does not know
        assert args.func.__name__ == f"cmd_{argv[0]}"


@pytest.mark.browser
def test_trend_page_in_chromium(tmp_path):
    """Headless Chromium runs the page's script without error and draws every panel and point."""
    from test_browser import CHROMIUM, _chromium

    if CHROMIUM is None:
        pytest.skip("chromium not on PATH (apt-get install chromium)")
    hist = write_history(tmp_path, 12, lambda i: {"slow": 1.10} if i >= 6 else {})
    page = tmp_path / "trend.html"
    page.write_text(trend.render_html(trend.analyse(hist, FIVE), str(hist)), encoding="utf-8")
    dom = _chromium(tmp_path, "--virtual-time-budget=2000", "--dump-dom", page.resolve().as_uri())
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert "data-jserror" not in body and 'data-ready="1"' in body, body
    panels = re.findall(r'<svg id="(trend-[^"]+)" class="plot".*?</svg>', dom, re.S)
    assert len(panels) == 6
    decode = re.search(r'<svg id="trend-decode_tok_s-tg64".*?</svg>', dom, re.S).group(0)
    assert decode.count("<circle") == 2 * 12 and decode.count('class="step"') == 2
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,1600", page.resolve().as_uri())
    assert shot.stat().st_size > 20_000  # a blank page compresses to a few kB


def test_step_from_zero_kld(tmp_path):
    # a reference format's KLD is 0; 0.002 crosses the +10% gate and its 1e-4 floor
    hist = tmp_path / "h"
    for i in range(8):
        recs = one_run(i)
        for r in recs:
            if "kld_mean" in r:
                r["kld_mean"] = 0.002 if i >= 4 else 0.0
        history.records.append(tmp_path / f"r{i}.jsonl", recs)
        history.track([tmp_path / f"r{i}.jsonl"], hist)
    (s, _) = steps(trend.analyse(hist), "kld_mean")
    assert s.after.run == 4 and s.verdict == "REGRESSION" and s.change == math.inf
    assert f"ppl512 KLD mean 0 -> 0.002 between {commit(3)} and {commit(4)}" in s.line()
