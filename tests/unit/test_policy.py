"""The TOML policy: groups, bindings, wildcard project, roles, reload on SIGHUP."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from google.rpc import error_details_pb2

from longrun_core.access import Permission, Principal, acting_as
from longrun_core.auth.policy import Policy, PolicyAccess, PolicyError, PolicyFile
from longrun_core.errors import PermissionDenied
from longrun_server.status import to_status
from tests.support.waiting import wait_until

POLICY = """
[groups]
ops = ["user:alice@example.com", "key:0123456789abcdef"]

[[bindings]]
project = "billing"
role = "editor"
members = ["group:ops", "serviceAccount:Robot@proj.iam.gserviceaccount.com"]

[[bindings]]
project = "*"
role = "viewer"
members = ["user:auditor@example.com"]

[[bindings]]
project = "payroll"
role = "admin"
members = ["san:spiffe://example.test/admin"]
"""


def access_for(text: str) -> PolicyAccess:
    policy = Policy.parse(text)
    return PolicyAccess(lambda: policy)


def allowed(access: PolicyAccess, who: str, permission: Permission, project: str) -> bool:
    with acting_as(Principal(who)):
        try:
            access.require(permission, project)
        except PermissionDenied:
            return False
        return True


@pytest.mark.parametrize(
    ("who", "permission", "project", "expected"),
    [
        ("user:alice@example.com", Permission.CREATE, "billing", True),
        ("user:alice@example.com", Permission.CANCEL, "billing", True),
        ("user:alice@example.com", Permission.KEYS_CREATE, "billing", False),
        ("user:alice@example.com", Permission.GET, "payroll", False),
        ("key:0123456789abcdef", Permission.DELETE, "billing", True),
        ("user:robot@proj.iam.gserviceaccount.com", Permission.CREATE, "billing", True),
        ("user:auditor@example.com", Permission.GET, "anything", True),
        ("user:auditor@example.com", Permission.WAIT, "billing", True),
        ("user:auditor@example.com", Permission.CANCEL, "billing", False),
        ("san:spiffe://example.test/admin", Permission.KEYS_DELETE, "payroll", True),
        ("san:spiffe://example.test/admin", Permission.GET, "billing", False),
        ("user:mallory@example.com", Permission.GET, "billing", False),
        ("anonymous", Permission.GET, "billing", False),
    ],
)
def test_roles_come_from_bindings_and_groups(
    who: str, permission: Permission, project: str, expected: bool
) -> None:
    assert allowed(access_for(POLICY), who, permission, project) is expected


def test_visible_projects() -> None:
    access = access_for(POLICY)
    with acting_as(Principal("user:alice@example.com")):
        assert access.visible_projects(Permission.LIST) == frozenset({"billing"})
    with acting_as(Principal("user:auditor@example.com")):
        assert access.visible_projects(Permission.LIST) is None  # every project
        assert access.visible_projects(Permission.CANCEL) == frozenset()
    with acting_as(Principal("user:nobody@example.com")):
        assert access.visible_projects(Permission.GET) == frozenset()


def test_a_denial_names_the_permission_and_resource() -> None:
    access = access_for(POLICY)
    with acting_as(Principal("user:alice@example.com")), pytest.raises(PermissionDenied) as info:
        access.require(Permission.GET, "payroll")
    status = to_status(info.value)
    assert status.code == 7  # PERMISSION_DENIED
    detail = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(detail)
    assert (detail.reason, detail.domain) == ("IAM_PERMISSION_DENIED", "longrun.dev")
    assert dict(detail.metadata) == {
        "permission": "longrun.operations.get",
        "resource": "projects/payroll",
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[[bindings]]\nproject='p'\nrole='owner'\nmembers=['user:a@b.c']", "unknown role"),
        ("[[bindings]]\nproject='p'\nrole='viewer'\nmembers=['alice']", "must start with"),
        ("[[bindings]]\nproject='p'\nrole='viewer'\nmembers=['group:x']", "not defined"),
        ("[[bindings]]\nproject='p'\nrole='viewer'\nmembers=[]", "non-empty"),
        ("[[bindings]]\nrole='viewer'\nmembers=['user:a@b.c']", "project"),
        ("[[bindings]]\nproject='p'\nrole='viewer'\nmembers=['user:a@b.c']\nextra=1", "unknown"),
        ("[groups]\nx=['group:y']", "must start with"),
        ("[policy]\n", "unknown top-level"),
        ("bindings = [", "not valid TOML"),
    ],
)
def test_an_invalid_policy_says_why(text: str, problem: str) -> None:
    with pytest.raises(PolicyError, match=problem):
        Policy.parse(text)


def test_a_bad_reload_keeps_the_old_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    file = PolicyFile(path)
    access = PolicyAccess(lambda: file.policy)
    assert allowed(access, "user:alice@example.com", Permission.CREATE, "billing")
    path.write_text("this is [not toml")
    assert file.reload() is False
    assert file.failed_reloads == 1
    assert allowed(access, "user:alice@example.com", Permission.CREATE, "billing")
    path.unlink()
    assert file.reload() is False
    assert allowed(access, "user:alice@example.com", Permission.CREATE, "billing")


async def test_sighup_reloads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    file = PolicyFile(path)
    access = PolicyAccess(lambda: file.policy)
    loop = asyncio.get_running_loop()
    file.reload_on_sighup(loop)
    try:
        assert not allowed(access, "user:bob@example.com", Permission.GET, "billing")
        path.write_text(
            POLICY + '\n[[bindings]]\nproject = "billing"\nrole = "viewer"\n'
            'members = ["user:bob@example.com"]\n'
        )
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_until(lambda: file.reloads == 1)
        assert allowed(access, "user:bob@example.com", Permission.GET, "billing")
        path.write_text("[[bindings]]\nproject = 'billing'\nrole = 'boss'\nmembers = []\n")
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_until(lambda: file.failed_reloads == 1)
        assert allowed(access, "user:bob@example.com", Permission.GET, "billing")
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
