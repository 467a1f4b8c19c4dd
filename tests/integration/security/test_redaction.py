"""The redaction helpers behind test_secrets.py, on a real loopback HTTP server (no database)."""

from __future__ import annotations

import pytest

from include.pgmaint.config import ServiceConfig, parse_config
from include.pgmaint.services.base import ServiceError
from include.pgmaint.services.http import redact_url, request, scrub, secret_values
from include.pgmaint.services.leases import _service_for_lease, _stored_config


def test_a_url_password_is_shown_as_stars_and_everything_else_is_kept():
    assert redact_url("https://ops:pa:ss@svc.example:8443/p?q=1") == "https://ops:***@svc.example:8443/p?q=1"
    assert redact_url("https://svc.example/p") == "https://svc.example/p"
    assert redact_url("https://ops@svc.example/p") == "https://ops@svc.example/p"  # no password, nothing to hide


def test_secret_values_include_the_token_after_the_scheme_and_scrub_replaces_longest_first():
    values = secret_values({"Authorization": "Bearer tok-123456789", "X-Key": "k-abcdefgh"}, "http://u:pw-xyz@h/")
    assert set(values) == {"Bearer tok-123456789", "tok-123456789", "k-abcdefgh", "pw-xyz"}
    assert scrub("got Bearer tok-123456789 and tok-123456789, k-abcdefgh", values) == "got *** and ***, ***"
    assert scrub("nothing", ["", "x" * 0]) == "nothing"


def test_an_echoed_secret_is_scrubbed_before_the_answer_is_cut_to_length(http_service):
    token = "S3cr3t-" + "z" * 40
    http_service.plan["/p"] = [(401, {"pad": "p" * 170, "echo": token})]  # the token straddles character 200
    with pytest.raises(ServiceError) as raised:
        request("POST", f"{http_service.base_url}/p", what="svc", timeout=5, retries=0, headers={"X-Key": token})
    message = str(raised.value)
    assert "HTTP 401" in message and "S3cr3t" not in message and token[:20] not in message


def test_credentials_in_a_url_are_sent_as_basic_auth_and_never_named(http_service):
    url = http_service.base_url.replace("//", "//ops:S3cr3t-pw@") + "/p"
    request("POST", url, what="svc", timeout=5, retries=0)
    assert http_service.calls[-1]["headers"]["Authorization"] == "Basic b3BzOlMzY3IzdC1wdw=="
    http_service.plan["/p"] = [500]
    with pytest.raises(ServiceError) as raised:
        request("POST", url, what="svc", timeout=5, retries=0)
    assert "ops:***@127.0.0.1" in str(raised.value) and "S3cr3t-pw" not in str(raised.value)


TABLES = [{"name": "public.t", "partition_key": "ts", "interval": "1 day", "premake": 2}]


def test_a_lease_stores_no_secret_and_resume_takes_them_from_the_config():
    config = parse_config(
        {
            "state_schema": "pgmaint",
            "tables": TABLES,
            "services": [
                {
                    "name": "arch",
                    "kind": "http",
                    "pause_url": "https://ops:S3cr3t-pw@h/pause",
                    "resume_url": "https://ops:S3cr3t-pw@h/resume",
                    "headers": {"Authorization": "Bearer S3cr3t-tok"},
                }
            ],
        }
    )
    stored = _stored_config(config.services[0])
    assert "S3cr3t" not in repr(stored) and stored["options"]["resume_url"] == "https://ops:***@h/resume"
    lease = {"service": "arch", "kind": "http", "service_config": stored, "lease_id": 1}
    service = _service_for_lease(config, lease)
    assert service.options["resume_url"] == "https://ops:S3cr3t-pw@h/resume"
    assert service.options["headers"] == {"Authorization": "Bearer S3cr3t-tok"}
    # a service no longer configured resumes from the lease alone: without the credentials it never stored
    gone = _service_for_lease(parse_config({"state_schema": "pgmaint", "tables": TABLES}), lease)
    assert isinstance(gone, ServiceConfig) and gone.options["resume_url"] == "https://ops:***@h/resume"
