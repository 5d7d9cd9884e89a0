"""Storage faults for tests (root only): a small tmpfs to fill up, and
chattr +i to make files read-only under processes that hold them open."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"needs root to {what} (CI runs as root)")


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "3m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` for the block."""
    require_root("mount a small tmpfs as a disk that fills up")
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) on this machine")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a file into `directory` until its file system is full (down to
    single bytes, so not even a small write fits)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    try:
        size = 1 << 16
        while size >= 1:
            try:
                os.write(fd, b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                size //= 2
    finally:
        os.close(fd)
    return filler


def chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """`chattr +i` on `paths` for the block."""
    chattr("+i", *paths)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=False, capture_output=True)


def require_immutable_blocks_writes(directory: Path) -> None:
    """Skip unless chattr +i stops writes through a descriptor opened before
    (it does on ext4 and xfs; tmpfs ignores it for open files)."""
    require_root("chattr +i the database")
    if shutil.which("chattr") is None:
        pytest.skip("no chattr(1) on this machine")
    probe = directory / "immutable-probe"
    fd = os.open(probe, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        try:
            with immutable(probe):
                os.write(fd, b"x")
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"chattr +i is not supported here: {exc.stderr.decode().strip()}")
        except OSError:
            return
        pytest.skip("chattr +i does not stop writes through open files on this file system")
    finally:
        os.close(fd)
        probe.unlink()
