"""HTTP Digest authentication client for SIP (RFC 2617, RFC 7616, RFC 8760, RFC 3261 section 22).

Supported: MD5, MD5-sess, SHA-256, SHA-256-sess, SHA-512-256 and SHA-512-256-sess; qop ``auth``, ``auth-int`` and no
qop (RFC 2069 compatibility); one nonce count per nonce; ``stale=true``; WWW-Authenticate (401) and
Proxy-Authenticate (407), several challenges per response (RFC 8760: the first supported algorithm of each realm is
used). Not supported: ``userhash`` and ``username*`` (RFC 7616 sections 3.4.4 and 3.4.5).

The password never appears in a repr or a log line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Iterable

from sipmessage import AuthChallenge, AuthCredentials, AuthParameters, Request, Response

from .message import random_token

__all__ = [
    "ALGORITHMS",
    "DigestChallenge",
    "DigestClient",
    "RealmKey",
    "compute_digest_response",
    "parse_auth_challenge",
]

#: Algorithm name (upper case) -> (hashlib name, session variant).
ALGORITHMS: dict[str, tuple[str, bool]] = {
    "MD5": ("md5", False),
    "MD5-SESS": ("md5", True),
    "SHA-256": ("sha256", False),
    "SHA-256-SESS": ("sha256", True),
}
if "sha512_256" in hashlib.algorithms_available:  # pragma: no branch - depends on the OpenSSL build
    ALGORITHMS["SHA-512-256"] = ("sha512_256", False)
    ALGORITHMS["SHA-512-256-SESS"] = ("sha512_256", True)

_SUPPORTED_QOP = ("auth", "auth-int")

#: A protection space: (True for Proxy-Authenticate, realm).
RealmKey = tuple[bool, str]

_TOKEN = r"[A-Za-z0-9.!%*_+`'~-]+"
_SCHEME = re.compile(rf"^\s*({_TOKEN})\s+(.*)$", re.S)
_PARAM = re.compile(rf'\s*({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*(,|$)', re.S)


def parse_auth_challenge(value: str) -> AuthChallenge:
    """Parse a WWW-Authenticate or Proxy-Authenticate value into ``sipmessage.AuthChallenge``.

    ``sipmessage`` 0.7 splits parameters on every comma, even inside quotes, so the common
    ``qop="auth,auth-int"`` fails there; such values are re-read here with quote-aware splitting.
    Raises ``ValueError`` when the value is not ``scheme param=value, ...``.
    """
    try:
        return AuthChallenge.parse(value)
    except ValueError:
        pass
    match = _SCHEME.match(value)
    if match is None:
        raise ValueError(f"invalid authentication challenge {value!r}")
    scheme, rest = match.groups()
    params: dict[str, str] = {}
    position = 0
    rest = rest.strip()
    while position < len(rest):
        item = _PARAM.match(rest, position)
        if item is None or item.end() == position:
            raise ValueError(f"invalid authentication challenge {value!r}")
        name, raw, _separator = item.groups()
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[name] = raw
        position = item.end()
    return AuthChallenge(scheme=scheme, parameters=AuthParameters(**params))


@dataclasses.dataclass(frozen=True)
class DigestChallenge:
    """One Digest challenge, as read from a 401 or 407 response."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    proxy: bool = False

    @classmethod
    def from_header(cls, value: str, *, proxy: bool) -> DigestChallenge:
        """Read one header value. ``ValueError`` when it is not a Digest challenge with a realm and a nonce."""
        challenge = parse_auth_challenge(value)
        if challenge.scheme.lower() != "digest":
            raise ValueError(f"not a Digest challenge: scheme {challenge.scheme}")
        params = {key.lower(): item for key, item in challenge.parameters.items()}
        if "realm" not in params:
            raise ValueError("Digest challenge without realm")
        if not params.get("nonce"):
            raise ValueError("Digest challenge without nonce")
        qop = tuple(token.strip().lower() for token in params.get("qop", "").split(",") if token.strip())
        return cls(
            realm=params["realm"],
            nonce=params["nonce"],
            algorithm=params.get("algorithm", "MD5"),
            qop=qop,
            opaque=params.get("opaque"),
            stale=params.get("stale", "").lower() == "true",
            proxy=proxy,
        )

    @property
    def key(self) -> RealmKey:
        return (self.proxy, self.realm)

    @property
    def supported(self) -> bool:
        """We know the algorithm and, when qop is offered, one of its values."""
        if self.algorithm.upper() not in ALGORITHMS:
            return False
        return not self.qop or any(q in _SUPPORTED_QOP for q in self.qop)

    @property
    def chosen_qop(self) -> str | None:
        """``auth`` when offered, else ``auth-int``, else ``None`` (no qop)."""
        for qop in _SUPPORTED_QOP:
            if qop in self.qop:
                return qop
        return None


def _hash(algorithm: str, data: str | bytes) -> str:
    name, _sess = ALGORITHMS[algorithm.upper()]
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.new(name, data).hexdigest()


