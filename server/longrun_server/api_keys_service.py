"""longrun.v1.ApiKeys: mint, list and revoke a project's API keys (admin
role on the project). The permission is checked before anything is read,
so a denial says the same whether or not the key exists (AIP-211)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import grpc
from google.protobuf import timestamp_pb2

from longrun.v1 import api_keys_pb2, api_keys_pb2_grpc
from longrun_core.access import Access, Permission
from longrun_core.auth.api_keys import (
    ApiKey,
    ApiKeyVerifier,
    KeyStore,
    check_project,
    mint,
    parse_key_name,
)
from longrun_core.auth.roles import Role
from longrun_core.clock import Clock
from longrun_core.errors import InvalidArgument, NotFound
from longrun_server.status import rpc_errors

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_PARENT = re.compile(r"^projects/([^/]+)$")
_PAGE_TOKEN = re.compile(r"^[0-9a-f]{16}$")

_ROLES = {
    api_keys_pb2.ApiKey.VIEWER: Role.VIEWER,
    api_keys_pb2.ApiKey.EDITOR: Role.EDITOR,
    api_keys_pb2.ApiKey.ADMIN: Role.ADMIN,
}
_ROLE_VALUES = {role: value for value, role in _ROLES.items()}


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def key_message(key: ApiKey, secret: str = "") -> api_keys_pb2.ApiKey:
    message = api_keys_pb2.ApiKey(
        name=key.name,
        role=_ROLE_VALUES[key.role],
        create_time=_timestamp(key.create_time),
        key_string=secret,
    )
    if key.expire_time is not None:
        message.expire_time.CopyFrom(_timestamp(key.expire_time))
    if key.last_use_time is not None:
        message.last_use_time.CopyFrom(_timestamp(key.last_use_time))
    if key.revoke_time is not None:
        message.revoke_time.CopyFrom(_timestamp(key.revoke_time))
    return message


def parse_parent(parent: str) -> str:
    match = _PARENT.match(parent)
    if match is None:
        raise InvalidArgument(
            f"parent {parent[:200]!r} is not projects/PROJECT", reason="PARENT_INVALID"
        )
    return check_project(match.group(1))


class ApiKeysService(api_keys_pb2_grpc.ApiKeysServicer):
    def __init__(
        self,
        store: KeyStore,
        access: Access,
        *,
        clock: Clock,
        verifier: ApiKeyVerifier | None = None,
    ) -> None:
        self.store = store
        self.access = access
        self.clock = clock
        self.verifier = verifier

    @rpc_errors
    async def CreateApiKey(
        self, request: api_keys_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> api_keys_pb2.ApiKey:
        project = parse_parent(request.parent)
        self.access.require(Permission.KEYS_CREATE, project)
        role = _ROLES.get(request.role)
        if role is None:
            raise InvalidArgument("role must be VIEWER, EDITOR or ADMIN", reason="ROLE_INVALID")
        now = self.clock.now()
        expire: datetime | None = None
        which = request.WhichOneof("expiration")
        if which == "ttl":
            ttl = request.ttl.ToTimedelta()
            if ttl <= timedelta(0):
                raise InvalidArgument("ttl must be positive", reason="TTL_INVALID")
            expire = now + ttl
        elif which == "expire_time":
            expire = request.expire_time.ToDatetime(tzinfo=now.tzinfo)
        minted = mint(project, role, now, expire_time=expire)
        await self.store.add(minted.key)
        return key_message(minted.key, minted.secret)

    @rpc_errors
    async def ListApiKeys(
        self, request: api_keys_pb2.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> api_keys_pb2.ListApiKeysResponse:
        project = parse_parent(request.parent)
        self.access.require(Permission.KEYS_LIST, project)
        if request.page_size < 0:
            raise InvalidArgument("page_size must not be negative", reason="PAGE_SIZE_INVALID")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = request.page_token
        if after and not _PAGE_TOKEN.match(after):
            raise InvalidArgument(
                "page_token is not one this method gave", reason="PAGE_TOKEN_INVALID"
            )
        keys = await self.store.list(project, after=after, limit=size + 1)
        response = api_keys_pb2.ListApiKeysResponse(api_keys=[key_message(k) for k in keys[:size]])
        if len(keys) > size:
            response.next_page_token = keys[size - 1].key_id
        return response

    @rpc_errors
    async def DeleteApiKey(
        self, request: api_keys_pb2.DeleteApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> api_keys_pb2.ApiKey:
        project, key_id = parse_key_name(request.name)
        self.access.require(Permission.KEYS_DELETE, project)
        key = await self.store.get(key_id)
        if key is None or key.project != project:
            raise NotFound(f"API key {request.name} does not exist", reason="API_KEY_NOT_FOUND")
        revoked = await self.store.revoke(key_id, self.clock.now())
        if revoked is None:  # pragma: no cover - keys are never deleted
            raise NotFound(f"API key {request.name} does not exist", reason="API_KEY_NOT_FOUND")
        if self.verifier is not None:
            self.verifier.forget(key_id)
        return key_message(revoked)
