"""Tests for wcsgw.rest.auth and the wcsgw-passwd command."""

from __future__ import annotations

import io
import sys
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wcsgw import passwd
from wcsgw.rest.auth import CredentialStore, PasswordHash, read_credentials, write_credentials


class PasswordHashTests(SynchronousTestCase):
    def test_round_trip_and_verify(self) -> None:
        """A hash is salted scrypt, survives its text form, and verifies only the right password."""
        hashed = PasswordHash.make("pw", n=2**10)
        again = PasswordHash.parse(str(hashed))
        self.assertEqual(again, hashed)
        self.assertTrue(again.verify(b"pw"))
        self.assertFalse(again.verify(b"pw "))
        self.assertNotEqual(PasswordHash.make("pw", n=2**10).salt, hashed.salt)

    def test_parse_errors(self) -> None:
        """Malformed hashes are refused with a precise message."""
        for text, message in [("md5$1$2", "expected scrypt$N$r$p$salt$hash"),
                              ("scrypt$x$8$1$AA==$AA==", "bad number or base64"),
                              ("scrypt$1000$8$1$AAAA$" + "A" * 44, "scrypt parameters out of range")]:
            with self.assertRaises(ValueError) as caught:
                PasswordHash.parse(text)
            self.assertIn(message, str(caught.exception))

    def test_credentials_file_bad_line(self) -> None:
        """A bad line of the credentials file is reported with file and line."""
        path = Path(self.mktemp())
        path.write_text("# c\nadmin\n")
        with self.assertRaises(ValueError) as caught:
            read_credentials(path)
        self.assertIn(f"{path}:2:", str(caught.exception))


class CredentialStoreTests(SynchronousTestCase):
    def test_throttles_slow_checks(self) -> None:
        """Beyond the slow-check budget per second, unknown passwords are refused without hashing."""
        clock = Clock()
        path = Path(self.mktemp())
        write_credentials(path, {"admin": PasswordHash.make("right", n=2**10)})
        store = CredentialStore(path, clock, max_slow_checks_per_second=2)
        self.assertFalse(store.check("admin", "a"))
        self.assertTrue(store.check("admin", "right"))
        self.assertFalse(store.check("admin", "right-not"))
        self.assertTrue(store.check("admin", "right"))  # verified before: no slow check needed
        clock.advance(1)
        self.assertFalse(store.check("nobody", "right"))

    def test_throttled_correct_password_refused_until_next_second(self) -> None:
        """With the budget spent, even the right password waits for the next second unless verified before."""
        clock = Clock()
        path = Path(self.mktemp())
        write_credentials(path, {"admin": PasswordHash.make("right", n=2**10)})
        store = CredentialStore(path, clock, max_slow_checks_per_second=1)
        self.assertFalse(store.check("admin", "guess"))
        self.assertFalse(store.check("admin", "right"))
        clock.advance(1)
        self.assertTrue(store.check("admin", "right"))

    def test_unreadable_change_keeps_previous(self) -> None:
        """A broken credentials file is not taken: the previous credentials stay."""
        clock = Clock()
        path = Path(self.mktemp())
        write_credentials(path, {"admin": PasswordHash.make("right", n=2**10)})
        store = CredentialStore(path, clock, max_slow_checks_per_second=100)
        path.write_text("garbage line\n")
        self.assertTrue(store.check("admin", "right"))


class PasswdCommandTests(SynchronousTestCase):
    def run_passwd(self, args: list[str], stdin: str) -> int:
        self.patch(sys, "stdin", io.StringIO(stdin))
        self.patch(sys, "stdout", io.StringIO())
        self.patch(sys, "stderr", io.StringIO())
        return passwd.main(args)

    def test_sets_password_keeping_other_users(self) -> None:
        """wcsgw-passwd stores a hash for the user (mode 0600) and keeps the other users."""
        state = Path(self.mktemp())
        self.assertEqual(self.run_passwd(["--state-dir", str(state), "--user", "ops", "--password-stdin"], "o\n"), 0)
        users = read_credentials(state / "rest-credentials")
        self.assertEqual(sorted(users), ["admin", "ops"])
        self.assertTrue(users["ops"].verify(b"o"))
        self.assertTrue(users["admin"].verify(b"admin"))
        self.assertEqual((state / "rest-credentials").stat().st_mode & 0o777, 0o600)

    def test_refuses_empty_password(self) -> None:
        """An empty password is refused and nothing is written."""
        state = Path(self.mktemp())
        self.assertEqual(self.run_passwd(["--state-dir", str(state), "--password-stdin"], "\n"), 1)
        self.assertFalse((state / "rest-credentials").exists())