def compute_digest_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None = None,
    nc: str = "00000001",
    cnonce: str = "",
    body: bytes = b"",
    session_ha1: str | None = None,
) -> str:
    """The ``response`` value (RFC 7616 section 3.4.1, RFC 2617 section 3.2.2).

    For a ``-sess`` algorithm ``session_ha1`` may carry the session key computed for the first request on this nonce.
    """
    _name, sess = ALGORITHMS[algorithm.upper()]
    ha1 = _hash(algorithm, f"{username}:{realm}:{password}")
    if sess:
        ha1 = session_ha1 or _hash(algorithm, f"{ha1}:{nonce}:{cnonce}")
    if qop == "auth-int":
        ha2 = _hash(algorithm, f"{method}:{uri}:{_hash(algorithm, body)}")
    else:
        ha2 = _hash(algorithm, f"{method}:{uri}")
    if qop is None:
        return _hash(algorithm, f"{ha1}:{nonce}:{ha2}")
    return _hash(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def _challenges(response: Response) -> list[DigestChallenge]:
    proxy = response.code == 407
    header = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
    found: list[DigestChallenge] = []
    for value in response.headers.getlist(header):
        try:
            found.append(DigestChallenge.from_header(value, proxy=proxy))
        except ValueError:
            continue
    return found


class DigestClient:
    """Answers the Digest challenges of one user (one call leg, one registration).

    Usage: on a 401/407, ``realms = client.challenge(response, previous)``; ``None`` means give up (nothing we
    support, or a realm we already answered challenged again without ``stale=true``: the credentials are wrong).
    Otherwise build the new request and call ``client.authorize(request, realms)``.
    """

    def __init__(self, username: str, password: str, *, cnonce: Callable[[], str] = random_token) -> None:
        self.username = username
        self._password = password
        self._cnonce = cnonce
        self._challenges: dict[RealmKey, DigestChallenge] = {}
        self._nonce_counts: dict[str, int] = {}
        self._session_keys: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<DigestClient username={self.username!r} realms={sorted(r for _p, r in self._challenges)!r}>"

    def nonce_count(self, nonce: str) -> int:
        """How many requests were authorized with ``nonce``."""
        return self._nonce_counts.get(nonce, 0)

    def challenge(self, response: Response, previous: Iterable[RealmKey] = ()) -> frozenset[RealmKey] | None:
        """Take the challenges of a 401 or 407; return the protection spaces to answer, or ``None`` to give up."""
        answered = frozenset(previous)
        chosen: dict[RealmKey, DigestChallenge] = {}
        for challenge in _challenges(response):
            if challenge.supported and challenge.key not in chosen:
                chosen[challenge.key] = challenge
        if not chosen:
            return None
        for key, challenge in chosen.items():
            if key in answered and not challenge.stale:
                return None
        self._challenges.update(chosen)
        return answered | frozenset(chosen)

    def authorize(self, request: Request, realms: Iterable[RealmKey]) -> None:
        """Add Authorization / Proxy-Authorization for ``realms`` to ``request`` (one nonce count each)."""
        request.headers.remove("Authorization")
        request.headers.remove("Proxy-Authorization")
        for key in sorted(realms):
            challenge = self._challenges.get(key)
            if challenge is None:
                continue
            credentials = self.credentials(challenge, request.method, str(request.uri), request.body)
            request.headers.add("Proxy-Authorization" if challenge.proxy else "Authorization", str(credentials))

    def credentials(self, challenge: DigestChallenge, method: str, uri: str, body: bytes = b"") -> AuthCredentials:
        """The credentials answering ``challenge`` for one request (increments the nonce count)."""
        qop = challenge.chosen_qop
        params: dict[str, str] = {
            "username": self.username,
            "realm": challenge.realm,
            "nonce": challenge.nonce,
            "uri": uri,
        }
        algorithm = challenge.algorithm
        _name, sess = ALGORITHMS[algorithm.upper()]
        count = self._nonce_counts.get(challenge.nonce, 0) + 1
        self._nonce_counts[challenge.nonce] = count
        nc = f"{count:08x}"
        cnonce = self._cnonce() if (qop or sess) else ""
        session_ha1 = None
        if sess:
            session_ha1 = self._session_keys.get(challenge.nonce)
            if session_ha1 is None:
                ha1 = _hash(algorithm, f"{self.username}:{challenge.realm}:{self._password}")
                session_ha1 = _hash(algorithm, f"{ha1}:{challenge.nonce}:{cnonce}")
                self._session_keys[challenge.nonce] = session_ha1
        params["response"] = compute_digest_response(
            algorithm=algorithm,
            username=self.username,
            realm=challenge.realm,
            password=self._password,
            nonce=challenge.nonce,
            method=method,
            uri=uri,
            qop=qop,
            nc=nc,
            cnonce=cnonce,
            body=body,
            session_ha1=session_ha1,
        )
        params["algorithm"] = algorithm
        if qop:
            params["cnonce"] = cnonce
            params["qop"] = qop
            params["nc"] = nc
        elif sess:
            params["cnonce"] = cnonce
        if challenge.opaque is not None:
            params["opaque"] = challenge.opaque
        return AuthCredentials(scheme="Digest", parameters=AuthParameters(**params))
