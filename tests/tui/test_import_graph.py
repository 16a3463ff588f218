"""tui/ has no import circle, visible or hidden.

Visible: grimp's graph of `tui` (every import statement, function-level ones too) has no module
that reaches itself. Hidden: no module imports by a name in a string (importlib.import_module,
__import__), which the graph cannot see; the wizard's steps and the home screen are real imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest

TUI = Path(__file__).resolve().parents[2] / "tui"
DYNAMIC = {"import_module", "__import__"}


def circles(graph: grimp.ImportGraph) -> list[list[str]]:
    """One shortest circle through each module that reaches itself, as importer ... importer."""
    found = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain is not None:
                found.append([module, *chain])
                break
    return found


def dynamic_imports(source: str, where: str) -> list[str]:
    """`where:line name` for each call of importlib.import_module or __import__ in a source."""
    out = []
    for node in ast.walk(ast.parse(source, filename=where)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in DYNAMIC:
                out.append(f"{where}:{node.lineno} {name}")
    return out


def test_tui_has_no_import_circle() -> None:
    found = circles(grimp.build_graph("tui", cache_dir=None))
    assert not found, "import circles in tui/:\n" + "\n".join(" -> ".join(c) for c in found)


def test_tui_imports_nothing_by_a_name_in_a_string() -> None:
    found = [
        hit
        for path in sorted(TUI.rglob("*.py"))
        for hit in dynamic_imports(path.read_text(encoding="utf-8"), str(path.relative_to(TUI)))
    ]
    assert not found, "imports the graph cannot see (use a real import):\n" + "\n".join(found)


def test_the_circle_finder_sees_a_circle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself can fail: a lazy import back into a package is a circle."""
    package = tmp_path / "circled"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from circled import b\n")
    (package / "b.py").write_text("from circled.a import f\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert circles(grimp.build_graph("circled", cache_dir=None)) == [
        ["circled.a", "circled.b", "circled.a"],
        ["circled.b", "circled.a", "circled.b"],
    ]


@pytest.mark.parametrize(
    "source", ["importlib.import_module('x')", "__import__('x')", "import_module(name)"]
)
def test_the_scan_sees_a_dynamic_import(source: str) -> None:
    assert len(dynamic_imports(f"def f(name):\n    return {source}\n", "x.py")) == 1


def test_the_wizard_flow_matches_each_step_number() -> None:
    """The frame navigates by index into the flow: a step's STEP must be its place in it."""
    from tui.screens.wizard_flow import FLOW

    assert [step.STEP for step in FLOW] == list(range(len(FLOW)))
