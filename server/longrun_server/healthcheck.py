"""`python -m longrun_server.healthcheck`: the container image's HEALTHCHECK.
Asks the server's grpc.health.v1 service on LONGRUN_ADDRESS (a wildcard
host means this host) and exits 0 when it is SERVING.

With TLS (LONGRUN_TLS_CERT set) it connects with TLS, trusting
LONGRUN_CA_FILE (default: the certificate the server serves, trusted as
it is), checking the name LONGRUN_TLS_SERVER_NAME (default
localhost), and presenting LONGRUN_CLIENT_CERT / LONGRUN_CLIENT_KEY when the
server requires client certificates."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from longrun_client.credentials import ChannelSecurity


def local_target(address: str) -> str:
    host, _, port = address.rpartition(":")
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    return f"{host}:{port}"


def channel(env: Mapping[str, str]) -> grpc.Channel:
    target = local_target(env.get("LONGRUN_ADDRESS", "localhost:50051"))
    cert = env.get("LONGRUN_TLS_CERT")
    if not cert:
        return grpc.insecure_channel(target)
    client_cert, client_key = env.get("LONGRUN_CLIENT_CERT"), env.get("LONGRUN_CLIENT_KEY")
    security = ChannelSecurity(
        tls=True,
        ca_file=Path(env.get("LONGRUN_CA_FILE") or cert),
        client_cert=Path(client_cert) if client_cert else None,
        client_key=Path(client_key) if client_key else None,
    )
    name = env.get("LONGRUN_TLS_SERVER_NAME", "localhost")
    return security.channel(target, [("grpc.ssl_target_name_override", name)])


def main(env: Mapping[str, str] | None = None) -> int | str:
    with channel(os.environ if env is None else env) as ch:
        try:
            status = (
                health_pb2_grpc.HealthStub(ch)
                .Check(health_pb2.HealthCheckRequest(), timeout=3)
                .status
            )
        except grpc.RpcError as exc:
            return f"health: {exc.code().name}: {exc.details()}"
    if status == health_pb2.HealthCheckResponse.SERVING:
        return 0
    return f"health: {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}"


if __name__ == "__main__":
    sys.exit(main())
