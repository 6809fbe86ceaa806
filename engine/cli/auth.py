"""``python -m engine hash-password``: make a ``HISTODASH_PASSWORD_HASH`` value."""

from __future__ import annotations

import argparse
import getpass
import sys

from engine.auth import MAX_PASSWORD_CHARS, hash_password
from engine.errors import HistoDashError


def _read_password(stdin=None) -> str:
    stdin = stdin or sys.stdin
    if stdin.isatty():
        first = getpass.getpass("New password: ")
        if first != getpass.getpass("Repeat it: "):
            raise HistoDashError("The two passwords differ.", "Run the command again.")
        return first
    line = stdin.readline()
    return line[:-1] if line.endswith("\n") else line  # the password is the first line, as typed


def _cmd_hash_password(args: argparse.Namespace) -> int:
    password = _read_password()
    if not password:
        raise HistoDashError("The password is empty.", "Type a password, or pipe one line to standard input.")
    if len(password) > MAX_PASSWORD_CHARS:
        raise HistoDashError(f"The password is longer than {MAX_PASSWORD_CHARS} characters.")
    print(hash_password(password))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "hash-password",
        help="make a HISTODASH_PASSWORD_HASH value (reads the password twice, or one line from standard input)",
        description="Prints a salted scrypt hash for HISTODASH_PASSWORD_HASH. Quote it in single quotes in a shell "
        "(it contains '$'); in docker-compose write each '$' as '$$'.",
    )
    p.set_defaults(func=_cmd_hash_password)
