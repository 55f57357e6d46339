"""Documentation that must not drift from the code: recipe keys and the README commands CI runs."""

from __future__ import annotations

import re

from dbtk import recipe as recipes
from tests.conftest import REPO


def test_recipes_md_documents_every_key_with_its_default() -> None:
    text = (REPO / "docs" / "recipes.md").read_text()
    for key, type_name, default, _help in recipes.field_docs():
        row = f"| `{key}` | {type_name} | `{recipes.format_default(default)}` |"
        assert row in text, f"docs/recipes.md lacks or misstates {key}: expected a row starting {row}"


def test_ci_runs_the_readme_commands() -> None:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    install, test = blocks[0], blocks[1]
    ci = (REPO / ".ci" / "run").read_text()
    for part in install.split(" && "):
        if part.startswith("pip install"):  # CI makes its own venv and skips the quickstart run
            assert part in ci, f".ci/run does not run README step: {part}"
    assert ci.rstrip().splitlines()[-1] == test
