from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.harness import Service, backend_env


def _require_google() -> None:
    from tests.contract.google_backends import require_emulators

    require_emulators()


@pytest.fixture(params=["embedded", pytest.param("google", marks=pytest.mark.google)])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "google":
        _require_google()
    return str(request.param)


@pytest.fixture
def service(backend: str, tmp_path: Path) -> Iterator[Service]:
    """Server + one worker on the chosen backend, stopped after the test."""
    svc = Service(tmp_path, backend_env(backend, tmp_path))
    with svc.kept():
        svc.start_server()
        svc.start_worker()
        yield svc
