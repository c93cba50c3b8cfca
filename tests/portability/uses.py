"""The uses in a module of something an OS lacks, with the platforms inline guards cover.

A use is a name, attribute, import or string literal that a rule in ``rules`` matches;
string literals that hold Python code (a child interpreter's script) are parsed and read
the same way. An ``if`` (or ``and``, ``or``, a conditional expression, or an earlier
``if …: return``, ``raise`` or ``pytest.skip``) keeps what it guards off the platforms where
its condition says so; a guard's own probe (``hasattr``, ``getattr``, ``os.path.exists``,
``pytest.mark.skipif``) is no use.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass

from tests.portability.conditions import UNKNOWN, Scope, dotted, evaluate
from tests.portability.rules import PLATFORMS, RULES, Rule

PROBES = ("hasattr", "getattr", "pytest.importorskip", "importorskip")
DATA_CALLS = ("dedent", "format", "join", "replace", "param", "parametrize")
"""Calls that only pass a literal on as data, so a literal in them at import is not run."""


@dataclass(frozen=True)
class Use:
    """One use of a rule's names: where, under which inline guards, and whether at import."""

    rule: Rule
    line: int
    safe_on: frozenset[str]
    at_import: bool


def matching_rule(node: ast.AST, scope: Scope) -> Rule | None:
    """The first rule a name, attribute or import node names."""
    for rule in RULES:
        if isinstance(node, ast.Name) and rule.matches_name(node.id):
            return rule
        if isinstance(node, ast.Attribute):
            owner = dotted(node.value)
            module = scope.module(owner) if owner else ""
            if rule.matches_attribute(module, node.attr):
                return rule
        if isinstance(node, ast.Import) and any(rule.matches_module(a.name) for a in node.names):
            return rule
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if any(rule.matches_module(m) for m in modules):
                return rule
            if any(rule.matches_attribute(node.module, a.name) for a in node.names):
                return rule
    return None


def text_rule(text: str, *, code: bool) -> Rule | None:
    for rule in RULES:
        if rule.in_code_text(text) if code else rule.in_text(text):
            return rule
    return None


