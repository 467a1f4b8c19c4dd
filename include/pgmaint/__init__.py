"""pgmaint: keep time-partitioned PostgreSQL tables healthy without becoming the cause of an outage.

The modules in the order data flows through them (one line each; each file's docstring says more):

  config/         the YAML: schema, frozen values, the escalation settings, `load_config`
  fleet.py        several target databases in one file (`targets:`)
  intervals.py    partition intervals and durations on the configured time zone's wall clock
  naming.py       partition names: pg_partman's schemes, or `name_format`
  db.py           connections, always with lock_timeout / statement_timeout in force
  catalog.py      catalog facts about the configured tables, in one query
  plan.py         pure: catalog facts + a time -> what maintenance should do (set arithmetic)
  ddl.py          a plan -> statements, each with the lock it takes
  guards.py       what keeps a run from causing an outage: runner lock, preflight, circuit breaker
  execute.py      the one place that executes statements: timeouts, retries, the journal
  state.py        pgmaint's own schema: migrations and the run/step journal
  maintenance.py  one maintenance run: premake, retire (plan_run -> execute)
  mirror.py       the copy-first migration's statements (shadows, mirror trigger, swap)
  backfill.py     copy the DEFAULT's rows into the shadows; prove the copies at the swap
  figures.py      row counts and checksums per interval: conservation, proven
  migrate.py      one migration run, phase by phase, resumable after any stop
  services/       pause and resume the services that write to a table, in dependency order
  quality/        the Great Expectations gates between stages
  report.py       health per table (runway, expired partitions, DEFAULT rows)
  escalation/     conditions -> who hears about them, when, how often
  watchdog/       the checks that find conditions, and `python -m include.pgmaint.watchdog`
  overview.py     the Partitions view's data; overview_page.py draws it
  partman.py      taking over from pg_partman, and handing back
  privileges.py   every privilege the jobs need; doctor.py prints the GRANTs that are missing
  cli.py          what the command-line tools share
  airflow/        everything that imports Airflow: task bodies, callbacks, Variable spill, notifiers,
                  connection lookup (the engine above never imports Airflow; tests/unit/test_architecture.py)

DAG files (`dags/`) read like the runbook and import only `fleet`, `config` and the light
`airflow.callbacks` / `airflow.assets` at parse time.
"""
