"""Regenerate the Python code for ``proto/fedscreen/v1/*.proto`` into ``src/fedscreen/v1/``.

::

    python scripts/gen_protos.py           # (re)write the generated files
    python scripts/gen_protos.py --check   # CI: exit 1 if the checked-in files have drifted

Runs ``python -m grpc_tools.protoc -Iproto`` (so the proto path, the proto
package and the Python import path ``fedscreen.v1.federation_pb2`` agree) with
the ``python``, ``grpc_python``, mypy-protobuf ``mypy`` and ``mypy_grpc``
generators. Generation happens in a temporary directory first, in both modes:
the output depends only on the ``.proto`` files and the versions of
grpcio-tools and mypy-protobuf, never on the machine or on what was in
``src/fedscreen/v1/`` before.
"""

from __future__ import annotations

import argparse
import difflib
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"
SRC_ROOT = ROOT / "src"
#: the proto package directory == the Python package directory, under both roots
PACKAGE = Path("fedscreen") / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
INIT_TEXT = '"""Generated code; do not edit; regenerate with scripts/gen_protos.py."""\n'
#: lines of unified diff shown per drifted file in --check mode
MAX_DIFF_LINES = 40
#: the tools whose versions shape the output, reported when the check fails
TOOLS = ("grpcio-tools", "protobuf", "mypy-protobuf")


def _plugin(name: str) -> str:
    """Path of a protoc plugin installed next to this interpreter (or on PATH)."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    if found is None:
        sys.exit(f"gen_protos: {name} not found; install the dev extras: pip install -e '.[dev]'")
    return found


def _protos() -> list[str]:
    """The .proto files, relative to the include root, in a fixed order."""
    files = sorted((PROTO_ROOT / PACKAGE).glob("*.proto"))
    if not files:
        sys.exit(f"gen_protos: no .proto files under {PROTO_ROOT / PACKAGE}")
    return [f.relative_to(PROTO_ROOT).as_posix() for f in files]


def generate() -> dict[str, bytes]:
    """Generate everything into a temporary directory; file name -> contents."""
    with tempfile.TemporaryDirectory(prefix="gen_protos.") as tmp:
        out = Path(tmp)
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            # relative include path: only "fedscreen/v1/x.proto" is embedded in the output
            "-Iproto",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--mypy_out=quiet:{out}",
            # the project uses grpc.aio only, so the stubs type the async API only
            f"--mypy_grpc_out=quiet,only_async:{out}",
            *_protos(),
        ]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            sys.exit(f"gen_protos: protoc failed:\n{result.stderr.strip()}")
        produced = sorted((out / PACKAGE).iterdir())
        files = {p.name: p.read_bytes() for p in produced if p.name.endswith(GENERATED_SUFFIXES)}
    if sorted(files) != sorted(p.name for p in produced):
        unexpected = sorted({p.name for p in produced} - set(files))
        sys.exit(f"gen_protos: protoc produced unexpected files: {unexpected}")
    files["__init__.py"] = INIT_TEXT.encode()
    return files


def _checked_in(directory: Path) -> dict[str, bytes]:
    """The generated files currently in ``directory`` (the generated-file patterns only)."""
    if not directory.is_dir():
        return {}
    return {
        p.name: p.read_bytes()
        for p in sorted(directory.iterdir())
        if p.is_file() and (p.name == "__init__.py" or p.name.endswith(GENERATED_SUFFIXES))
    }


def _versions() -> str:
    parts = []
    for tool in TOOLS:
        try:
            parts.append(f"{tool} {metadata.version(tool)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{tool} (not installed)")
    return ", ".join(parts)


def check(target: Path, wanted: dict[str, bytes]) -> int:
    """Compare ``target`` with freshly generated files; print a summary; 0 if equal."""
    have = _checked_in(target)
    problems = 0
    for name in sorted(set(wanted) | set(have)):
        rel = (target / name).relative_to(ROOT)
        if name not in have:
            print(f"missing:  {rel}")
        elif name not in wanted:
            print(f"stale:    {rel} (no .proto generates it any more)")
        elif have[name] != wanted[name]:
            old = have[name].decode(errors="replace").splitlines()
            new = wanted[name].decode(errors="replace").splitlines()
            diff = list(
                difflib.unified_diff(
                    old, new, f"{rel} (checked in)", f"{rel} (regenerated)", lineterm=""
                )
            )
            added = sum(1 for line in diff if line.startswith("+") and not line.startswith("+++"))
            removed = sum(1 for line in diff if line.startswith("-") and not line.startswith("---"))
            print(f"differs:  {rel} (+{added} -{removed} lines)")
            for line in diff[:MAX_DIFF_LINES]:
                print(f"    {line}")
            if len(diff) > MAX_DIFF_LINES:
                print(f"    ... {len(diff) - MAX_DIFF_LINES} more diff lines")
        else:
            continue
        problems += 1
    if problems:
        print(
            f"gen_protos: {problems} generated file(s) out of date (generated with {_versions()}); "
            "run `python scripts/gen_protos.py` and commit the result",
            file=sys.stderr,
        )
        return 1
    print(f"gen_protos: {len(wanted)} generated files up to date")
    return 0


def write(target: Path, wanted: dict[str, bytes]) -> int:
    """Write changed files and remove stale generated ones; print what changed."""
    target.mkdir(parents=True, exist_ok=True)
    have = _checked_in(target)
    for name in sorted(set(have) - set(wanted)):
        (target / name).unlink()
        print(f"removed:  {(target / name).relative_to(ROOT)}")
    for name, data in sorted(wanted.items()):
        if have.get(name) != data:
            (target / name).write_bytes(data)
            print(f"wrote:    {(target / name).relative_to(ROOT)}")
    print(f"gen_protos: {len(wanted)} files in {target.relative_to(ROOT)} ({_versions()})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temporary directory and exit 1 if anything differs",
    )
    args = parser.parse_args(argv)
    wanted = generate()
    target = SRC_ROOT / PACKAGE
    return check(target, wanted) if args.check else write(target, wanted)


if __name__ == "__main__":
    sys.exit(main())
