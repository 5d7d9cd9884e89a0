"""A hypothesis state machine over a real server with authentication: several
principals with roles on several projects create, get, wait, list (paged,
with and without a filter), cancel and delete in random order, with full and
legacy names, on their own operations, on others' and on operations that do
not exist. Whatever the order:

- no call returns an operation of a project the caller holds no role on;
- no call changes (cancels, deletes, creates in) a project the caller may
  not change: a root principal checks after every refused call;
- a call the caller may make is served (so the property cannot hold by
  refusing everything), and a refusal is PERMISSION_DENIED, never NOT_FOUND
  (AIP-211: a caller learns nothing about projects it cannot see).

The server runs in a thread of its own, with API keys (each with its own
project and role) plus a policy file that gives one key a second project and
the root key every project."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    rule,
    run_state_machine_as_test,
)

from longrun.v1 import jobs_pb2, jobs_pb2_grpc
from longrun_core.auth.api_keys import MintedKey, mint
from longrun_core.auth.roles import Role
from longrun_core.settings import AuthenticationSettings, ServerSettings
from longrun_core.sqlite.api_keys import SqliteKeyStore
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.queue import SqliteTaskQueue
from longrun_core.sqlite.store import SqliteOperationStore
from longrun_core.tasks import load_tasks
from longrun_server.app import create_server
from longrun_server.auth_setup import build_auth

PROJECTS = ("alpha", "beta", "gamma")
RANK = {Role.VIEWER: 1, Role.EDITOR: 2, Role.ADMIN: 3}
#: Each principal's API key (its own project and role) ...
KEYS: dict[str, tuple[str, Role]] = {
    "alpha_editor": ("alpha", Role.EDITOR),
    "alpha_viewer": ("alpha", Role.VIEWER),
    "beta_admin": ("beta", Role.ADMIN),
    "gamma_editor": ("gamma", Role.EDITOR),
    "outsider": ("zeta", Role.ADMIN),  # no operations are ever made in zeta
    "root": ("zeta", Role.VIEWER),
}
#: ... plus the policy file's bindings.
POLICY_ROLES: dict[str, dict[str, Role]] = {
    "alpha_editor": {"beta": Role.VIEWER},
    "root": {"*": Role.ADMIN},
}
PRINCIPALS = tuple(p for p in KEYS if p != "root")


def role_of(principal: str, project: str) -> int:
    """The rank of the strongest role `principal` holds on `project` (0: none)."""
    own_project, own_role = KEYS[principal]
    ranks = [RANK[own_role]] if own_project == project else []
    for bound, role in POLICY_ROLES.get(principal, {}).items():
        if bound in (project, "*"):
            ranks.append(RANK[role])
    return max(ranks, default=0)


@dataclass
class Served:
    target: str
    keys: dict[str, MintedKey]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("access")
    keys = {name: mint(project, role, datetime.now(UTC)) for name, (project, role) in KEYS.items()}
    lines = []
    for name, roles in POLICY_ROLES.items():
        for project, role in roles.items():
            lines += [
                "[[bindings]]",
                f'project = "{project}"',
                f'role = "{role.value}"',
                f'members = ["key:{keys[name].key.key_id}"]',
                "",
            ]
    policy = tmp / "policy.toml"
    policy.write_text("\n".join(lines))
    loop = asyncio.new_event_loop()
    ready: asyncio.Future[str] = loop.create_future()
    stop = asyncio.Event()

    async def serve() -> None:
        try:
            await run()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    async def run() -> None:
        backend = SqliteBackend(tmp / "ops.db")
        store = SqliteOperationStore(backend)
        queue = SqliteTaskQueue(backend)
        await store.start()
        await queue.start()
        key_store = SqliteKeyStore(backend.db)
        server_settings = ServerSettings(
            address="127.0.0.1:0",
            auth=AuthenticationSettings(
                api_keys=True, policy_file=policy, quota_requests_per_second=0
            ),
        )
        auth = build_auth(server_settings.auth, key_store=key_store)
        await auth.start()  # creates the key table
        for minted in keys.values():
            await key_store.add(minted.key)
        server, port, _ = await create_server(
            store=store,
            queue=queue,
            registry=load_tasks(["longrun_worker.builtin_tasks"]),
            settings=server_settings,
            auth=auth,
        )
        await server.start()
        ready.set_result(f"127.0.0.1:{port}")
        try:
            await stop.wait()
        finally:
            await server.stop(0)
            await auth.close()
            await queue.close()
            await store.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    target = asyncio.run_coroutine_threadsafe(asyncio.wait_for(ready, 30), loop).result(35)
    try:
        yield Served(target, keys)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


@dataclass(frozen=True)
class Target:
    """An operation a call names: one made in this run (`made`) or an id
    that never existed, in `project`; `legacy` names it `operations/{id}`."""

    project: str
    op_id: str
    made: bool

    def name(self, legacy: bool) -> str:
        return (
            f"operations/{self.op_id}"
            if legacy
            else f"projects/{self.project}/operations/{self.op_id}"
        )


class AccessMachine(RuleBasedStateMachine):
    targets = Bundle("targets")
    #: Set by the test before the machine runs.
    env: ClassVar[Served]
    channel: ClassVar[grpc.Channel]

    def __init__(self) -> None:
        super().__init__()
        channel = self.channel
        self.ops = operations_pb2_grpc.OperationsStub(channel)
        self.jobs = jobs_pb2_grpc.JobsStub(channel)
        self.deleted: set[str] = set()
        #: Operations made in this run, for the list completeness check.
        self.made_targets: list[Target] = []

    def meta(self, principal: str) -> tuple[tuple[str, str], ...]:
        return (("x-goog-api-key", self.env.keys[principal].secret),)

    def root_get(self, target: Target) -> operations_pb2.Operation | None:
        try:
            return self.ops.GetOperation(
                operations_pb2.GetOperationRequest(name=target.name(legacy=False)),
                metadata=self.meta("root"),
                timeout=10,
            )
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
            return None

    def call(self, principal: str, fn: object, request: object) -> tuple[grpc.StatusCode, object]:
        try:
            return grpc.StatusCode.OK, fn(request, metadata=self.meta(principal), timeout=10)  # type: ignore[operator]
        except grpc.RpcError as exc:
            return exc.code(), None

    def refused_or_served(
        self,
        code: grpc.StatusCode,
        allowed: bool,
        target: Target | None = None,
        legacy: bool = False,
    ) -> None:
        """`code` is what `allowed` calls for. An absent operation is
        NOT_FOUND to a caller who may see its project; by a legacy name
        (which names no project) it is PERMISSION_DENIED to every caller
        who cannot see every project, as a present one elsewhere is."""
        gone = target is not None and (not target.made or target.op_id in self.deleted)
        if not allowed or (gone and legacy):
            assert code == grpc.StatusCode.PERMISSION_DENIED, code
            return
        expected = grpc.StatusCode.NOT_FOUND if gone else grpc.StatusCode.OK
        assert code == expected, (code, expected)

    def visible(self, principal: str, op: operations_pb2.Operation) -> None:
        project = op.name.split("/")[1]
        assert role_of(principal, project) >= RANK[Role.VIEWER], (principal, op.name)

    @initialize(target=targets)
    def seed(self) -> Target:
        return Target("alpha", uuid.uuid4().hex, made=False)

    @rule(
        target=targets,
        principal=st.sampled_from(PRINCIPALS),
        project=st.sampled_from(PROJECTS),
    )
    def create(self, principal: str, project: str) -> Target:
        probe = uuid.uuid4().hex
        code, op = self.call(
            principal,
            self.jobs.CreateJob,
            jobs_pb2.CreateJobRequest(
                parent=f"projects/{project}", task="noop", labels={"probe": probe}
            ),
        )
        allowed = role_of(principal, project) >= RANK[Role.EDITOR]
        self.refused_or_served(code, allowed)
        if code == grpc.StatusCode.OK:
            assert isinstance(op, operations_pb2.Operation)
            assert op.name.startswith(f"projects/{project}/operations/")
            made = Target(project, op.name.rsplit("/", 1)[1], made=True)
            self.made_targets.append(made)
            return made
        listed = self.ops.ListOperations(
            operations_pb2.ListOperationsRequest(
                name=f"projects/{project}", filter=f'labels.probe = "{probe}"'
            ),
            metadata=self.meta("root"),
            timeout=10,
        )
        assert not listed.operations, "a refused create made an operation"
        return Target(project, uuid.uuid4().hex, made=False)

    @rule(
        principal=st.sampled_from(PRINCIPALS),
        op_target=targets,
        legacy=st.booleans(),
        wait=st.booleans(),
    )
    def read(self, principal: str, op_target: Target, legacy: bool, wait: bool) -> None:
        target = op_target
        name = target.name(legacy)
        if wait:
            request: object = operations_pb2.WaitOperationRequest(
                name=name, timeout=duration_pb2.Duration(nanos=1_000_000)
            )
            code, op = self.call(principal, self.ops.WaitOperation, request)
        else:
            code, op = self.call(
                principal, self.ops.GetOperation, operations_pb2.GetOperationRequest(name=name)
            )
        self.refused_or_served(code, role_of(principal, target.project) >= 1, target, legacy)
        if isinstance(op, operations_pb2.Operation):
            self.visible(principal, op)
            assert op.name == target.name(legacy=False)

    @rule(
        principal=st.sampled_from(PRINCIPALS),
        scope=st.sampled_from(("", "operations", *PROJECTS)),
        page_size=st.integers(1, 4),
        only_open=st.booleans(),
    )
    def list_all(self, principal: str, scope: str, page_size: int, only_open: bool) -> None:
        name = f"projects/{scope}" if scope in PROJECTS else scope
        request = operations_pb2.ListOperationsRequest(
            name=name, page_size=page_size, filter="done = false" if only_open else ""
        )
        allowed = scope not in PROJECTS or role_of(principal, scope) >= 1
        seen: list[operations_pb2.Operation] = []
        for _ in range(10_000):
            code, page = self.call(principal, self.ops.ListOperations, request)
            self.refused_or_served(code, allowed)
            if not isinstance(page, operations_pb2.ListOperationsResponse):
                return
            seen += page.operations
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
        for op in seen:
            self.visible(principal, op)
            if scope in PROJECTS:
                assert op.name.startswith(f"projects/{scope}/")
            if only_open:
                assert not op.done
        if not only_open:
            # Everything of a visible project made here and not deleted is listed.
            names = {op.name for op in seen}
            for target in self.made_targets:
                project_listed = scope in ("", "operations") or scope == target.project
                if (
                    project_listed
                    and role_of(principal, target.project) >= 1
                    and target.op_id not in self.deleted
                ):
                    assert target.name(legacy=False) in names, target

    @rule(principal=st.sampled_from(PRINCIPALS), op_target=targets, legacy=st.booleans())
    def cancel(self, principal: str, op_target: Target, legacy: bool) -> None:
        target = op_target
        before = self.root_get(target) if target.made else None
        code, _ = self.call(
            principal,
            self.ops.CancelOperation,
            operations_pb2.CancelOperationRequest(name=target.name(legacy)),
        )
        allowed = role_of(principal, target.project) >= RANK[Role.EDITOR]
        self.refused_or_served(code, allowed, target, legacy)
        after = self.root_get(target) if target.made else None
        if not allowed and before is not None:
            assert after is not None and after.done == before.done, "a refused cancel changed it"
        if allowed and after is not None:
            assert after.done

    @rule(principal=st.sampled_from(PRINCIPALS), op_target=consumes(targets), legacy=st.booleans())
    def delete(self, principal: str, op_target: Target, legacy: bool) -> None:
        target = op_target
        code, _ = self.call(
            principal,
            self.ops.DeleteOperation,
            operations_pb2.DeleteOperationRequest(name=target.name(legacy)),
        )
        allowed = role_of(principal, target.project) >= RANK[Role.EDITOR]
        self.refused_or_served(code, allowed, target, legacy)
        if target.made:
            exists = self.root_get(target) is not None
            if allowed:
                assert not exists
                self.deleted.add(target.op_id)
            else:
                assert exists == (target.op_id not in self.deleted), "a refused delete removed it"


def test_no_call_reaches_a_project_without_a_role(served: Served) -> None:
    with grpc.insecure_channel(served.target) as channel:
        AccessMachine.env, AccessMachine.channel = served, channel
        run_state_machine_as_test(
            AccessMachine,
            settings=settings(
                max_examples=30,
                stateful_step_count=25,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
