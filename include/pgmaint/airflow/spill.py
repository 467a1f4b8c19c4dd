"""Condition state while the target database is unreachable: an Airflow Variable per target."""

from __future__ import annotations

import logging

from include.pgmaint.config import Config
from include.pgmaint.escalation.stores import MemoryStore

log = logging.getLogger("pgmaint.escalation")


def variable_spill(schema: str) -> MemoryStore:
    """Where conditions go while the state database is unreachable: an Airflow Variable.

    Outside a task (no Airflow API) it degrades to memory, i.e. stateless for that evaluation.
    """
    key = f"pgmaint_escalation_spill_{schema}"
    memory = MemoryStore()

    def read() -> str | None:
        try:
            from airflow.sdk import Variable

            return Variable.get(key, default=None)
        except Exception as exc:
            log.warning("cannot read Airflow Variable %s (%s); condition state is not kept", key, exc)
            return memory._blob

    def write(value: str | None) -> None:
        try:
            from airflow.sdk import Variable

            if value is None:
                if Variable.get(key, default=None) is not None:
                    Variable.delete(key)
            else:
                Variable.set(
                    key, value, description="pgmaint: open conditions while the state database was unreachable"
                )
        except Exception as exc:
            log.warning("cannot write Airflow Variable %s (%s); condition state is not kept", key, exc)
            memory._blob = value

    return MemoryStore(read, write)


def spill_for(config: Config) -> MemoryStore:
    """The fallback store of one target database."""
    return variable_spill(config.state_schema if config.target is None else f"{config.state_schema}_{config.target}")