def string_of(node: ast.AST) -> str | None:
    """A literal's text; an f-string's with each replacement field read as a name."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            parts.append(value.value if isinstance(value, ast.Constant) else "_field_")
        return "".join(str(part) for part in parts)
    return None


def is_docstring(node: ast.AST, parent: ast.AST | None) -> bool:
    if not isinstance(parent, ast.Expr):
        return False
    return getattr(parent, "_portability_docstring", False)


def mark_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and string_of(body[0].value) is not None:
                body[0]._portability_docstring = True  # type: ignore[attr-defined]


def parse_code(text: str) -> ast.Module | None:
    """A literal as Python source, if it is a script (several lines that parse)."""
    if "\n" not in text.strip():
        return None
    try:
        return ast.parse(textwrap.dedent(text))
    except SyntaxError:
        return None


def ends_in_exit(body: list[ast.stmt]) -> bool:
    """Whether a block always leaves: return, raise, continue, break or pytest.skip/exit."""
    if not body:
        return False
    last = body[-1]
    if isinstance(last, (ast.Return, ast.Raise, ast.Continue, ast.Break)):
        return True
    if isinstance(last, ast.Expr) and isinstance(last.value, ast.Call):
        name = dotted(last.value.func) or ""
        return name.split(".")[-1] in ("skip", "exit", "_exit", "fail")
    return False


def platforms_where(test: ast.expr, scope: Scope, value: bool) -> frozenset[str]:
    """Platforms on which the condition is certainly ``value``."""
    found = set()
    for platform in PLATFORMS:
        result = evaluate(test, scope, platform)
        if result is not UNKNOWN and bool(result) is value:
            found.add(platform)
    return frozenset(found)


class UseFinder:
    """Walks code, collecting uses with the platforms their inline guards keep them off."""

    def __init__(self, scope: Scope, line_offset: int = 0) -> None:
        self.scope = scope
        self.offset = line_offset
        self.uses: list[Use] = []
        self.names: set[str] = set()

    def statements(self, body: list[ast.stmt], safe: frozenset[str], runtime: bool) -> None:
        for statement in body:
            self.visit(statement, safe, runtime)
            if not isinstance(statement, ast.If) or statement.orelse:
                continue
            if ends_in_exit(statement.body):  # what follows runs only where the test was False
                safe = safe | platforms_where(statement.test, self.scope, True)

    def add(self, rule: Rule | None, node: ast.AST, safe: frozenset[str], at_import: bool) -> None:
        if rule is not None:
            line = self.offset + getattr(node, "lineno", 1)
            self.uses.append(Use(rule, line, safe, at_import))

    def visit(
        self,
        node: ast.AST,
        safe: frozenset[str],
        runtime: bool,
        parent: ast.AST | None = None,
        in_call: bool = False,
    ) -> None:
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            self.names.add(node.id)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            rule = matching_rule(node, self.scope)
            if rule is not None and (runtime or not rule.import_safe):
                self.add(rule, node, safe, not runtime)
            return
        if isinstance(node, ast.Call):
            name = dotted(node.func) or ""
            if name in PROBES or name.endswith(("mark.skipif", "mark.skip", "path.exists")):
                return  # a guard's own probe of the platform is no use of it
            self.visit(node.func, safe, runtime, node)
            called = name.split(".")[-1] not in DATA_CALLS
            for child in [*node.args, *(k.value for k in node.keywords)]:
                self.visit(child, safe, runtime, node, in_call=called or in_call)
            return
        text = string_of(node)
        if text is not None:
            if not is_docstring(node, parent):
                self.string(node, text, safe, runtime, in_call)
            return
        if isinstance(node, (ast.Name, ast.Attribute)) and isinstance(node.ctx, ast.Load):
            rule = matching_rule(node, self.scope)
            if rule is not None:
                self.add(rule, node, safe, not runtime)
                return
        if isinstance(node, (ast.If, ast.IfExp, ast.While)):
            self.visit(node.test, safe, runtime, node)
            body, orelse = node.body, node.orelse
            yes = safe | platforms_where(node.test, self.scope, False)
            no = safe | platforms_where(node.test, self.scope, True)
            if isinstance(node, ast.IfExp):
                self.visit(body, yes, runtime, node)  # type: ignore[arg-type]
                self.visit(orelse, no, runtime, node)  # type: ignore[arg-type]
            else:
                self.statements(body, yes, runtime)
                self.statements(orelse, no, runtime)
            return
        if isinstance(node, ast.BoolOp):
            guard = safe
            for value in node.values:
                self.visit(value, guard, runtime, node, in_call)
                stop = isinstance(node.op, ast.And)  # later operands run only if this was True
                guard = guard | platforms_where(value, self.scope, not stop)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            self.function(node, safe, runtime)
            return
        if isinstance(node, ast.ClassDef):
            for item in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
                self.visit(item, safe, runtime, node)
            self.statements(node.body, safe, runtime)
            return
        for field_name, value in ast.iter_fields(node):
            del field_name
            if isinstance(value, list):
                if value and isinstance(value[0], ast.stmt):
                    self.statements(value, safe, runtime)
                else:
                    for item in value:
                        if isinstance(item, ast.AST):
                            self.visit(item, safe, runtime, node, in_call)
            elif isinstance(value, ast.AST):
                self.visit(value, safe, runtime, node, in_call)

    def function(
        self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda, safe: frozenset[str],
        runtime: bool,
    ) -> None:  # fmt: skip
        arguments = node.args
        for default in [*arguments.defaults, *(d for d in arguments.kw_defaults if d)]:
            self.visit(default, safe, runtime, node)
        if isinstance(node, ast.Lambda):
            self.visit(node.body, safe, True, node)
            return
        for decorator in node.decorator_list:
            self.visit(decorator, safe, runtime, node)
        self.statements(node.body, safe, True)

    def string(
        self, node: ast.AST, text: str, safe: frozenset[str], runtime: bool, in_call: bool
    ) -> None:
        """A literal: a script is read as code; other text is searched for the rules."""
        at_import = not runtime and in_call
        tree = parse_code(text)
        if tree is None:
            self.add(text_rule(text, code=True), node, safe, at_import)
            return
        mark_docstrings(tree)
        child = UseFinder(Scope(tree, self.scope.loader), self.offset + node.lineno - 1)
        child.statements(tree.body, safe, True)
        for use in child.uses:
            self.uses.append(Use(use.rule, use.line, use.safe_on, at_import))
        self.names |= {n for n in child.names if n in self.scope.assignments}
