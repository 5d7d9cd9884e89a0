"""The services ask `Access` before they act, on an in-process gRPC server
(create_server with an injected Access) over the SQLite store.

`Grants` stands in for the policy other engineers build: it holds, per
project, the permissions of "the caller", and logs every question in the
same list as the store's reads, so a test can tell that a full-name RPC
asked before reading anything (AIP-211)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2, status_pb2

from longrun.v1 import jobs_pb2, jobs_pb2_grpc
from longrun_core.access import ALL_PROJECTS, Permission, denied
from longrun_core.settings import ServerSettings
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.queue import SqliteTaskQueue
from longrun_core.sqlite.store import SqliteOperationStore
from longrun_core.tasks import TaskContext, TaskRegistry, TaskSet
from longrun_server.app import create_server
from longrun_server.jobs_service import REPLAYED_METADATA_KEY

tasks = TaskSet()


@tasks.task(name="noop")
async def noop(ctx: TaskContext) -> dict[str, Any]:
    return {}


REGISTRY = TaskRegistry(list(tasks.specs.values()))
ALL = frozenset(Permission)


@dataclass
class Grants:
    """An Access: `projects` maps a project to the caller's permissions;
    `everything` grants all of them on every project (visible: None)."""

    log: list[tuple[str, ...]]
    projects: dict[str, frozenset[Permission]] = field(default_factory=dict)
    everything: bool = False

    def require(self, permission: Permission, project: str) -> None:
        self.log.append(("require", permission.value, project))
        if not self.everything and permission not in self.projects.get(project, frozenset()):
            raise denied(permission, f"projects/{project}")

    def visible_projects(self, permission: Permission) -> frozenset[str] | None:
        self.log.append(("visible", permission.value))
        if self.everything:
            return ALL_PROJECTS
        return frozenset(p for p, perms in self.projects.items() if permission in perms)


@dataclass
class Env:
    access: Grants
    store: SqliteOperationStore
    ops: operations_pb2_grpc.OperationsStub
    jobs: jobs_pb2_grpc.JobsStub

    async def create(self, parent: str = "", request_id: str = "") -> operations_pb2.Operation:
        params = struct_pb2.Struct()
        params.update({"x": 1})
        op: operations_pb2.Operation = await self.jobs.CreateJob(
            jobs_pb2.CreateJobRequest(
                parent=parent, task="noop", params=params, request_id=request_id
            )
        )
        return op


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    log: list[tuple[str, ...]] = []
    access = Grants(log, everything=True)
    backend = SqliteBackend(tmp_path / "ops.db")
    store = SqliteOperationStore(backend)
    queue = SqliteTaskQueue(SqliteBackend(tmp_path / "queue.db"), visibility_timeout=5.0)
    await store.start()
    await queue.start()
    read = store._read

    async def logged_read(op_id: str) -> Any:
        log.append(("read", op_id))
        return await read(op_id)

    store._read = logged_read  # type: ignore[method-assign]
    settings = ServerSettings(address="127.0.0.1:0", default_project="fallback")
    server, port, dispatcher = await create_server(
        store=store, queue=queue, registry=REGISTRY, settings=settings, access=access
    )
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Env(
            access,
            store,
            operations_pb2_grpc.OperationsStub(channel),
            jobs_pb2_grpc.JobsStub(channel),
        )
    finally:
        await channel.close()
        await server.stop(None)
        await dispatcher.stop()
        await queue.close()
        await store.close()


def _details(exc: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """The code, ErrorInfo reason and metadata of a failed call."""
    raw = dict(exc.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert isinstance(raw, bytes), exc
    status = status_pb2.Status.FromString(raw)
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return exc.code(), info.reason, dict(info.metadata)
    raise AssertionError(f"no ErrorInfo in {status}")


async def _denied(call: Any) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return _details(info.value)


# ---- CreateJob ----


async def test_create_job_names_its_parent_and_records_the_creator(env: Env) -> None:
    op = await env.create(parent="projects/acme")
    assert op.name.startswith("projects/acme/operations/")
    rec = await env.store.get(op.name)
    assert (rec.project, rec.creator) == ("acme", "anonymous")
    assert ("require", Permission.CREATE.value, "acme") in env.access.log


async def test_create_job_without_parent_takes_the_only_project_else_the_default(
    env: Env,
) -> None:
    op = await env.create()
    assert op.name.startswith("projects/fallback/operations/"), "AllowAll: the server's default"
    env.access.everything = False
    env.access.projects = {"solo": ALL, "viewer-only": frozenset({Permission.GET})}
    op = await env.create()
    assert op.name.startswith("projects/solo/operations/")
    env.access.projects["second"] = ALL
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.create()  # two projects: the default one, where it may not create
    assert _details(info.value) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "IAM_PERMISSION_DENIED",
        {"permission": Permission.CREATE.value, "resource": "projects/fallback"},
    )


async def test_create_job_in_a_project_without_create_is_denied_and_stores_nothing(
    env: Env,
) -> None:
    env.access.everything = False
    env.access.projects = {"acme": frozenset({Permission.GET, Permission.LIST})}
    code, reason, _ = await _denied(env.create(parent="projects/acme"))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "IAM_PERMISSION_DENIED")
    env.access.everything = True
    listed = await env.ops.ListOperations(operations_pb2.ListOperationsRequest(name="operations"))
    assert list(listed.operations) == []


async def test_a_malformed_parent_is_invalid_argument(env: Env) -> None:
    for parent, reason in (("acme", "PARENT_MALFORMED"), ("projects/ACME", "PROJECT_ID_INVALID")):
        code, got, meta = await _denied(env.create(parent=parent))
        assert (code, got) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
        assert meta == {"parent": parent if reason == "PARENT_MALFORMED" else "ACME"}


async def test_request_ids_are_scoped_to_the_project(env: Env) -> None:
    rid = "4b3a2918-0f7e-4d6c-9b5a-4f3e2d1c0b9a"
    a = await env.create(parent="projects/a", request_id=rid)
    a_again = await env.create(parent="projects/a", request_id=rid)
    b = await env.create(parent="projects/b", request_id=rid)
    assert a_again.name == a.name
    assert b.name != a.name and b.name.startswith("projects/b/operations/")


async def test_a_replayed_request_id_is_marked_in_the_trailing_metadata(env: Env) -> None:
    """Triggers count deduplicated events with it (longrun_worker.triggers)."""
    rid = "5c4b3a29-1f0e-4d7c-8b6a-5f4e3d2c1b0a"

    async def replayed(project: str) -> str | None:
        call = env.jobs.CreateJob(
            jobs_pb2.CreateJobRequest(parent=project, task="noop", request_id=rid)
        )
        await call
        return dict(await call.trailing_metadata() or ()).get(REPLAYED_METADATA_KEY)

    assert await replayed("projects/a") is None
    assert await replayed("projects/a") == "true"
    assert await replayed("projects/b") is None  # first in its project


# ---- BatchCreateJobs ----


def _batch(parent: str, *items: jobs_pb2.CreateJobRequest) -> jobs_pb2.BatchCreateJobsRequest:
    return jobs_pb2.BatchCreateJobsRequest(parent=parent, requests=list(items))


def _item(parent: str = "", request_id: str = "", task: str = "noop") -> jobs_pb2.CreateJobRequest:
    return jobs_pb2.CreateJobRequest(parent=parent, task=task, request_id=request_id)


async def _stored(env: Env) -> list[str]:
    env.access.everything = True
    listed = await env.ops.ListOperations(operations_pb2.ListOperationsRequest(name="operations"))
    return sorted(o.name for o in listed.operations)


async def test_batch_create_stores_each_item_in_order_once_per_request_id(env: Env) -> None:
    ids = [str(uuid.UUID(int=i + 1, version=4)) for i in range(3)]
    request = _batch("projects/acme", *(_item(request_id=rid) for rid in ids))
    got = await env.jobs.BatchCreateJobs(request)
    names = [op.name for op in got.operations]
    assert len(set(names)) == 3 and all(n.startswith("projects/acme/operations/") for n in names)
    for name, rid in zip(names, ids, strict=True):
        assert (await env.store.get(name)).request_id == rid
    again = await env.jobs.BatchCreateJobs(request)
    assert [op.name for op in again.operations] == names
    assert await _stored(env) == sorted(names)


async def test_batch_create_authorizes_every_items_parent_before_storing_any(env: Env) -> None:
    env.access.everything = False
    env.access.projects = {"a": ALL, "b": ALL - {Permission.CREATE}}
    request = _batch("", _item("projects/a"), _item("projects/b"), _item("projects/a"))
    code, reason, meta = await _denied(env.jobs.BatchCreateJobs(request))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "IAM_PERMISSION_DENIED")
    assert (meta["index"], meta["resource"]) == ("1", "projects/b")
    assert ("require", Permission.CREATE.value, "a") in env.access.log
    assert await _stored(env) == []
    env.access.everything = False
    env.access.projects["b"] = ALL
    got = await env.jobs.BatchCreateJobs(request)
    assert [op.name.split("/")[1] for op in got.operations] == ["a", "b", "a"]


async def test_batch_create_refuses_a_bad_item_whole(env: Env) -> None:
    cases = [
        (_batch("projects/p", _item(), _item(task="no-such-task")), "1"),
        (_batch("projects/p", _item("projects/q"), _item()), "0"),
    ]
    for request, index in cases:
        code, reason, meta = await _denied(env.jobs.BatchCreateJobs(request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, reason
        assert meta["index"] == index
    assert await _stored(env) == []


async def test_batch_create_is_bounded(env: Env) -> None:
    code, reason, meta = await _denied(env.jobs.BatchCreateJobs(_batch("projects/p")))
    assert (code, reason, meta["count"]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "BATCH_SIZE_INVALID",
        "0",
    )
    limit = ServerSettings().max_batch_create
    too_many = _batch("projects/p", *(_item() for _ in range(limit + 1)))
    code, reason, meta = await _denied(env.jobs.BatchCreateJobs(too_many))
    assert (reason, meta["count"], meta["max"]) == (
        "BATCH_SIZE_INVALID",
        str(limit + 1),
        str(limit),
    )
    full = await env.jobs.BatchCreateJobs(_batch("projects/p", *(_item() for _ in range(limit))))
    assert len(full.operations) == limit


# ---- one operation: full names ask first, legacy names read first ----

SINGLE = [
    ("GetOperation", Permission.GET),
    ("WaitOperation", Permission.WAIT),
    ("CancelOperation", Permission.CANCEL),
    ("DeleteOperation", Permission.DELETE),
]


def _request(method: str, name: str) -> Any:
    cls = getattr(operations_pb2, method.removesuffix("Operation") + "OperationRequest")
    request = cls(name=name)
    if method == "WaitOperation":
        request.timeout.FromMilliseconds(1)
    return request


@pytest.mark.parametrize(("method", "permission"), SINGLE)
async def test_a_full_name_is_authorized_before_any_read(
    env: Env, method: str, permission: Permission
) -> None:
    op = await env.create(parent="projects/acme")
    env.access.everything = False
    env.access.projects = {"acme": ALL - {permission}}
    absent = f"projects/acme/operations/{'0' * 32}"
    call = getattr(env.ops, method)
    errors = []
    for name in (op.name, absent):
        env.access.log.clear()
        errors.append(await _denied(call(_request(method, name))))
        assert env.access.log == [("require", permission.value, "acme")], "asked, read nothing"
    # AIP-211: the same answer whether or not it exists.
    assert (
        errors[0][:2]
        == errors[1][:2]
        == (
            grpc.StatusCode.PERMISSION_DENIED,
            "IAM_PERMISSION_DENIED",
        )
    )
    assert errors[0][2]["permission"] == permission.value
    env.access.projects = {"acme": frozenset({permission})}
    env.access.log.clear()
    await call(_request(method, op.name))
    assert env.access.log[0] == ("require", permission.value, "acme")
    assert env.access.log[1][0] == "read"


@pytest.mark.parametrize(("method", "permission"), SINGLE)
async def test_a_legacy_name_is_authorized_on_the_records_project(
    env: Env, method: str, permission: Permission
) -> None:
    op = await env.create(parent="projects/acme")
    legacy = "operations/" + op.name.rsplit("/", 1)[1]
    absent = "operations/" + "0" * 32
    call = getattr(env.ops, method)
    env.access.everything = False
    env.access.projects = {"acme": ALL - {permission}, "mine": ALL}
    present_error = await _denied(call(_request(method, legacy)))
    absent_error = await _denied(call(_request(method, absent)))
    # The same error for one the caller may not touch and for none at all.
    assert present_error == (
        grpc.StatusCode.PERMISSION_DENIED,
        "IAM_PERMISSION_DENIED",
        {"permission": permission.value, "resource": legacy},
    )
    assert absent_error == (
        grpc.StatusCode.PERMISSION_DENIED,
        "IAM_PERMISSION_DENIED",
        {"permission": permission.value, "resource": absent},
    )
    # A caller who sees every project learns it is absent.
    env.access.everything = True
    code, reason, _ = await _denied(call(_request(method, absent)))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "OPERATION_NOT_FOUND")
    env.access.everything = False
    env.access.projects = {"acme": frozenset({permission})}
    got = await call(_request(method, legacy))
    if method in ("GetOperation", "WaitOperation"):
        assert got.name == op.name, "the server returns the full name"


@pytest.mark.parametrize(("method", "permission"), SINGLE)
async def test_a_full_name_of_another_project_is_not_found(
    env: Env, method: str, permission: Permission
) -> None:
    op = await env.create(parent="projects/acme")
    wrong = op.name.replace("projects/acme/", "projects/other/")
    code, reason, meta = await _denied(getattr(env.ops, method)(_request(method, wrong)))
    assert (code, reason, meta) == (
        grpc.StatusCode.NOT_FOUND,
        "OPERATION_NOT_FOUND",
        {"name": wrong},
    )
    assert (await env.store.get(op.name)).cancel_requested is False


async def test_a_wait_on_a_full_name_reads_the_record_once_when_it_is_done(env: Env) -> None:
    """The permission check of a full name needs no read, so a Wait on a done
    operation (a queued one cancelled ends at once) reads it once, inside its
    watch, not twice."""
    op = await env.create(parent="projects/acme")
    op_id = op.name.rsplit("/", 1)[1]
    await env.ops.CancelOperation(operations_pb2.CancelOperationRequest(name=op.name))
    env.access.log.clear()
    got = await env.ops.WaitOperation(_request("WaitOperation", op.name))
    assert got.done and got.name == op.name
    reads = [entry for entry in env.access.log if entry[0] == "read"]
    assert reads == [("read", op_id)]
    absent = f"projects/acme/operations/{'0' * 32}"
    code, reason, meta = await _denied(env.ops.WaitOperation(_request("WaitOperation", absent)))
    assert (code, reason, meta) == (
        grpc.StatusCode.NOT_FOUND,
        "OPERATION_NOT_FOUND",
        {"name": absent},
    )


# ---- ListOperations ----


async def test_list_a_project_requires_list_on_it(env: Env) -> None:
    a = await env.create(parent="projects/a")
    await env.create(parent="projects/b")
    env.access.everything = False
    env.access.projects = {"a": frozenset({Permission.LIST})}
    for name in ("projects/a", "projects/a/operations"):
        got = await env.ops.ListOperations(operations_pb2.ListOperationsRequest(name=name))
        assert [o.name for o in got.operations] == [a.name]
    env.access.log.clear()
    code, reason, meta = await _denied(
        env.ops.ListOperations(operations_pb2.ListOperationsRequest(name="projects/b"))
    )
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "IAM_PERMISSION_DENIED")
    assert meta["permission"] == Permission.LIST.value
    assert env.access.log == [("require", Permission.LIST.value, "b")]


async def test_list_everything_lists_the_visible_projects(env: Env) -> None:
    made = {p: [await env.create(parent=f"projects/{p}") for _ in range(3)] for p in "abc"}
    env.access.everything = False
    env.access.projects = {"a": frozenset({Permission.LIST}), "c": ALL, "b": frozenset()}
    for name in ("", "operations"):
        names: list[str] = []
        token = ""
        while True:
            page = await env.ops.ListOperations(
                operations_pb2.ListOperationsRequest(name=name, page_size=2, page_token=token)
            )
            names += [o.name for o in page.operations]
            token = page.next_page_token
            if not token:
                break
        assert sorted(names) == sorted(o.name for p in "ac" for o in made[p])
    env.access.projects = {}
    page = await env.ops.ListOperations(operations_pb2.ListOperationsRequest(name="operations"))
    assert (list(page.operations), page.next_page_token) == ([], "")


async def test_a_page_token_is_bound_to_the_lists_name(env: Env) -> None:
    for _ in range(3):
        await env.create(parent="projects/a")
    first = await env.ops.ListOperations(
        operations_pb2.ListOperationsRequest(name="projects/a", page_size=1)
    )
    assert first.next_page_token
    code, reason, _ = await _denied(
        env.ops.ListOperations(
            operations_pb2.ListOperationsRequest(
                name="projects/b", page_size=1, page_token=first.next_page_token
            )
        )
    )
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_MISMATCH")
    same = await env.ops.ListOperations(
        operations_pb2.ListOperationsRequest(
            name="projects/a/operations", page_size=1, page_token=first.next_page_token
        )
    )
    assert len(same.operations) == 1


@pytest.mark.parametrize("name", ["projects/", "projects/A", "projects/a/jobs", "things"])
async def test_a_malformed_list_name_is_invalid_argument(env: Env, name: str) -> None:
    code, _, _ = await _denied(
        env.ops.ListOperations(operations_pb2.ListOperationsRequest(name=name))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
