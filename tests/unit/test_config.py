"""Configuration loading and validation: every bad-config case names the field and the problem.

Each bad case runs twice: through `parse_config(dict)` and through `load_config(path)` on a
YAML file written to tmp_path, so both entry points report the same problems.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from include.pgmaint.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    LockBudget,
    load_config,
    parse_config,
    parse_qualified_name,
)
from include.pgmaint.intervals import Duration, PartitionInterval

# --- helpers -------------------------------------------------------------------


def valid() -> dict[str, Any]:
    """A small valid config; each case mutates a fresh copy."""
    return copy.deepcopy(
        {
            "timezone": "UTC",
            "tables": [
                {
                    "name": "public.events",
                    "partition_key": "created_at",
                    "interval": "1 day",
                    "premake": 4,
                    "retention": "30 days",
                    "writers": ["api"],
                },
                {
                    "name": "public.deltas",
                    "partition_key": "occurred_at",
                    "interval": "1 hour",
                    "premake": 24,
                    "writers": ["api", "sync"],
                },
            ],
            "services": [
                {"name": "api", "kind": "flag"},
                {"name": "sync", "kind": "flag", "depends_on": ["api"]},
            ],
        }
    )


def with_(mutate: Callable[[dict], Any]) -> dict:
    raw = valid()
    mutate(raw)
    return raw


def table(i: int, **changes) -> Callable[[dict], None]:
    def mutate(raw: dict) -> None:
        for key, value in changes.items():
            if value is DELETE:
                del raw["tables"][i][key]
            else:
                raw["tables"][i][key] = value

    return mutate


DELETE = object()


def top(**changes) -> Callable[[dict], None]:
    def mutate(raw: dict) -> None:
        for key, value in changes.items():
            if value is DELETE:
                del raw[key]
            else:
                raw[key] = value

    return mutate


def services(*items: dict) -> Callable[[dict], None]:
    def mutate(raw: dict) -> None:
        raw["services"] = list(items)
        for t in raw["tables"]:
            t["writers"] = []

    return mutate


@pytest.fixture(params=["parse_config", "load_config"])
def check(request, tmp_path):
    """check(raw) -> ConfigError raised by the chosen entry point."""

    def run(raw: Any) -> ConfigError:
        with pytest.raises(ConfigError) as exc:
            if request.param == "parse_config":
                parse_config(raw)
            else:
                path = tmp_path / "pgmaint.yaml"
                path.write_text(yaml.safe_dump(raw, sort_keys=False))
                load_config(path)
        return exc.value

    return run


def assert_problem(error: ConfigError, path: str, *fragments: str) -> str:
    """One problem starts with `path:` and contains every fragment; it is also in str(error)."""
    matching = [p for p in error.problems if p.startswith(f"{path}:") and all(f in p for f in fragments)]
    assert matching, f"no problem at {path!r} mentioning {fragments!r}; got {error.problems!r}"
    assert matching[0] in str(error)
    return matching[0]


# --- the demo config -------------------------------------------------------------


def test_demo_config_loads():
    cfg = load_config(DEFAULT_CONFIG_PATH)
    assert isinstance(cfg, Config)
    assert cfg.connection_id == "pgmaint_target"
    assert cfg.timezone == "UTC"
    assert cfg.state_schema == "pgmaint"
    assert cfg.table_names == ["public.inbound_requests", "public.event_deltas"]
    requests = cfg.table("public.inbound_requests")
    assert (requests.schema, requests.table, requests.partition_key) == ("public", "inbound_requests", "created_at")
    assert requests.interval == PartitionInterval("day")
    assert requests.premake == 4
    assert requests.retention == Duration(30, "day")
    assert requests.writers == ("request_logging",)
    assert cfg.table("public.event_deltas").writers == ("sync_pipeline", "request_logging")
    assert {s.name: s.depends_on for s in cfg.services} == {
        "request_logging": (),
        "sync_pipeline": ("request_logging",),
    }
    assert cfg.lock_budget.max_lock_timeout_ms <= 200


def test_default_path_and_env_var(tmp_path, monkeypatch):
    monkeypatch.delenv("PGMAINT_CONFIG", raising=False)
    assert load_config().table_names == load_config(DEFAULT_CONFIG_PATH).table_names
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(valid()))
    monkeypatch.setenv("PGMAINT_CONFIG", str(other))
    cfg = load_config()
    assert cfg.table_names == ["public.events", "public.deltas"]
    assert cfg.source == str(other)


def test_unknown_table_lookup_names_the_configured_ones():
    cfg = parse_config(valid())
    with pytest.raises(KeyError, match="public.events"):
        cfg.table("public.nope")


def test_defaults_when_optional_keys_are_absent():
    cfg = parse_config({"tables": [{"name": "public.t", "partition_key": "ts", "interval": "1 day", "premake": 1}]})
    assert (cfg.connection_id, cfg.timezone, cfg.state_schema) == ("pgmaint_target", "UTC", "pgmaint")
    assert cfg.services == ()
    t = cfg.tables[0]
    assert t.retention is None and t.writers == () and t.retention_keep_table is False
    assert cfg.lock_budget == LockBudget()


def test_valid_variants_are_accepted():
    raw = valid()
    raw["timezone"] = "America/Chicago"
    raw["tables"][0].update(name='"My Schema"."Events"', partition_key='"Created At"', retention=None)
    raw["tables"][1].update(name="Public.Deltas", interval="1 month", retention="1 year")
    raw["lock_budget"] = {"lock_timeout_ms": 200, "max_lock_timeout_ms": 200}
    cfg = parse_config(raw)
    first, second = cfg.tables
    assert (first.schema, first.table, first.partition_key, first.retention) == (
        "My Schema",
        "Events",
        "Created At",
        None,
    )
    assert (second.schema, second.table) == ("public", "deltas")
    assert second.retention == Duration(1, "year")
    assert cfg.lock_budget.lock_timeout_ms == 200


@pytest.mark.parametrize(
    "retention, interval",
    [
        ("24 hours", "1 day"),
        ("1 day", "1 day"),
        ("1 week", "1 week"),
        ("1 hour", "1 hour"),
        ("30 days", "1 month"),
        ("1 month", "1 month"),
        ("1 year", "1 month"),
        ("2 days", "1 hour"),
    ],
)
def test_retention_at_least_one_interval_is_accepted(retention, interval):
    cfg = parse_config(with_(table(0, retention=retention, interval=interval)))
    assert cfg.tables[0].retention == Duration.parse(retention)


# --- qualified names ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("public.events", ("public", "events")),
        ("Public.Events", ("public", "events")),  # unquoted names fold to lower case
        ('"public"."events"', ("public", "events")),
        ('"My Schema"."Events"', ("My Schema", "Events")),
        ('"a""b".c', ('a"b', "c")),
        ('"a.b".c', ("a.b", "c")),
        ("_s$1.t_2", ("_s$1", "t_2")),
    ],
)
def test_parse_qualified_name(text, expected):
    assert parse_qualified_name(text) == expected


# --- every bad-config case -----------------------------------------------------------

BAD = [
    # id, raw config, field path, fragments of the message
    (
        "interval-2-days",
        with_(table(0, interval="2 days")),
        "tables[0].interval",
        ["'2 days'", "not a supported interval"],
    ),
    (
        "interval-daily",
        with_(table(0, interval="daily")),
        "tables[0].interval",
        ["'daily'", "not a supported interval"],
    ),
    ("interval-int", with_(table(0, interval=5)), "tables[0].interval", ["5", "not of type 'string'"]),
    (
        "interval-year",
        with_(table(1, interval="1 year")),
        "tables[1].interval",
        ["'1 year'", "1 hour, 1 day, 1 week, 1 month"],
    ),
    ("premake-0", with_(table(0, premake=0)), "tables[0].premake", ["at least 1", "got 0"]),
    ("premake-negative", with_(table(1, premake=-3)), "tables[1].premake", ["at least 1", "got -3"]),
    ("premake-huge", with_(table(0, premake=5000)), "tables[0].premake", ["5000", "1000"]),
    ("premake-string", with_(table(0, premake="4")), "tables[0].premake", ["'4'", "not of type 'integer'"]),
    ("premake-bool", with_(table(0, premake=True)), "tables[0].premake", ["not of type 'integer'"]),
    (
        "retention-12h-daily",
        with_(table(0, retention="12 hours", interval="1 day")),
        "tables[0].retention",
        ["12 hours", "shorter than one interval", "1 day"],
    ),
    (
        "retention-1w-monthly",
        with_(table(0, retention="1 week", interval="1 month")),
        "tables[0].retention",
        ["1 week", "shorter than one interval", "1 month"],
    ),
    (
        "retention-6d-weekly",
        with_(table(0, retention="6 days", interval="1 week")),
        "tables[0].retention",
        ["6 days", "shorter than one interval"],
    ),
    (
        "retention-malformed",
        with_(table(0, retention="thirty days")),
        "tables[0].retention",
        ["'thirty days'", "not a duration"],
    ),
    ("retention-zero", with_(table(0, retention="0 days")), "tables[0].retention", ["'0 days'"]),
    ("retention-int", with_(table(0, retention=30)), "tables[0].retention", ["30", "not of type"]),
    ("name-unqualified", with_(table(0, name="events")), "tables[0].name", ["'events'", "not a schema-qualified"]),
    ("name-three-parts", with_(table(0, name="a.b.c")), "tables[0].name", ["'a.b.c'", "not a schema-qualified"]),
    ("name-trailing-dot", with_(table(0, name="public.")), "tables[0].name", ["'public.'", "not a schema-qualified"]),
    ("name-leading-dot", with_(table(0, name=".events")), "tables[0].name", ["not a schema-qualified"]),
    (
        "name-injection",
        with_(table(0, name='"public".x; DROP TABLE y')),
        "tables[0].name",
        ["DROP TABLE y", "not a schema-qualified"],
    ),
    ("name-comment", with_(table(0, name="public.x--")), "tables[0].name", ["'public.x--'", "not a schema-qualified"]),
    ("name-space", with_(table(0, name="public.my table")), "tables[0].name", ["not a schema-qualified"]),
    ("name-unterminated-quote", with_(table(0, name='public."x')), "tables[0].name", ["not a schema-qualified"]),
    ("name-empty-quoted", with_(table(0, name='public.""')), "tables[0].name", ["not a schema-qualified"]),
    ("name-empty", with_(table(0, name="")), "tables[0].name", ["not a schema-qualified"]),
    ("name-too-long", with_(table(0, name="public." + "x" * 64)), "tables[0].name", ["63 bytes"]),
    ("name-int", with_(table(0, name=5)), "tables[0].name", ["not of type 'string'"]),
    (
        "key-with-space",
        with_(table(0, partition_key="created at")),
        "tables[0].partition_key",
        ["'created at'", "not a column"],
    ),
    ("key-qualified", with_(table(0, partition_key="t.created_at")), "tables[0].partition_key", ["not a column"]),
    (
        "duplicate-same-spelling",
        with_(lambda r: r["tables"].append(dict(r["tables"][0]))),
        "tables[2].name",
        ["duplicate table", "'public.events'"],
    ),
    (
        "duplicate-quoted",
        with_(table(1, name='"public"."events"')),
        "tables[1].name",
        ["duplicate table", '\'"public"."events"\'', "'public.events'"],
    ),
    (
        "duplicate-upper",
        with_(table(1, name="PUBLIC.EVENTS")),
        "tables[1].name",
        ["duplicate table", "'PUBLIC.EVENTS'"],
    ),
    (
        "timezone-unknown",
        with_(top(timezone="Mars/Olympus")),
        "timezone",
        ["'Mars/Olympus'", "not a known IANA time zone"],
    ),
    ("timezone-abbrev", with_(top(timezone="Chicago")), "timezone", ["'Chicago'", "not a known IANA time zone"]),
    ("timezone-empty", with_(top(timezone="")), "timezone", ["should be non-empty"]),
    (
        "state-schema-bad",
        with_(top(state_schema="pg maint")),
        "state_schema",
        ["'pg maint'", "not a column or schema identifier"],
    ),
    ("unknown-top-key", with_(top(colour="blue")), "(top level)", ["unknown key(s) 'colour'", "known:", "tables"]),
    ("unknown-top-key-typo", with_(top(timezones="UTC")), "(top level)", ["unknown key(s) 'timezones'"]),
    (
        "unknown-table-key",
        with_(table(1, retension="30 days")),
        "tables[1]",
        ["unknown key(s) 'retension'", "retention"],
    ),
    (
        "unknown-lock-budget-key",
        with_(top(lock_budget={"lock_timeout": 100})),
        "lock_budget",
        ["unknown key(s) 'lock_timeout'", "lock_timeout_ms"],
    ),
    (
        "unknown-preflight-key",
        with_(top(preflight={"max_connections": 5})),
        "preflight",
        ["unknown key(s) 'max_connections'"],
    ),
    (
        "unknown-schedules-key",
        with_(top(schedules={"maintainance": "@daily"})),
        "schedules",
        ["unknown key(s) 'maintainance'"],
    ),
    (
        "lock-timeout-above-200",
        with_(top(lock_budget={"lock_timeout_ms": 201})),
        "lock_budget.lock_timeout_ms",
        ["201", "maximum of 200"],
    ),
    (
        "max-lock-timeout-above-200",
        with_(top(lock_budget={"max_lock_timeout_ms": 1000})),
        "lock_budget.max_lock_timeout_ms",
        ["1000", "maximum of 200"],
    ),
    (
        "lock-timeout-zero",
        with_(top(lock_budget={"lock_timeout_ms": 0})),
        "lock_budget.lock_timeout_ms",
        ["minimum of 1"],
    ),
    ("missing-tables", with_(top(tables=DELETE)), "(top level)", ["'tables' is a required property"]),
    ("empty-tables", with_(top(tables=[])), "tables", ["should be non-empty"]),
    ("missing-name", with_(table(0, name=DELETE)), "tables[0]", ["'name' is a required property"]),
    (
        "missing-partition-key",
        with_(table(0, partition_key=DELETE)),
        "tables[0]",
        ["'partition_key' is a required property"],
    ),
    ("missing-interval", with_(table(1, interval=DELETE)), "tables[1]", ["'interval' is a required property"]),
    ("missing-premake", with_(table(1, premake=DELETE)), "tables[1]", ["'premake' is a required property"]),
    (
        "table-not-a-mapping",
        with_(lambda r: r["tables"].append("public.x")),
        "tables[2]",
        ["'public.x'", "not of type 'object'"],
    ),
    (
        "missing-service-name",
        with_(lambda r: r["services"].append({"kind": "flag"})),
        "services[2]",
        ["'name' is a required property"],
    ),
    (
        "missing-service-kind",
        with_(lambda r: r["services"].append({"name": "x"})),
        "services[2]",
        ["'kind' is a required property"],
    ),
    (
        "service-unknown-kind",
        with_(lambda r: r["services"].append({"name": "x", "kind": "kafka"})),
        "services[2].kind",
        ["'kafka'", "is not one of", "flag"],
    ),
    (
        "service-unknown-depends-on",
        with_(lambda r: r["services"][1].update(depends_on=["api", "ghost"])),
        "services[1].depends_on",
        ["'ghost'", "not a configured service"],
    ),
    (
        "service-cycle",
        with_(
            services(
                {"name": "a", "kind": "flag", "depends_on": ["b"]}, {"name": "b", "kind": "flag", "depends_on": ["a"]}
            )
        ),
        "services",
        ["dependency cycle", "a -> b -> a"],
    ),
    (
        "service-self-cycle",
        with_(services({"name": "a", "kind": "flag", "depends_on": ["a"]})),
        "services",
        ["dependency cycle", "a -> a"],
    ),
    (
        "service-long-cycle",
        with_(
            services(
                {"name": "root", "kind": "flag"},
                {"name": "a", "kind": "flag", "depends_on": ["root", "b"]},
                {"name": "b", "kind": "flag", "depends_on": ["c"]},
                {"name": "c", "kind": "flag", "depends_on": ["a"]},
            )
        ),
        "services",
        ["dependency cycle", "a -> b -> c -> a"],
    ),
    (
        "service-duplicate",
        with_(lambda r: r["services"].append({"name": "api", "kind": "http"})),
        "services[2].name",
        ["duplicate service", "'api'"],
    ),
    (
        "writer-unknown",
        with_(table(0, writers=["api", "ghost"])),
        "tables[0].writers",
        ["'ghost'", "not a configured service"],
    ),
    ("writer-not-a-list", with_(table(0, writers="api")), "tables[0].writers", ["not of type 'array'"]),
    ("top-level-list", ["public.x"], "(top level)", ["not of type 'object'"]),
    ("top-level-scalar", "hello", "(top level)", ["not of type 'object'"]),
]


@pytest.mark.parametrize("raw, path, fragments", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_config_names_field_and_problem(check, raw, path, fragments):
    error = check(raw)
    assert_problem(error, path, *fragments)


def test_duplicate_three_spellings_of_one_table(check):
    raw = valid()
    base = raw["tables"][0]
    raw["tables"] = [dict(base, name=n) for n in ("public.x", '"public"."x"', "PUBLIC.X")]
    error = check(raw)
    assert_problem(error, "tables[1].name", "duplicate table", "'public.x'")
    assert_problem(error, "tables[2].name", "duplicate table", "'PUBLIC.X'")
    assert len(error.problems) == 2


def test_quoted_upper_case_is_a_different_table():
    raw = valid()
    raw["tables"][1]["name"] = '"Public"."Events"'
    cfg = parse_config(raw)
    assert [(t.schema, t.table) for t in cfg.tables] == [("public", "events"), ("Public", "Events")]


def test_name_with_trailing_newline_is_rejected(check):
    # `$` in a Python regex also matches before a final newline; "public.x\n" is not an identifier.
    error = check(with_(table(0, name="public.events\n")))
    assert_problem(error, "tables[0].name", "not a schema-qualified")


def test_partition_key_with_trailing_newline_is_rejected(check):
    error = check(with_(table(0, partition_key="created_at\n")))
    assert_problem(error, "tables[0].partition_key", "not a column")


def test_premake_written_as_a_float_is_rejected_or_an_int():
    # YAML `premake: 2.0` passes JSON Schema's "integer" (2.0 is integral); the plan then
    # does range(premake + 1), which fails on a float.
    try:
        cfg = parse_config(with_(table(0, premake=2.0)))
    except ConfigError as error:
        assert_problem(error, "tables[0].premake")
    else:
        assert type(cfg.tables[0].premake) is int


def test_lock_timeout_of_200_is_the_accepted_maximum():
    cfg = parse_config(with_(top(lock_budget={"lock_timeout_ms": 200, "max_lock_timeout_ms": 200})))
    assert (cfg.lock_budget.lock_timeout_ms, cfg.lock_budget.max_lock_timeout_ms) == (200, 200)


# --- files that are not configs ------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   \n\n", "# nothing but a comment\n", "---\n"])
def test_empty_file(tmp_path, text):
    path = tmp_path / "pgmaint.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert_problem(exc.value, "(top level)", "the file is empty")
    assert str(path) in str(exc.value)


def test_parse_config_of_none_is_empty():
    with pytest.raises(ConfigError) as exc:
        parse_config(None)
    assert_problem(exc.value, "(top level)", "the file is empty")


@pytest.mark.parametrize("text", ["tables: [unclosed\n", "tables:\n\t- name: x\n", "a: b: c\n", "{{{"])
def test_not_yaml(tmp_path, text):
    path = tmp_path / "pgmaint.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert_problem(exc.value, "(file)", "not valid YAML")
    assert str(path) in str(exc.value)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert_problem(exc.value, "(file)", "cannot read", str(path))


# --- all problems at once ----------------------------------------------------------------------


def test_two_semantic_problems_in_two_tables_are_both_reported(check):
    raw = with_(table(0, interval="2 days"))
    table(1, premake=0)(raw)
    error = check(raw)
    assert_problem(error, "tables[0].interval", "not a supported interval")
    assert_problem(error, "tables[1].premake", "at least 1")


def test_several_problems_in_one_table_are_all_reported(check):
    error = check(with_(table(0, name="events", interval="daily", premake=-1, writers=["ghost"])))
    assert_problem(error, "tables[0].name", "not a schema-qualified")
    assert_problem(error, "tables[0].interval", "not a supported interval")
    assert_problem(error, "tables[0].premake", "at least 1")
    assert_problem(error, "tables[0].writers", "'ghost'")


def test_problems_across_sections_are_all_reported(check):
    raw = with_(top(timezone="Nowhere/Land"))
    raw["tables"][0]["retention"] = "12 hours"
    raw["services"].append({"name": "loop", "kind": "flag", "depends_on": ["loop", "nobody"]})
    error = check(raw)
    assert_problem(error, "timezone", "not a known IANA time zone")
    assert_problem(error, "tables[0].retention", "shorter than one interval")
    assert_problem(error, "services[2].depends_on", "'nobody'")
    assert_problem(error, "services", "dependency cycle", "loop -> loop")
    assert len(error.problems) == 4


def test_two_structural_problems_are_both_reported(check):
    raw = with_(top(colour="blue"))
    table(1, premake=DELETE)(raw)
    error = check(raw)
    assert_problem(error, "(top level)", "unknown key(s) 'colour'")
    assert_problem(error, "tables[1]", "'premake' is a required property")


def test_structural_and_semantic_problems_are_reported_together(check):
    # An unknown key in one table must not hide a bad interval in another.
    raw = with_(table(0, colour="blue"))
    table(1, interval="2 days")(raw)
    error = check(raw)
    assert_problem(error, "tables[0]", "unknown key(s) 'colour'")
    assert_problem(error, "tables[1].interval", "not a supported interval")


def test_error_message_lists_every_problem_and_the_source(tmp_path):
    path = tmp_path / "bad.yaml"
    raw = with_(table(0, interval="2 days"))
    table(1, name="events")(raw)
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    message = str(exc.value)
    assert str(path) in message
    assert all(f"  - {p}" in message for p in exc.value.problems)
    assert len(exc.value.problems) == 2
