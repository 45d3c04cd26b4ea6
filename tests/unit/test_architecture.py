"""What the import-linter contracts (pyproject.toml) cannot see, checked on the source.

import-linter follows ``import`` statements between packages; these tests cover the
rest: standard-library I/O in decision modules, imports made at run time,
randomness outside OpenDP, switches read from the environment, the package root
and the size of modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "fedscreen"
#: hand-written modules only; v1/ is generated from proto/
MODULES = sorted(p for p in SRC.rglob("*.py") if "v1" not in p.relative_to(SRC).parts)
#: decisions take values and return values or raise (see the "Decisions do no I/O" contract)
DECISIONS = ("protocol", "query", "policy", "audit/verify.py", "tlog/merkle.py",
             "tlog/checkpoint.py")  # fmt: skip
#: the policy documents are read from files here; the merge and digest are pure
READERS = ("policy/load.py", "policy/default.py")
#: standard-library modules that open databases, sockets, processes, event loops or files
STDLIB_IO = {"sqlite3", "socket", "asyncio", "subprocess", "multiprocessing", "threading",
             "http", "urllib", "ssl", "select", "selectors", "os", "shutil", "tempfile",
             "fcntl", "io", "pathlib"}  # fmt: skip
#: calls that read or write files
FILE_CALLS = {"open", "read_text", "read_bytes", "write_text", "write_bytes", "touch",
              "unlink", "mkdir", "rename", "replace"}  # fmt: skip
MAX_LINES = 500
ENVIRONMENT = {"environ", "environb", "getenv", "getenvb"}


def _rel(path: Path) -> str:
    return path.relative_to(SRC).as_posix()


def _imports(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def _parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_the_modules_are_found() -> None:
    assert len(MODULES) > 80
    assert all(any(_rel(m).startswith(d) for m in MODULES) for d in DECISIONS)


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_decisions_do_no_io(path: Path) -> None:
    if not _rel(path).startswith(DECISIONS) or _rel(path) in READERS:
        return
    tree = _parsed(path)
    found = {name for name in _imports(tree) if name.split(".")[0] in STDLIB_IO}
    assert not found, f"{_rel(path)} is a decision module but imports {sorted(found)}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            assert name not in FILE_CALLS, f"{_rel(path)}:{node.lineno} calls {name}()"


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_no_hidden_imports_randomness_or_environment_switches(path: Path) -> None:
    """Imports import-linter cannot see; noise only from OpenDP; no switch read from
    the environment (test hooks are injected by the tests, configuration is in files)."""
    tree = _parsed(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            assert name not in {"import_module", "__import__"}, f"{_rel(path)}:{node.lineno}"
            assert name != "getenv", f"{_rel(path)}:{node.lineno} reads the environment"
        if isinstance(node, ast.Attribute) and node.attr in ENVIRONMENT:
            pytest.fail(f"{_rel(path)}:{node.lineno} reads os.environ")
        if isinstance(node, ast.ImportFrom) and ENVIRONMENT & {a.name for a in node.names}:
            pytest.fail(f"{_rel(path)}:{node.lineno} imports the environment")
    # numpy is the report's linear algebra (report.wls); its random module would be noise
    # outside OpenDP
    randomness = {
        n for n in _imports(tree) if n.split(".")[0] == "random" or n.startswith("numpy.random")
    }
    drawn = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr == "random"
        and isinstance(node.value, ast.Name)
        and node.value.id in ("np", "numpy")
    ]
    assert not drawn, f"{_rel(path)}:{drawn[0]} uses numpy.random"
    assert not randomness, f"{_rel(path)} imports {sorted(randomness)}"


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{_rel(path)} has {lines} lines; split it along a seam"


def test_the_package_root_holds_only_init_errors_and_marker() -> None:
    files = sorted(p.name for p in SRC.iterdir() if p.is_file())
    assert files == ["__init__.py", "errors.py", "py.typed"]


def test_every_top_level_package_is_placed_in_the_layers() -> None:
    """exhaustive=true makes lint-imports fail on an unplaced package; this says which."""
    import tomllib

    pyproject = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = pyproject["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c.get("containers") == ["fedscreen"])
    assert layers["exhaustive"] is True
    placed = {name.strip() for layer in layers["layers"] for name in layer.split("|")}
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages <= placed, f"not in the layers contract: {sorted(packages - placed)}"
    assert placed - {"errors"} <= packages
