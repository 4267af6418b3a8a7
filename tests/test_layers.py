"""The house's floors, read from the source: what each package may import.

``game`` <- ``network`` <- ``backends`` <- ``models`` <- ``search`` <- ``engines`` <- ``protocol`` <-
``transports`` <- ``app`` <- ``fleet``/``bench`` <- ``cli``: a module imports only from its own floor
and the floors below it (module-level or inside a function alike), no two modules import each
other, and no project module is named in a string for ``importlib`` to load, where a missing one
would turn into a silent fallback. Known exceptions are listed, so a new one fails and the list
only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

AGENT = Path(__file__).resolve().parent.parent / "agent"
# Each package's floor: a module may import from its own floor and the floors below it.
# ``errors``, ``fsutil``, ``logs``, ``progress`` and ``records`` are the ground every floor stands on;
# ``hardware`` and ``profiles`` are their own packages beside the query's road.
FLOOR = {
    "errors": 0, "fsutil": 0, "logs": 0, "progress": 0, "records": 0, "__version__": 0, "__init__": 0,
    "hardware": 1, "profiles": 2,
    "game": 1, "network": 2, "backends": 3, "models": 4, "search": 5, "engines": 6,
    "protocol": 7, "transports": 8, "app": 9, "fleet": 10, "bench": 10, "cli": 11,
}  # fmt: skip
# Pairs of packages on one floor that must not import each other either.
SIDEWAYS = {("hardware", "game"), ("game", "hardware"), ("profiles", "network"), ("fleet", "bench"),
            ("bench", "fleet")}  # fmt: skip
KNOWN_UPWARD: set[tuple[str, str]] = set()
KNOWN_CYCLES: set[str] = set()


def _imports(path: Path, *, top_level_only: bool = False) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("agent"):
            names = [node.module] if node.module != "agent" else [f"agent.{a.name}" for a in node.names]
            out += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("agent.")]
    return out


def _package(rel: Path) -> str:
    return rel.parts[1].removesuffix(".py")


def test_layers__every_module_sits_on_a_known_floor() -> None:
    assert sorted({_package(p.relative_to(AGENT.parent)) for p in AGENT.rglob("*.py")} - set(FLOOR)) == []


def test_layers__no_module_imports_a_floor_above_its_own() -> None:
    problems = []
    for path in sorted(AGENT.rglob("*.py")):
        rel = path.relative_to(AGENT.parent)
        src = _package(rel)
        for line, name in _imports(path):
            dst = name.split(".")[1]
            upward = FLOOR.get(dst, 99) > FLOOR[src] or (src, dst) in SIDEWAYS
            if upward and (str(rel), name) not in KNOWN_UPWARD:
                problems.append(f"{rel}:{line} ({src}) imports {name}")
    assert problems == []


def test_layers__no_import_cycle_between_modules() -> None:
    """Module-level imports form no cycle (function-level imports that break one are cycles too,
    so they count as well)."""
    modules = {}
    for path in AGENT.rglob("*.py"):
        rel = path.relative_to(AGENT.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        modules[".".join(parts)] = path
    graph = {
        name: {dst for _, dst in _imports(path) if dst in modules and dst != name}
        for name, path in modules.items()
    }
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert sorted(set(cycles) - KNOWN_CYCLES) == []


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

    heavy = ("onnx", "onnxruntime", "tensorflow", "ai_edge_litert", "flatbuffers", "ml_dtypes", "coremltools")
    code = (
        "import sys, agent.cli.main, agent.app.daemon, agent.cli.analysis, agent.cli.detect; "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
