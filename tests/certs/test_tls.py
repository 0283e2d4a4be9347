"""TLS contexts over real loopback connections (asyncio server on port 0).

About TLS 1.1: OpenSSL 3 refuses TLS < 1.2 at security level >= 1 even on the client side, so
the "old client" below lowers its own level with `@SECLEVEL=0`. A control test shows that this
client does complete a TLS 1.1 handshake with a permissive server, so the refusal seen against
`server_ssl_context` comes from our server. asyncio's SSL transport drops the connection on a
failed handshake without flushing the TLS alert, so the client only sees a reset or an EOF;
the in-memory handshakes (ssl.MemoryBIO, no sockets) then show the exact server-side reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509

from certs.errors import CertificateFileError
from certs.tls import TLS12_CIPHERS, client_ssl_context, server_ssl_context
from certs.trust import verify_client_certificate
from tests.certs.conftest import EMAIL, NOW, Pki, PkiFiles

# Failures show up as a reset, an EOF, or a TLS error depending on timing and TLS version.
REFUSED = (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)


@dataclass
class Session:
    """What the server saw of one accepted connection."""

    version: str | None
    cipher: str
    peer_der: bytes | None
    peer_dict: dict[str, object] | None


@dataclass
class Server:
    port: int
    sessions: list[Session] = field(default_factory=list)


@contextlib.asynccontextmanager
async def serving(context: ssl.SSLContext) -> AsyncIterator[Server]:
    """A TLS echo-ish server on 127.0.0.1:0 that records each session and answers "ok"."""
    sessions: list[Session] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls: ssl.SSLObject = writer.get_extra_info("ssl_object")
        peer = tls.getpeercert()
        sessions.append(
            Session(
                version=tls.version(),
                cipher=(tls.cipher() or ("?",))[0],
                peer_der=tls.getpeercert(binary_form=True),
                peer_dict=dict(peer) if peer else None,
            )
        )
        writer.write(b"ok\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield Server(port=server.sockets[0].getsockname()[1], sessions=sessions)
    finally:
        server.close()
        await server.wait_closed()


async def exchange(port: int, context: ssl.SSLContext, hostname: str = "localhost") -> bytes:
    """Connect, read the server's line; raise if the handshake or the read fails."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=hostname
    )
    try:
        return await reader.readexactly(3)
    finally:
        writer.close()
        with contextlib.suppress(*REFUSED):
            await writer.wait_closed()


