"""
HTTP Basic authentication of the production profile.

Credentials live in ``<state_dir>/rest-credentials``, one ``user:scrypt$N$r$p$salt$hash`` line per user (salt and
hash in base64); without that file the WCS default ``admin:admin`` applies.  ``wcsgw-passwd`` writes the file and a
running gateway picks the change up on the next request.  Hashes are compared in constant time.  A slow hash runs on
the reactor thread, so at most ``max_slow_checks_per_second`` of them run; a password already verified is
recognised again by a keyed fast digest.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger()

CREDENTIALS_FILE = "rest-credentials"
DEFAULT_USER = "admin"
DEFAULT_PASSWORD = "admin"
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32


@dataclass(frozen=True)
class PasswordHash:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def make(cls, password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> PasswordHash:
        salt = secrets.token_bytes(_SALT_BYTES)
        return cls(n, r, p, salt, _scrypt(password.encode("utf-8"), salt, n, r, p))

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        parts = text.split("$")
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError("expected scrypt$N$r$p$salt$hash")
        try:
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt = base64.b64decode(parts[4], validate=True)
            digest = base64.b64decode(parts[5], validate=True)
        except ValueError:
            raise ValueError("bad number or base64 in scrypt$N$r$p$salt$hash") from None
        if n < 2 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16 or not salt or len(digest) != _HASH_BYTES:
            raise ValueError("scrypt parameters out of range")
        return cls(n, r, p, salt, digest)

    def __str__(self) -> str:
        salt = base64.b64encode(self.salt).decode("ascii")
        digest = base64.b64encode(self.digest).decode("ascii")
        return f"scrypt${self.n}${self.r}${self.p}${salt}${digest}"

    def verify(self, password: bytes) -> bool:
        return hmac.compare_digest(_scrypt(password, self.salt, self.n, self.r, self.p), self.digest)


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=128 * r * n * 2 + 1024 * 1024,
                          dklen=_HASH_BYTES)


def read_credentials(path: Path) -> dict[str, PasswordHash]:
    """Users and hashes of a credentials file; ``ValueError`` with file and line on a bad line."""
    users: dict[str, PasswordHash] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            raise ValueError(f"{path}:{lineno}: expected user:scrypt$...")
        try:
            users[user] = PasswordHash.parse(hashed)
        except ValueError as exc:
            raise ValueError(f"{path}:{lineno}: {exc}") from None
    return users


def write_credentials(path: Path, users: dict[str, PasswordHash]) -> None:
    """Replace the credentials file atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("# wcsgw REST credentials: written by wcsgw-passwd; salted scrypt hashes, never passwords\n")
        for user, hashed in sorted(users.items()):
            out.write(f"{user}:{hashed}\n")
    os.replace(tmp, path)


class CredentialStore:
    """Checks Basic credentials against the credentials file (re-read when it changes)."""

    def __init__(self, path: Path, reactor: IReactorTime, *, max_slow_checks_per_second: int = 4) -> None:
        self.path = path
        self._reactor = reactor
        self._max_slow = max_slow_checks_per_second
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, PasswordHash] = {}
        self._fast_key = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}
        self._window_start = 0.0
        self._window_count = 0
        self._dummy = PasswordHash.make(secrets.token_hex(8))
        self._load()

    def _load(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            stamp = None
        else:
            stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp and (self._users or stamp is not None):
            return
        if stamp is None:
            users = {DEFAULT_USER: PasswordHash.make(DEFAULT_PASSWORD)}
        else:
            try:
                users = read_credentials(self.path)
            except (OSError, ValueError) as exc:
                log.error("REST credentials not reloaded, keeping the previous ones: {exc}", exc=exc)
                return
        self._stamp = stamp
        self._users = users
        self._verified.clear()

    def check(self, user: str, password: str) -> bool:
        self._load()
        presented = password.encode("utf-8")
        fast = hmac.new(self._fast_key, user.encode("utf-8") + b"\0" + presented, hashlib.sha256).digest()
        known = self._verified.get(user)
        if known is not None and hmac.compare_digest(known, fast):
            return True
        if not self._take_slow_slot():
            log.warn("REST authentication throttled: too many password checks this second")
            return False
        hashed = self._users.get(user)
        ok = (hashed or self._dummy).verify(presented) and hashed is not None
        if ok:
            self._verified[user] = fast
        return ok

    def _take_slow_slot(self) -> bool:
        now = self._reactor.seconds()
        if now - self._window_start >= 1.0:
            self._window_start = now
            self._window_count = 0
        if self._window_count >= self._max_slow:
            return False
        self._window_count += 1
        return True
