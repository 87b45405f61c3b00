"""Look at a rendered report in a real headless Chromium: screenshot it at 1280 px wide and check that
no image is broken and nothing overflows the page horizontally.

The checks run in a copy of the page with a small probe script appended (the report itself carries
no script); the probe writes what it measured into the document title, which ``--dump-dom`` returns.
The screenshot is taken of the report itself. Chromium runs with a fresh profile and no network
services, so it touches nothing outside its temporary directory.

Example::

    python -m loadtests.report_check tests/data/results_small.json out/report-check   # or: make report-check
"""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
VIEWPORT_WIDTH = 1280
VIEWPORT_HEIGHT = 900
MAX_SCREENSHOT_HEIGHT = 20_000
CHROMIUM_TIMEOUT_S = 90
# Virtual time for the page to load and lay out (data-URI images decode within it).
VIRTUAL_TIME_BUDGET_MS = 5_000
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                  "--disable-extensions", "--mute-audio")
PROBE = """<script>
addEventListener("load", () => {
  const root = document.documentElement;
  const images = Array.from(document.images);
  document.title = "CHECK " + JSON.stringify({
    scroll_width: root.scrollWidth, client_width: root.clientWidth, scroll_height: root.scrollHeight,
    images: images.length, broken: images.filter(i => !i.complete || i.naturalWidth === 0).length,
    wide_images: images.filter(i => i.getBoundingClientRect().right > root.clientWidth + 1).length});
});
</script>"""
_CHECK = re.compile(r"<title>CHECK (\{.*?\})</title>", re.S)


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) binary on PATH, or ``None``."""
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


@dataclass(frozen=True)
class PageCheck:
    """What the browser measured on one page."""

    scroll_width: int
    client_width: int
    scroll_height: int
    images: int
    broken: int
    wide_images: int
    screenshot: Path

    @property
    def problems(self) -> list[str]:
        """Everything wrong with the page, in words; empty when it passes."""
        found = []
        if self.scroll_width > self.client_width:
            found.append(f"horizontal overflow: content {self.scroll_width} px wide in a {self.client_width} px viewport")
        if self.broken:
            found.append(f"{self.broken} of {self.images} images broken")
        if self.wide_images:
            found.append(f"{self.wide_images} images reach past the viewport")
        width = _png_width(self.screenshot)
        if width != VIEWPORT_WIDTH:
            found.append(f"screenshot is {width} px wide, not {VIEWPORT_WIDTH}")
        return found


def _png_width(path: Path) -> int | None:
    head = path.read_bytes()[:24] if path.is_file() else b""
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return int(struct.unpack(">I", head[16:20])[0])


def _run(chromium: str, profile: Path, height: int, *args: str) -> str:
    argv = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={VIEWPORT_WIDTH},{height}", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited {done.returncode}: {done.stderr[-1500:]}")
    return done.stdout


def check_page(page: Path, screenshot: Path, chromium: str | None = None) -> PageCheck:
    """Load ``page`` at 1280 px, measure it, and write a full-height screenshot to ``screenshot``."""
    binary = chromium or find_chromium()
    if binary is None:
        raise RuntimeError("no Chromium found (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="report-check-") as tmp:
        probe = Path(tmp) / "probe.html"
        probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
        dom = _run(binary, Path(tmp) / "profile", VIEWPORT_HEIGHT, f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
                   "--dump-dom", probe.resolve().as_uri())
        match = _CHECK.search(dom)
        if match is None:
            raise RuntimeError("the probe did not run: no measurement in the page title")
        measured = json.loads(html.unescape(match.group(1)))
        height = max(VIEWPORT_HEIGHT, min(int(measured["scroll_height"]), MAX_SCREENSHOT_HEIGHT))
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        _run(binary, Path(tmp) / "profile", height, f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
             f"--screenshot={screenshot.resolve()}", page.resolve().as_uri())
    return PageCheck(screenshot=screenshot, **{k: int(v) for k, v in measured.items()})


def main(argv: list[str]) -> int:
    """Render ``results.json`` into ``OUT/report.html``, check it and screenshot it to ``OUT/report.png``."""
    from loadtests.report import write_report

    if len(argv) != 2:
        print("usage: python -m loadtests.report_check RESULTS_JSON OUT_DIR", file=sys.stderr)
        return 2
    results, out = Path(argv[0]), Path(argv[1])
    data = json.loads(results.read_text())
    _, page = write_report(data["runs"], out, data.get("context", {}))
    check = check_page(page, out / "report.png")
    print(json.dumps({"page": str(page), "screenshot": str(check.screenshot), "scroll_width": check.scroll_width,
                      "client_width": check.client_width, "images": check.images, "broken": check.broken,
                      "problems": check.problems}, indent=2))
    return 1 if check.problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
