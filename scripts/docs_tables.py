"""Rewrite the README's settings table from dispatcher.config.SETTINGS_TABLE (make docs)."""

from __future__ import annotations

import re
from pathlib import Path

from dispatcher.config import SETTINGS_TABLE

README = Path(__file__).resolve().parents[1] / "README.md"


def table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{d.env}` | `{d.default}` | {d.description} |" for d in SETTINGS_TABLE]
    return "\n".join(rows)


def main() -> None:
    text = README.read_text()
    pattern = re.compile(r"(<!-- settings-table:[^\n]*\n).*?(\n<!-- end settings-table -->)", re.S)
    README.write_text(pattern.sub(lambda m: m[1] + table() + m[2], text, count=1))


if __name__ == "__main__":
    main()
