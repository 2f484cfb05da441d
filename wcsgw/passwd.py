"""
``wcsgw-passwd``: set the password of a REST user (HTTP Basic auth of the production profile).

Stores a salted scrypt hash in ``<state_dir>/rest-credentials``; a running gateway uses it from the next request.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from wcsgw.rest.auth import CREDENTIALS_FILE, DEFAULT_PASSWORD, DEFAULT_USER, PasswordHash, read_credentials, \
    write_credentials


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wcsgw-passwd", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--state-dir", default="var", help="the gateway's state directory (default: var)")
    parser.add_argument("--user", default=DEFAULT_USER, help=f"user name (default: {DEFAULT_USER})")
    parser.add_argument("--password-stdin", action="store_true",
                        help="read the new password from the first line of standard input instead of prompting")
    args = parser.parse_args(argv)
    if not args.user or ":" in args.user or any(ord(ch) < 0x21 for ch in args.user):
        parser.error("--user must be non-empty, without ':', spaces or control characters")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"New password for {args.user}: ")
        if getpass.getpass("Again: ") != password:
            print("wcsgw-passwd: the passwords differ; nothing changed", file=sys.stderr)
            return 1
    if not password:
        print("wcsgw-passwd: empty password refused; nothing changed", file=sys.stderr)
        return 1
    path = Path(args.state_dir) / CREDENTIALS_FILE
    try:
        users = read_credentials(path) if path.exists() else {DEFAULT_USER: PasswordHash.make(DEFAULT_PASSWORD)}
    except (OSError, ValueError) as exc:
        print(f"wcsgw-passwd: {exc}", file=sys.stderr)
        return 1
    users[args.user] = PasswordHash.make(password)
    write_credentials(path, users)
    print(f"wcsgw-passwd: password of {args.user} changed in {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
