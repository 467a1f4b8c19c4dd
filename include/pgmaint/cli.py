"""What pgmaint's command-line tools share: an argparse parser whose usage errors exit 64
(EX_USAGE; argparse's own 2 would read as a finding), and one-line error messages."""

from __future__ import annotations

import argparse
import sys

from psycopg import errors

EXIT_USAGE = 64


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def one_line(exc: BaseException) -> str:
    """`InsufficientPrivilege: permission denied for schema api` — the first line of the message, no traceback."""
    text = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def privilege_hint(exc: BaseException) -> str:
    """A pointer to the doctor when the error is a missing privilege."""

    if isinstance(exc, errors.InsufficientPrivilege):
        return " (python -m include.pgmaint.doctor CONNINFO lists every missing privilege with the GRANT that fixes it)"
    return ""
