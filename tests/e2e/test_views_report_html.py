"""The HTML report renders in a real browser (headless Chromium): charts, tables, anomalies."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import pytest

from fleetwarden import cli
from fleetwarden.core import scenarios

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None, "chromium is not installed (apt-get install -y chromium)"
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120, check=True)


def _png_pixels(path: Path) -> tuple[int, int, set[bytes]]:
    """Width, height and the set of distinct RGB(A) pixels of an 8-bit non-interlaced PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None
    width, height, depth, color = header[:4]
    channels = {2: 3, 6: 4}[color]
    assert depth == 8
    raw = zlib.decompress(idat)
    stride = width * channels
    pixels: set[bytes] = set()
    prev = bytearray(stride)
    for y in range(height):
        filt = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if filt == 1:
                line[i] = (line[i] + a) & 0xFF
            elif filt == 2:
                line[i] = (line[i] + b) & 0xFF
            elif filt == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif filt == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        if y % 8 == 0:
            pixels.update(bytes(line[i:i + 3]) for i in range(0, stride, channels * 8))
        prev = line
    return width, height, pixels


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """An HTML report of a fleet with a model-update spike, from events and the example budgets."""
    tmp = tmp_path_factory.mktemp("html")
    events, _labels = scenarios.build("model_update_spike", 2, agents=3, minutes=240)
    path = tmp / "events.jsonl"
    with path.open("w") as fh:
        for ev in events:
            fh.write(json.dumps(ev) + "\n")
    out = tmp / "report.html"
    assert cli.main(["report", "--events", str(path), "-f", str(ROOT / "examples" / "support-swarm"),
                     "--window", "4h", "--output", "html", "-o", str(out)]) == 0
    return out


def test_dom_has_charts_tables_and_anomaly_rows(page):
    """After the browser parses the page, the DOM holds the trend SVG path, sparklines, and anomaly rows."""
    dom = _chromium("--dump-dom", page.as_uri()).stdout
    assert '<svg id="cost-trend"' in dom
    assert 'class="cost-line" d="M' in dom
    assert dom.count('class="spark"') >= 5
    assert '<tr class="anomaly" data-kind="model_update_spike">' in dom
    assert 'class="anomaly-marker"' in dom
    assert 'class="incident" id="inc-' in dom
    assert "Cost by agent" in dom and "Governance gaps" in dom


def test_screenshot_is_not_blank(page, tmp_path):
    """The screenshot is a 1280x2000 PNG with many colours (text, lines, badges), not a blank page."""
    shot = tmp_path / "report.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri())
    width, height, pixels = _png_pixels(shot)
    assert (width, height) == (1280, 2000)
    assert len(pixels) > 50