def tls11_client(ca_cert: Path) -> ssl.SSLContext:
    """A client that speaks TLS 1.0/1.1 only (see the module docstring for @SECLEVEL=0)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca_cert)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1 is deprecated
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


def tls12_client(ca_cert: Path, ciphers: str | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca_cert)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    if ciphers is not None:
        context.set_ciphers(ciphers)
    return context


def handshake_in_memory(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> tuple[ssl.SSLError | None, ssl.SSLError | None]:
    """Run a handshake through memory BIOs; return (server error, client error)."""
    to_server, from_server = ssl.MemoryBIO(), ssl.MemoryBIO()
    to_client, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_context.wrap_bio(to_server, from_server, server_side=True)
    client = client_context.wrap_bio(to_client, from_client, server_hostname="localhost")
    errors: dict[str, ssl.SSLError | None] = {"server": None, "client": None}
    done = {"server": False, "client": False}

    def step(name: str, side: ssl.SSLObject) -> None:
        if done[name] or errors[name] is not None:
            return
        try:
            side.do_handshake()
            done[name] = True
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            errors[name] = exc

    for _ in range(10):
        step("client", client)
        to_server.write(from_client.read())
        step("server", server)
        to_client.write(from_server.read())
    return errors["server"], errors["client"]


async def test_tls13_client_connects(pki_files: PkiFiles) -> None:
    context = server_ssl_context(pki_files.server_cert, pki_files.server_key)
    async with serving(context) as server:
        assert await exchange(server.port, client_ssl_context([pki_files.ca_cert])) == b"ok\n"
    assert server.sessions[0].version == "TLSv1.3"
    assert server.sessions[0].peer_der is None  # no client certificate was asked for


async def test_tls12_client_connects_with_ecdhe_aead(pki_files: PkiFiles) -> None:
    context = server_ssl_context(pki_files.server_cert, pki_files.server_key)
    async with serving(context) as server:
        assert await exchange(server.port, tls12_client(pki_files.ca_cert)) == b"ok\n"
    session = server.sessions[0]
    assert session.version == "TLSv1.2"
    assert session.cipher.startswith("ECDHE-ECDSA-")
    assert "GCM" in session.cipher or "CHACHA20" in session.cipher


async def test_tls11_client_is_refused(pki_files: PkiFiles) -> None:
    context = server_ssl_context(pki_files.server_cert, pki_files.server_key)
    async with serving(context) as server:
        with pytest.raises(REFUSED):
            await exchange(server.port, tls11_client(pki_files.ca_cert))
    assert server.sessions == []


async def test_control_tls11_client_works_with_a_permissive_server(pki_files: PkiFiles) -> None:
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.load_cert_chain(pki_files.server_cert, pki_files.server_key)
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        permissive.minimum_version = ssl.TLSVersion.TLSv1
    async with serving(permissive) as server:
        assert await exchange(server.port, tls11_client(pki_files.ca_cert)) == b"ok\n"
    assert server.sessions[0].version == "TLSv1.1"


def test_server_refuses_tls11_with_protocol_version_alert(pki_files: PkiFiles) -> None:
    context = server_ssl_context(pki_files.server_cert, pki_files.server_key)
    server_error, client_error = handshake_in_memory(context, tls11_client(pki_files.ca_cert))
    assert server_error is not None
    assert server_error.reason == "UNSUPPORTED_PROTOCOL"
    assert client_error is not None
    assert client_error.reason == "TLSV1_ALERT_PROTOCOL_VERSION"  # sent by the server


def test_server_refuses_tls12_without_ecdhe_aead(pki_files: PkiFiles) -> None:
    context = server_ssl_context(pki_files.server_cert, pki_files.server_key)
    cbc_only = tls12_client(pki_files.ca_cert, "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA")
    server_error, client_error = handshake_in_memory(context, cbc_only)
    assert server_error is not None
    assert server_error.reason == "NO_SHARED_CIPHER"
    assert client_error is not None
    assert client_error.reason == "SSLV3_ALERT_HANDSHAKE_FAILURE"


def test_server_context_policy(pki_files: PkiFiles) -> None:
    context = server_ssl_context(pki_files.server_cert, pki_files.server_key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE
    for flag in (ssl.OP_NO_COMPRESSION, ssl.OP_NO_RENEGOTIATION, ssl.OP_CIPHER_SERVER_PREFERENCE):
        assert context.options & flag
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    for cipher in tls12:
        assert cipher["kea"] == "kx-ecdhe"
        assert cipher["aead"]
    assert "ECDHE-RSA-AES256-GCM-SHA384" in {c["name"] for c in tls12}  # MSSanté's suite


async def test_client_certificate_is_seen_by_the_server(pki: Pki, pki_files: PkiFiles) -> None:
    context = server_ssl_context(
        pki_files.server_cert, pki_files.server_key, client_ca_paths=[pki_files.ca_cert]
    )
    assert context.verify_mode == ssl.CERT_OPTIONAL
    client = client_ssl_context(
        [pki_files.ca_cert], cert_path=pki_files.client_cert, key_path=pki_files.client_key
    )
    async with serving(context) as server:
        assert await exchange(server.port, client) == b"ok\n"
    session = server.sessions[0]
    assert session.peer_dict is not None
    assert session.peer_dict["subjectAltName"] == (("email", EMAIL),)
    assert session.peer_der is not None
    identity = verify_client_certificate(
        x509.load_der_x509_certificate(session.peer_der), [], [pki.ca.certificate], NOW
    )
    assert identity.email == EMAIL


async def test_client_certificate_is_optional(pki_files: PkiFiles, tmp_path: Path) -> None:
    # A trust-anchor directory works as well as a file.
    (tmp_path / "ca.pem").write_bytes(pki_files.ca_cert.read_bytes())
    context = server_ssl_context(
        pki_files.server_cert, pki_files.server_key, client_ca_paths=[tmp_path]
    )
    async with serving(context) as server:
        assert await exchange(server.port, client_ssl_context([pki_files.ca_cert])) == b"ok\n"
    assert server.sessions[0].peer_der is None


async def test_client_certificate_of_another_ca_is_refused(pki_files: PkiFiles) -> None:
    context = server_ssl_context(
        pki_files.server_cert, pki_files.server_key, client_ca_paths=[pki_files.ca_cert]
    )
    intruder = client_ssl_context(
        [pki_files.ca_cert],
        cert_path=pki_files.other_client_cert,
        key_path=pki_files.other_client_key,
    )
    async with serving(context) as server:
        with pytest.raises(REFUSED):
            await exchange(server.port, intruder)
    assert server.sessions == []


async def test_required_client_certificate_missing_is_refused(pki_files: PkiFiles) -> None:
    context = server_ssl_context(
        pki_files.server_cert,
        pki_files.server_key,
        client_ca_paths=[pki_files.ca_cert],
        require_client_cert=True,
    )
    assert context.verify_mode == ssl.CERT_REQUIRED
    async with serving(context) as server:
        with pytest.raises(REFUSED):
            await exchange(server.port, client_ssl_context([pki_files.ca_cert]))
    assert server.sessions == []


async def test_client_checks_the_server_host_name(pki_files: PkiFiles) -> None:
    context = server_ssl_context(pki_files.server_cert, pki_files.server_key)
    async with serving(context) as server:
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            await exchange(server.port, client_ssl_context([pki_files.ca_cert]), "other.example")
        # The SAN's loopback address is accepted as a host name too.
        assert await exchange(server.port, client_ssl_context([pki_files.ca_cert]), "127.0.0.1")


async def test_client_refuses_a_server_of_an_unknown_ca(pki: Pki, tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.pem"
    pki.other_ca.to_pem_files(other_ca, tmp_path / "other-ca.key")
    pki.server.to_pem_files(tmp_path / "s.pem", tmp_path / "s.key")
    context = server_ssl_context(tmp_path / "s.pem", tmp_path / "s.key")
    async with serving(context) as server:
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
            await exchange(server.port, client_ssl_context([other_ca]))


def test_client_context_policy(pki_files: PkiFiles) -> None:
    context = client_ssl_context([pki_files.ca_cert])
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert TLS12_CIPHERS.startswith("ECDHE+")


def test_bad_files_are_named(pki_files: PkiFiles, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(CertificateFileError, match=r"missing\.pem"):
        server_ssl_context(missing, pki_files.server_key)
    with pytest.raises(CertificateFileError, match=r"missing\.pem"):
        server_ssl_context(pki_files.server_cert, pki_files.server_key, client_ca_paths=[missing])
    with pytest.raises(CertificateFileError, match=r"missing\.pem"):
        client_ssl_context([pki_files.ca_cert], cert_path=missing, key_path=pki_files.client_key)
    with pytest.raises(ValueError, match="require_client_cert needs client_ca_paths"):
        server_ssl_context(pki_files.server_cert, pki_files.server_key, require_client_cert=True)
