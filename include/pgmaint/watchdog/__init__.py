"""The watchdog's checks: each returns `Condition`s with stable keys, and the keys it evaluated.

Cheap by construction, and never a lock stronger than ACCESS SHARE:
catalog reads (`read_catalog`, `preflight`) and pg_stat_activity / pg_locks
take no table locks; the DEFAULT partition is counted exactly only up to a
bound (`LIMIT`), under a short statement_timeout; the canary reads the current
interval of each managed table through its parent (ACCESS SHARE), on its own
connection, with a lock_timeout and statement_timeout of `canary_timeout_ms`.

Per table (keys `<kind>:<schema.table>`):
  catalog           the table is missing / not range-partitioned as configured
  runway            partitions ahead of now: warning below `runway_warning_intervals`,
                    critical below one interval (or no partition for the current one);
                    tables without a DEFAULT: critical below two (inserts fail, they do not pile up)
  gaps              intervals of the managed window behind the current one without a partition
  default_rows      rows in the DEFAULT partition (auto_migrate: asset event instead, quiet condition)
  expired_attached  partitions past retention still attached
  cadence           no successful partition_maintenance for cadence_multiple x its schedule interval
  long_transactions sessions whose transaction has held locks on the table family for too long
  dual_manager      pg_partman's automatic maintenance is on for a table pgmaint maintains (include.pgmaint.partman)
Per database:
  canary            the uptime check that touches the database: critical when it fails
  connections       percent of usable max_connections in use
  lock_waits        sessions waiting for a lock longer than lock_wait_seconds, and who blocks them
  leases            expired service leases (services resumed by the watchdog), or the check unavailable

Boundaries: runway and expired partitions are judged with a grace of one cadence
threshold, so the minutes between an interval boundary and the next maintenance
run do not raise (and clear) a warning every day.
"""

from include.pgmaint.watchdog.database import canary, check_database, lock_waits
from include.pgmaint.watchdog.leases import check_leases
from include.pgmaint.watchdog.results import (
    DATABASE_KINDS,
    MAINTENANCE_DAG,
    TABLE_KINDS,
    CheckResult,
    cadence_threshold,
    key_table,
    log_result,
    maintenance_interval,
    table_keys,
)
from include.pgmaint.watchdog.run import (
    evaluate,
    open_watchdog_connection,
    run_checks,
    task_conditions_over,
    watch,
)
from include.pgmaint.watchdog.tables import check_tables

__all__ = [
    "DATABASE_KINDS",
    "MAINTENANCE_DAG",
    "TABLE_KINDS",
    "CheckResult",
    "cadence_threshold",
    "canary",
    "check_database",
    "check_leases",
    "check_tables",
    "evaluate",
    "key_table",
    "lock_waits",
    "log_result",
    "maintenance_interval",
    "open_watchdog_connection",
    "run_checks",
    "table_keys",
    "task_conditions_over",
    "watch",
]
