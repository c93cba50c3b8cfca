"""The guards a test stands under: its markers, its module's, and skips at the top of its body.

A guard is read per platform from the source (``conditions``): a test is skipped there
(True), runs (False), or it depends on more than the platform (None).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from tests.portability.conditions import UNKNOWN, Scope, dotted, evaluate
from tests.portability.rules import PLATFORMS


@dataclass(frozen=True)
class Guard:
    """Per platform: True when a test is skipped there, False when it runs, None when that
    depends on something other than the platform; and the reason given for skipping."""

    skipped: dict[str, bool | None]
    reasons: dict[str, str]

    @staticmethod
    def none() -> Guard:
        return Guard(dict.fromkeys(PLATFORMS, False), {})

    def combine(self, other: Guard) -> Guard:
        skipped: dict[str, bool | None] = {}
        reasons = dict(self.reasons)
        for platform in PLATFORMS:
            mine, theirs = self.skipped[platform], other.skipped[platform]
            if mine is True or theirs is True:
                skipped[platform] = True
                if mine is not True and platform in other.reasons:
                    reasons[platform] = other.reasons[platform]
            elif mine is None or theirs is None:
                skipped[platform] = None
                reasons.setdefault(platform, other.reasons.get(platform, ""))
            else:
                skipped[platform] = False
        return Guard(skipped, reasons)


def marker_guard(node: ast.AST, scope: Scope, depth: int = 0) -> Guard | None:
    """The skip a marker expression (or a list of them) applies, or None if it is no skip."""
    if depth > 10:
        return None
    if isinstance(node, (ast.List, ast.Tuple)):
        guards = [g for g in (marker_guard(e, scope, depth + 1) for e in node.elts) if g]
        result = None
        for guard in guards:
            result = guard if result is None else result.combine(guard)
        return result
    if isinstance(node, ast.Call):
        name = dotted(node.func) or ""
        if name.endswith("mark.skipif"):
            condition = node.args[0] if node.args else None
            reason = next((k.value for k in node.keywords if k.arg == "reason"), None)
            return condition_guard(condition, reason, scope)
        if name.endswith("mark.skip"):
            reason = next((k.value for k in node.keywords if k.arg == "reason"), None)
            return condition_guard(ast.Constant(True), reason, scope)
        return None
    if isinstance(node, ast.Attribute) and (dotted(node) or "").endswith("mark.skip"):
        return condition_guard(ast.Constant(True), None, scope)
    bound = None
    if isinstance(node, ast.Name):
        bound = scope.resolve(node.id)
    elif isinstance(node, ast.Attribute):
        bound = scope.resolve_attribute(node)
    if bound is None:
        return None
    expression, where = bound
    return marker_guard(expression, where, depth + 1)


def condition_guard(condition: ast.AST | None, reason: ast.AST | None, scope: Scope) -> Guard:
    text = evaluate(reason, scope, "linux") if reason is not None else None
    why = text if isinstance(text, str) else "skipped"
    skipped: dict[str, bool | None] = {}
    for platform in PLATFORMS:
        value = evaluate(condition, scope, platform) if condition is not None else UNKNOWN
        skipped[platform] = None if value is UNKNOWN else bool(value)
    reasons = {p: why for p in PLATFORMS if skipped[p] is not False}
    return Guard(skipped, reasons)


def body_guard(body: list[ast.stmt], scope: Scope) -> Guard | None:
    """``if cond: pytest.skip(reason)`` statements at the top level of a test's body, where
    the condition is about the platform (a skip on what a run found is the machine's)."""
    result = None
    for statement in body:
        if not (isinstance(statement, ast.If) and not statement.orelse):
            continue
        last = statement.body[-1]
        if not (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)):
            continue
        if not (dotted(last.value.func) or "").endswith("skip"):
            continue
        reason = last.value.args[0] if last.value.args else None
        guard = condition_guard(statement.test, reason, scope)
        if all(guard.skipped[p] is None for p in PLATFORMS):
            continue
        result = guard if result is None else result.combine(guard)
    return result


def decorated_guard(node: ast.AST, scope: Scope, base: Guard) -> Guard:
    guard = base
    for decorator in getattr(node, "decorator_list", []):
        found = marker_guard(decorator, scope)
        if found is not None:
            guard = guard.combine(found)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        found = body_guard(node.body, scope)
        if found is not None:
            guard = guard.combine(found)
    return guard


def module_level_skip(tree: ast.Module, scope: Scope) -> tuple[frozenset[str], Guard]:
    """``if cond: pytest.skip(..., allow_module_level=True)`` at the top of a module."""
    platforms: set[str] = set()
    guard = Guard.none()
    for statement in tree.body:
        found = body_guard([statement], scope) if isinstance(statement, ast.If) else None
        if found is not None:
            guard = guard.combine(found)
            platforms |= {p for p in PLATFORMS if found.skipped[p] is True}
    return frozenset(platforms), guard
