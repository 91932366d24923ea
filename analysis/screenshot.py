"""PNG screenshots of a report page with headless Chromium (for docs/screenshots; not part of the report itself).

    python -m analysis.screenshot REPORT_HTML OUT_DIR [--width 1400] [--height 2400] [--at 0 2400 ...]

Writes OUT_DIR/report-top.png (the page from its top) and, for every further --at offset (CSS pixels), one
OUT_DIR/report-at-<offset>.png from a copy of the page shifted up by that much; PNGs quantised to 256 colours.
Needs `chromium` (or --chromium PATH) on the PATH; every run uses a fresh temporary profile and no network, sync
or component updates.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

__all__ = ["chromium_command", "screenshot", "main"]

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--hide-scrollbars")


def chromium_command(binary: str, page: Path, png: Path, profile: Path, width: int, height: int) -> list[str]:
    return [binary, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={width},{height}",
            page.resolve().as_uri()]


def screenshot(page: Path, png: Path, width: int = 1400, height: int = 2400, offset: int = 0,
               binary: str = "chromium", colors: int | None = 256, timeout_s: float = 120.0) -> Path:
    """Screenshot `page` into `png`, the window's top at `offset` CSS pixels down the page; `colors`: quantise to a
    palette of that many colours (None: Chromium's full-colour PNG)."""
    with tempfile.TemporaryDirectory() as tmp:
        target = page
        if offset:  # --screenshot cannot scroll: a copy of the page whose body starts `offset` pixels higher
            target = page.parent / f".{page.stem}-at-{offset}.html"
            text = page.read_text(encoding="utf-8")
            target.write_text(text.replace("</head>", f"<style>body{{margin-top:-{offset}px}}</style></head>", 1),
                              encoding="utf-8")
        try:
            proc = subprocess.run(chromium_command(binary, target, png, Path(tmp), width, height),
                                  capture_output=True, text=True, timeout=timeout_s)
        finally:
            if target != page:
                target.unlink(missing_ok=True)
    if proc.returncode != 0 or not png.is_file():
        raise RuntimeError(f"{binary} wrote no screenshot {png} (exit {proc.returncode}): {proc.stderr[-2000:]}")
    if colors:  # a palette PNG: a page of text and plots is a few hundred colours, a third of the bytes
        from PIL import Image

        with Image.open(png) as im:
            # octree keeps the figures' colours (median cut shifts them), no dithering keeps text crisp
            im.convert("RGB").quantize(colors=colors, method=Image.Quantize.FASTOCTREE,
                                       dither=Image.Dither.NONE).save(png, optimize=True)
    return png


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.screenshot", description=__doc__.split("\n\n")[0])
    ap.add_argument("report", type=Path, help="a report.html")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=2400)
    ap.add_argument("--at", type=int, nargs="*", default=[], help="further screenshots this many pixels down")
    ap.add_argument("--chromium", default="chromium", help="the Chromium binary (default: chromium on the PATH)")
    ap.add_argument("--colors", type=int, default=256, help="palette size of the PNGs; 0: full colour")
    a = ap.parse_args(argv)
    if not a.report.is_file():
        print(f"error: no report at {a.report}", file=sys.stderr)
        return 2
    if shutil.which(a.chromium) is None:
        print(f"error: {a.chromium!r} not found; install Chromium (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    a.out_dir.mkdir(parents=True, exist_ok=True)
    for offset in [0, *a.at]:
        png = a.out_dir / ("report-top.png" if offset == 0 else f"report-at-{offset}.png")
        print(screenshot(a.report, png, a.width, a.height, offset, a.chromium, a.colors or None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
