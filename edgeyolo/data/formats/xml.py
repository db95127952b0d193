"""A minimal XML reader that keeps the line of every element, for issues that point at file:line."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat


@dataclass
class XmlNode:
    """A minimal element tree that remembers the line of every element."""

    tag: str
    line: int
    children: list[XmlNode] = field(default_factory=list)
    text: str = ""

    def find(self, tag: str) -> XmlNode | None:
        return next((c for c in self.children if c.tag == tag), None)

    def findall(self, tag: str) -> list[XmlNode]:
        return [c for c in self.children if c.tag == tag]

    def findtext(self, tag: str, default: str | None = None) -> str | None:
        node = self.find(tag)
        return node.text.strip() if node is not None else default


def parse_xml(path: Path) -> XmlNode:
    """Parse an XML file keeping line numbers; raises ValueError('line N: ...') when malformed."""
    parser = expat.ParserCreate()
    root: list[XmlNode] = []
    stack: list[XmlNode] = []
    texts: list[list[str]] = []

    def start(tag, _attrs):
        node = XmlNode(tag, parser.CurrentLineNumber)
        if stack:
            stack[-1].children.append(node)
        else:
            root.append(node)
        stack.append(node)
        texts.append([])

    def end(_tag):
        node = stack.pop()
        node.text = "".join(texts.pop())

    def chars(data):
        if texts:
            texts[-1].append(data)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    try:
        with open(path, "rb") as fh:
            parser.ParseFile(fh)
    except expat.ExpatError as exc:
        raise ValueError(f"line {exc.lineno}: malformed XML: {expat.errors.messages[exc.code]}") from None
    if not root:
        raise ValueError("line 1: empty XML document")
    return root[0]
