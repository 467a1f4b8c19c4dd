"""`airflow_dag`: pause and unpause another Airflow DAG through the REST API v2.

The service's ``connection_id`` (default ``airflow_api``) is an Airflow
connection to the API server: host ``127.0.0.1`` or a full URL
``http://airflow-api:8080``, port, schema = URL scheme (``http``/``https``, as
the HTTP provider reads it), login/password of a user allowed to edit DAGs
(pgmaint gets a JWT from ``POST /auth/token``; without a login it asks
``GET /auth/token``, which SimpleAuthManager grants when all users are admins).
Extra ``{"token": "..."}`` passes a ready JWT instead (e.g. for other auth managers).

Pause: ``PATCH /api/v2/dags/{dag_id}?update_mask=is_paused`` with
``{"is_paused": true}``. Resume unpauses it only if it was not paused before.
A paused DAG finishes the runs it has started; new runs wait until it is unpaused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from include.pgmaint.config import ServiceConfig
from include.pgmaint.services.base import Actor, ServiceError, Snapshot
from include.pgmaint.services.http import answer_excerpt, request


@dataclass(frozen=True)
class ApiEndpoint:
    base_url: str
    login: str | None = None
    password: str | None = None
    token: str | None = None


def endpoint_from_airflow(conn_id: str) -> ApiEndpoint:
    """Read an Airflow connection (through the Airflow package, at call time: the engine runs without Airflow)."""
    from include.pgmaint.airflow.connections import airflow_connection

    c = airflow_connection(conn_id)
    host = (c.host or "").rstrip("/")
    if not host:
        raise ServiceError(f"Airflow connection {conn_id!r} has no host")
    if "://" not in host:
        host = f"{c.schema or 'http'}://{host}"
    if c.port and host.count(":") < 2:
        host = f"{host}:{c.port}"
    extra = c.extra_dejson or {}
    return ApiEndpoint(base_url=host, login=c.login or None, password=c.password or None, token=extra.get("token"))


class AirflowDagAdapter:
    kind = "airflow_dag"

    def __init__(self, service: ServiceConfig, endpoint_for: Callable[[str], ApiEndpoint] = endpoint_from_airflow):
        self.service = service
        o = service.options
        self.dag_id = o["dag_id"]
        self.conn_id = o.get("connection_id", "airflow_api")
        self.timeout = float(o.get("timeout_seconds", 10))
        self.retries = int(o.get("retries", 3))
        self._endpoint_for = endpoint_for
        self._endpoint: ApiEndpoint | None = None
        self._token: str | None = None

    @property
    def what(self) -> str:
        return f"service {self.service.name!r} (airflow_dag {self.dag_id})"

    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        if self._endpoint is None:
            self._endpoint = self._endpoint_for(self.conn_id)
        ep = self._endpoint
        if self._token is None:
            self._token = ep.token or self._get_token(ep)
        url = f"{ep.base_url}{path}"
        return request(
            method,
            url,
            what=self.what,
            timeout=self.timeout,
            retries=self.retries,
            headers={"Authorization": f"Bearer {self._token}"},
            **kwargs,
        )

    def _get_token(self, ep: ApiEndpoint) -> str:
        url = f"{ep.base_url}/auth/token"
        if ep.login:
            response = request(
                "POST",
                url,
                what=self.what,
                timeout=self.timeout,
                retries=self.retries,
                json={"username": ep.login, "password": ep.password or ""},
            )
        else:
            response = request("GET", url, what=self.what, timeout=self.timeout, retries=self.retries)
        try:
            return response.json()["access_token"]
        except (ValueError, KeyError):
            raise ServiceError(f"{self.what}: {url} returned no access_token") from None

    def _dag_path(self) -> str:
        return f"/api/v2/dags/{quote(self.dag_id, safe='')}"

    def _is_paused(self, response: httpx.Response) -> bool:
        try:
            return bool(response.json()["is_paused"])
        except (ValueError, KeyError):
            raise ServiceError(
                f"{self.what}: unexpected answer from the API: {answer_excerpt(response, [self._token or ''])}"
            ) from None

    def status(self) -> Snapshot:
        try:
            paused = self._is_paused(self._call("GET", self._dag_path()))
        except ServiceError as exc:
            if "HTTP 404" in str(exc):
                raise ServiceError(f"{self.what}: no DAG {self.dag_id!r} on the API server ({exc})") from None
            raise
        return Snapshot(
            paused=paused,
            state={"is_paused": paused},
            detail=f"DAG {self.dag_id} is {'paused' if paused else 'active'}",
        )

    def _set(self, paused: bool) -> None:
        response = self._call("PATCH", f"{self._dag_path()}?update_mask=is_paused", json={"is_paused": paused})
        if self._is_paused(response) != paused:
            raise ServiceError(f"{self.what}: the API answered is_paused={not paused} after setting it to {paused}")

    def pause(self, before: Snapshot, actor: Actor) -> None:
        self._set(True)

    def resume(self, previous: dict[str, Any], actor: Actor) -> None:
        if previous.get("is_paused") is False:
            self._set(False)
