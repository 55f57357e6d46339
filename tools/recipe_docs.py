"""Regenerate the key table of docs/recipes.md from the recipe schema: python tools/recipe_docs.py"""

from __future__ import annotations

import re
from pathlib import Path

from dbtk import recipe as recipes

DOC = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"


def table() -> str:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, type_name, default, help_text in recipes.field_docs():
        rows.append(f"| `{key}` | {type_name} | `{recipes.format_default(default)}` | {help_text} |")
    return "\n".join(rows)


def main() -> None:
    text = DOC.read_text()
    new = re.sub(r"\| key \| type \| default \| meaning \|\n(?:\|.*\|\n)+", table() + "\n", text, count=1)
    DOC.write_text(new)


if __name__ == "__main__":
    main()
