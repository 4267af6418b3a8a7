"""The house's floors, read from the source: what each package may import.

``game`` <- ``network`` <- ``backends`` <- ``models`` <- ``search`` ...: a floor imports only from
the floors below it (module-level or inside a function alike), and no project module is named in
a string for ``importlib`` to load, where a missing one would turn into a silent fallback. The
floors above ``models`` still have known upward imports (search and engines reaching into the
protocol; issue #19): they are listed here, so a new one fails, and the list only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

AGENT = Path(__file__).resolve().parent.parent / "agent"
FLOORS = ["errors", "fsutil", "logs", "progress", "game", "network", "backends", "models", "search"]
# Floors at or below models that must also never import the application (config, start-up, CLI...).
APP = {"config", "startup", "daemon", "daemon_health", "commands", "cli", "fleet", "fleet_view", "health"}
KNOWN_UPWARD = {
    ("agent/search/bench.py", "agent.protocol.query"),
    ("agent/search/quality.py", "agent.engines.native"),
    ("agent/search/quality.py", "agent.protocol.service"),
    ("agent/search/position.py", "agent.protocol.query"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("agent"):
            names = [node.module] if node.module != "agent" else [f"agent.{a.name}" for a in node.names]
            out += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("agent.")]
    return out


def test_layers__no_floor_imports_one_above_it() -> None:
    problems = []
    for path in sorted(AGENT.rglob("*.py")):
        rel = path.relative_to(AGENT.parent)
        src = rel.parts[1].removesuffix(".py")
        if src not in FLOORS:
            continue
        for line, name in _imports(path):
            dst = name.split(".")[1]
            upward = dst in APP or (dst not in FLOORS and dst not in ("hardware", "__version__"))
            upward = upward or (dst in FLOORS and FLOORS.index(dst) > FLOORS.index(src))
            if upward and (str(rel), name) not in KNOWN_UPWARD:
                problems.append(f"{rel}:{line} ({src}) imports {name}")
    assert problems == []


def test_layers__no_project_module_is_loaded_by_name() -> None:
    """``importlib.import_module("agent....")`` nowhere (the CLI's command table is the one place
    that names modules, and a test loads every command)."""
    found = []
    for path in sorted(AGENT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and str(node.args[0].value).startswith("agent")
            ):
                found.append(f"{path.relative_to(AGENT.parent)}:{node.lineno}")
    assert found == []


def test_layers__starting_the_daemon_imports_no_heavy_package() -> None:
    """`serve` and `analysis` import onnx, onnxruntime, LiteRT or TensorFlow only when a network is
    loaded or built: a device without the tflite extra still starts, and a cached start is fast."""
    import subprocess
    import sys

    heavy = ("onnx", "onnxruntime", "tensorflow", "ai_edge_litert", "flatbuffers", "ml_dtypes")
    code = (
        "import sys, agent.cli, agent.daemon, agent.commands.analysis, agent.commands.detect; "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
