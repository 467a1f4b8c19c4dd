"""The `pg_cron` adapter against PostgreSQL 15 with pg_cron preloaded (skips with the reason when not installed)."""

from __future__ import annotations

import uuid

import pytest

from include.pgmaint.services import ServiceError, ServicePauseError, pause_services, resume_services
from include.pgmaint.services.leases import make_adapter

RUN = {"dag_id": "default_partition_migration", "run_id": "manual__1"}
NEVER = "0 0 31 2 *"  # 31 February: the scheduler never runs these jobs


@pytest.fixture
def jobs(cron_conn):
    """Three named jobs; the third is inactive (switched off by someone)."""
    tag = uuid.uuid4().hex[:6]
    names = [f"refresh_{tag}", f"sync_{tag}", f"report_{tag}"]
    ids = [cron_conn.execute("SELECT cron.schedule(%s, %s, 'SELECT 1')", [name, NEVER]).fetchone()[0] for name in names]
    cron_conn.execute("SELECT cron.alter_job(%s, active := false)", [ids[2]])
    yield names
    for jobid in ids:
        cron_conn.execute("SELECT cron.unschedule(%s)", [jobid])


def active(conn, names) -> dict[str, bool]:
    return dict(conn.execute("SELECT jobname, active FROM cron.job WHERE jobname = ANY(%s)", [names]).fetchall())


def test_pause_deactivates_jobs_and_resume_reactivates_only_those(cron_conn, jobs, pg15_state_schema, make_config):
    refresh, sync, report_ = jobs
    cfg = make_config(pg15_state_schema, [{"name": "cron", "kind": "pg_cron", "jobs": jobs}])
    report = pause_services(cron_conn, cfg, ["cron"], **RUN)
    assert report.held == ["cron"]
    assert active(cron_conn, jobs) == {refresh: False, sync: False, report_: False}
    resume_services(cron_conn, cfg, **RUN)
    assert active(cron_conn, jobs) == {refresh: True, sync: True, report_: False}  # report_ was off before: stays off


def test_all_jobs_inactive_is_paused_by_someone_else(cron_conn, jobs, pg15_state_schema, make_config):
    cfg = make_config(pg15_state_schema, [{"name": "cron", "kind": "pg_cron", "jobs": [jobs[2]]}])
    report = pause_services(cron_conn, cfg, ["cron"], **RUN)
    assert report.held == [] and "inactive" in report.left_alone[0].detail


def test_unknown_job_is_a_clear_error(cron_conn, jobs, pg15_state_schema, make_config):
    cfg = make_config(pg15_state_schema, [{"name": "cron", "kind": "pg_cron", "jobs": [jobs[0], "no_such_job"]}])
    with pytest.raises(ServicePauseError, match="no job named 'no_such_job' in cron.job"):
        pause_services(cron_conn, cfg, ["cron"], **RUN)
    assert active(cron_conn, jobs)[jobs[0]] is True


def test_extension_absent_is_a_clear_error(target, scratch_schema, make_config):
    """The embedded PostgreSQL 16 has no pg_cron: runs anywhere."""
    cfg = make_config(scratch_schema, [{"name": "cron", "kind": "pg_cron", "jobs": ["nightly"]}])
    with pytest.raises(
        ServiceError, match=r"the pg_cron extension is not installed in database 'pgmaint_test_\d+'.*cron.database_name"
    ):
        make_adapter(cfg.services[0], cfg, target).status()
    with pytest.raises(ServicePauseError, match="pg_cron extension is not installed"):
        pause_services(target, cfg, ["cron"], **RUN)
