"""Generate the Python code of longrun's protos: the one rule behind both the
wheel build (setup.py) and `make proto`. Never edit its output.

    python clients/python/protogen.py --out DIR --proto-root DIR [--include DIR] FILE.proto ...

Writes `*_pb2.py`, `*_pb2_grpc.py` and mypy-protobuf stubs (`*_pb2.pyi`) under
DIR. The googleapis protos come from googleapis-common-protos, the
well-known types from grpcio-tools. googleapis-common-protos ships
google/longrunning/operations.proto as `operations_proto.proto` while its
compiled module registers the runtime name `google/longrunning/operations.proto`,
so a link under that name is made in `--link-dir` and searched first.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path


def google_protos_dir() -> Path:
    import google.api

    return Path(next(iter(google.api.__path__))).parent.parent


def well_known_protos_dir() -> Path:
    import grpc_tools

    return Path(next(iter(grpc_tools.__path__))) / "_proto"


def link_operations_proto(link_dir: Path) -> None:
    """Make `link_dir/google/longrunning/operations.proto` (see the module doc)."""
    target = google_protos_dir() / "google/longrunning/operations_proto.proto"
    link = link_dir / "google/longrunning/operations.proto"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.resolve() == target.resolve():
            return
        link.unlink()
    link.symlink_to(target)


def _plugin(directory: Path, name: str, entry: str) -> str:
    """A protoc plugin script that runs mypy-protobuf with this interpreter
    (its console scripts need not be on PATH inside an isolated build)."""
    script = directory / name
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -c "{entry}"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return f"--plugin={name}={script}"


def generate(
    files: Sequence[str],
    *,
    out: Path,
    proto_roots: Sequence[Path],
    link_dir: Path,
    stubs: bool = True,
) -> None:
    """Compile `files` (paths relative to one of `proto_roots`) into `out`."""
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    link_operations_proto(link_dir)
    includes = [*proto_roots, link_dir, google_protos_dir(), well_known_protos_dir()]
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", *(f"-I{d}" for d in includes)]
        args += [f"--python_out={out}", f"--grpc_python_out={out}"]
        if stubs:
            args += [
                _plugin(
                    Path(tmp), "protoc-gen-mypy", "from mypy_protobuf.main import main; main()"
                ),
                f"--mypy_out=quiet:{out}",
            ]
        code = protoc.main([*args, *files])
    if code != 0:
        raise SystemExit(f"protoc failed (exit {code}) on {', '.join(files)}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--proto-root", type=Path, action="append", required=True)
    parser.add_argument("--link-dir", type=Path, default=Path("build/protos"))
    parser.add_argument("--no-stubs", action="store_true")
    parser.add_argument("files", nargs="+")
    a = parser.parse_args(argv)
    generate(
        a.files, out=a.out, proto_roots=a.proto_root, link_dir=a.link_dir, stubs=not a.no_stubs
    )
    print(f"generated {len(a.files)} proto file(s) into {os.path.relpath(a.out)}")


if __name__ == "__main__":
    main()
