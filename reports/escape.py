"""One escaping function per output format, for every string that comes from a record or a config (method,
backbone, dataset, class and tag names, notes), and captions that keep text and markup apart.

- :func:`latex`: typesets the text literally (no command, group or math from a name ever reaches pdflatex);
- :func:`markdown`: a table cell that neither breaks the table (``|``) nor carries HTML, links or emphasis;
- HTML: Jinja's autoescape (``reports/html.py``) for every value (:func:`clean_value` is the ``finalize`` that
  cleans a template's values too), :func:`html` for text written outside templates;
- :func:`rich_text`: terminal tables (rich markup such as ``[red]`` or ``[/]`` in a name is printed, not applied);
- plots: matplotlib's mathtext is switched off for the whole figure (:data:`PLOT_RC`), so ``$...$`` in a class
  key is drawn as written instead of being parsed (and failing).

Every one of them first applies :func:`clean`, the one sanitiser for untrusted text: C0/C1 control characters
(``ESC[2J``, ``ESC]0;...BEL``, NUL, CSI U+009B, ...) and Unicode bidi controls never reach a terminal, pdflatex, a
Markdown or HTML page or a CSV cell (``reports/tables.py``, ``reports/downloads.py``).
"""

from __future__ import annotations

import html as _html
import re
from dataclasses import dataclass

# Unicode bidi controls: embeddings/overrides U+202A-U+202E, isolates U+2066-U+2069, the marks LRM/RLM/ALM
BIDI = frozenset([*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C])
LINE_BREAKS = frozenset([0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029])


def _table(multiline: bool) -> dict[int, str | None]:
    """``str.translate`` table: every C0/C1 control, DEL and bidi control removed; line breaks and tabs as spaces
    (``multiline``: line breaks as ``\\n``, tabs kept)."""
    table: dict[int, str | None] = {c: None for c in [*range(0x00, 0x20), *range(0x7F, 0xA0), *BIDI]}
    for c in LINE_BREAKS:
        table[c] = "\n" if multiline else " "
    table[0x09] = "\t" if multiline else " "
    return table


_SINGLE_LINE, _MULTILINE = _table(False), _table(True)


def clean(text: object, multiline: bool = False) -> str:
    """Untrusted text (an id, a file or class name, a display name, a server's error message) without control
    characters: C0 and C1 controls (ESC, BEL, NUL, CSI U+009B, ...), DEL and Unicode bidi controls (U+202A-U+202E,
    U+2066-U+2069, U+200E, U+200F, U+061C) are removed, so no terminal sequence, no reordering of what is shown and
    no character pdflatex cannot typeset survives. Line breaks (``\\r\\n``, ``\\r``, VT, FF, NEL, U+2028/U+2029)
    and tabs become spaces for a single-line field; with ``multiline`` line breaks become ``\\n`` and tabs stay."""
    return str(text).replace("\r\n", "\n").translate(_MULTILINE if multiline else _SINGLE_LINE)


def clean_value(value):
    """:func:`clean` for a string (a table cell, a template value); any other value unchanged. Markup already
    made safe (``markupsafe.Markup``: an SVG plot) stays markup, line breaks kept, controls removed."""
    if isinstance(value, str) and hasattr(value, "__html__"):
        return type(value)(clean(value, multiline=True))
    return clean(value) if isinstance(value, str) else value


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
    would print as other glyphs) is replaced, so nothing from a record is ever read as a command; control
    characters removed first (:func:`clean`: pdflatex stops on ``^^[``), line breaks as spaces."""
    return re.sub(r"[\\&%$#_{}~^<>|]", lambda m: _SPECIAL[m.group()], clean(text))


_MARKDOWN = re.compile(r"([\\`*_\[\]<>|~$])")


def markdown(text: str) -> str:
    """Plain text as a Markdown table cell or heading: what Markdown would read as markup backslash-escaped
    (``|``, so the table keeps its columns; ``<`` ``>``, so no HTML; ``[ ]``, so no link; emphasis, code and math
    marks), line breaks as spaces, control characters removed (:func:`clean`)."""
    return _MARKDOWN.sub(r"\\\1", " ".join(clean(text).split()))


def html(text: str, multiline: bool = False) -> str:
    """Plain text for HTML outside a template (quotes included), control characters removed (:func:`clean`)."""
    return _html.escape(clean(text, multiline), quote=True)


def rich_text(text: str, multiline: bool = True) -> str:
    """Plain text for a rich console or table cell: markup brackets are printed, not applied; control characters
    removed (:func:`clean`: rich itself drops only BEL, BS, VT, FF and CR, so ``ESC[2J`` would clear the screen).
    Line breaks are kept (a multi-line message), unless ``multiline`` is false."""
    from rich.markup import escape

    return escape(clean(text, multiline))


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
    """A caption in one format: ``escape`` applied to the text (after :func:`clean`, so a caption is clean even
    where ``escape`` is the identity, as for HTML templates that autoescape), ``symbols`` giving each symbol's
    notation."""
    return "".join(symbols[part.name] if isinstance(part, Symbol) else escape(clean(part)) for part in caption)
