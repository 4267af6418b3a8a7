"""``agent.hardware`` and ``agent.profiles`` depend on nothing else in the package but errors."""

from __future__ import annotations

import ast
from pathlib import Path

AGENT = Path(__file__).resolve().parent.parent.parent / "agent"
ALLOWED = ("agent.hardware", "agent.errors")


def _agent_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("agent"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("agent"))
    return found


def test_layering__hardware_and_profiles_import_only_hardware_and_errors() -> None:
    files = [*sorted((AGENT / "hardware").glob("*.py")), AGENT / "profiles.py"]
    for path in files:
        bad = {m for m in _agent_imports(path) if not m.startswith(ALLOWED)}
        assert not bad, f"{path.name} imports {bad}"
