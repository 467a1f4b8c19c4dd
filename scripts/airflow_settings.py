#!/usr/bin/env python3
"""Load airflow_settings.yaml (Astro CLI format) into plain Airflow.

Plain Airflow ignores airflow_settings.yaml; this maps it onto what Airflow reads:

    airflow_settings.py [--file F] env     # `export AIRFLOW_CONN_<ID>='<json>'` and
                                           # `export AIRFLOW_VAR_<KEY>='<value>'` lines, only
                                           # for names not already set in the environment
    airflow_settings.py [--file F] pools [-o OUT]   # JSON for `airflow pools import OUT`

`${VAR}` and `${VAR:-default}` in string values are expanded from the environment;
an unset `${VAR}` without a default is an error (naming the field), as is any
malformed entry. Astro's rules are kept: connections need `conn_type` or `conn_uri`,
`conn_uri` is used only when no other conn_* field is set, `conn_extra` is a map
serialised to JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FILE = REPO / "airflow_settings.yaml"

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONN_FIELDS = {
    "conn_host": "host",
    "conn_port": "port",
    "conn_login": "login",
    "conn_password": "password",
    "conn_schema": "schema",
}
_CONN_KEYS = {"conn_id", "conn_type", "conn_uri", "conn_extra", *_CONN_FIELDS}
_POOL_KEYS = {"pool_name", "pool_slot", "pool_description"}
_VAR_KEYS = {"variable_name", "variable_value"}


class SettingsError(ValueError):
    pass


def expand(value: Any, where: str, environ: Mapping[str, str]) -> Any:
    """Expand ${VAR} / ${VAR:-default} in strings, recursively in lists/maps."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in environ and (environ[name] != "" or default is None):
                return environ[name]
            if default is not None:
                return default
            raise SettingsError(f"{where}: environment variable {name} is not set (use ${{{name}:-default}})")

        return _PLACEHOLDER.sub(sub, value)
    if isinstance(value, list):
        return [expand(v, f"{where}[{i}]", environ) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: expand(v, f"{where}.{k}", environ) for k, v in value.items()}
    return value


def load(path: Path | str = DEFAULT_FILE) -> dict[str, list[dict[str, Any]]]:
    """Parse the file; returns {"connections": [...], "pools": [...], "variables": [...]}."""
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("airflow", {}), dict):
        raise SettingsError(f"{path}: expected a top-level 'airflow:' mapping")
    section = doc.get("airflow") or {}
    out: dict[str, list[dict[str, Any]]] = {}
    for key, allowed in (("connections", _CONN_KEYS), ("pools", _POOL_KEYS), ("variables", _VAR_KEYS)):
        entries = section.get(key) or []
        if not isinstance(entries, list):
            raise SettingsError(f"{path}: airflow.{key} must be a list")
        for i, entry in enumerate(entries):
            where = f"{path.name}: airflow.{key}[{i}]"
            if not isinstance(entry, dict):
                raise SettingsError(f"{where}: must be a mapping, got {type(entry).__name__}")
            unknown = sorted(set(entry) - allowed)
            if unknown:
                raise SettingsError(
                    f"{where}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
                )
        out[key] = entries
    return out


def _required_name(entry: dict[str, Any], field: str, where: str) -> str:
    name = entry.get(field)
    if not isinstance(name, str) or not name.strip():
        raise SettingsError(f"{where}.{field}: required, must be a non-empty string")
    if not _ENV_NAME.match(name):
        raise SettingsError(f"{where}.{field}: {name!r} cannot be used in an environment variable name")
    return name


