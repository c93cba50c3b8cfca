"""Every use of something an OS lacks in the test modules, and whether a guard covers it.

A use is a name, attribute, import or string literal that a rule in ``rules`` matches;
string literals that hold Python code (a child interpreter's script) are parsed and read
the same way. A use is covered on a platform when

* an ``if`` (or ``and``, ``or``, conditional expression, or an earlier ``if …: return``,
  ``raise`` or ``pytest.skip``) around it keeps it from running there; or
* every test that reaches it (directly, or through the helpers, fixtures and module-level
  scripts it names) is skipped there by its markers: ``pytest.mark.skipif`` on
  ``sys.platform``, ``os.name`` or ``hasattr``, a marker of ``tests.markers``, the module's
  ``pytestmark``, or an ``if …: pytest.skip(…)`` at the top of its body.

Code that runs at import (module level, decorators, class bodies) needs an ``if`` or a
module-level ``pytest.skip(…, allow_module_level=True)``: ``pytestmark`` comes too late for
it. A module that holds no tests (``conftest.py``, helpers) must guard every use inline.
"""

from __future__ import annotations

import ast
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.portability.conditions import Scope, dotted, load_scope
from tests.portability.guards import Guard, decorated_guard, marker_guard, module_level_skip
from tests.portability.rules import NAMES, PLATFORMS, Rule
from tests.portability.uses import UseFinder, mark_docstrings

EXEMPT = ("tests/osprobe/", "tests/portability/", "tests/test_portability.py")
"""The OS probes themselves, and the checker with its rule tables and fixtures."""

BDD_SCENARIOS = ("scenarios", "pytest_bdd.scenarios")


@dataclass(frozen=True)
class Entry:
    """A test pytest collects from a module: a function, a class, or a generated case."""

    name: str
    line: int
    guard: Guard


@dataclass(frozen=True)
class Violation:
    """A use that runs, on the platforms named, where what it uses is missing or broken."""

    path: str
    line: int
    rule: Rule
    platforms: frozenset[str]
    test: str | None

    def __str__(self) -> str:
        where = f"in {self.test}" if self.test else "at import"
        names = ", ".join(NAMES[p] for p in PLATFORMS if p in self.platforms)
        return (
            f"{self.path}:{self.line}: {self.rule.label} ({self.rule.why}) runs {where} "
            f"on {names} with no guard that skips it there"
        )


@dataclass
class Report:
    """What one module holds: its tests with their guards, and its unguarded uses."""

    path: str
    entries: list[Entry] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)


@dataclass
class Symbol:
    """A top-level binding: what it names, what it uses, and (for a test) its guard."""

    name: str
    line: int
    finder: UseFinder
    references: set[str]
    entry: Guard | None = None


def symbols_of(
    tree: ast.Module, scope: Scope, module_guard: Guard, skip_on: frozenset[str]
) -> list[Symbol]:
    """The module's top-level bindings (``<module>`` for bare statements); a test's has its
    guard. pytest-bdd's ``scenarios(…)`` stands for the tests it generates, which reach
    every function of the module (the steps)."""
    symbols: list[Symbol] = []
    functions = []
    for node in tree.body:
        finder = UseFinder(scope)
        names: list[str] = []
        entry = None
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            finder.visit(node, skip_on, False)
            names = [node.name]
            if isinstance(node, ast.ClassDef):
                is_test = node.name.startswith("Test")
            else:
                is_test = node.name.startswith("test")
                functions.append(node.name)
                finder.names |= {a.arg for a in node.args.args}  # fixtures by name
            if is_test:
                entry = decorated_guard(node, scope, module_guard)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            finder.visit(node, skip_on, False)
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            if any(name.startswith("Test") for name in names):
                entry = module_guard
        else:
            finder.visit(node, skip_on, False)
            call = node.value if isinstance(node, ast.Expr) else None
            if isinstance(call, ast.Call) and dotted(call.func) in BDD_SCENARIOS:
                symbols.append(Symbol("scenarios", node.lineno, finder, set(), module_guard))
                continue
        for name in names or ["<module>"]:
            symbols.append(Symbol(name, node.lineno, finder, set(finder.names), entry))
    for symbol in symbols:
        if symbol.name == "scenarios":
            symbol.references |= set(functions)
    return symbols


def check_module(path: Path, root: Path, cache: dict[str, Scope | None]) -> Report:
    """Read one module: its tests and their guards, and every use no guard covers."""
    relative = path.relative_to(root).as_posix()
    report = Report(relative)
    tree = ast.parse(path.read_text())
    mark_docstrings(tree)
    scope = Scope(tree, lambda name: load_scope(root, name, cache))
    skip_on, module_guard = module_level_skip(tree, scope)
    pytestmark = scope.assignments.get("pytestmark")
    if pytestmark is not None:
        found = marker_guard(pytestmark, scope)
        if found is not None:
            module_guard = module_guard.combine(found)
    symbols = symbols_of(tree, scope, module_guard, skip_on)
    by_name: dict[str, list[Symbol]] = {}
    for symbol in symbols:
        by_name.setdefault(symbol.name, []).append(symbol)
    entries = [s for s in symbols if s.entry is not None]
    report.entries = [Entry(s.name, s.line, s.entry) for s in entries if s.entry]
    reached_by: dict[int, list[Symbol]] = {}
    for entry in entries:
        for symbol in reachable(entry, by_name):
            reached_by.setdefault(id(symbol), []).append(entry)
    has_tests = bool(entries)
    for symbol in symbols:
        for use in symbol.finder.uses:
            open_on = use.rule.broken_on - use.safe_on
            if not open_on:
                continue
            if use.at_import or not has_tests:
                test = None if use.at_import else symbol.name
                report.violations.append(Violation(relative, use.line, use.rule, open_on, test))
                continue
            for entry in reached_by.get(id(symbol), []):
                assert entry.entry is not None
                running = frozenset(p for p in open_on if entry.entry.skipped[p] is not True)
                if running:
                    report.violations.append(
                        Violation(relative, use.line, use.rule, running, entry.name)
                    )
    return report


def reachable(entry: Symbol, by_name: dict[str, list[Symbol]]) -> Iterator[Symbol]:
    """The symbols a test names, and those they name, and so on."""
    seen: set[int] = set()
    stack = [entry]
    while stack:
        symbol = stack.pop()
        if id(symbol) in seen:
            continue
        seen.add(id(symbol))
        yield symbol
        for name in symbol.references:
            stack.extend(by_name.get(name, []))


def test_modules(root: Path) -> list[Path]:
    """Every Python file under ``tests/`` the check reads (all but the exempt ones)."""
    found = []
    for path in sorted((root / "tests").rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if "__pycache__" in relative or relative.startswith(EXEMPT):
            continue
        found.append(path)
    return found


def check(root: Path) -> list[Report]:
    """Every module the check reads under ``root``, read."""
    cache: dict[str, Scope | None] = {}
    return [check_module(path, root, cache) for path in test_modules(root)]


def check_source(source: str, name: str = "tests/test_example.py") -> Report:
    """Check one module given as text (for testing the checker): ``tests.markers`` is the
    real one, read from this checkout."""
    root = Path(__file__).resolve().parent.parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        cache: dict[str, Scope | None] = {}
        for module in ("tests.markers",):
            cache[module] = load_scope(root, module, {})
        return check_module(path, Path(tmp), cache)
