"""Service leases: resume the services whose lease expired (their DAG run died), and say so."""

from __future__ import annotations

import logging
from datetime import datetime

from include.pgmaint.config import Config
from include.pgmaint.escalation import Condition
from include.pgmaint.watchdog.results import CheckResult

log = logging.getLogger("pgmaint.watchdog")


def check_leases(conn, config: Config) -> CheckResult:
    """Resume services whose pause lease expired (the run that paused them died or overran), and say so."""
    out = CheckResult(scope=["leases"])
    try:
        from include.pgmaint.services import live_leases, resume_expired_leases
    except ImportError as exc:
        out.conditions.append(
            Condition(
                "leases",
                "warning",
                f"lease check unavailable: include.pgmaint.services.resume_expired_leases "
                f"cannot be imported ({exc}); paused services are not resumed by the watchdog",
                {"error": str(exc)},
            )
        )
        return out
    expired = {lease["lease_id"]: lease for lease in live_leases(conn, config) if lease.get("expired")}
    if not expired:
        return out
    outcomes = resume_expired_leases(conn, config, raise_on_error=False)
    failed = [o for o in outcomes if o.action == "failed"]
    lines = [
        f"leases: {len(expired)} expired service lease(s): the run that paused these services died or overran; "
        + ("some could NOT be resumed: their writers are still off" if failed else "the watchdog resumed them")
    ]
    items = []
    for o in outcomes:
        lease = expired.get(o.lease_id, {})
        owner = f"{lease.get('dag_id')}/{lease.get('run_id')}" if lease.get("dag_id") else "?"
        until = lease.get("lease_until")
        lines.append(
            f"  {o} (paused by {owner}, lease until {until:%Y-%m-%d %H:%M} UTC)"
            if isinstance(until, datetime)
            else f"  {o} (paused by {owner})"
        )
        items.append(
            {
                **o.as_dict(),
                "paused_by": owner,
                "lease_until": until.isoformat() if isinstance(until, datetime) else until,
            }
        )
    out.conditions.append(
        Condition(
            "leases",
            "critical" if failed else "warning",
            "\n".join(lines),
            {"leases": items, "failed": [o.service for o in failed]},
        )
    )
    return out
