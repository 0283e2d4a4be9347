"""The running relay forwards its audit events to a real rsyslog over TLS."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from certs.ca import create_ca
from certs.issue import issue_server_certificate
from tests.audit.rsyslog_collector import RSYSLOGD, start_rsyslog_collector
from tests.conftest import require_component
from tests.harness.redis_server import free_port
from tests.harness.relay_process import ADMIN_PASSWORD, RelayProcess, init_data_dir


def test_relay_forwards_audit_events_to_rsyslog(tmp_path: Path) -> None:
    require_component(RSYSLOGD, "rsyslog")
    now = datetime.now(UTC)
    ca = create_ca("CA du collecteur", now)
    ca.to_pem_files(tmp_path / "ca.pem", tmp_path / "ca.key")
    issue_server_certificate(ca, ["collector.localhost"], now).to_pem_files(
        tmp_path / "c.pem", tmp_path / "c.key"
    )
    (tmp_path / "rsyslog").mkdir()
    collector = start_rsyslog_collector(
        tmp_path / "rsyslog", tmp_path / "c.pem", tmp_path / "c.key", ca_path=tmp_path / "ca.pem"
    )
    data_dir = init_data_dir(tmp_path)
    relay = RelayProcess(
        data_dir,
        free_port(),
        {
            "RELAIS_AUDIT_SYSLOG_HOST": "localhost",
            "RELAIS_AUDIT_SYSLOG_PORT": str(collector.port),
            "RELAIS_AUDIT_SYSLOG_CA_FILE": str(tmp_path / "ca.pem"),
            "RELAIS_SERVER_NODE_NAME": "relais-test-node",
        },
    )
    relay.start()
    try:
        import json
        import ssl
        import urllib.request

        context = ssl.create_default_context(cafile=str(relay.ca_file))
        request = urllib.request.Request(  # noqa: S310
            f"{relay.url}/api/login",
            data=json.dumps(
                {"email": "admin@relais.localhost", "password": ADMIN_PASSWORD}
            ).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, context=context) as response:  # noqa: S310
            assert response.status == 200
        deadline = time.monotonic() + 20
        received = []
        while time.monotonic() < deadline:
            received = [m for m in collector.received() if m.hostname == "relais-test-node"]
            if any(b"110122" in m.msg for m in received):
                break
            time.sleep(0.2)
        assert any(b"110122" in m.msg for m in received), collector.log
        login = next(m for m in received if b"110122" in m.msg)
        assert login.msgid == "IHE+RFC-3881"
        assert login.app_name == "relais"
        assert b"<AuditMessage" in login.msg
        assert ADMIN_PASSWORD.encode() not in b"".join(m.raw for m in received)
        # The audit log's own start is forwarded before the login, in order.
        kinds = [b"110134" in m.msg for m in received]
        assert kinds and kinds[0]
    finally:
        relay.stop()
        collector.stop()
