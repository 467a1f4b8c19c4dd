"""Kind-specific service fields: validated at parse time, errors name the field; defaults filled in."""

from __future__ import annotations

import pytest

from include.pgmaint.config import ConfigError
from tests.fixtures.services import build_config


def _problems(services: list[dict]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_config("pgmaint", services)
    return info.value.problems


def test_defaults_are_filled_in():
    cfg = build_config(
        "pgmaint",
        [
            {"name": "request_logging", "kind": "flag"},
            {"name": "partman", "kind": "pg_partman"},
            {"name": "cron", "kind": "pg_cron", "jobs": ["nightly"]},
            {"name": "sync", "kind": "airflow_dag", "dag_id": "sync_pipeline"},
            {
                "name": "fn",
                "kind": "http",
                "pause_url": "https://fn.example/pause",
                "resume_url": "https://fn.example/resume",
                "lease_minutes": 30,
            },
        ],
    )
    opts = {s.name: s.options for s in cfg.services}
    assert opts["request_logging"] == {"flag": "request_logging", "lease_minutes": 120}
    assert opts["partman"] == {"lease_minutes": 120}  # parents: resolved from the tables' writers at run time
    assert opts["cron"] == {"jobs": ["nightly"], "lease_minutes": 120}
    assert opts["sync"] == {
        "dag_id": "sync_pipeline",
        "connection_id": "airflow_api",
        "timeout_seconds": 10,
        "retries": 3,
        "lease_minutes": 120,
    }
    assert opts["fn"] == {
        "pause_url": "https://fn.example/pause",
        "resume_url": "https://fn.example/resume",
        "method": "POST",
        "headers": {},
        "timeout_seconds": 5,
        "retries": 3,
        "lease_minutes": 30,
    }


def test_parents_are_normalised():
    cfg = build_config(
        "pgmaint", [{"name": "p", "kind": "pg_partman", "parents": ['"Public".events', "PUBLIC.Deltas"]}]
    )
    assert cfg.services[0].options["parents"] == ["Public.events", "public.deltas"]


@pytest.mark.parametrize(
    ("services", "expected"),
    [
        (
            [
                {"name": "a", "kind": "flag"},
                {"name": "b", "kind": "flag"},
                {"name": "fn", "kind": "http", "resume_url": "http://x/r"},
            ],
            "services[2].pause_url: required for kind http",
        ),
        ([{"name": "c", "kind": "pg_cron"}], "services[0].jobs: required for kind pg_cron"),
        ([{"name": "d", "kind": "airflow_dag"}], "services[0].dag_id: required for kind airflow_dag"),
        ([{"name": "f", "kind": "flag", "pause_url": "http://x/p"}], "services[0].pause_url: not a field of kind flag"),
        (
            [{"name": "f", "kind": "http", "pause_url": "ftp://x/p", "resume_url": "http://x/r"}],
            "services[0].pause_url: 'ftp://x/p' is not an http:// or https:// URL",
        ),
        (
            [{"name": "p", "kind": "pg_partman", "parents": ["events"]}],
            "services[0].parents[0]: 'events' is not a schema-qualified",
        ),
    ],
)
def test_semantic_problems_name_the_field(services, expected):
    problems = _problems(services)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (
            {"name": "f", "kind": "http", "pause_url": "http://x/p", "resume_url": "http://x/r", "timeout_seconds": 0},
            "services[0].timeout_seconds",
        ),
        (
            {"name": "f", "kind": "http", "pause_url": "http://x/p", "resume_url": "http://x/r", "retries": 11},
            "services[0].retries",
        ),
        (
            {"name": "f", "kind": "http", "pause_url": "http://x/p", "resume_url": "http://x/r", "method": "TRACE"},
            "services[0].method",
        ),
        ({"name": "f", "kind": "flag", "lease_minutes": 0}, "services[0].lease_minutes"),
        ({"name": "c", "kind": "pg_cron", "jobs": []}, "services[0].jobs"),
        ({"name": "f", "kind": "flag", "colour": "blue"}, "services[0]: unknown key(s) 'colour'"),
    ],
)
def test_structural_problems_name_the_field(item, expected):
    problems = _problems([item])
    assert any(p.startswith(expected) for p in problems), problems


def test_all_problems_reported_together():
    problems = _problems(
        [
            {"name": "c", "kind": "pg_cron"},
            {"name": "fn", "kind": "http", "pause_url": "http://x/p"},
            {"name": "f", "kind": "flag", "jobs": ["x"]},
        ]
    )
    assert problems == [
        "services[0].jobs: required for kind pg_cron",
        "services[1].resume_url: required for kind http",
        "services[2].jobs: not a field of kind flag (its fields: flag, lease_minutes)",
    ]
