"""Reports as a list of blocks, rendered as Markdown and as self-contained HTML.

A block is ``(kind, body)``: ``("h1", text)``, ``("h2", text)``, ``("p", text)`` (``**bold**``
allowed), ``("list", [items])``, ``("table", (header, rows))``, ``("img", file name)`` or
``("link", (text, relative URL))``. The
HTML embeds images as data URIs and loads nothing from elsewhere, so a page opens offline
(a hospital network is often air-gapped); every page of the project (evaluation, validation,
drift, performance) is rendered here.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

Block = tuple[str, Any]


def to_markdown(blocks: list[Block]) -> str:
    """Markdown with images referenced by file name (they lie beside the report)."""
    out = []
    for kind, body in blocks:
        if kind == "h1":
            out.append(f"# {body}")
        elif kind == "h2":
            out.append(f"## {body}")
        elif kind == "p":
            out.append(body)
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in body))
        elif kind == "table":
            header, rows = body
            lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
            out.append("\n".join(lines))
        elif kind == "img":
            out.append(f"![{body}]({body})")
        elif kind == "link":
            out.append(f"[{body[0]}]({body[1]})")
    return "\n\n".join(out) + "\n"


def to_html(blocks: list[Block], folder: Path) -> str:
    """Self-contained HTML titled by the first ``h1`` block: images from ``folder`` embedded as data URIs."""
    e = html.escape
    title = next((body for kind, body in blocks if kind == "h1"), "covidnet report")
    out = ["<!DOCTYPE html>", f"<html><head><meta charset='utf-8'><title>{e(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:70em;margin:auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #999;padding:2px 8px;text-align:right}img{max-width:40em}</style></head><body>"]
    for kind, body in blocks:
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{e(body)}</{kind}>")
        elif kind == "p":
            text = e(body)
            while text.count("**") >= 2:
                text = text.replace("**", "<strong>", 1).replace("**", "</strong>", 1)
            out.append(f"<p>{text}</p>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in body) + "</ul>")
        elif kind == "table":
            header, rows = body
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
                       + "</table>")
        elif kind == "link":
            out.append(f"<p><a href='{e(body[1])}'>{e(body[0])}</a></p>")
        elif kind == "img":
            data = base64.b64encode((folder / body).read_bytes()).decode("ascii")
            out.append(f"<img alt='{e(body)}' src='data:image/png;base64,{data}'>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def provenance_blocks(provenance: dict[str, str] | None) -> list[Block]:
    """A report's last section: what it is about and when it was written (UTC)."""
    import datetime as dt

    rows = [[k, str(v)] for k, v in (provenance or {}).items() if v]
    rows.append(["written", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")])
    return [("h2", "Provenance"), ("table", (["", ""], rows))]
