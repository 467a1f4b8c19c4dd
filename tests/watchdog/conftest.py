"""Fixtures for the watchdog and escalation tests: real notification servers on loopback.

* ``webhooks`` -> Recorder: an HTTP server that records Slack incoming-webhook posts
  (``/services/<token>``) and PagerDuty Events API v2 calls (``/v2/enqueue``); paths in
  ``fail_paths`` are answered with the given error instead (e.g. a revoked token).
* ``mailbox`` -> list of received mails: an aiosmtpd SMTP server.
* ``notify_connections`` -> dict of Airflow connection ids pointing at both
  (``AIRFLOW_CONN_*`` env vars, as a deployment would define them).
* ``clock`` -> FakeClock (tests/watchdog/helpers.py): the escalation policy's injectable clock.
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler

import pytest

from tests.support import loopback_http
from tests.watchdog.helpers import FakeClock


@dataclass
class Recorder:
    url: str
    requests: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    fail_paths: dict[str, tuple[int, str]] = field(default_factory=dict)  # path -> (status, text) answered instead

    @property
    def slack(self) -> list[dict]:
        """Slack webhook bodies ({"text": ...})."""
        return [r["body"] for r in self.requests if r["path"].startswith("/services/")]

    @property
    def pagerduty(self) -> list[dict]:
        """PagerDuty Events v2 bodies ({"event_action", "routing_key", "dedup_key", "payload"})."""
        return [r["body"] for r in self.requests if r["path"] == "/v2/enqueue"]

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()


def _handler(recorder: Recorder):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {"raw": raw.decode(errors="replace")}
            with recorder.lock:
                recorder.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            if self.path in recorder.fail_paths:
                status, reply = recorder.fail_paths[self.path]
                ctype = "text/plain"
            elif self.path == "/v2/enqueue":
                reply, status, ctype = json.dumps({"status": "success", "message": "Event processed",
                                                   "dedup_key": body.get("dedup_key") or "generated"}), 202, "application/json"
            else:
                reply, status, ctype = "ok", 200, "text/plain"
            data = reply.encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # keep the test output quiet
            pass

    return Handler


@pytest.fixture
def webhooks():
    recorder = Recorder(url="")
    with loopback_http(_handler(recorder)) as recorder.url:
        yield recorder


@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    subject: str
    body: str


class Mailbox(list):
    port: int = 0


@pytest.fixture
def mailbox():
    from aiosmtpd.controller import Controller

    received = Mailbox()

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            msg = message_from_bytes(envelope.content)
            parts = [p.get_payload(decode=True).decode(errors="replace") for p in msg.walk() if not p.is_multipart()]
            received.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), msg["Subject"] or "", "\n".join(parts)))
            return "250 Message accepted for delivery"

    with socket.socket() as s:  # a free port (aiosmtpd needs one up front)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    received.port = port
    try:
        yield received
    finally:
        controller.stop()


@pytest.fixture
def notify_connections(webhooks, mailbox, monkeypatch) -> dict[str, str]:
    """Airflow connections for the three providers, pointing at the loopback servers."""
    conns = {
        "PGMAINT_SLACK": {"conn_type": "slackwebhook", "host": f"{webhooks.url}/services",
                          "password": "T000/B000/XXXXXXXX"},
        # The PagerDuty events hook reads the routing key from the password; a host overrides
        # https://events.pagerduty.com (include/pgmaint/airflow/notifiers.py: send_pagerduty).
        "PGMAINT_PAGERDUTY": {"conn_type": "pagerduty_events", "host": webhooks.url, "password": "test-routing-key"},
        "PGMAINT_SMTP": {"conn_type": "smtp", "host": "127.0.0.1", "port": mailbox.port,
                         "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "pgmaint@example.test",
                                   "retry_limit": 0, "timeout": 10}},
    }
    for name, conn in conns.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{name}", json.dumps(conn))
    return {"slack": "pgmaint_slack", "pagerduty": "pgmaint_pagerduty", "smtp": "pgmaint_smtp"}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(timezone.utc).replace(microsecond=0))
