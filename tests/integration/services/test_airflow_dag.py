"""The `airflow_dag` adapter against a real `airflow api-server` started on loopback (REST API v2, JWT)."""

from __future__ import annotations

import json

import httpx
import pytest

from include.pgmaint.services import ServiceError, pause_services, resume_services
from include.pgmaint.services.leases import make_adapter

RUN = {"dag_id": "default_partition_migration", "run_id": "manual__1"}
DAG = "partition_maintenance"


class Api:
    """An independent client, to read back what the adapter did."""

    def __init__(self, server):
        token = httpx.post(
            f"{server.base_url}/auth/token", json={"username": server.login, "password": server.password}, timeout=10
        ).json()["access_token"]
        self.client = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)

    def is_paused(self, dag_id: str = DAG) -> bool:
        response = self.client.get(f"/api/v2/dags/{dag_id}")
        response.raise_for_status()
        return response.json()["is_paused"]

    def set_paused(self, paused: bool, dag_id: str = DAG) -> None:
        self.client.patch(
            f"/api/v2/dags/{dag_id}", params={"update_mask": "is_paused"}, json={"is_paused": paused}
        ).raise_for_status()


@pytest.fixture
def api(airflow_api, monkeypatch):
    host, port = airflow_api.base_url.rsplit(":", 1)
    monkeypatch.setenv(
        "AIRFLOW_CONN_AIRFLOW_API",
        json.dumps(
            {
                "conn_type": "http",
                "host": "127.0.0.1",
                "port": int(port),
                "schema": "http",
                "login": airflow_api.login,
                "password": airflow_api.password,
            }
        ),
    )
    client = Api(airflow_api)
    client.set_paused(False)  # the DAG is "running" before each test
    yield client
    client.set_paused(False)


@pytest.fixture
def cfg(make_config, scratch_schema):
    return make_config(scratch_schema, [{"name": "maintenance_dag", "kind": "airflow_dag", "dag_id": DAG}])


def test_pause_and_unpause_a_dag_through_the_api(api, target, cfg):
    assert api.is_paused() is False
    report = pause_services(target, cfg, ["maintenance_dag"], **RUN)
    assert report.held == ["maintenance_dag"]
    assert api.is_paused() is True  # read back through the API
    assert [o.action for o in resume_services(target, cfg, **RUN)] == ["resumed"]
    assert api.is_paused() is False


def test_dag_paused_by_hand_stays_paused(api, target, cfg):
    api.set_paused(True)
    report = pause_services(target, cfg, ["maintenance_dag"], **RUN)
    assert report.held == [] and f"DAG {DAG} is paused" in report.left_alone[0].detail
    resume_services(target, cfg, **RUN)
    assert api.is_paused() is True


def test_connection_with_a_url_host(api, airflow_api, monkeypatch, target, cfg):
    monkeypatch.setenv(
        "AIRFLOW_CONN_AIRFLOW_API",
        json.dumps(
            {
                "conn_type": "http",
                "host": airflow_api.base_url,
                "login": airflow_api.login,
                "password": airflow_api.password,
            }
        ),
    )
    snap = make_adapter(cfg.services[0], cfg, target).status()
    assert snap.paused is False and snap.state == {"is_paused": False}


def test_unknown_dag_is_a_clear_error(api, target, make_config, scratch_schema):
    cfg = make_config(scratch_schema, [{"name": "x", "kind": "airflow_dag", "dag_id": "no_such_dag", "retries": 0}])
    with pytest.raises(ServiceError, match="no DAG 'no_such_dag' on the API server"):
        make_adapter(cfg.services[0], cfg, target).status()


def test_wrong_password_is_a_clear_error_and_not_retried(api, airflow_api, monkeypatch, target, cfg):
    host, port = airflow_api.base_url.rsplit(":", 1)
    monkeypatch.setenv(
        "AIRFLOW_CONN_AIRFLOW_API",
        json.dumps(
            {"conn_type": "http", "host": "127.0.0.1", "port": int(port), "login": "admin", "password": "wrong"}
        ),
    )
    with pytest.raises(ServiceError, match=r"POST http://127.0.0.1:\d+/auth/token failed: HTTP 401.*not retried"):
        make_adapter(cfg.services[0], cfg, target).status()
    assert api.is_paused() is False
