"""`longrun-server keys create|list|revoke`: API keys written straight to
the configured store (the backend flags of `longrun-server` pick it), for
the first admin key of a deployment, before anyone can call ApiKeys.

    longrun-server --sqlite-path /data/longrun.db keys create --project billing --role admin

prints the key (`lrk_<id>.<secret>`) once, on stdout; it is never shown again.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import click

from longrun_client.durations import parse_duration
from longrun_core.auth.api_keys import ApiKey, KeyStore, mint, parse_key_name
from longrun_core.auth.key_stores import build_key_store
from longrun_core.auth.roles import Role
from longrun_core.cli_options import run_main
from longrun_core.clock import SystemClock
from longrun_core.errors import InvalidArgument
from longrun_core.settings import BackendSettings

T = TypeVar("T")
ROLES = [r.value for r in Role]


def _run(backends: BackendSettings, fn: Callable[[KeyStore], Awaitable[T]]) -> T:
    box: list[T] = []

    async def main() -> None:
        store = build_key_store(backends)
        await store.start()
        try:
            box.append(await fn(store))
        finally:
            await store.close()

    run_main(main())
    return box[0]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def key_json(key: ApiKey) -> dict[str, str | None]:
    return {
        "name": key.name,
        "role": key.role.value,
        "createTime": _iso(key.create_time),
        "expireTime": _iso(key.expire_time),
        "lastUseTime": _iso(key.last_use_time),
        "revokeTime": _iso(key.revoke_time),
    }


@click.group()
def keys() -> None:
    """API keys in the configured store (no server needed)."""


@keys.command("create")
@click.option("--project", "key_project", required=True, help="Project the key is bound to.")
@click.option("--role", type=click.Choice(ROLES), required=True, help="Role on that project.")
@click.option(
    "--expires-in", default=None, metavar="DURATION", help="e.g. 30d, 12h; default never."
)
@click.pass_obj
def create(backends: BackendSettings, key_project: str, role: str, expires_in: str | None) -> None:
    """Mint a key; prints it once on stdout (its name goes to stderr)."""
    now = SystemClock().now()
    try:
        expire = now + parse_duration(expires_in) if expires_in else None
        minted = mint(key_project, Role(role), now, expire_time=expire)
    except (ValueError, InvalidArgument) as exc:
        raise click.UsageError(str(exc)) from exc

    async def add(store: KeyStore) -> None:
        await store.add(minted.key)

    _run(backends, add)
    click.echo(f"created {minted.key.name} ({role}); the key is shown only now:", err=True)
    click.echo(minted.secret)


@keys.command("list")
@click.option("--project", "key_project", required=True)
@click.pass_obj
def list_(backends: BackendSettings, key_project: str) -> None:
    """The project's keys as JSON (never their secrets)."""

    async def everything(store: KeyStore) -> list[ApiKey]:
        found: list[ApiKey] = []
        after = ""
        while page := await store.list(key_project, after=after, limit=500):
            found.extend(page)
            after = page[-1].key_id
        return found

    click.echo(json.dumps([key_json(k) for k in _run(backends, everything)], indent=2))


@keys.command("revoke")
@click.argument("name")
@click.pass_obj
def revoke(backends: BackendSettings, name: str) -> None:
    """Revoke key NAME (projects/P/apiKeys/ID)."""
    try:
        project, key_id = parse_key_name(name)
    except InvalidArgument as exc:
        raise click.UsageError(str(exc)) from exc

    async def do(store: KeyStore) -> ApiKey | None:
        key = await store.get(key_id)
        if key is None or key.project != project:
            return None
        return await store.revoke(key_id, SystemClock().now())

    if _run(backends, do) is None:
        raise click.ClickException(f"no API key {name}")
    click.echo(f"revoked {name}")
