"""Airflow Assets shared by the DAGs (imported at parse time: keep it free of work)."""

from airflow.sdk import Asset

# The watchdog emits an event on this asset, with extra {"table": "<schema.table>"}, when a
# table with `auto_migrate: true` has rows in its DEFAULT partition; default_partition_migration
# is scheduled on it and migrates that table.
DEFAULT_ROWS = Asset("pgmaint_default_rows")
