"""One escaping function per output format, for every string that comes from a record or a config (method,
backbone, dataset, class and tag names, notes), and captions that keep text and markup apart.

- :func:`latex`: typesets the text literally (no command, group or math from a name ever reaches pdflatex);
- :func:`markdown`: a table cell that neither breaks the table (``|``) nor carries HTML, links or emphasis;
- HTML: Jinja's autoescape (``reports/html.py``) for every value, :func:`html` for text written outside templates;
- :func:`rich_text`: terminal tables (rich markup such as ``[red]`` or ``[/]`` in a name is printed, not applied);
- plots: matplotlib's mathtext is switched off for the whole figure (:data:`PLOT_RC`), so ``$...$`` in a class
  key is drawn as written instead of being parsed (and failing).
"""

from __future__ import annotations

import html as _html
import re
from dataclasses import dataclass

_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
}


def latex(text: str) -> str:
    """Plain text (method, dataset, backbone, class and tag names, captions) as LaTeX that typesets it literally:
    every special character of LaTeX's (``\\ & % $ # _ { } ~ ^``) and of T1 text (``< > |``, which OT1 fonts
    would print as other glyphs) is replaced, so nothing from a record is ever read as a command."""
    return re.sub(r"[\\&%$#_{}~^<>|]", lambda m: _SPECIAL[m.group()], str(text))


_MARKDOWN = re.compile(r"([\\`*_\[\]<>|~$])")


def markdown(text: str) -> str:
    """Plain text as a Markdown table cell or heading: what Markdown would read as markup backslash-escaped
    (``|``, so the table keeps its columns; ``<`` ``>``, so no HTML; ``[ ]``, so no link; emphasis, code and math
    marks), line breaks as spaces."""
    return _MARKDOWN.sub(r"\\\1", " ".join(str(text).split()))


def html(text: str) -> str:
    """Plain text for HTML outside a template (quotes included)."""
    return _html.escape(str(text), quote=True)


def rich_text(text: str) -> str:
    """Plain text for a rich console or table cell: markup brackets are printed, not applied."""
    from rich.markup import escape

    return escape(str(text))


PLOT_RC = {"text.parse_math": False, "text.usetex": False}


@dataclass(frozen=True)
class Symbol:
    """A typographic symbol in a caption. Captions are lists of plain text (which may come from records and config:
    every renderer escapes it for its format) and symbols (which every renderer writes in its own notation), so no
    format's markup is ever written into the text."""

    name: str


QUOTE_OPEN, QUOTE_CLOSE, DELTA, DAGGER, GE, PLUS_MINUS = (
    Symbol(n) for n in ("quote_open", "quote_close", "delta", "dagger", "ge", "plus_minus"))
UNICODE_SYMBOLS = {"quote_open": "\u201c", "quote_close": "\u201d", "delta": "\u0394", "dagger": "\u2020", "ge": "\u2265",
                   "plus_minus": "\u00b1"}


def render_caption(caption: list[str | Symbol], symbols: dict[str, str], escape=lambda text: text) -> str:
    """A caption in one format: ``escape`` applied to the text, ``symbols`` giving each symbol's notation."""
    return "".join(symbols[part.name] if isinstance(part, Symbol) else escape(part) for part in caption)
