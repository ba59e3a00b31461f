"""Headless Chromium (Debian's `chromium`) with every network request refused: what a page shows offline."""

import shutil
import subprocess
from pathlib import Path

import numpy as np

CHROMIUM = shutil.which("chromium")
#: Start-up flags: no sandbox as root, no GPU, no background traffic, and every request sent to a
#: proxy port nothing listens on: a page that needs the network renders as it would offline.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--disable-sync", "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
         "--virtual-time-budget=15000"]


def rendered_dom(url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran (``--dump-dom``)."""
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def screenshot(url: str, profile: Path, out: Path, size: tuple[int, int] = (1200, 1600)) -> np.ndarray:
    """A PNG of the page at ``size`` (written to ``out``), as an ``(H, W, 3)`` array."""
    from matplotlib.image import imread

    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                           f"--screenshot={out}", url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-2000:]
    return imread(out)[..., :3]


def inked(image: np.ndarray) -> float:
    """The fraction of pixels that are not white: near 0 for a blank page."""
    return float((image < 0.9).any(axis=-1).mean())
