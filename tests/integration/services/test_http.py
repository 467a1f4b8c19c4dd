"""The `http` adapter against a real HTTP server on loopback: calls, headers, retries, timeouts."""

from __future__ import annotations

import time

import pytest

from include.pgmaint.services import ServiceError, pause_services, resume_services
from include.pgmaint.services.base import Actor
from include.pgmaint.services.http import HttpAdapter
from tests.fixtures.services import build_config

RUN = {"dag_id": "default_partition_migration", "run_id": "manual__1"}
ACTOR = Actor("test")


def http_config(base_url: str, **fields):
    service = {
        "name": "fn",
        "kind": "http",
        "pause_url": f"{base_url}/admin/pause",
        "resume_url": f"{base_url}/admin/resume",
        **fields,
    }
    return build_config("pgmaint", [service])


def adapter(base_url: str, **fields) -> HttpAdapter:
    return HttpAdapter(http_config(base_url, **fields).services[0], backoff=0.05)


def test_pause_and_resume_call_the_urls_with_method_headers_and_body(http_service, monkeypatch):
    monkeypatch.setenv("FN_ADMIN_TOKEN", "s3cret-token")
    a = adapter(
        http_service.base_url,
        method="PUT",
        headers={"Authorization": "Bearer ${FN_ADMIN_TOKEN}"},
        body={"reason": "partition migration"},
    )
    before = a.status()
    assert before.paused is None  # no status_url: pgmaint cannot tell
    a.pause(before, ACTOR)
    a.resume(before.state, ACTOR)
    assert http_service.paths() == ["PUT /admin/pause", "PUT /admin/resume"]
    assert http_service.calls[0]["headers"]["Authorization"] == "Bearer s3cret-token"
    assert http_service.calls[0]["body"] == {"reason": "partition migration"}


def test_missing_header_variable_is_a_clear_error(http_service, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    a = adapter(http_service.base_url, headers={"X-Token": "${NOT_SET_ANYWHERE}"})
    with pytest.raises(ServiceError, match="environment variable NOT_SET_ANYWHERE is not set"):
        a.pause(a.status(), ACTOR)
    assert http_service.calls == []


def test_retries_a_server_that_fails_twice_then_succeeds(http_service):
    http_service.plan["/admin/pause"] = [503, 500, 200]
    a = adapter(http_service.base_url, retries=3)
    a.pause(a.status(), ACTOR)
    assert http_service.paths() == ["POST /admin/pause"] * 3


def test_gives_up_after_the_retries_naming_the_url(http_service):
    http_service.plan["/admin/pause"] = [503]
    a = adapter(http_service.base_url, retries=2)
    with pytest.raises(ServiceError) as info:
        a.pause(a.status(), ACTOR)
    assert f"POST {http_service.base_url}/admin/pause failed after 3 attempt(s): HTTP 503" in str(info.value)
    assert len(http_service.calls) == 3


def test_client_error_is_not_retried(http_service):
    http_service.plan["/admin/pause"] = [403]
    a = adapter(http_service.base_url, retries=3)
    with pytest.raises(ServiceError, match=r"/admin/pause failed: HTTP 403.*\(not retried\)"):
        a.pause(a.status(), ACTOR)
    assert len(http_service.calls) == 1


def test_hanging_server_times_out_naming_the_url(http_service):
    http_service.plan["/admin/pause"] = ["hang"]
    http_service.hang_seconds = 3
    a = adapter(http_service.base_url, timeout_seconds=0.3, retries=1)
    started = time.monotonic()
    with pytest.raises(ServiceError) as info:
        a.pause(a.status(), ACTOR)
    elapsed = time.monotonic() - started
    assert f"POST {http_service.base_url}/admin/pause failed after 2 attempt(s): timed out after 0.3s" in str(
        info.value
    )
    assert elapsed < 2.0  # 2 x 0.3 s + backoff, not the server's 3 s
    assert len(http_service.calls) == 2


def test_unreachable_server_names_the_url():
    a = adapter("http://127.0.0.1:9", retries=1)  # discard port: nothing listens
    with pytest.raises(
        ServiceError, match=r"POST http://127.0.0.1:9/admin/pause failed after 2 attempt\(s\): ConnectError"
    ):
        a.pause(a.status(), ACTOR)


def test_status_url_tells_a_service_paused_by_hand(http_service, target, scratch_schema, make_config):
    http_service.plan["/admin/status"] = [(200, {"paused": True})]
    cfg = make_config(
        scratch_schema,
        [
            {
                "name": "fn",
                "kind": "http",
                "pause_url": f"{http_service.base_url}/admin/pause",
                "resume_url": f"{http_service.base_url}/admin/resume",
                "status_url": f"{http_service.base_url}/admin/status",
            }
        ],
    )
    report = pause_services(target, cfg, ["fn"], **RUN)
    assert report.held == [] and "paused=True" in report.left_alone[0].detail
    resume_services(target, cfg, **RUN)
    assert http_service.paths() == ["GET /admin/status"]  # neither paused nor resumed by us


def test_status_url_with_a_bad_answer_is_a_clear_error(http_service):
    http_service.plan["/admin/status"] = [(200, {"state": "on"})]
    a = adapter(http_service.base_url, status_url=f"{http_service.base_url}/admin/status")
    with pytest.raises(ServiceError, match="did not answer JSON with a boolean 'paused'"):
        a.status()


def test_leased_pause_and_resume(http_service, target, scratch_schema, make_config):
    http_service.plan["/admin/status"] = [(200, {"paused": False})]
    cfg = make_config(
        scratch_schema,
        [
            {
                "name": "fn",
                "kind": "http",
                "pause_url": f"{http_service.base_url}/admin/pause",
                "resume_url": f"{http_service.base_url}/admin/resume",
                "status_url": f"{http_service.base_url}/admin/status",
            }
        ],
    )
    assert pause_services(target, cfg, ["fn"], **RUN).held == ["fn"]
    assert [o.action for o in resume_services(target, cfg, **RUN)] == ["resumed"]
    assert http_service.paths() == ["GET /admin/status", "POST /admin/pause", "POST /admin/resume"]
