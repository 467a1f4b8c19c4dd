"""Escalation: who hears about a condition, when, and how often.

A *condition* is something wrong, with a stable key (`runway:public.events`,
`canary`, `task:partition_maintenance.table.premake:public.events`), a severity
(`warning` or `critical`), a message for people and machine-readable details.
The watchdog reports the conditions it sees every run; the task-failure
callback (`on_task_failure`) reports a failed task. Both go through one policy:

- a new condition is sent once to the `notify` targets;
- it *pages* (the `page` targets) once it has persisted for `page_after`
  (default 24 h), or at once when it is critical; a page is opened once
  (PagerDuty dedup_key = the condition key, action trigger);
- while it lasts, it is re-sent no more often than `renotify_every`;
- when it clears, it is resolved (PagerDuty action resolve, a "resolved" line
  to whoever was told).

State (first seen, last seen, streak, when notified/paged/resolved) lives in
`<state_schema>.conditions`, and every message sent in `<state_schema>.alerts`,
so it survives worker restarts and responders can read it with SQL. When the
target database itself is unreachable (the outage case), state is kept in an
Airflow Variable until the database answers again, then folded back.

Notifications use the providers' notifiers (SlackWebhookNotifier,
PagerdutyNotifier, SmtpNotifier) configured by Airflow connection ids, plus a
plain log target. The providers' notifiers, the Airflow
Variable spill and the task-failure callback live in `include/pgmaint/airflow/`.

Modules, in the order a condition travels: `conditions` (the values), `policy` (pure: states +
observations + clock -> notifications), `stores` (database or memory), `rendering` (text),
`senders` (by target kind), `escalator` (ties them together; `open_escalator`).
"""

from include.pgmaint.config import EscalationSettings, Target, parse_escalation
from include.pgmaint.config.escalation_settings import anchor
from include.pgmaint.escalation.conditions import SEVERITIES, Condition, ConditionState, Notification
from include.pgmaint.escalation.escalator import Escalator, Evaluation, open_escalator, settings_for, utcnow
from include.pgmaint.escalation.policy import apply_deliveries, plan
from include.pgmaint.escalation.rendering import ago, describe_session, render
from include.pgmaint.escalation.senders import SENDERS
from include.pgmaint.escalation.stores import MemoryStore, PgStore, Store

__all__ = [
    "SENDERS",
    "SEVERITIES",
    "Condition",
    "ConditionState",
    "EscalationSettings",
    "Escalator",
    "Evaluation",
    "MemoryStore",
    "Notification",
    "PgStore",
    "Store",
    "Target",
    "ago",
    "anchor",
    "apply_deliveries",
    "describe_session",
    "open_escalator",
    "parse_escalation",
    "plan",
    "render",
    "settings_for",
    "utcnow",
]
