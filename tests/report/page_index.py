"""An index of a report page's elements by id (stdlib html.parser), for the tests."""

import html.parser
from typing import Dict, List


class PageIndex(html.parser.HTMLParser):
    """sections: id -> {"class", "text"}; images: id -> attributes; tables: id -> rows of cell
    texts (header row first); pres: id -> text; attribute_urls: every src/href value."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.sections: Dict[str, Dict[str, str]] = {}
        self.images: Dict[str, Dict[str, str]] = {}
        self.tables: Dict[str, List[List[str]]] = {}
        self.pres: Dict[str, str] = {}
        self.attribute_urls: List[str] = []
        self.tags: List[str] = []
        self._section = None
        self._table = None
        self._row = None
        self._cell = None
        self._pre = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append(tag)
        for name in ("src", "href"):
            if name in attributes:
                self.attribute_urls.append(attributes[name])
        element_id = attributes.get("id")
        if tag == "section":
            self._section = element_id
            self.sections[element_id] = {"class": attributes.get("class", ""), "text": ""}
        elif tag == "img" and element_id:
            self.images[element_id] = attributes
        elif tag == "table":
            self._table = element_id
            if element_id:
                self.tables[element_id] = []
        elif tag == "tr" and self._table:
            self._row = []
            self.tables[self._table].append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""
        elif tag == "pre" and element_id:
            self._pre = element_id
            self.pres[element_id] = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "pre":
            self._pre = None
        elif tag == "section":
            self._section = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._pre is not None:
            self.pres[self._pre] += data
        if self._section is not None:
            self.sections[self._section]["text"] += data

    def table_dicts(self, table_id: str) -> List[Dict[str, str]]:
        header, *rows = self.tables[table_id]
        return [dict(zip(header, row)) for row in rows]
