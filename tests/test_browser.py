"""The report in headless Chromium: it lays out, draws its plots and runs its script without error.

Renders $QUANTBENCH_REPORT when set, else a report built from tests/synthetic.py. The screenshot is
kept at reports/browser-screenshot.png for a person to look at. Skipped where no chromium is on PATH
(`apt-get install chromium`).
"""
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from synthetic import CPU_FORMATS, GPU_FORMATS, synthetic

from quantbench.report import render

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = Path(__file__).resolve().parents[1] / "reports" / "browser-screenshot.png"
WINDOW = (1400, 2400)
MIN_PNG_BYTES = 20_000  # a blank or single-colour 1400×2400 page compresses to a few kB
TIMEOUT_S = 120
# Quiet, offline, one-shot: no sandbox (containers run as root), no GPU, no network chatter.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium not on PATH (apt-get install chromium)")]


def _chromium(tmp: Path, *args: str) -> str:
    """Runs headless Chromium with a fresh profile under tmp; returns its stdout."""
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    run = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                         text=True, timeout=TIMEOUT_S)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def png_summary(path: Path) -> tuple[int, int, int]:
    """Returns (width, height, distinct byte values in the decompressed scanlines) of an 8-bit PNG.

    A single-colour image filters to a handful of byte values whatever filter each row uses (its
    colour, zeros, the filter-type bytes), so many distinct values mean the page drew something.
    """
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height, channels = 8, [], 0, 0, 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), f"unexpected PNG depth {depth} / colour type {color}"
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + n
    raw = zlib.decompress(b"".join(idat))
    assert len(raw) == height * (1 + width * channels), "scanlines do not match the PNG header"
    return width, height, len(set(raw))


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    given = os.environ.get("QUANTBENCH_REPORT")
    if given:
        assert Path(given).is_file(), f"QUANTBENCH_REPORT={given} is not a file"
        return Path(given).resolve()
    tmp = tmp_path_factory.mktemp("report")
    return Path(render.write_report(synthetic(tmp), str(tmp / "browser.html"))[0]).resolve()


@pytest.fixture(scope="module")
def dom(page, tmp_path_factory) -> str:
    """The DOM after the page's scripts ran (virtual time lets timers and load handlers finish)."""
    return _chromium(tmp_path_factory.mktemp("dom"), "--virtual-time-budget=2000", "--dump-dom",
                     page.as_uri())


def _plots(html: str) -> dict[str, str]:
    return {m[1]: m[0] for m in re.finditer(r'<svg id="([^"]+)" class="plot".*?</svg>', html, re.S)}


def _variants(html: str) -> list[tuple[str, str]]:
    """Returns (variant row, its details line or '') in table order."""
    body = re.search(r'<table class="sortable" id="variants">.*?</table>', html, re.S).group(0)
    rows = re.findall(r'<tr class="([^"]*)">(.*?)</tr>', body, re.S)
    out = []
    for cls, cells in rows:
        if cls.startswith("details"):
            assert out and not out[-1][1], "a details line that follows no variant row"
            out[-1] = (out[-1][0], cells)
        else:
            out.append((cells, ""))
    return out


def _points(svg: str) -> int:
    """Returns the data marks of a plot: circles and rects outside its legend."""
    svg = re.sub(r'<g class="legend">.*?</g>', "", svg, flags=re.S)
    return len(re.findall(r"<(?:circle|rect)\b", svg))


def test_screenshot(page, tmp_path, capsys):
    out = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={out}", f"--window-size={WINDOW[0]},{WINDOW[1]}", page.as_uri())
    assert out.is_file(), "chromium wrote no screenshot"
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out, SCREENSHOT)
    with capsys.disabled():
        print(f"\nscreenshot: {SCREENSHOT}")
    assert out.stat().st_size > MIN_PNG_BYTES, f"{out.stat().st_size} bytes: a blank page?"
    width, height, distinct = png_summary(out)
    assert (width, height) == WINDOW
    assert distinct > 64, f"only {distinct} distinct byte values: a single-colour page"


def test_script_ran_without_error(dom):
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert "data-jserror" not in body, re.search(r'data-jserror="([^"]*)"', body).group(1)
    assert 'data-ready="1"' in body, f"the report's script did not finish: {body}"
    headers = re.search(r'<table class="sortable" id="variants">.*?</thead>', dom, re.S).group(0)
    assert f'data-sortable="{len(re.findall(r"<th[ >]", headers))}"' in body  # every header sorts


def test_plots_and_points_in_dom(page, dom):
    source, shown = _plots(page.read_text(encoding="utf-8")), _plots(dom)
    assert source and list(shown) == list(source)
    for plot_id, svg in source.items():
        assert _points(shown[plot_id]) == _points(svg), plot_id
    if os.environ.get("QUANTBENCH_REPORT"):
        assert any(_points(svg) for svg in shown.values()), "no plot has a single point"
        return
    for device, n in (("cpu", len(CPU_FORMATS)), ("cuda", len(GPU_FORMATS))):
        assert _points(shown[f"quality-size-{device}"]) >= n
        assert _points(shown[f"decode-size-{device}"]) >= 2 * n  # measured and predicted
        assert _points(shown[f"roofline-{device}"]) >= 3 * n  # two prefills and a decode each
        assert _points(shown[f"memory-{device}"]) >= 3 * n
        assert _points(shown[f"latency-{device}"]) >= 100 * n


def test_sort_takes_details_along(page, tmp_path):
    """Clicks the decode tok/s header (the second header without one) and checks the order."""
    html = page.read_text(encoding="utf-8")
    heads = re.findall(r"<th[^>]*>(.*?)</th>", re.search(r'id="variants"><thead>.*?</thead>', html).group(0))
    col = heads.index("decode tok/s") if "decode tok/s" in heads else 1
    click = f'<script>document.querySelectorAll("#variants th")[{col}].click();</script></body>'
    clicked = tmp_path / "clicked.html"
    clicked.write_text(html.replace("</body>", click), encoding="utf-8")
    dom = _chromium(tmp_path, "--virtual-time-budget=2000", "--dump-dom", clicked.as_uri())
    assert "data-jserror" not in re.search(r"<body[^>]*>", dom).group(0)
    before, after = _variants(html), _variants(dom)
    assert sorted(before) == sorted(after)  # every row kept its details line
    keys = [re.findall(r'data-v="([^"]*)"', row)[col] for row, _ in after]
    nums = [float(k) for k in keys if k]
    assert nums == sorted(nums) and keys == [str(k) for k in keys if k] + [""] * keys.count("")
