"""The package's shape, as the README's "Layout" section promises it: read from the source.

No import cycle among mnist_jax modules (top-level and function-level imports alike), no
`global` statement, no module over 400 lines, no function over 60, no class over 150, and no
docstring naming a function or class that does not exist.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mnist_jax"
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_CLASS_LINES = 400, 60, 150

# Too long today, being split by work under way (issue #18). Shrinking only: an entry that no
# longer exceeds its limit fails the test, so that it is removed as soon as it is fixed.
ALLOWED_OVERSIZE: set[str] = set()


def _modules() -> dict[str, ast.Module]:
    """Every module of the package by dotted name, parsed."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(), str(path))
    return found


MODULES = _modules()


def _imported(module: str, tree: ast.Module) -> set[str]:
    """The package's modules that `module` imports anywhere in it (top level or in a function)."""
    package = module if module in MODULES and _is_package(module) else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in MODULES}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in MODULES else base)
    return {m for m in out if m in MODULES and m != module and m != "mnist_jax"}


def _is_package(module: str) -> bool:
    return (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists()


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph`, or None."""
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done.
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    return next((c for m in sorted(graph) if m not in state and (c := walk(m))), None)


def test_no_import_cycle():
    graph = {m: _imported(m, tree) for m, tree in MODULES.items()}
    assert graph["mnist_jax.plot"] >= {"mnist_jax.rundir", "mnist_jax.evaluate"}  # Read at all.
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_global_statement():
    found = [
        f"{m}:{node.lineno}"
        for m, tree in MODULES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Global)
    ]
    assert not found


def _oversize() -> set[str]:
    found = set()
    for m, tree in MODULES.items():
        lines = len((PACKAGE.parent / _file(m)).read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            found.add(f"module {m}")
        for node in ast.walk(tree):
            length = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if length > MAX_FUNCTION_LINES:
                    found.add(f"function {m}.{node.name}")
            elif isinstance(node, ast.ClassDef) and length > MAX_CLASS_LINES:
                found.add(f"class {m}.{node.name}")
    return found


def _file(module: str) -> str:
    path = module.replace(".", "/")
    return f"{path}/__init__.py" if _is_package(module) else f"{path}.py"


def test_no_module_function_or_class_is_too_long():
    found = _oversize()
    assert found <= ALLOWED_OVERSIZE, sorted(found - ALLOWED_OVERSIZE)
    fixed = ALLOWED_OVERSIZE - found
    assert not fixed, f"now short enough: remove {sorted(fixed)} from ALLOWED_OVERSIZE"


def _docstrings(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield node, doc


def _defined(tree: ast.Module) -> set[str]:
    """Every name a module defines or imports, at any depth (functions, classes, methods,
    assignments, attributes set on self, arguments)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.arg):  # A function given as an argument: `options()`.
            names.add(node.arg)
    return names


DOTTED = re.compile(r"`(\w+)\.(\w+)(?:\(\))?`")
FILE_SUFFIXES = {"py", "json", "jsonl", "csv", "md", "png", "gz"}  # `plot.py`: a file, not a name.
CALLED = re.compile(r"`(\w+)\(\)`")


def _exists(module: str, name: str) -> bool:
    """`name` is an attribute or submodule of `module`; for `config` (and `data`) also a
    field of the base config, as in `config.data` and `data.name`."""
    from mnist_jax import config as config_lib

    base = config_lib.get_config()
    if module == "mnist_jax.config" and name in base:
        return True
    if module == "mnist_jax.data" and name in base.data:
        return True
    if hasattr(importlib.import_module(module), name):
        return True
    return _is_package(module) and importlib.util.find_spec(f"{module}.{name}") is not None


# What docstrings name by a short name that is not a module or class of the package.
OBJECTS = {
    "mj": "mnist_jax",
    "lax": "jax.lax",
    "state": "mnist_jax.step.TrainState",
    "exported": "jax.export.Exported",
}
JSON_KEYS = {"final", "diverged"}  # results.json's objects: `final.test`, `diverged.step`.


def _object_has(owner: str, name: str) -> bool:
    """`owner.name` names something in an installed library (`jax.export`) or an object that
    OBJECTS names (`state.step`: a TrainState field)."""
    if owner in JSON_KEYS:
        return True
    parts = OBJECTS.get(owner, owner).split(".")
    target = None
    for i in range(len(parts), 0, -1):  # The longest importable prefix, then attributes.
        try:
            target = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            target = getattr(target, part, None)
        break
    fields = getattr(target, "__dataclass_fields__", {})
    return target is not None and (hasattr(target, name) or name in fields)


def _stale_names() -> list[str]:
    everywhere = set().union(*map(_defined, MODULES.values())) | set(dir(builtins))
    stems = {m.rpartition(".")[2]: m for m in MODULES}
    classes = {
        node.name: node
        for tree in MODULES.values()
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
    }
    stale = []
    for m, tree in MODULES.items():
        for node, doc in _docstrings(tree):
            where = f"{m}:{getattr(node, 'lineno', 1)}"
            for owner, name in DOTTED.findall(doc):
                if name in FILE_SUFFIXES:
                    continue
                if owner in stems:
                    if not _exists(stems[owner], name):
                        stale.append(f"{where} `{owner}.{name}`")
                elif owner in classes:
                    bases = [owner] + [
                        b.id for b in classes[owner].bases if isinstance(b, ast.Name)
                    ]
                    if not any(name in _defined(classes[b]) for b in bases if b in classes):
                        stale.append(f"{where} `{owner}.{name}`")
                elif not _object_has(owner, name):
                    stale.append(f"{where} `{owner}.{name}`")  # `train.gone`: no such module.
            stale += [f"{where} `{n}()`" for n in CALLED.findall(doc) if n not in everywhere]
    return stale


def test_docstrings_name_only_what_exists():
    """A backticked `module.name`, `Class.method` or `name()` in a docstring exists."""
    assert not _stale_names()


@pytest.mark.parametrize(
    "bad", ["`rundir.no_such_thing`", "`no_such_function()`", "`train.scale_images`"]
)
def test_the_docstring_check_catches_a_stale_name(monkeypatch, bad):
    tree = ast.parse(f'"""See {bad}."""\n')
    monkeypatch.setitem(MODULES, "mnist_jax._probe", tree)
    assert any(bad in s for s in _stale_names())


# Writing a file in place of another is `outputs.write_atomic`'s job alone; runfiles moves a
# corrupt checkpoint's directory aside with os.replace (a move, not a write).
RENAMERS = {"replace", "rename", "NamedTemporaryFile", "mkstemp", "write_bytes"}
MAY_RENAME = {"mnist_jax.outputs": RENAMERS, "mnist_jax.runfiles": {"replace"}}


def _renames(tree: ast.Module) -> set[str]:
    return {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in RENAMERS
        and not (node.func.attr == "replace" and _is_str_replace(node))
    }


def _is_str_replace(call: ast.Call) -> bool:
    """`text.replace(a, b)` and `dataclass.replace(...)`, not `os.replace(src, dst)`."""
    owner = call.func.value
    return not (isinstance(owner, ast.Name) and owner.id == "os")


def test_one_atomic_writer():
    found = {
        m: sorted(_renames(tree) - MAY_RENAME.get(m, set()))
        for m, tree in MODULES.items()
        if _renames(tree) - MAY_RENAME.get(m, set())
    }
    assert not found, found


def _layout_rows() -> list[str]:
    """The first cells of the README's Layout table."""
    text = (PACKAGE.parent / "README.md").read_text()
    section = text[text.index("\n## Layout") :]
    section = section[: section.index("\n## ", 1)]
    return [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]


def test_the_readme_layout_names_every_module_and_only_modules():
    """Every module (a subpackage as `name/`) has a row; every `x.py` a row names exists."""
    cells = " ".join(_layout_rows())
    named = {
        n.removeprefix("mnist_jax/").removesuffix("/").removesuffix(".py")
        for n in re.findall(r"`([\w./]+)`", cells)
        if n.endswith((".py", "/")) and not n.startswith(("configs", "launch", "benchmarks"))
    }
    top = {m.split(".")[1] for m in MODULES if m.count(".") >= 1}
    assert top - named == set(), "missing from README's Layout table"
    assert named - top == set(), "named in README's Layout table but not in mnist_jax/"