def connection_env(entry: dict[str, Any], where: str, environ: Mapping[str, str]) -> str | None:
    """The AIRFLOW_CONN_* value (JSON, or the URI) for one entry; None if Astro would skip it."""
    fields = {k: v for k, v in entry.items() if v is not None and v != ""}
    if "conn_type" not in fields and "conn_uri" not in fields:
        return None  # Astro skips such connections
    others = set(fields) - {"conn_id", "conn_uri"}
    if "conn_uri" in fields and not others:
        uri = expand(fields["conn_uri"], f"{where}.conn_uri", environ)
        if not isinstance(uri, str):
            raise SettingsError(f"{where}.conn_uri: must be a string")
        return uri
    conn: dict[str, Any] = {}
    ctype = expand(fields.get("conn_type"), f"{where}.conn_type", environ)
    if not isinstance(ctype, str) or not ctype:
        raise SettingsError(f"{where}.conn_type: required (a string such as 'postgres')")
    conn["conn_type"] = ctype
    for src, dst in _CONN_FIELDS.items():
        if src not in fields:
            continue
        value = expand(fields[src], f"{where}.{src}", environ)
        if src == "conn_port":
            if value in ("", None):
                continue
            try:
                value = int(value)
            except (TypeError, ValueError):
                raise SettingsError(f"{where}.conn_port: must be an integer, got {value!r}") from None
        elif not isinstance(value, str):
            value = str(value)
        if value != "":
            conn[dst] = value
    if "conn_extra" in fields:
        extra = fields["conn_extra"]
        if isinstance(extra, str):
            try:
                extra = json.loads(expand(extra, f"{where}.conn_extra", environ))
            except json.JSONDecodeError as exc:
                raise SettingsError(f"{where}.conn_extra: a string must hold a JSON object: {exc}") from None
        if not isinstance(extra, dict):
            raise SettingsError(f"{where}.conn_extra: must be a mapping")
        conn["extra"] = expand(extra, f"{where}.conn_extra", environ)
    return json.dumps(conn, separators=(",", ":"))


def env_exports(settings: dict[str, list[dict[str, Any]]], environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """{ENV_NAME: value} for connections and variables not already in ``environ``."""
    out: dict[str, str] = {}
    for i, entry in enumerate(settings.get("connections", [])):
        where = f"airflow.connections[{i}]"
        conn_id = _required_name(entry, "conn_id", where)
        name = f"AIRFLOW_CONN_{conn_id.upper()}"
        if name in environ:
            continue  # don't expand placeholders of overridden entries
        value = connection_env(entry, f"{where} ({conn_id})", environ)
        if value is not None:
            out[name] = value
    for i, entry in enumerate(settings.get("variables", [])):
        where = f"airflow.variables[{i}]"
        key = _required_name(entry, "variable_name", where)
        name = f"AIRFLOW_VAR_{key.upper()}"
        if name in environ:
            continue
        if "variable_value" not in entry or entry["variable_value"] is None:
            raise SettingsError(f"{where} ({key}).variable_value: required")
        value = entry["variable_value"]
        if isinstance(value, (dict, list)):
            value = json.dumps(expand(value, f"{where} ({key}).variable_value", environ))
        else:
            value = expand(
                str(value) if not isinstance(value, str) else value, f"{where} ({key}).variable_value", environ
            )
        out[name] = value
    return out


def pools_json(
    settings: dict[str, list[dict[str, Any]]], environ: Mapping[str, str] = os.environ
) -> dict[str, dict[str, Any]]:
    """Pools in the format of `airflow pools import`."""
    pools: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(settings.get("pools", [])):
        where = f"airflow.pools[{i}]"
        name = entry.get("pool_name")
        if not isinstance(name, str) or not name.strip():
            raise SettingsError(f"{where}.pool_name: required, must be a non-empty string")
        where = f"{where} ({name})"
        slots = expand(entry.get("pool_slot"), f"{where}.pool_slot", environ)
        if slots is None:
            raise SettingsError(f"{where}.pool_slot: required (number of slots)")
        try:
            slots = int(slots)
        except (TypeError, ValueError):
            raise SettingsError(f"{where}.pool_slot: must be an integer, got {slots!r}") from None
        if slots < -1:
            raise SettingsError(f"{where}.pool_slot: must be >= 0 (or -1 for unlimited), got {slots}")
        if name in pools:
            raise SettingsError(f"{where}.pool_name: duplicate pool {name!r}")
        desc = expand(entry.get("pool_description") or "", f"{where}.pool_description", environ)
        pools[name] = {"slots": slots, "description": str(desc), "include_deferred": False}
    return pools


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="airflow_settings.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--file", type=Path, default=DEFAULT_FILE, help="settings file (default: %(default)s)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("env", help="print export lines for AIRFLOW_CONN_*/AIRFLOW_VAR_* not already set")
    p_pools = sub.add_parser("pools", help="write the pools JSON for `airflow pools import`")
    p_pools.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    args = ap.parse_args(argv)
    try:
        settings = load(args.file)
        if args.cmd == "env":
            for name, value in env_exports(settings).items():
                print(f"export {name}={shlex.quote(value)}")
        else:
            text = json.dumps(pools_json(settings), indent=2) + "\n"
            if args.output:
                args.output.write_text(text)
            else:
                sys.stdout.write(text)
    except (SettingsError, OSError) as exc:
        print(f"airflow_settings: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
