"""Self-contained HTML pages: images inside as data URIs, no network, no external script, written atomically.

The store's quality report and the reports of runs, comparisons and the demo are built with these; a page
from Markdown (:func:`markdown_page`) is how a command's ``report.md`` becomes its ``report.html``.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from neurostorm.data.files import replaced_atomically

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem auto;padding:0 1.5rem;color:#222;max-width:1400px;
     line-height:1.45}
table{border-collapse:collapse;font-size:.9rem;margin:.8rem 0}
th,td{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:left;white-space:nowrap}
th{background:#f4f4f4;position:sticky;top:0;white-space:normal;vertical-align:bottom}
table.sortable th{cursor:pointer}
tr.flagged td{background:#fff3e0} tr.unreadable td{background:#fde7e9}
.flag{display:inline-block;background:#e65100;color:#fff;border-radius:3px;padding:0 .35rem;margin-right:.2rem}
figure{margin:1rem 0} img{max-width:100%;height:auto;border:1px solid #eee}
p>img{max-width:min(100%,560px);vertical-align:top;margin:.25rem}
.wide{overflow-x:auto;max-width:100%}
code{background:#f4f4f4;padding:0 .2rem;border-radius:3px;font-size:.85rem;white-space:pre-wrap}
dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem;font-size:.9rem} dt{font-weight:600}
"""
# a click on a heading of a table.sortable sorts its rows by that column (numbers as numbers; a cell's
# data-value, when set, is what it sorts by)
SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach((th, column) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const ascending = th.dataset.order !== 'asc'; th.dataset.order = ascending ? 'asc' : 'desc';
  const key = row => { const cell = row.cells[column]; const v = cell.dataset.value ?? cell.textContent;
                       const n = parseFloat(v); return isNaN(n) ? v : n; };
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b);
    return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1); }).forEach(row => body.appendChild(row));
}));
"""


def data_uri(path: Path) -> str:
    """An image file (PNG or SVG, told by its bytes) as a ``data:`` URI."""
    content = Path(path).read_bytes()
    kind = "image/svg+xml" if content[:256].lstrip().startswith((b"<?xml", b"<svg")) else "image/png"
    return f"data:{kind};base64,{base64.b64encode(content).decode()}"


def page(title: str, body: str) -> str:
    """A whole page: ``body`` (HTML) under ``title``, with the shared style and the table-sorting script."""
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{STYLE}</style></head>"
            f"<body>{body}<script>{SORT_SCRIPT}</script></body></html>")


def write_page(path: Path, text: str) -> Path:
    """Write a page whole or not at all (an earlier page stays until the new one is complete)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def markdown_page(markdown: str, folder: Path, title: str) -> str:
    """A page from Markdown (tables included) whose images are files relative to ``folder``: each is put
    inside the page (a missing one is named in its place); tables become sortable."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown)

    def inline(match: re.Match) -> str:
        source = html.unescape(match.group(2))
        path = folder / source
        if re.match(r"^[a-z]+:", source) or not path.is_file():
            return f"<em>(figure {html.escape(source)} not found)</em>"
        return f"{match.group(1)}{data_uri(path)}{match.group(3)}"

    body = re.sub(r'(<img src=")([^"]+)(")', inline, body)
    tables = body.replace("<table>", "<div class='wide'><table class='sortable'>").replace("</table>", "</table></div>")
    return page(title, tables)  # a table wider than the screen scrolls on its own


def write_markdown_report(folder: Path, markdown: str, title: str, name: str = "report") -> Path:
    """``folder/<name>.md`` (for terminals) and its self-contained ``folder/<name>.html``; returns the HTML's
    path."""
    with replaced_atomically(folder / f"{name}.md") as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    return write_page(folder / f"{name}.html", markdown_page(markdown, folder, title))
