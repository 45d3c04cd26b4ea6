"""The error tree in ``fedscreen.errors``: complete, and each error with its exit code."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest

import fedscreen
from fedscreen import errors
from fedscreen.cli.main import main
from fedscreen.errors import FedscreenError


def _all_subclasses() -> set[type[FedscreenError]]:
    # import every module, so that an error defined anywhere is found
    for info in pkgutil.walk_packages(fedscreen.__path__, "fedscreen."):
        importlib.import_module(info.name)
    found: set[type[FedscreenError]] = set()
    todo = [FedscreenError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.startswith("fedscreen.") and sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def _tree() -> dict[str, int]:
    """class name -> depth, from the drawing in the module docstring."""
    doc = errors.__doc__ or ""
    drawn = {}
    for line in doc.splitlines():
        match = re.match(r"^ {4}((?:│   |    )*)(?:├── |└── )?([A-Z]\w+)", line)
        if match:
            drawn[match.group(2)] = len(match.group(1)) // 4 + (0 if "──" not in line else 1)
    return drawn


def test_every_error_is_in_the_drawn_tree() -> None:
    subclasses = _all_subclasses()
    assert len(subclasses) >= 20
    drawn = _tree()
    missing = sorted(c.__name__ for c in subclasses if c.__name__ not in drawn)
    assert not missing, f"add to the tree in fedscreen/errors.py: {missing}"
    stale = sorted(set(drawn) - {c.__name__ for c in subclasses} - {"FedscreenError"})
    assert not stale, f"the tree names errors that do not exist: {stale}"


def test_the_tree_draws_each_error_under_its_parent() -> None:
    drawn = _tree()
    for cls in _all_subclasses():
        parent = next(b for b in cls.__mro__[1:] if issubclass(b, FedscreenError))
        assert drawn[cls.__name__] == drawn[parent.__name__] + 1, cls.__name__


def test_errors_live_in_the_errors_module_unless_they_carry_an_edge_type() -> None:
    elsewhere = {
        c.__name__: c.__module__ for c in _all_subclasses() if c.__module__ != errors.__name__
    }
    # RpcFailed carries a grpc.StatusCode, and grpc stays at the edge
    assert elsewhere == {"RpcFailed": "fedscreen.rpc.transport"}


@pytest.mark.parametrize(
    ("name", "code"),
    [("FedscreenError", 1), ("ConfigError", 1), ("QueryRefused", 1), ("VerificationError", 1),
     ("IngestError", 1), ("RpcFailed", 1), ("PlanRefused", 3), ("AuditFailure", 4),
     ("EntryInvalid", 2), ("HistoryInconsistent", 3), ("BundleUntrusted", 4)],
)  # fmt: skip
def test_exit_codes(name: str, code: int) -> None:
    cls = {c.__name__: c for c in _all_subclasses() | {FedscreenError}}[name]
    assert cls.exit_code == code


def test_every_error_has_an_int_exit_code_and_a_docstring() -> None:
    for cls in _all_subclasses():
        assert isinstance(cls.exit_code, int), cls.__name__
        assert 1 <= cls.exit_code <= 4, cls.__name__
        assert (cls.__doc__ or "").strip(), cls.__name__


def test_the_command_line_exits_with_the_errors_code(capsys: pytest.CaptureFixture[str]) -> None:
    # a missing home is a ConfigError: exit 1, a message, no traceback
    assert main(["node", "status", "--home", "/nonexistent/fedscreen-home"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("error", "code"),
    [(errors.PlanRefused("a node cannot pay"), 3),
     (errors.EntryInvalid("entry 3: bad signature"), 2),
     (errors.HistoryInconsistent("a fork"), 3),
     (errors.BundleUntrusted("unknown member"), 4),
     (errors.MalformedEnvelope("not an envelope"), 1)],
)  # fmt: skip
def test_main_exits_with_the_code_of_the_error_that_ends_a_command(
    error: FedscreenError,
    code: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Whatever command an error ends, ``main`` prints it and exits with its code."""
    from fedscreen.cli import node

    def fails(args: object) -> int:
        raise error

    # the parser binds each subcommand's function when main builds it
    monkeypatch.setattr(node, "run_status", fails)
    assert main(["node", "status", "--home", "anywhere"]) == code
    assert capsys.readouterr().err == f"error: {error}\n"
