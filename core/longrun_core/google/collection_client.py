"""What every Firestore adapter beside the operation store shares: the errors
that mean "retry later", and a small base holding one collection, its client
(owned or borrowed) and a thread pool that runs the blocking calls with a
timeout, mapping outages to Unavailable."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import firestore

from longrun_core.errors import Unavailable

T = TypeVar("T")

#: Errors that mean "the backend could not be reached; retry later".
TRANSIENT = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.ResourceExhausted,
    gexc.RetryError,
    gexc.Unknown,
)


class CollectionClient:
    """One Firestore collection, called off the event loop."""

    def __init__(
        self,
        *,
        project: str,
        database: str,
        collection: str,
        client: Any | None,
        call_timeout: float,
        thread_name_prefix: str,
    ) -> None:
        self._client: Any = client or firestore.Client(project=project, database=database)
        self._owns_client = client is None
        self._collection: Any = self._client.collection(collection)
        self.call_timeout = call_timeout
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix=thread_name_prefix)

    async def _call(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.call_timeout):
                return await loop.run_in_executor(self._pool, fn)
        except TRANSIENT as exc:
            raise Unavailable(f"Firestore is unavailable: {exc}") from exc
        except TimeoutError as exc:
            raise Unavailable(f"Firestore did not answer within {self.call_timeout:g}s") from exc

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._pool.shutdown(wait=False)
        if self._owns_client:
            self._client.close()
