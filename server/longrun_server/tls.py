"""TLS for the gRPC port and the HTTPS gateway, from certificate files that
can be replaced while the server runs, and the client certificate's SANs
(mutual TLS).

`CertificateFiles` holds the last good certificate, key and client CA read
from disk. Before each new handshake (gRPC's certificate fetcher, the HTTPS
context's SNI callback) it compares the files' stat signatures with the ones
it last tried; when they changed it reads them again. A pair that does not
load (half written, key not matching the certificate, unreadable) is logged
and the previous one stays in service; the next change is tried again.
Connections already open keep the certificate they were made with.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio

from longrun_core.settings import TlsSettings

log = logging.getLogger("longrun.tls")

#: The auth context property gRPC fills with a verified client
#: certificate's SANs (DNS, URI, email and IP entries, as bytes).
GRPC_SAN_PROPERTY = "x509_subject_alternative_name"
#: SAN kinds in ssl.SSLSocket.getpeercert() that name a peer.
_SAN_KINDS = frozenset({"DNS", "URI", "email", "IP Address"})

FileSignature = tuple[tuple[int, int, int, int], ...]


class CertificateError(Exception):
    """The certificate files cannot be served (at start: a StartupError line)."""


@dataclass(frozen=True)
class Material:
    """One consistent read of the files, already checked by OpenSSL."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None
    #: The HTTPS context serving exactly these bytes.
    context: ssl.SSLContext
    generation: int

    def grpc_configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.private_key, self.cert_chain)], root_certificates=self.client_ca
        )


def _no_password() -> bytes:
    raise CertificateError("the private key is encrypted; give an unencrypted key")


def _read(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read()


def load_material(settings: TlsSettings, generation: int = 0) -> Material:
    """Read and check the files. OpenSSL loads them from disk; they are read
    before and after, and a change in between (a write in progress) fails the
    attempt, so the bytes gRPC gets are the ones OpenSSL accepted."""
    paths = [settings.cert_file, settings.key_file]
    if settings.client_ca_file is not None:
        paths.append(settings.client_ca_file)
    try:
        before = [_read(p) for p in paths]
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(settings.cert_file, settings.key_file, password=_no_password)
        if settings.client_ca_file is not None:
            context.load_verify_locations(cadata=before[2].decode("ascii"))
            context.verify_mode = (
                ssl.CERT_REQUIRED if settings.client_auth == "require" else ssl.CERT_OPTIONAL
            )
        after = [_read(p) for p in paths]
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise CertificateError(f"{type(exc).__name__}: {exc}") from exc
    if before != after:
        raise CertificateError("the files changed while they were read")
    return Material(
        cert_chain=before[0],
        private_key=before[1],
        client_ca=before[2] if settings.client_ca_file is not None else None,
        context=context,
        generation=generation,
    )


class CertificateFiles:
    """The served certificate, reloaded when its files change. Thread-safe:
    gRPC calls `refresh` from its own threads, the gateway from the loop."""

    def __init__(self, settings: TlsSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._tried = self._signature()
        try:
            self.current = load_material(settings)
        except CertificateError as exc:
            raise CertificateError(
                f"cannot serve TLS with {settings.cert_file} and {settings.key_file}: {exc}"
            ) from exc
        #: Reload attempts that failed (the old certificate stayed in service).
        self.failed_reloads = 0

    @property
    def paths(self) -> list[Path]:
        found = [self.settings.cert_file, self.settings.key_file]
        if self.settings.client_ca_file is not None:
            found.append(self.settings.client_ca_file)
        return found

    def _signature(self) -> FileSignature | None:
        try:
            stats = [os.stat(p) for p in self.paths]
        except OSError:
            return None
        return tuple((s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns) for s in stats)

    def refresh(self) -> Material:
        """The material to serve now: read again first if the files changed
        since the last attempt."""
        with self._lock:
            signature = self._signature()
            if signature is None or signature == self._tried:
                return self.current
            self._tried = signature
            try:
                self.current = load_material(self.settings, self.current.generation + 1)
            except CertificateError as exc:
                self.failed_reloads += 1
                log.warning(
                    "certificate files changed but cannot be loaded (%s); still serving the "
                    "previous certificate",
                    exc,
                )
            else:
                log.info(
                    "loaded the replaced certificate files %s (generation %d)",
                    ", ".join(str(p) for p in self.paths),
                    self.current.generation,
                )
            return self.current


def grpc_server_credentials(files: CertificateFiles) -> grpc.ServerCredentials:
    """Credentials for `server.add_secure_port`: gRPC asks for a new
    configuration before each handshake and gets one when the files changed.
    Client certificates are required with `client_auth` "require"; grpcio
    offers no "ask but do not require", so otherwise none is asked for."""
    served = [files.current.generation]

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        material = files.refresh()
        if material.generation == served[0]:
            return None
        served[0] = material.generation
        return material.grpc_configuration()

    return grpc.dynamic_ssl_server_credentials(
        files.current.grpc_configuration(),
        fetch,
        require_client_authentication=files.settings.client_auth == "require",
    )


def https_context(files: CertificateFiles) -> ssl.SSLContext:
    """The context for the HTTPS gateway's listener. Its SNI callback (which
    OpenSSL calls for every handshake, with or without a server name) swaps
    in the context of the current files."""
    base = files.current.context

    def swap(
        ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        ssl_object.context = files.refresh().context

    base.sni_callback = swap
    return base


def peer_sans(context: grpc.aio.ServicerContext[object, object]) -> list[str]:
    """The SANs (DNS names, URIs, emails, IP addresses) of the client
    certificate gRPC verified for this call; [] without one (plaintext, TLS
    without client certificates)."""
    values = context.auth_context().get(GRPC_SAN_PROPERTY, [])
    return [v.decode("utf-8", "replace") for v in values]


def https_peer_sans(ssl_object: ssl.SSLObject | None) -> list[str]:
    """The SANs of the verified client certificate of an HTTPS connection
    (`transport.get_extra_info("ssl_object")`), in the form `peer_sans`
    gives them; [] without one."""
    if ssl_object is None:
        return []
    cert = ssl_object.getpeercert()  # {} unless a client certificate was verified
    if not cert:
        return []
    sans: list[str] = []
    for entry in cert.get("subjectAltName", ()):
        if not isinstance(entry, tuple) or len(entry) != 2 or entry[0] not in _SAN_KINDS:
            continue
        kind, value = str(entry[0]), str(entry[1])
        if kind == "IP Address":
            try:
                value = str(ipaddress.ip_address(value.strip()))
            except ValueError:
                continue
        sans.append(value)
    return sans
