"""Build hook of the longrun-client wheel: compile ../../protos into the
`longrun` package before the files are collected, so the generated code is
built into the wheel and never committed (see protogen.py)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PROTOS = HERE.parent.parent / "protos"
GENERATED = HERE / "longrun" / "v1" / "jobs_pb2.py"


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        if PROTOS.is_dir():
            sys.path.insert(0, str(HERE))
            from protogen import generate

            files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
            with tempfile.TemporaryDirectory() as links:
                generate(files, out=HERE, proto_roots=[PROTOS], link_dir=Path(links))
        elif not GENERATED.exists():
            raise SystemExit(
                f"no protos at {PROTOS} and no generated code at {GENERATED}: "
                "build from a longrun source tree (or an sdist made from one)"
            )
        super().run()


# setuptools checks that every listed package has a folder before build_py
# runs (and generates into it): on a fresh source tree, make it now.
if PROTOS.is_dir():
    GENERATED.parent.mkdir(parents=True, exist_ok=True)

setup(cmdclass={"build_py": BuildPyWithProtos})
