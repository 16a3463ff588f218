"""The trainer's loop never asks which execution mode it runs in: one process, DDP and FSDP differ
only inside engine.parallel.strategy (issue 19 item 4)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import engine.train.trainer

MODE = re.compile(r"dist|ddp|fsdp|shard|world|rank", re.IGNORECASE)


def _conditions(tree: ast.AST) -> list[ast.expr]:
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If | ast.IfExp | ast.While | ast.Assert):
            found.append(node.test)
        elif isinstance(node, ast.comprehension):
            found.extend(node.ifs)
        elif isinstance(node, ast.BoolOp):
            found.extend(node.values)
    return found


def _names(expression: ast.expr) -> set[str]:
    names = set()
    for node in ast.walk(expression):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
    return names


def test_no_condition_in_the_trainer_names_the_execution_mode() -> None:
    source = Path(engine.train.trainer.__file__).read_text()
    branches = [
        f"line {condition.lineno}: {ast.unparse(condition)}"
        for condition in _conditions(ast.parse(source))
        if any(MODE.search(name) for name in _names(condition))
    ]
    assert branches == []


def test_the_check_sees_a_branch_on_the_mode() -> None:
    tree = ast.parse("if self.dist is not None and x:\n    pass\ny = a if self.sharded else b\n")
    flagged = [c for c in _conditions(tree) if any(MODE.search(n) for n in _names(c))]
    assert len(flagged) == 3  # the if, its `and` operand, and the conditional expression
