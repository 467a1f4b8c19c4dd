"""`http`: call one URL to pause a service and another to resume it.

For services with an admin endpoint (e.g. a cloud function's "stop consuming"
switch). Every call has a timeout (``timeout_seconds``, default 5) and is
retried (``retries``, default 3) with exponential backoff on connection errors,
timeouts, 429 and 5xx; other 4xx fail at once. Errors name the URL.

Optional ``status_url``: answered with JSON ``{"paused": true|false}``; without
it pgmaint cannot tell a service paused by hand, so it always calls pause and,
after the work, resume. Header values may use ``${ENV_VAR}`` so secrets stay
out of the YAML (they are expanded at call time and never stored in leases).

Secrets stay out of what pgmaint writes: header values and a URL's password
(``https://user:password@host/...``, sent as basic auth) never appear in a log
line, an error, a lease or an alert. URLs are shown as ``https://user:***@host/...``
and any header value or URL password a server echoes back in its answer is
replaced by ``***`` before the answer is quoted.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from include.pgmaint.config import ServiceConfig
from include.pgmaint.services.base import Actor, ServiceError, Snapshot

log = logging.getLogger("pgmaint.services.http")

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


def expand_env(value: str, where: str) -> str:
    def sub(match: re.Match) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ServiceError(f"{where}: environment variable {name} is not set")
        return os.environ[name]

    return _ENV.sub(sub, value)


REDACTED = "***"


def redact_url(url: str) -> str:
    """The URL as pgmaint shows and stores it: a password in it replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{REDACTED}@{host}"))


def _without_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """(URL without user:password, (user, password) for basic auth or None)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=host)), (parts.username or "", parts.password or "")


def secret_values(headers: dict[str, str] | None, url: str | None = None) -> list[str]:
    """What must never be quoted: every header value (and its token after `Bearer ` etc.), the URL's password."""
    out: list[str] = []
    for value in (headers or {}).values():
        out.append(value)
        last = value.split()[-1] if value.split() else ""
        if last != value and len(last) >= 8:
            out.append(last)
    password = urlsplit(url).password if url else None
    if password:
        out.append(password)
    return sorted({v for v in out if v}, key=len, reverse=True)  # longest first: a token inside a header value


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret value replaced by ***."""
    for value in secrets:
        if value:
            text = text.replace(value, REDACTED)
    return text


def answer_excerpt(response: httpx.Response, secrets: Iterable[str], limit: int = 200) -> str:
    """The start of a response body, quoted for an error; secrets the server echoed replaced first."""
    return repr(scrub(response.text, secrets)[:limit])


def request(
    method: str,
    url: str,
    *,
    what: str,
    timeout: float,
    retries: int,
    headers: dict[str, str] | None = None,
    json: Any = None,
    backoff: float = 0.2,
    max_backoff: float = 2.0,
    client: httpx.Client | None = None,
) -> httpx.Response:
    """One HTTP call with a timeout per attempt and `retries` retries; raises ServiceError naming the URL.

    A password in the URL is sent as basic auth; neither it nor any header value appears in a log line or error.
    """
    attempts = retries + 1
    last = ""
    own = client is None
    shown = redact_url(url)
    target, auth = _without_credentials(url)
    secrets = secret_values(headers, url)
    client = client or httpx.Client(timeout=timeout)
    try:
        for attempt in range(1, attempts + 1):
            try:
                response = client.request(
                    method, target, headers=headers, json=json, timeout=timeout, **({"auth": auth} if auth else {})
                )
            except httpx.TimeoutException:
                last = f"timed out after {timeout:g}s"
            except httpx.TransportError as exc:
                last = scrub(f"{type(exc).__name__}: {exc}", secrets)
            else:
                if response.is_success:
                    return response
                last = f"HTTP {response.status_code}: {answer_excerpt(response, secrets)}"
                if response.status_code not in _RETRY_STATUS:
                    raise ServiceError(f"{what}: {method} {shown} failed: {last} (not retried)")
            if attempt < attempts:
                delay = min(backoff * 2 ** (attempt - 1), max_backoff)
                log.warning(
                    "%s: %s %s attempt %d/%d: %s; retrying in %.1fs",
                    what,
                    method,
                    shown,
                    attempt,
                    attempts,
                    last,
                    delay,
                )
                time.sleep(delay)
        raise ServiceError(f"{what}: {method} {shown} failed after {attempts} attempt(s): {last}")
    finally:
        if own:
            client.close()


class HttpAdapter:
    kind = "http"

    def __init__(self, service: ServiceConfig, backoff: float = 0.2):
        self.service = service
        o = service.options
        self.method = o.get("method", "POST")
        self.timeout = float(o.get("timeout_seconds", 5))
        self.retries = int(o.get("retries", 3))
        self.backoff = backoff

    def _headers(self) -> dict[str, str]:
        where = f"service {self.service.name!r} headers"
        return {k: expand_env(v, where) for k, v in (self.service.options.get("headers") or {}).items()}

    def _call(self, method: str, url: str, body: Any = None) -> httpx.Response:
        return request(
            method,
            url,
            what=f"service {self.service.name!r} (http)",
            timeout=self.timeout,
            retries=self.retries,
            headers=self._headers(),
            json=body,
            backoff=self.backoff,
        )

    def status(self) -> Snapshot:
        url = self.service.options.get("status_url")
        if not url:
            return Snapshot(paused=None, state={}, detail="no status_url: state unknown")
        response = self._call("GET", url)
        try:
            paused = response.json()["paused"]
            if not isinstance(paused, bool):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise ServiceError(
                f"service {self.service.name!r} (http): GET {redact_url(url)} did not answer JSON with a boolean 'paused': "
                f"{answer_excerpt(response, secret_values(self._headers(), url))}"
            ) from None
        return Snapshot(paused=paused, state={"paused": paused}, detail=f"{redact_url(url)} says paused={paused}")

    def pause(self, before: Snapshot, actor: Actor) -> None:
        self._call(self.method, self.service.options["pause_url"], self.service.options.get("body"))

    def resume(self, previous: dict[str, Any], actor: Actor) -> None:
        if previous.get("paused") is True:
            return  # it was paused before we came; leave it so
        self._call(self.method, self.service.options["resume_url"], self.service.options.get("body"))
