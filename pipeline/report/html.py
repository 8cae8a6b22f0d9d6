"""Small HTML helpers: escaping, tables, figures and the page around the sections."""

import dataclasses
import html
import math
from typing import Any, Iterable, List, Optional, Sequence

import numpy as np


@dataclasses.dataclass
class Section:
    """One section of the report.

    Attributes:
      section_id: the element id (also the anchor in the navigation).
      title: the heading.
      body: the section's HTML.
      present: False when the run has nothing for it; body then says why.
    """

    section_id: str
    title: str
    body: str
    present: bool = True


def escape(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def format_number(value: float, significant: int = 4) -> str:
    """A float for people: at least `significant` significant digits, no trailing zeros.

    50.61 -> "50.61" (not "50.6100"), 3.2 -> "3.2", 0.000123456 -> "0.0001235",
    1234.56 -> "1,234.6", 2.0 -> "2", 1.5e-09 -> "1.5e-09".
    """
    if value != value or value in (float("inf"), float("-inf")):  # NaN, infinities
        return str(value)
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude < 1e-6:
        mantissa, exponent = f"{value:.{significant - 1}e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"
    if magnitude >= 100:
        text = f"{value:,.1f}"
    else:
        # Four decimals at least (metrics near 1 keep their precision), more for small values.
        leading_zeros = -math.floor(math.log10(magnitude)) - 1 if magnitude < 1 else 0
        text = f"{value:,.{max(4, leading_zeros + significant)}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def number(value: Any, digits: int = 4) -> str:
    """A table cell for a number: ints as ints, floats by format_number, None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, np.generic):
        value = value.item()
    whole_float = isinstance(value, float) and value.is_integer() and abs(value) >= 1
    if isinstance(value, int) or whole_float:
        return f"{int(value):,}"
    if isinstance(value, float):
        return format_number(value, digits)
    return escape(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], table_id: Optional[str] = None,
          raw_columns: Sequence[int] = ()) -> str:
    """An HTML table; cells are escaped (numbers formatted) except in raw_columns."""
    head = "".join(f"<th>{escape(header)}</th>" for header in headers)
    body = []
    for row in rows:
        cells = []
        for index, cell in enumerate(row):
            if index in raw_columns:
                cells.append(f"<td>{cell}</td>")
            elif isinstance(cell, (int, float, np.generic)) or cell is None:
                cells.append(f'<td class="num">{number(cell)}</td>')
            else:
                cells.append(f"<td>{escape(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    id_attribute = f' id="{escape(table_id)}"' if table_id else ""
    return (f'<table{id_attribute}><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def figure(uri: str, caption: str, chart_id: str, css_class: str = "chart") -> str:
    """An inline chart (a data: URI) with its caption."""
    return (f'<figure><img class="{css_class}" id="{escape(chart_id)}" src="{uri}" '
            f'alt="{escape(caption)}"><figcaption>{escape(caption)}</figcaption></figure>')


def not_present(reason: str) -> str:
    return f'<p class="not-present">Not present: {escape(reason)}</p>'


def badge(text: str, good: Optional[bool]) -> str:
    kind = "neutral" if good is None else ("good" if good else "bad")
    return f'<span class="badge {kind}">{escape(text)}</span>'


def pre(text: str, element_id: Optional[str] = None) -> str:
    id_attribute = f' id="{escape(element_id)}"' if element_id else ""
    return f"<pre{id_attribute}>{escape(text)}</pre>"


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2733;
       background: #f4f6f8; }
header.top { background: #20324a; color: white; padding: 16px 32px; }
header.top h1 { margin: 0 0 4px 0; font-size: 22px; }
nav { background: #2c4463; padding: 6px 32px; position: sticky; top: 0; z-index: 1; }
nav a { color: #dfe9f5; margin-right: 18px; text-decoration: none; font-size: 14px; }
nav a.absent { color: #8fa3ba; }
main { padding: 8px 32px 48px; max-width: 1300px; }
section { background: white; border-radius: 6px; padding: 12px 24px 20px; margin-top: 18px;
          box-shadow: 0 1px 3px rgba(0,0,0,0.12); }
section h2 { border-bottom: 1px solid #dde3ea; padding-bottom: 6px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #d5dce4; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #eef2f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: 8px 16px 8px 0; vertical-align: top; }
figcaption { font-size: 12px; color: #4a5a6a; max-width: 560px; }
img.chart { max-width: 100%; height: auto; display: block; }
img.samples { image-rendering: pixelated; display: block; }
pre { background: #f0f3f6; padding: 8px; overflow-x: auto; font-size: 12px; max-height: 420px; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 12px; font-weight: 600;
         font-size: 13px; margin-right: 6px; }
.badge.good { background: #d3f2dc; color: #0f5a27; }
.badge.bad { background: #fbd9d6; color: #8a1c12; }
.badge.neutral { background: #e6eaef; color: #33414f; }
.not-present { color: #5d6b79; font-style: italic; }
.section-error { color: #8a1c12; }
.note { color: #4a5a6a; font-size: 13px; }
.pass { color: #0f5a27; font-weight: 600; }
.fail { color: #8a1c12; font-weight: 600; }
"""


def page(title: str, subtitle: str, sections: List[Section]) -> str:
    """The whole report: header, navigation and sections; CSS inline, no scripts."""
    links = "".join(
        f'<a href="#{escape(s.section_id)}"{"" if s.present else " class=absent"}>'
        f'{escape(s.title)}</a>' for s in sections)
    body = "".join(
        f'<section id="{escape(s.section_id)}" class="{"present" if s.present else "absent"}">'
        f'<h2>{escape(s.title)}</h2>{s.body}</section>' for s in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f'<header class="top"><h1>{escape(title)}</h1><div>{escape(subtitle)}</div></header>'
        f"<nav>{links}</nav><main>{body}</main></body></html>\n")
