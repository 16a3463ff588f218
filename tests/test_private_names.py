"""No private name (``_x``) crosses a module boundary: what another module needs gets a public
name in one place, so a module's underscore names stay free to change.

An AST walk over engine/, tui/, bench/ and tests/ flags ``from X import _name`` and
``X._name`` where X is one of the project's modules (``import X``, ``import X as Y``,
``from P import X``, relative imports included). Imports of private names from third-party
packages are flagged too, unless THIRD_PARTY_ALLOWED lists them; attribute access on
third-party modules (``os._exit``, ``torch._foreach_add_``) is their public API and is not checked.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "tui", "bench", "tests")

# (importing file, module, name): third-party privates that have no public form, each with a
# comment saying why. None today: liger-kernel's _apply_liger_kernel_to_instance is reached
# through its public MODEL_TYPE_TO_APPLY_LIGER_FN instead (engine/speed/kernels.py).
THIRD_PARTY_ALLOWED: set[tuple[str, str, str]] = set()


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_project_module(dotted: str) -> bool:
    """A module or package of this repository (not just a name inside one)."""
    path = ROOT.joinpath(*dotted.split("."))
    return dotted.split(".")[0] in PACKAGES and (
        path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()
    )


def absolute(node: ast.ImportFrom, path: Path) -> str:
    """The module an ImportFrom reads from, relative imports resolved against ``path``."""
    if not node.level:
        return node.module or ""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def dotted_name(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of attributes on a plain name, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = dotted_name(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


def violations(path: Path, source: str) -> Iterator[str]:
    """Every crossing of a private name in one file, as ``file:line: what``."""
    tree = ast.parse(source, filename=str(path))
    where = path.relative_to(ROOT).as_posix()
    modules: dict[str, str] = {}  # local name -> the project module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    modules[alias.asname] = alias.name
                else:  # ``import a.b.c`` binds ``a``; the chain is resolved at each use
                    modules[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            source_module = absolute(node, path)
            project = source_module.split(".")[0] in PACKAGES
            for alias in node.names:
                if is_private(alias.name):
                    if project or (where, source_module, alias.name) not in THIRD_PARTY_ALLOWED:
                        yield f"{where}:{node.lineno}: from {source_module} import {alias.name}"
                elif project and is_project_module(f"{source_module}.{alias.name}"):
                    modules[alias.asname or alias.name] = f"{source_module}.{alias.name}"
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and is_private(node.attr)):
            continue
        owner = dotted_name(node.value)
        if owner is None or owner.split(".")[0] not in modules:
            continue
        head, _, rest = owner.partition(".")
        target = modules[head] + (f".{rest}" if rest else "")
        if is_project_module(target):
            yield f"{where}:{node.lineno}: {target}.{node.attr}"


def project_files() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def test_no_private_name_crosses_a_module() -> None:
    found = [v for path in project_files() for v in violations(path, path.read_text())]
    assert not found, "private names used outside their module:\n" + "\n".join(found)


def test_every_allowed_third_party_private_is_still_imported() -> None:
    """An allow-list entry whose import has gone would let the next one in unseen."""
    imported = set()
    for file in {file for file, _, _ in THIRD_PARTY_ALLOWED}:
        tree = ast.parse((ROOT / file).read_text())
        imported |= {
            (file, node.module, alias.name)
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        }
    assert not THIRD_PARTY_ALLOWED - imported, THIRD_PARTY_ALLOWED - imported


def test_the_walk_catches_each_form() -> None:
    """The checker itself: every way of reaching a project module's private name is flagged,
    and public names, dunders, instances and third-party attributes are not."""
    path = ROOT / "tests" / "engine" / "speed" / "probe_module.py"  # never written: parsed only
    source = "\n".join(
        [
            "import os",
            "import engine.speed.fast_lora",
            "import engine.runs.checkpoint as ckpt",
            "from engine.speed import layer_checkpoint",
            "from engine.speed.fast_lora import _cast, FUSED_ATTR, __doc__",
            "from . import test_loss",
            "from .test_loss import _helper",
            "from liger_kernel.transformers import _private",
            "engine.speed.fast_lora._NoAutocast",
            "ckpt._fsync_tree",
            "layer_checkpoint._keeps",
            "test_loss._other",
            "os._exit",
            "ckpt.save_rng_state",
            "self = object(); self._x",
        ]
    )
    found = [line.split(": ", 1)[1] for line in violations(path, source)]
    assert sorted(found) == sorted(
        [
            "from engine.speed.fast_lora import _cast",
            "from tests.engine.speed.test_loss import _helper",
            "from liger_kernel.transformers import _private",
            "engine.speed.fast_lora._NoAutocast",
            "engine.runs.checkpoint._fsync_tree",
            "engine.speed.layer_checkpoint._keeps",
            "tests.engine.speed.test_loss._other",
        ]
    )
