"""Where the document tasks read and write objects: a storage seam.

* `GcsStorage`: Cloud Storage through the official google-cloud-storage
  client (install the `gcs` extra: `pip install 'longrun[gcs]'`), with
  Application Default Credentials. Production.
* `FolderStorage`: a local folder, one sub-folder per bucket. The embedded
  default and the tests (there is no Cloud Storage emulator).

`storage_from_env()` picks one from LONGRUN_CONVERT_STORAGE: `gcs`, or a
folder path (default `longrun-objects`, relative to the worker's folder).
Errors: `PermanentError` when retrying cannot help (no such object, an
object name escaping its bucket), `TransientError` when it may.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from longrun_core.tasks import PermanentError, TransientError

STORAGE_VAR = "LONGRUN_CONVERT_STORAGE"
DEFAULT_FOLDER = "longrun-objects"


class ObjectStorage(Protocol):
    def read(self, bucket: str, name: str, generation: int | None, limit: int) -> bytes:
        """The object's bytes (at `generation` when given); PermanentError
        when it is missing or larger than `limit` bytes."""
        ...

    def write(self, bucket: str, name: str, data: bytes, content_type: str) -> str:
        """Store `data` as the object (replacing it); returns its URI."""
        ...


def check_object_name(name: str) -> str:
    """Cloud Storage's rules that matter here: 1-1024 bytes of UTF-8, no
    CR/LF, and (for the folder) no '.'/'..' segment or leading '/'."""
    if not name or len(name.encode()) > 1024 or "\r" in name or "\n" in name:
        raise PermanentError(f"invalid object name {name[:100]!r}")
    if name.startswith("/") or any(part in (".", "..") for part in name.split("/")):
        raise PermanentError(f"object name {name[:100]!r} has a '.' or '..' segment")
    return name


class FolderStorage:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, bucket: str, name: str) -> Path:
        if not bucket or "/" in bucket or bucket in (".", ".."):
            raise PermanentError(f"invalid bucket name {bucket[:100]!r}")
        return self.root / bucket / check_object_name(name)

    def read(self, bucket: str, name: str, generation: int | None, limit: int) -> bytes:
        path = self._path(bucket, name)
        try:
            size = path.stat().st_size
            if size > limit:
                raise PermanentError(f"{bucket}/{name} is {size} bytes; at most {limit}")
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise PermanentError(f"no object {bucket}/{name}") from exc
        except OSError as exc:
            raise TransientError(f"cannot read {bucket}/{name}: {exc.strerror}") from exc

    def write(self, bucket: str, name: str, data: bytes, content_type: str) -> str:
        path = self._path(bucket, name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise TransientError(f"cannot write {bucket}/{name}: {exc.strerror}") from exc
        return path.resolve().as_uri()


class GcsStorage:
    def __init__(self, client: Any = None) -> None:
        if client is None:
            try:
                from google.cloud import storage  # type: ignore[attr-defined]
            except ImportError as exc:
                raise PermanentError(
                    "Cloud Storage needs google-cloud-storage: pip install 'longrun[gcs]'"
                ) from exc
            client = storage.Client()
        self.client = client

    def read(self, bucket: str, name: str, generation: int | None, limit: int) -> bytes:
        from google.api_core import exceptions as gexc

        blob = self.client.bucket(bucket).blob(check_object_name(name), generation=generation)
        try:
            blob.reload()
            if blob.size is not None and blob.size > limit:
                raise PermanentError(f"gs://{bucket}/{name} is {blob.size} bytes; at most {limit}")
            data: bytes = blob.download_as_bytes()
        except (gexc.NotFound, gexc.Forbidden, gexc.BadRequest) as exc:
            raise PermanentError(f"cannot read gs://{bucket}/{name}: {exc}") from exc
        except gexc.GoogleAPIError as exc:
            raise TransientError(f"cannot read gs://{bucket}/{name}: {exc}") from exc
        return data

    def write(self, bucket: str, name: str, data: bytes, content_type: str) -> str:
        from google.api_core import exceptions as gexc

        blob = self.client.bucket(bucket).blob(check_object_name(name))
        try:
            blob.upload_from_string(data, content_type=content_type)
        except (gexc.NotFound, gexc.Forbidden, gexc.BadRequest) as exc:
            raise PermanentError(f"cannot write gs://{bucket}/{name}: {exc}") from exc
        except gexc.GoogleAPIError as exc:
            raise TransientError(f"cannot write gs://{bucket}/{name}: {exc}") from exc
        return f"gs://{bucket}/{name}"


def storage_from_env(env: dict[str, str] | None = None) -> ObjectStorage:
    value = (os.environ if env is None else env).get(STORAGE_VAR) or DEFAULT_FOLDER
    if value == "gcs":
        return GcsStorage()
    return FolderStorage(Path(value))
