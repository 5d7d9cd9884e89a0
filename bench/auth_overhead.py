"""11. What authentication costs per GetOperation: the same call on three
servers in this process sharing one store, one without authentication (no
interceptor), one taking an OIDC ID token (verified once, then found in the
verified-token cache by its sha256), one taking an API key (its record
cached for --api-key-cache-ttl, last use written at most once a minute).
Calls are sequential from one client; rounds alternate between the servers
and the median round counts.

Target: a cached token adds at most 50% to a GetOperation's p50.

    python -m bench.auth_overhead [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc

from bench.common import Figure, note, ratio, standalone, summary_ms
from longrun.v1 import jobs_pb2, jobs_pb2_grpc
from longrun_core.auth.api_keys import mint
from longrun_core.auth.roles import Role
from longrun_core.settings import AuthenticationSettings, ServerSettings
from longrun_core.sqlite.api_keys import SqliteKeyStore
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.queue import SqliteTaskQueue
from longrun_core.sqlite.store import SqliteOperationStore
from longrun_core.tasks import load_tasks
from longrun_server.app import create_server
from longrun_server.auth_setup import build_auth
from tests.support.oidc import AUDIENCE, KeyServer, id_token, make_key, serve_keys

NAME = "11 Authentication overhead"
MODES = ("none", "token", "api_key")
#: p50 a cached token may add to an unauthenticated GetOperation, as a fraction.
TARGET_RATIO = 1.5


def plan(quick: bool) -> tuple[int, int]:
    """(calls per mode per round, rounds)."""
    return (300, 3) if quick else (2000, 5)


async def _calls(
    stub: operations_pb2_grpc.OperationsStub,
    name: str,
    metadata: Sequence[tuple[str, str]],
    n: int,
) -> list[float]:
    request = operations_pb2.GetOperationRequest(name=name)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await stub.GetOperation(request, metadata=metadata)
        out.append(time.perf_counter() - t0)
    return out


async def measure(n: int, rounds: int) -> dict[str, dict[str, Any]]:
    signing = make_key("bench")
    with tempfile.TemporaryDirectory() as tmp:
        async for keyserver in serve_keys(KeyServer(certs={"bench": signing.cert_pem})):
            backend = SqliteBackend(Path(tmp) / "bench.db")
            store, queue = SqliteOperationStore(backend), SqliteTaskQueue(backend)
            await store.start()
            await queue.start()
            keys = SqliteKeyStore(backend.db)
            registry = load_tasks(["longrun_worker.builtin_tasks"])
            # The token's caller reads the project through the policy file,
            # the key through its own binding: each call is authorized too.
            policy = Path(tmp) / "policy.toml"
            policy.write_text(
                '[[bindings]]\nproject = "bench"\nrole = "viewer"\n'
                'members = ["user:alice@example.com"]\n'
            )
            auth_settings = AuthenticationSettings(
                oidc_audience=AUDIENCE,
                oidc_certs_url=keyserver.certs_url,
                api_keys=True,
                policy_file=policy,
                quota_requests_per_second=0,
            )
            auth = build_auth(auth_settings, key_store=keys)
            await auth.start()
            minted = mint("bench", Role.VIEWER, datetime.now(UTC))
            await keys.add(minted.key)
            servers, channels, stubs = [], [], {}
            for mode in MODES:
                settings = ServerSettings(
                    address="127.0.0.1:0",
                    auth=auth_settings if mode != "none" else AuthenticationSettings(),
                )
                server, port, _ = await create_server(
                    store=store,
                    queue=queue,
                    registry=registry,
                    settings=settings,
                    auth=auth if mode != "none" else None,
                )
                await server.start()
                servers.append(server)
                channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
                channels.append(channel)
                stubs[mode] = operations_pb2_grpc.OperationsStub(channel)
            metadata = {
                "none": (),
                "token": (("authorization", f"Bearer {id_token(signing)}"),),
                "api_key": (("x-goog-api-key", minted.secret),),
            }
            try:
                jobs = jobs_pb2_grpc.JobsStub(channels[0])
                op = await jobs.CreateJob(
                    jobs_pb2.CreateJobRequest(parent="projects/bench", task="noop")
                )
                for mode in MODES:  # warm up (the token's first verification, the key read)
                    await _calls(stubs[mode], op.name, metadata[mode], 50)
                per_round: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
                for _ in range(rounds):
                    for mode in MODES:
                        per_round[mode].append(
                            summary_ms(await _calls(stubs[mode], op.name, metadata[mode], n))
                        )
            finally:
                for channel in channels:
                    await channel.close()
                for server in servers:
                    await server.stop(0)
                await auth.close()
                await queue.close()
                await store.close()
            cache = (
                auth.authenticator.oidc.cache
                if auth.authenticator and auth.authenticator.oidc
                else None
            )
            return {
                mode: {
                    "p50_ms": statistics.median(r["p50"] for r in per_round[mode]),
                    "p99_ms": statistics.median(r["p99"] for r in per_round[mode]),
                    "token_cache_hits": cache.hits if cache else 0,
                }
                for mode in MODES
            }
    raise AssertionError("unreachable")


def run(quick: bool = False, profile: bool = False) -> list[Figure]:
    n, rounds = plan(quick)
    note(f"{NAME}: {n} GetOperation calls per mode per round, {rounds} rounds")
    got = asyncio.run(measure(n, rounds))
    none, token, key = got["none"], got["token"], got["api_key"]
    details = {"calls_per_round": n, "rounds": rounds, "modes": got}
    return [
        Figure(
            NAME,
            "GetOperation p50, cached ID token",
            token["p50_ms"],
            "ms",
            "no authentication",
            none["p50_ms"],
            ratio(none["p50_ms"], token["p50_ms"]),
            "none/token",
            f"token/none <= {TARGET_RATIO:g}",
            token["p50_ms"] <= TARGET_RATIO * none["p50_ms"],
            details,
        ),
        Figure(
            NAME,
            "GetOperation p50, API key",
            key["p50_ms"],
            "ms",
            "no authentication",
            none["p50_ms"],
            ratio(none["p50_ms"], key["p50_ms"]),
            "none/key",
            "reported",
            None,
            {},
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    standalone(run(quick=args.quick), "auth_overhead")


if __name__ == "__main__":
    main()
