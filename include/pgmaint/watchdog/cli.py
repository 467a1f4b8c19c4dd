"""`python -m include.pgmaint.watchdog CONNINFO`: every check once, printed; exit status by severity."""

from __future__ import annotations

import sys

from include.pgmaint.cli import EXIT_USAGE, Parser, one_line, privilege_hint
from include.pgmaint.escalation import settings_for
from include.pgmaint.fleet import load_target
from include.pgmaint.watchdog.run import run_checks

EXIT_CLEAR, EXIT_WARNING, EXIT_CRITICAL, EXIT_CANNOT_CHECK = 0, 1, 2, 3


def cli_parser():

    return Parser(
        prog="python -m include.pgmaint.watchdog",
        description="Run every watchdog check once against the target database and print what it finds. "
        "Notifies nobody and records no condition (the escalation policy runs only in the "
        "partition_watchdog DAG).",
        epilog=f"exit status: {EXIT_CLEAR} all clear, {EXIT_WARNING} warnings, {EXIT_CRITICAL} something critical "
        f"(the canary failing to connect or read counts as critical), {EXIT_CANNOT_CHECK} could not check "
        f"(invalid config, missing privileges, a check's query failed), {EXIT_USAGE} usage error",
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m include.pgmaint.watchdog CONNINFO`: run every check and print what it finds (see --help)."""

    parser = cli_parser()
    parser.add_argument(
        "conninfo",
        metavar="CONNINFO",
        help="libpq connection string or URI of the target database, e.g. 'host=db dbname=app user=pgmaint'",
    )
    parser.add_argument(
        "--config", metavar="PATH", help="pgmaint YAML config (default: $PGMAINT_CONFIG, else the demo's)"
    )
    parser.add_argument(
        "--target", metavar="NAME", help="with several targets in the config: the one CONNINFO points at"
    )
    args = parser.parse_args(argv)
    try:
        config = load_target(args.config, args.target)
        result = run_checks(args.conninfo, config, settings_for(config))
    except Exception as exc:  # a failure to check is not a finding: its own exit status, one line
        print(f"pgmaint watchdog: could not check: {one_line(exc)}{privilege_hint(exc)}", file=sys.stderr)
        return EXIT_CANNOT_CHECK
    for note in result.notes:
        print(f"  . {note}")
    if not result.conditions:
        print(f"all clear ({len(result.scope)} checks)")
        return EXIT_CLEAR
    for c in sorted(result.conditions, key=lambda c: (c.severity != "critical", c.key)):
        first, *rest = c.message.splitlines()
        print(f"{c.severity.upper():8} {c.key}\n         {first}" + "".join(f"\n         {line}" for line in rest))
    return EXIT_CRITICAL if any(c.severity == "critical" for c in result.conditions) else EXIT_WARNING
