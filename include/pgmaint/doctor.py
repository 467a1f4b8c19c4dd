"""pgmaint doctor: every privilege pgmaint's role lacks, with the statement that grants it.

    python -m include.pgmaint.doctor CONNINFO          (or scripts/pgmaint-doctor CONNINFO)

Reads the catalog only (include/pgmaint/privileges.py): nothing is locked, nothing is written.
Exit status: 0 nothing missing, 1 privileges missing (listed, each with its fix), 3 could not
check (cannot connect, invalid config, unknown role or table), 64 usage error.
"""

from __future__ import annotations

import sys

from include.pgmaint.cli import EXIT_USAGE, Parser, one_line
from include.pgmaint.config import ConfigError
from include.pgmaint.db import connect
from include.pgmaint.fleet import load_target
from include.pgmaint.privileges import JOBS, check, ident

EXIT_OK, EXIT_MISSING, EXIT_CANNOT_CHECK = 0, 1, 3


def parser() -> Parser:
    p = Parser(
        prog="python -m include.pgmaint.doctor",
        description="List every privilege pgmaint's database role lacks for the configured tables, with the exact "
        "GRANT or ALTER ... OWNER statement that fixes each. Reads the catalog only; changes nothing.",
        epilog=f"exit status: {EXIT_OK} nothing missing, {EXIT_MISSING} privileges missing, {EXIT_CANNOT_CHECK} could "
        f"not check (connection, config, unknown role or table), {EXIT_USAGE} usage error",
    )
    p.add_argument(
        "conninfo",
        metavar="CONNINFO",
        help="libpq connection string or URI of the target database, e.g. 'host=db dbname=app user=maint'",
    )
    p.add_argument("--config", metavar="PATH", help="pgmaint YAML config (default: $PGMAINT_CONFIG, else the demo's)")
    p.add_argument("--target", metavar="NAME", help="with several targets in the config: the one CONNINFO points at")
    p.add_argument(
        "--role",
        metavar="ROLE",
        help="check this role instead of the connecting one (e.g. connect as an administrator and check pgmaint's role)",
    )
    p.add_argument(
        "--job",
        action="append",
        choices=JOBS,
        metavar="JOB",
        help=f"only what this job needs ({', '.join(JOBS)}); repeatable; default: all",
    )
    p.add_argument(
        "--table", action="append", metavar="NAME", help="only this configured table; repeatable; default: all"
    )
    p.add_argument(
        "--sql",
        action="store_true",
        help="print only the fixing statements, as a script for psql (run it as the owner or a superuser)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    try:
        config = load_target(args.config, args.target)
        tables = [config.table(name) for name in args.table] if args.table else list(config.tables)
    except (ConfigError, KeyError) as exc:
        print(f"pgmaint doctor: could not check: {one_line(exc)}", file=sys.stderr)
        return EXIT_CANNOT_CHECK
    jobs = tuple(dict.fromkeys(args.job or JOBS))
    try:
        with connect(args.conninfo, application_name="pgmaint-doctor") as conn:
            role, db, version = conn.execute(
                "SELECT coalesce(%s, current_user), current_database(), current_setting('server_version')", [args.role]
            ).fetchone()
            missing = check(conn, config, tables, jobs=jobs, role=role)
    except Exception as exc:
        print(f"pgmaint doctor: could not check: {one_line(exc)}", file=sys.stderr)
        return EXIT_CANNOT_CHECK
    if args.sql:
        print(f"-- pgmaint doctor: {len(missing)} missing privilege(s) of role {ident(role)} on database {ident(db)}")
        for m in missing:
            print(f"-- {m.privilege} on {m.target}: {', '.join(m.needed_by)}\n{m.fix}")
        return EXIT_MISSING if missing else EXIT_OK
    print(
        f"pgmaint doctor: role {ident(role)} on database {ident(db)} (PostgreSQL {version}); "
        f"{len(tables)} table(s), state schema {ident(config.state_schema)}; jobs: {', '.join(jobs)}"
    )
    if not missing:
        print("nothing missing: every privilege these jobs need is in place")
        return EXIT_OK
    print(f"{len(missing)} privilege(s) missing:")
    for m in missing:
        print(
            f"  MISSING {m.privilege} on {m.target}\n          needed by {', '.join(m.needed_by)}: {m.why}\n          {m.fix}"
        )
    print(
        "Run the statements above as the objects' owner or a superuser (--sql prints them alone, for psql), "
        "then run the doctor again."
    )
    return EXIT_MISSING


if __name__ == "__main__":
    sys.exit(main())
