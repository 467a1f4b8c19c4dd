"""Services that write to partitioned tables: pause them before risky work, always resume them.

Kinds (one module each, same three operations: status, pause, resume):
``flag`` (a switch applications check), ``pg_partman`` (automatic maintenance
per parent), ``pg_cron`` (named jobs), ``airflow_dag`` (another DAG, via the
REST API v2), ``http`` (admin URLs). Ordering: ``pause_order``. Leases and the
pause/resume logic: ``leases``. Airflow glue: ``include.pgmaint.airflow.services``.
Documentation: docs/services.md.
"""

from include.pgmaint.services.base import Actor, Adapter, ServiceError, Snapshot
from include.pgmaint.services.leases import (
    PauseReport,
    ServiceOutcome,
    ServicePauseError,
    ServiceResumeError,
    live_leases,
    make_adapter,
    pause_services,
    renew_leases,
    resume_expired_leases,
    resume_services,
    service_status,
)
from include.pgmaint.services.ordering import pause_order, resume_order

__all__ = [
    "Actor",
    "Adapter",
    "PauseReport",
    "ServiceError",
    "ServiceOutcome",
    "ServicePauseError",
    "ServiceResumeError",
    "Snapshot",
    "live_leases",
    "make_adapter",
    "pause_order",
    "pause_services",
    "renew_leases",
    "resume_expired_leases",
    "resume_order",
    "resume_services",
    "service_status",
]
