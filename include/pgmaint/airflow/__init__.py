"""Everything that touches the Airflow SDK: the only package of pgmaint that imports `airflow`.

- `tasks.py`           task bodies of partition_maintenance and default_partition_migration
- `services.py`        pause / resume the writer services around a migration (leases, the window)
- `quality.py`         the Great Expectations gate as a task (Data Docs, XCom on failure)
- `watchdog_tasks.py`  partition_watchdog's checks per target, and escalation
- `callbacks.py`       `on_task_failure` (light: DAG files import it at parse time)
- `failure_report.py`  a failed task as a condition: target, table, step, blockers
- `spill.py`           condition state in an Airflow Variable while the target database is down
- `notifiers.py`       Slack, PagerDuty and e-mail through the providers' notifiers
- `connections.py`     connection lookup: a connection id -> conninfo / API endpoint
- `assets.py`          the DEFAULT_ROWS asset (watchdog -> migration)

The engine (`include/pgmaint/*` outside this package) never imports Airflow
(`tests/unit/test_architecture.py` walks the code to keep it so); it reaches this package only
to look up a connection or send through a provider, at the moment it needs to.
"""
