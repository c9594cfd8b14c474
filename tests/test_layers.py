"""The layers import one way: every module may import its own layer and those below it, never one above.

Bottom to top:
  core                          the base package: stdlib and third-party imports only
  experiment_utils, MetricsLogger   root modules of the base layer (the plugin's trainers use them); core only
  plugins                       the model plugin (and its tests)
  worker_agent, redis_launcher  infrastructure
  dashboard                     the server, MCP server and client
  tests, benchmarks, scripts    may import anything

Every `import` and `from … import` counts, at module level or inside a function, so a lazy import cannot hide an
upward dependency. The modules of one layer must not import each other in a cycle either.
"""
from __future__ import annotations

import ast
import unittest
from pathlib import Path

from core.paths import PROJECT_ROOT

LAYERS = ("core", "base", "plugins", "infrastructure", "dashboard", "top")
# Top-level name (package, or root module) -> its layer.
UNITS = {
    "core": "core",
    "experiment_utils": "base", "MetricsLogger": "base",
    "plugins": "plugins",
    "worker_agent": "infrastructure", "redis_launcher": "infrastructure",
    "dashboard": "dashboard",
    "tests": "top", "benchmarks": "top", "scripts": "top",
}
CHECKED = ("core", "plugins", "dashboard")  # packages whose every module is checked, besides the root modules
SKIP_DIRS = {"__pycache__", "data_cache", "client", ".venv"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _checked_files() -> list[Path]:
    files = sorted(PROJECT_ROOT.glob("*.py"))
    for package in CHECKED:
        files += sorted(p for p in (PROJECT_ROOT / package).rglob("*.py")
                        if not SKIP_DIRS.intersection(p.relative_to(PROJECT_ROOT).parts))
    return files


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative imports resolved."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)] if package else []
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            out.append((node.lineno, name))
    return out


def unit_of(module: str) -> str | None:
    top = module.split(".")[0]
    return top if top in UNITS else None


class LayerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.files = _checked_files()
        cls.edges: dict[str, set[str]] = {}   # unit -> units it imports (other than itself)
        cls.violations: list[str] = []
        for path in cls.files:
            unit = unit_of(_module_name(path))
            if unit is None:
                continue
            level = LAYERS.index(UNITS[unit])
            for line, name in imported_modules(path):
                target = unit_of(name)
                if target is None:
                    continue
                if target != unit:
                    cls.edges.setdefault(unit, set()).add(target)
                if LAYERS.index(UNITS[target]) > level:
                    cls.violations.append(f"{path.relative_to(PROJECT_ROOT)}:{line} ({UNITS[unit]}) imports "
                                          f"{name} ({UNITS[target]})")

    def test_every_module_has_a_layer(self):
        unknown = [str(p.relative_to(PROJECT_ROOT)) for p in self.files if unit_of(_module_name(p)) is None]
        self.assertEqual(unknown, [], "a new root module or package needs a layer in tests/test_layers.py")

    def test_no_module_imports_a_layer_above_its_own(self):
        self.assertEqual(self.violations, [], "\n" + "\n".join(self.violations))

    def test_no_import_cycle_between_top_level_units(self):
        def visit(unit: str, stack: list[str]) -> list[str] | None:
            for target in sorted(self.edges.get(unit, ())):
                if target in stack:
                    return stack[stack.index(target):] + [target]
                cycle = visit(target, stack + [target])
                if cycle:
                    return cycle
            return None

        for unit in sorted(self.edges):
            cycle = visit(unit, [unit])
            self.assertIsNone(cycle, f"import cycle: {' -> '.join(cycle or [])}")

    def test_the_checker_sees_function_level_and_relative_imports(self):
        # the checker itself: a lazy import inside a function and a relative import are both found
        server = PROJECT_ROOT / "dashboard" / "server" / "app.py"
        names = {name for _, name in imported_modules(server)}
        self.assertIn("redis_launcher", names)                     # imported inside a function
        self.assertIn("dashboard.server.settings", names)          # `from .settings import ...`


if __name__ == "__main__":
    unittest.main()
