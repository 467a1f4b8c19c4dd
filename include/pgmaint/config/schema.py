"""The JSON Schema of the YAML configuration, and its findings worded by field path.

The schema catches structure (unknown keys, wrong types, missing fields); `load.py` checks what a
schema cannot express.
"""

from __future__ import annotations

from typing import Any

import jsonschema

from include.pgmaint.config.model import SERVICE_KINDS

_NAME = {"type": "string", "minLength": 1}
_POS_INT = {"type": "integer", "minimum": 1}
_POS_NUM = {"type": "number", "exclusiveMinimum": 0}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["tables"],
    "properties": {
        "connection_id": _NAME,
        "timezone": _NAME,
        "state_schema": _NAME,
        "pool": _NAME,
        "schedules": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "maintenance": {"type": ["string", "null"]},
                "watchdog": {"type": ["string", "null"]},
            },
        },
        "lock_budget": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "lock_timeout_ms": {"type": "integer", "minimum": 1, "maximum": 200},
                "max_lock_timeout_ms": {"type": "integer", "minimum": 1, "maximum": 200},
                "statement_timeout_ms": _POS_INT,
                "scan_timeout_ms": _POS_INT,
                "total_seconds": _POS_NUM,
                "backoff_base_seconds": _POS_NUM,
                "backoff_cap_seconds": _POS_NUM,
            },
        },
        "preflight": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "max_connection_usage": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "long_transaction_seconds": _POS_NUM,
                "allow_waiting_sessions": {"type": "integer", "minimum": 0},
            },
        },
        "tables": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "partition_key", "interval", "premake"],
                "properties": {
                    "name": {"type": "string"},
                    "partition_key": {"type": "string"},
                    "interval": {"type": "string"},
                    "premake": {"type": "integer"},
                    "retention": {"type": ["string", "null"]},
                    "writers": {"type": "array", "items": {"type": "string"}},
                    "retention_keep_table": {"type": "boolean"},
                    "auto_migrate": {"type": "boolean"},
                    "maintained_by": {"enum": ["pgmaint", "pg_partman"]},
                    "name_format": {"type": "string"},
                },
            },
        },
        "services": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "kind"],
                "properties": {
                    "name": _NAME,
                    "kind": {"enum": list(SERVICE_KINDS)},
                    "depends_on": {"type": "array", "items": {"type": "string"}},
                    # kind-specific (which kind takes which: SERVICE_FIELDS; docs/services.md)
                    "lease_minutes": {"type": "integer", "minimum": 1, "maximum": 10080},
                    "flag": _NAME,
                    "parents": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                    "jobs": {"type": "array", "minItems": 1, "items": _NAME},
                    "dag_id": _NAME,
                    "connection_id": _NAME,
                    "pause_url": _NAME,
                    "resume_url": _NAME,
                    "status_url": _NAME,
                    "method": {"enum": ["POST", "PUT", "PATCH", "GET", "DELETE"]},
                    "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                    "body": {"type": ["object", "array", "string", "null"]},
                    "timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
                    "retries": {"type": "integer", "minimum": 0, "maximum": 10},
                },
            },
        },
        # Watchdog thresholds and the notify/page policy (include/pgmaint/config/escalation_settings.py,
        # parse_escalation; defaults there and in README). Durations: '24 hours', '30 minutes', '90 seconds'.
        "escalation": {
            "type": "object",
            "additionalProperties": False,
            "$defs": {
                "duration": {"type": "string", "pattern": r"^\s*[0-9]+\s*(seconds?|minutes?|hours?|days?|weeks?)\s*$"},
                "targets": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["kind"],
                        "properties": {
                            "kind": {"enum": ["slack", "pagerduty", "email", "log"]},
                            "connection_id": _NAME,
                            "to": {"oneOf": [_NAME, {"type": "array", "minItems": 1, "items": _NAME}]},
                            "from_email": _NAME,
                        },
                        "allOf": [
                            {
                                "if": {"required": ["kind"], "properties": {"kind": {"enum": ["slack", "pagerduty"]}}},
                                "then": {"required": ["connection_id"]},
                            },
                            {
                                "if": {"required": ["kind"], "properties": {"kind": {"const": "email"}}},
                                "then": {"required": ["to"]},
                            },
                        ],
                    },
                },
            },
            "properties": {
                "notify": {"$ref": "#/properties/escalation/$defs/targets"},
                "page": {"$ref": "#/properties/escalation/$defs/targets"},
                "page_after": {"$ref": "#/properties/escalation/$defs/duration"},
                "renotify_every": {"$ref": "#/properties/escalation/$defs/duration"},
                "failure_resolve_after": {"$ref": "#/properties/escalation/$defs/duration"},
                "runbook_url": _NAME,
                "runway_warning_intervals": {"type": "integer", "minimum": 1},
                "connections_warning_percent": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
                "connections_critical_percent": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
                "lock_wait_seconds": _POS_NUM,
                "long_transaction_seconds": _POS_NUM,
                "cadence_multiple": {"type": "number", "minimum": 1},
                "canary_timeout_ms": {"type": "integer", "minimum": 100, "maximum": 60000},
                "default_exact_count_limit": {"type": "integer", "minimum": 0, "maximum": 10_000_000},
            },
        },
    },
}


def _path(error: jsonschema.ValidationError) -> str:
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def schema_problems(raw: Any) -> tuple[list[str], set[tuple]]:
    """Problems, and the (section, index) items they are in (those items skip the semantic checks)."""
    validator = jsonschema.Draft202012Validator(SCHEMA)
    problems, bad_items = [], set()
    for error in sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path))):
        path = list(error.absolute_path)
        if not path:
            bad_items.add(("*",))  # the document itself
        elif len(path) >= 2 and isinstance(path[1], int):
            bad_items.add((path[0], path[1]))  # one table or service
        else:
            bad_items.add((path[0],))  # a whole section
        if error.validator == "additionalProperties":
            known = ", ".join(sorted(error.schema.get("properties", {})))
            extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            problems.append(f"{_path(error)}: unknown key(s) {', '.join(map(repr, extra))} (known: {known})")
        else:
            problems.append(f"{_path(error)}: {error.message}")
    return problems, bad_items
