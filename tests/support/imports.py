"""Check the import rule: `webapp/` never imports `jobs/` (jobs → webapp only). `python -m tests.support.imports`."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def violations() -> list[str]:
    """Return "file:line: import" for every import of `jobs` inside webapp/ (top level or in a function)."""
    out = []
    for path in sorted((ROOT / "webapp").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name == "jobs" or name.startswith("jobs."):
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno}: import {name}")
    return out


if __name__ == "__main__":
    found = violations()
    print("\n".join(found) or "imports go one way: jobs → webapp")
    sys.exit(1 if found else 0)
