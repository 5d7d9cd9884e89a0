"""`OperationStore.max_outcome_bytes`: a store keeps an outcome as large as
it says it can (workers store nothing larger), for an operation with the
largest params allowed. Every adapter."""

from __future__ import annotations

from dataclasses import replace

from google.protobuf import struct_pb2

from longrun_core.model import State
from longrun_core.packing import DEFAULT_MAX_RESULT_BYTES
from longrun_core.store import OperationStore
from longrun_core.validation import MAX_PARAMS_BYTES
from tests.contract.records import make_record

FIRESTORE_DOCUMENT_BYTES = 1_048_576


def biggest_params() -> bytes:
    params = struct_pb2.Struct()
    params.update({"blob": "p" * (MAX_PARAMS_BYTES - 100)})
    data = params.SerializeToString()
    assert len(data) <= MAX_PARAMS_BYTES
    return data


async def test_an_outcome_of_the_capacity_given_is_kept_intact(store: OperationStore) -> None:
    rec = make_record(params=biggest_params(), labels={f"k{i}": "v" * 63 for i in range(64)})
    capacity = store.max_outcome_bytes(rec)
    size = DEFAULT_MAX_RESULT_BYTES if capacity is None else min(capacity, DEFAULT_MAX_RESULT_BYTES)
    # Whatever the store, most of a 1 MiB result fits next to 256 KiB params...
    assert size >= 700 * 1024
    if capacity is not None:
        # ...and a document store leaves room for the record itself.
        assert capacity + len(rec.params) < FIRESTORE_DOCUMENT_BYTES
    response = b"r" * size
    done = replace(rec, state=State.SUCCEEDED, attempt=1, response=response)
    await store.create(done)
    got = await store.get(done.name)
    assert got.response == response
    assert got.params == rec.params


async def test_the_capacity_shrinks_with_the_rest_of_the_record(store: OperationStore) -> None:
    small = store.max_outcome_bytes(make_record())
    large = store.max_outcome_bytes(make_record(params=biggest_params()))
    if small is None or large is None:
        assert small is None and large is None  # no limit of its own
    else:
        assert small - large >= MAX_PARAMS_BYTES - 1024
