"""TURN REST credentials: format, and proof against a real coturn."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import cast

import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint

from signaling.turn import (
    IceServer,
    RtcConfiguration,
    TurnSettings,
    rtc_configuration,
    turn_credentials,
    turn_password,
    turn_username,
)
from tests.signaling.coturn_server import CoturnServer, start_coturn, stop_coturn

SECRET = "s3cret-for-tests"

# --- Format ---------------------------------------------------------------------------------


def test_username_puts_expiry_first_then_consultation_and_participant() -> None:
    assert (
        turn_username("consult-1", "patient-7", 1_700_000_600) == "1700000600:consult-1:patient-7"
    )


def test_password_is_base64_hmac_sha1_of_username() -> None:
    # Reference value from `openssl dgst -sha1 -hmac s3cret-for-tests -binary | base64`.
    assert turn_password(SECRET, "1700000600:consult-1:patient-7") == "HI0cJORiYbDovuOwGRIuXdRutlo="


def test_credentials_expire_lifetime_seconds_after_now() -> None:
    server = turn_credentials(
        SECRET, "consult-1", "patient-7", 1_700_000_000.9, urls=("turn:t.example:3478",)
    )
    assert server.username == "1700000600:consult-1:patient-7"
    assert server.credential == "HI0cJORiYbDovuOwGRIuXdRutlo="
    assert server.urls == ("turn:t.example:3478",)
    short = turn_credentials(SECRET, "c", "p", 100.0, urls=("turn:x",), lifetime=5)
    assert short.username == "105:c:p"


@pytest.mark.parametrize("bad", ["a:b", "", "x" * 65, "é", "a b", "a.b"])
def test_ids_that_could_break_the_username_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="must match"):
        turn_username(bad, "p", 1)
    with pytest.raises(ValueError, match="must match"):
        turn_username("c", bad, 1)


def test_lifetime_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        turn_credentials(SECRET, "c", "p", 0.0, urls=("turn:x",), lifetime=0)
    with pytest.raises(ValueError, match="positive"):
        TurnSettings(secret=SECRET, turn_urls=(), lifetime=-1)


def test_settings_refuse_non_ice_urls_and_empty_secret() -> None:
    with pytest.raises(ValueError, match="STUN/TURN URL"):
        TurnSettings(secret=SECRET, turn_urls=("https://turn.example",))
    with pytest.raises(ValueError, match="empty"):
        TurnSettings(secret="", turn_urls=("turn:x:3478",))


def test_rtc_configuration_for_browsers() -> None:
    settings = TurnSettings(
        secret=SECRET,
        turn_urls=("turn:t.example:3478?transport=udp", "turns:t.example:5349"),
        stun_urls=("stun:t.example:3478",),
        lifetime=600,
    )
    rtc = rtc_configuration(settings, "consult-1", "patient-7", 1_700_000_000)
    assert rtc.as_dict() == {
        "iceServers": [
            {"urls": ["stun:t.example:3478"]},
            {
                "urls": ["turn:t.example:3478?transport=udp", "turns:t.example:5349"],
                "username": "1700000600:consult-1:patient-7",
                "credential": "HI0cJORiYbDovuOwGRIuXdRutlo=",
            },
        ]
    }


def test_rtc_configuration_without_turn_is_empty() -> None:
    assert rtc_configuration(None, "c", "p", 0) == RtcConfiguration(ice_servers=())
    assert RtcConfiguration(ice_servers=()).as_dict() == {"iceServers": []}
    assert IceServer(urls=("stun:x",)).as_dict() == {"urls": ["stun:x"]}


# --- Against a real coturn ------------------------------------------------------------------


@pytest.fixture(scope="session")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoturnServer]:
    server = start_coturn(tmp_path_factory.mktemp("coturn"), SECRET)
    yield server
    stop_coturn(server)


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait((data, addr))


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(b"echo:" + data, addr)


async def _allocate_and_relay(server: CoturnServer, ice: IceServer, transport: str) -> None:
    """Allocate with the issued credentials and bounce a datagram off a loopback peer through
    the relay: the allocation is real, not just accepted."""
    assert ice.username is not None and ice.credential is not None
    loop = asyncio.get_running_loop()
    echo_transport, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    turn, inbox = await create_turn_endpoint(
        _Inbox,
        server_addr=server.address,
        username=ice.username,
        password=ice.credential,
        transport=transport,
    )
    try:
        relayed = turn.get_extra_info("sockname")
        assert relayed[0] == "127.0.0.1" and relayed[1] > 0
        echo_addr = echo_transport.get_extra_info("sockname")
        turn.sendto(b"bonjour", echo_addr)
        data, sender = await asyncio.wait_for(inbox.received.get(), timeout=5)
        assert data == b"echo:bonjour"
        assert sender == echo_addr
    finally:
        turn.close()
        echo_transport.close()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_coturn_allocates_with_issued_credentials(
    coturn: CoturnServer, transport: str
) -> None:
    ice = turn_credentials(
        coturn.secret, "consult-1", "patient-7", time.time(), urls=coturn.turn_urls()
    )
    await _allocate_and_relay(coturn, ice, transport)


async def test_coturn_accepts_the_rtc_configuration_entry(coturn: CoturnServer) -> None:
    settings = TurnSettings(secret=coturn.secret, turn_urls=coturn.turn_urls())
    rtc = rtc_configuration(settings, "consult-2", "physician-1", time.time())
    (ice,) = rtc.ice_servers
    await _allocate_and_relay(coturn, ice, "udp")


async def _refused_code(server: CoturnServer, username: str, password: str) -> int:
    with pytest.raises(stun.TransactionFailed) as failure:
        turn, _ = await create_turn_endpoint(
            _Inbox, server_addr=server.address, username=username, password=password
        )
        turn.close()  # pragma: no cover - only reached if the allocation wrongly succeeds
    code: int = failure.value.response.attributes["ERROR-CODE"][0]
    return code


async def test_coturn_refuses_expired_credentials(coturn: CoturnServer) -> None:
    # Issued 11 minutes ago with a 10-minute lifetime: the expiry is a minute in the past.
    ice = turn_credentials(
        coturn.secret, "consult-1", "patient-7", time.time() - 660, urls=coturn.turn_urls()
    )
    assert ice.username is not None and ice.credential is not None
    assert await _refused_code(coturn, ice.username, ice.credential) == 401


async def test_coturn_refuses_another_secret(coturn: CoturnServer) -> None:
    ice = turn_credentials("not-the-secret", "consult-1", "p", time.time(), urls=("turn:x",))
    assert ice.username is not None and ice.credential is not None
    assert await _refused_code(coturn, ice.username, ice.credential) == 401


async def test_coturn_refuses_a_username_edited_to_another_participant(
    coturn: CoturnServer,
) -> None:
    ice = turn_credentials(coturn.secret, "consult-1", "patient-7", time.time(), urls=("turn:x",))
    assert ice.username is not None and ice.credential is not None
    forged = ice.username.replace("patient-7", "physician-1")
    assert await _refused_code(coturn, forged, ice.credential) == 401


def test_harness_runs_coturn_on_a_free_loopback_port_with_state_in_tmp(
    coturn: CoturnServer,
) -> None:
    assert coturn.process.poll() is None
    assert coturn.host == "127.0.0.1" and coturn.port != 3478
    workdir = coturn.log_path.parent
    assert (workdir / "turndb").exists()
    assert (workdir / "turnserver.pid").read_text().strip() == str(coturn.process.pid)
