"""Build the page template `dvc plots show` renders into, with vega, vega-lite and vega-embed inside it.

DVC's default page loads those three scripts from a CDN, so on an air-gapped hospital network
the plots page is blank. This writes `.dvc/plots/offline.html` from the npm packages pinned in
`web/package-lock.json` (installed into `web/node_modules` by scripts/setup-env.sh) and points
DVC at it in `.dvc/config.local`. The page has no `{scripts}` placeholder, so DVC adds no CDN tag.

    python scripts/offline_plots.py        # after `npm ci --prefix web`
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("vega/build/vega.min.js", "vega-lite/build/vega-lite.min.js", "vega-embed/build/vega-embed.min.js")
TEMPLATE = ROOT / ".dvc" / "plots" / "offline.html"

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>COVIDNet: DVC plots</title>
{inline}
    <style>
        body {{ font-family: sans-serif; margin: 1.5em; }}
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    <h1>COVIDNet: training curve and ROC</h1>
    <p>Rendered offline (the scripts are in this page). Figures from the default profile are from a
    SYNTHETIC cohort and say nothing about real patients.</p>
    {{plot_divs}}
</body>
</html>
"""


def main() -> int:
    modules = ROOT / "web" / "node_modules"
    missing = [s for s in SCRIPTS if not (modules / s).is_file()]
    if missing:
        print(f"offline_plots: {', '.join(missing)} not in {modules}: run `npm ci --prefix web` first", file=sys.stderr)
        return 1
    inline = "\n".join(f"    <script>\n{(modules / s).read_text()}\n    </script>" for s in SCRIPTS)
    TEMPLATE.parent.mkdir(parents=True, exist_ok=True)
    tmp = TEMPLATE.with_suffix(".tmp")
    tmp.write_text(PAGE.format(inline=inline))
    tmp.replace(TEMPLATE)
    subprocess.run([sys.executable, "-m", "dvc", "config", "--local", "plots.html_template",
                    str(TEMPLATE.relative_to(ROOT / ".dvc"))], cwd=ROOT, check=True)
    print(f"offline_plots: wrote {TEMPLATE.relative_to(ROOT)} ({TEMPLATE.stat().st_size // 1024} KiB); "
          "dvc plots show uses it (.dvc/config.local)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
