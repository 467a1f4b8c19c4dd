"""Fleet mode config (issue 16): several targets in one file; the single-target form unchanged."""

from __future__ import annotations

import pytest

from include.pgmaint.config import ConfigError, parse_config
from include.pgmaint.fleet import load_target, parse_fleet


def _table(name: str = "public.ev", **extra) -> dict:
    return {"name": name, "partition_key": "ts", "interval": "1 day", "premake": 2, "retention": "30 days", **extra}


def test_single_target_form_is_unchanged():
    raw = {"connection_id": "db1", "pool": "p1", "tables": [_table()]}
    fleet = parse_fleet(raw)
    assert not fleet.multi and fleet.targets == (parse_config(raw),) and fleet.targets[0].target is None
    assert fleet.table_refs == ["public.ev"] and fleet.resolve("public.ev")[1].name == "public.ev"


def test_targets_each_get_their_connection_pool_tables_and_shared_defaults():
    raw = {
        "timezone": "Europe/Berlin",
        "schedules": {"maintenance": "*/30 * * * *"},
        "targets": [
            {"name": "orders", "connection_id": "orders_db", "tables": [_table()]},
            {
                "connection_id": "billing_db",
                "pool": "billing",
                "state_schema": "ops",
                "tables": [_table(), _table("public.inv")],
            },
        ],
    }
    fleet = parse_fleet(raw)
    orders, billing = fleet.targets
    assert fleet.multi and (orders.target, orders.connection_id, orders.pool) == ("orders", "orders_db", "orders_db")
    assert (billing.target, billing.pool, billing.state_schema) == ("billing_db", "billing", "ops")
    assert orders.timezone == billing.timezone == "Europe/Berlin" and fleet.maintenance_schedule == "*/30 * * * *"
    assert fleet.table_refs == ["orders/public.ev", "billing_db/public.ev", "billing_db/public.inv"]
    config, table = fleet.resolve("billing_db/public.ev")
    assert config is billing and table.name == "public.ev"
    assert fleet.resolve("public.inv")[0] is billing  # unambiguous without the target
    with pytest.raises(KeyError, match="several targets"):
        fleet.resolve("public.ev")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {
                "targets": [
                    {"connection_id": "a", "tables": [_table()]},
                    {"connection_id": "b", "tables": [_table(interval="2 days")]},
                ]
            },
            "targets[1].tables[0].interval: '2 days' is not a supported interval",
        ),
        ({"targets": [{"tables": [_table()]}]}, "targets[0].connection_id: required"),
        (
            {
                "targets": [
                    {"connection_id": "a", "tables": [_table()]},
                    {"connection_id": "a", "name": "x", "tables": [_table()]},
                ]
            },
            "targets[1].connection_id: 'a' is already targets[0]'s",
        ),
        (
            {
                "targets": [
                    {"connection_id": "a", "tables": [_table()]},
                    {"connection_id": "b", "name": "a", "tables": [_table()]},
                ]
            },
            "targets[1].name: duplicate target 'a'",
        ),
        (
            {"targets": [{"connection_id": "a.b", "tables": [_table()]}]},
            "targets[0].connection_id: 'a.b' cannot name a target",
        ),
        (
            {"tables": [_table()], "targets": [{"connection_id": "a", "tables": [_table()]}]},
            "(top level): tables cannot sit beside targets",
        ),
        ({"targets": [{"connection_id": "a", "tables": [_table()], "bogus": 1}]}, "targets[0]: unknown key(s) 'bogus'"),
        ({"targets": []}, "targets: must be a non-empty list"),
        (
            {
                "timezone": "Mars/Base",
                "targets": [{"connection_id": "a", "tables": [_table()]}, {"connection_id": "b", "tables": [_table()]}],
            },
            "timezone: 'Mars/Base' is not a known IANA time zone",
        ),
    ],
)
def test_invalid_targets_name_the_field(raw, expected):
    with pytest.raises(ConfigError) as err:
        parse_fleet(raw)
    assert any(p.startswith(expected) for p in err.value.problems), err.value.problems
    if expected.startswith("timezone"):
        assert err.value.problems.count(next(p for p in err.value.problems if p.startswith("timezone"))) == 1


def test_commands_for_one_database_pick_a_target(tmp_path):
    import yaml

    path = tmp_path / "fleet.yaml"
    path.write_text(
        yaml.safe_dump(
            {"targets": [{"connection_id": "a", "tables": [_table()]}, {"connection_id": "b", "tables": [_table()]}]}
        )
    )
    assert load_target(path, "b").connection_id == "b"
    with pytest.raises(ConfigError, match="choose one with --target NAME"):
        load_target(path)
    with pytest.raises(ConfigError, match="lists targets"):
        parse_config(yaml.safe_load(path.read_text()))


def test_the_migration_command_a_summary_gives_names_the_target_when_there_are_several():
    """The command the maintenance summary tells to run for rows waiting in a DEFAULT must pass the DAG's `table`
    Param, which takes `target/table` with several targets (a bare name there is ambiguous or rejected)."""
    from include.pgmaint.maintenance import migration_trigger

    def command_for(raw, ref):
        fleet = parse_fleet(raw)
        config, table = fleet.resolve(ref)
        assert fleet.resolve(config.ref(table.name)) == (config, table)  # what it names resolves back
        return migration_trigger(config, table)

    two = {
        "targets": [
            {"connection_id": "a", "tables": [_table()]},
            {"connection_id": "b", "tables": [_table()]},
        ]
    }
    assert '{"table": "b/public.ev"}' in command_for(two, "b/public.ev")
    one = {"targets": [{"connection_id": "a", "tables": [_table()]}]}
    assert '{"table": "public.ev"}' in command_for(one, "public.ev")
    assert '{"table": "public.ev"}' in command_for({"connection_id": "a", "tables": [_table()]}, "public.ev")
