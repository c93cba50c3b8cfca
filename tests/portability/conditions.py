"""A guard's condition, evaluated as it would come out on each platform, from the source.

Three-valued: a condition is True, False, or ``UNKNOWN`` when it rests on something other
than the platform (``os.geteuid() == 0``). What is understood: ``sys.platform`` and its
``startswith``, ``os.name``, ``platform.system()``, ``hasattr`` on a module (answered from
``rules``), ``os.path.exists`` of a ``/proc``, ``/sys`` or ``/dev`` path, ``not``, ``and``,
``or``, comparisons, conditional expressions, and names bound at module level, here or in a
module imported from the tests (``tests.markers``).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.portability.rules import RULES


class Unknown:
    """A value the source alone does not tell."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = Unknown()

OS_NAME = {"linux": "posix", "darwin": "posix", "win32": "nt"}
SYSTEM = {"linux": "Linux", "darwin": "Darwin", "win32": "Windows"}
Value = object


def dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


@dataclass
class Scope:
    """A module's top-level names: what each assignment binds and what each import names."""

    tree: ast.Module
    loader: Callable[[str], Scope | None]
    assignments: dict[str, ast.expr] = field(default_factory=dict)
    imports: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for node in self.tree.body:
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        self.assignments[target.id] = node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                if isinstance(node.target, ast.Name):
                    self.assignments[node.target.id] = node.value
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        self.imports[alias.asname] = alias.name
                    else:
                        top = alias.name.split(".")[0]
                        self.imports[top] = top
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def module(self, name: str) -> str:
        """The module a name refers to (itself, for the standard ones never rebound)."""
        return self.imports.get(name, name)

    def resolve(self, name: str) -> tuple[ast.expr, Scope] | None:
        """The expression a name is bound to at module level, here or where it came from."""
        if name in self.assignments:
            return self.assignments[name], self
        target = self.imports.get(name)
        if target and "." in target:
            module, _, attribute = target.rpartition(".")
            other = self.loader(module)
            if other is not None and attribute in other.assignments:
                return other.assignments[attribute], other
        return None

    def resolve_attribute(self, node: ast.Attribute) -> tuple[ast.expr, Scope] | None:
        """``markers.procfs`` where ``markers`` is a module of the tests."""
        if not isinstance(node.value, ast.Name):
            return None
        other = self.loader(self.module(node.value.id))
        if other is None or node.attr not in other.assignments:
            return None
        return other.assignments[node.attr], other


def has_attribute(module: str, name: str, platform: str) -> Value:
    """``hasattr(module, name)`` on a platform, as far as the rules know."""
    for rule in RULES:
        if any(owner == module and _full(pattern, name) for owner, pattern in rule.attributes):
            return platform not in rule.absent_on
        if rule.matches_name(name):
            return platform not in rule.absent_on
    return UNKNOWN


def _full(pattern: str, name: str) -> bool:
    import re

    return re.fullmatch(pattern, name) is not None


def path_exists(path: str, platform: str) -> Value:
    if path.startswith(("/proc", "/sys/")):
        return platform == "linux"
    if path.startswith("/dev/"):
        return platform != "win32"
    return UNKNOWN


def evaluate(node: ast.AST, scope: Scope, platform: str, depth: int = 0) -> Value:
    """The value of an expression on ``platform``, or UNKNOWN."""
    if depth > 20:
        return UNKNOWN
    again = lambda inner: evaluate(inner, scope, platform, depth + 1)  # noqa: E731
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(again(element) for element in node.elts)
    if isinstance(node, ast.Name):
        bound = scope.resolve(node.id)
        if bound is None:
            return UNKNOWN
        expression, where = bound
        return evaluate(expression, where, platform, depth + 1)
    if isinstance(node, ast.Attribute):
        return _attribute(node, scope, platform, depth)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        value = again(node.operand)
        return UNKNOWN if value is UNKNOWN else not value
    if isinstance(node, ast.BoolOp):
        return _bool_op(node, [again(value) for value in node.values])
    if isinstance(node, ast.Compare) and len(node.ops) == 1:
        return _compare(node.ops[0], again(node.left), again(node.comparators[0]))
    if isinstance(node, ast.IfExp):
        test = again(node.test)
        if test is UNKNOWN:
            return UNKNOWN
        return again(node.body if test else node.orelse)
    if isinstance(node, ast.Call):
        return _call(node, scope, platform, depth)
    return UNKNOWN


def _attribute(node: ast.Attribute, scope: Scope, platform: str, depth: int) -> Value:
    name = dotted(node)
    if name is not None:
        head, _, rest = name.partition(".")
        full = f"{scope.module(head)}.{rest}" if rest else scope.module(head)
        if full == "sys.platform":
            return platform
        if full == "os.name":
            return OS_NAME[platform]
    bound = scope.resolve_attribute(node)
    if bound is None:
        return UNKNOWN
    expression, where = bound
    return evaluate(expression, where, platform, depth + 1)


def _bool_op(node: ast.BoolOp, values: list[Value]) -> Value:
    decisive = isinstance(node.op, ast.Or)  # the value that settles an ``or`` (True) or ``and``
    unknown = False
    for value in values:
        if value is UNKNOWN:
            unknown = True
        elif bool(value) is decisive:
            return value
    return UNKNOWN if unknown else values[-1]


def _compare(op: ast.cmpop, left: Value, right: Value) -> Value:
    if left is UNKNOWN or right is UNKNOWN:
        return UNKNOWN
    try:
        if isinstance(op, ast.Eq):
            return left == right
        if isinstance(op, ast.NotEq):
            return left != right
        if isinstance(op, ast.In):
            return left in right  # type: ignore[operator]
        if isinstance(op, ast.NotIn):
            return left not in right  # type: ignore[operator]
    except TypeError:
        return UNKNOWN
    return UNKNOWN


def _call(node: ast.Call, scope: Scope, platform: str, depth: int) -> Value:
    again = lambda inner: evaluate(inner, scope, platform, depth + 1)  # noqa: E731
    function = dotted(node.func)
    if function == "hasattr" and len(node.args) == 2:
        owner, name = node.args
        attribute = again(name)
        if isinstance(owner, ast.Name) and isinstance(attribute, str):
            return has_attribute(scope.module(owner.id), attribute, platform)
        return UNKNOWN
    if function is not None and function.endswith("path.exists") and len(node.args) == 1:
        path = again(node.args[0])
        return path_exists(path, platform) if isinstance(path, str) else UNKNOWN
    if function == f"{scope.imports.get('platform', 'platform')}.system" and not node.args:
        return SYSTEM[platform]
    if isinstance(node.func, ast.Attribute) and node.func.attr in ("startswith", "endswith"):
        subject = again(node.func.value)
        prefix = again(node.args[0]) if len(node.args) == 1 else UNKNOWN
        if isinstance(subject, str) and isinstance(prefix, (str, tuple)):
            if isinstance(prefix, tuple) and not all(isinstance(p, str) for p in prefix):
                return UNKNOWN
            method = getattr(subject, node.func.attr)
            return bool(method(prefix))
    return UNKNOWN


def load_scope(root: Path, module: str, cache: dict[str, Scope | None]) -> Scope | None:
    """The scope of ``tests.*`` module ``module`` under ``root``, parsed once; None if absent."""
    if module in cache:
        return cache[module]
    cache[module] = None
    if not module.startswith("tests."):
        return None
    path = root.joinpath(*module.split(".")).with_suffix(".py")
    if not path.is_file():
        return None
    scope = Scope(ast.parse(path.read_text()), lambda name: load_scope(root, name, cache))
    cache[module] = scope
    return scope
