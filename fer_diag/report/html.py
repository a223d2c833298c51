"""One self-contained offline HTML page: the Markdown rendering with plots embedded (no CDN)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import markdown

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:1em 0;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}img{max-width:100%}code{background:#f6f6f6}
"""


def render_html(markdown_text: str, base_dir: Path) -> str:
    body = markdown.markdown(markdown_text, extensions=["tables"])

    def inline(m: re.Match) -> str:
        path = base_dir / m.group(1)
        if not path.exists():
            return m.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^"]+\.png)"', inline, body)
    head = f'<meta charset="utf-8"><title>fer-diag report</title><style>{_CSS}</style>'
    return f"<!doctype html><html><head>{head}</head><body>{body}</body></html>"
