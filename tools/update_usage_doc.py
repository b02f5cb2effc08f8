#!/usr/bin/env python3
"""Put the current `predict.py --help` (at 100 columns) into docs/usage.md between the help markers."""
from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "usage.md"
START, END = "<!-- help:start -->\n```text\n", "```\n<!-- help:end -->"


def help_text() -> str:
    sys.path.insert(0, str(ROOT))
    os.environ["COLUMNS"] = "100"
    from qwenvl.cli import build_parser

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        build_parser().print_help()
    return buf.getvalue()


def doc_help(doc: str) -> str:
    match = re.search(re.escape(START) + r"(.*?)" + re.escape(END), doc, re.DOTALL)
    return match.group(1) if match else ""


def main() -> int:
    path = DOC
    doc = path.read_text(encoding="utf-8")
    new = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda m: START + help_text() + END, doc,
                 flags=re.DOTALL)
    path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
