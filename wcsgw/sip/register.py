"""REGISTER client (RFC 3261 section 10.2), shared by the calls of one address of record, sans I/O.

The first call that needs the registration starts it; calls arriving while it runs wait for it; the binding is
refreshed before it expires while any call uses it, and removed (``Expires: 0``) when the last call releases it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Protocol

from sipmessage import Address, CSeq, Request, URI

from .digest import DigestClient, RealmKey
from .interfaces import Destination, SipHost
from .message import header_int
from .transaction import ResponseEvent, ResponseOrigin

__all__ = ["RegistrationState", "Registration", "RegistrationUser"]


class RegistrationUser(Protocol):
    def registration_ready(self, now: float) -> None: ...

    def registration_failed(self, event: ResponseEvent, now: float) -> None: ...


class RegistrationState(enum.Enum):
    IDLE = "idle"
    REGISTERING = "registering"
    REGISTERED = "registered"
    UNREGISTERING = "unregistering"
    UNREGISTERED = "unregistered"
    FAILED = "failed"


def refresh_delay(expires: int) -> float:
    """When to refresh a binding granted for ``expires`` seconds: a minute before, or half-way for short ones."""
    return expires - min(60.0, expires / 2)


class Registration:
    """One binding of ``sip:login@domain`` to our contact."""

    def __init__(
        self,
        host: SipHost,
        *,
        login: str,
        domain: str,
        registrar_uri: URI,
        destination: Destination,
        auth: DigestClient | None,
        expires: int = 3600,
    ) -> None:
        self.host = host
        self.login = login
        self.registrar_uri = registrar_uri
        self.destination = destination
        self.auth = auth
        self.requested_expires = expires
        self.state = RegistrationState.IDLE
        self.aor = Address(uri=URI(scheme="sip", host=domain, user=login))
        self.contact = host.contact_for(login)
        self.call_id = host.new_call_id()
        self.local_tag = host.new_tag()
        self.sequence = 0
        self.granted: int | None = None
        self.last_status: int | None = None
        self._users: list[RegistrationUser] = []
        self._refresh_at: float | None = None
        self._pending = False
        self._min_expires_retried = False

    def __repr__(self) -> str:
        return f"<Registration {self.aor.uri} state={self.state.value} users={len(self._users)}>"

    # -- users --------------------------------------------------------------------------------------------------

    def acquire(self, user: RegistrationUser, now: float) -> None:
        """``user`` needs the binding: told at once when it exists, or when the REGISTER ends."""
        self._users.append(user)
        if self.state is RegistrationState.REGISTERED:
            user.registration_ready(now)
        elif self.state is RegistrationState.IDLE:
            self.state = RegistrationState.REGISTERING
            self._send(self.requested_expires, frozenset(), now)

    def release(self, user: RegistrationUser, now: float) -> None:
        """``user`` no longer needs the binding; the last one removes it."""
        if user in self._users:
            self._users.remove(user)
        if not self._users and self.state is RegistrationState.REGISTERED:
            self._unregister(now)

    @property
    def usable(self) -> bool:
        """A new call may join this registration."""
        return self.state in (RegistrationState.IDLE, RegistrationState.REGISTERING, RegistrationState.REGISTERED)

    @property
    def busy(self) -> bool:
        """A REGISTER is in flight or a user still holds the binding."""
        return self._pending or bool(self._users)

    @property
    def finished(self) -> bool:
        return not self.busy and self.state in (
            RegistrationState.UNREGISTERED,
            RegistrationState.FAILED,
            RegistrationState.IDLE,
        )

    # -- timers -------------------------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return self._refresh_at

    def handle_timers(self, now: float) -> None:
        if self._refresh_at is not None and self._refresh_at <= now:
            self._refresh_at = None
            if self.state is RegistrationState.REGISTERED and not self._pending:
                self._send(self.requested_expires, frozenset(), now)

    # -- protocol -----------------------------------------------------------------------------------------------

    def _unregister(self, now: float) -> None:
        self._refresh_at = None
        self.state = RegistrationState.UNREGISTERING
        if not self._pending:
            self._send(0, frozenset(), now)

    def _send(self, expires: int, realms: frozenset[RealmKey], now: float) -> None:
        self.sequence += 1
        request = Request("REGISTER", self.registrar_uri)
        request.headers.set("From", f"{self.aor};tag={self.local_tag}")
        request.headers.set("To", str(self.aor))
        request.headers.set("Call-ID", self.call_id)
        request.cseq = CSeq(self.sequence, "REGISTER")
        request.headers.set("Contact", str(self.contact))
        request.headers.set("Expires", str(expires))
        if realms and self.auth is not None:
            self.auth.authorize(request, realms)
        self._pending = True
        self.host.send_request(request, self.destination, self._on_response(expires, realms), now)

    def _on_response(self, expires: int, realms: frozenset[RealmKey]) -> Callable[[ResponseEvent, float], None]:
        def handle(event: ResponseEvent, now: float) -> None:
            if event.code < 200:
                return
            self._pending = False
            self.last_status = event.code
            self._final(event, expires, realms, now)

        return handle

    def _final(self, event: ResponseEvent, expires: int, realms: frozenset[RealmKey], now: float) -> None:
        response = event.response
        code = event.code
        if code in (401, 407) and event.origin is ResponseOrigin.REMOTE and self.auth is not None:
            answered = self.auth.challenge(response, realms)
            if answered is not None:
                self._send(expires, answered, now)
                return
        if code == 423 and expires and not self._min_expires_retried:
            minimum = _safe_int(response, "Min-Expires")
            if minimum and minimum > expires:
                self._min_expires_retried = True
                self.requested_expires = minimum
                self._send(minimum, realms, now)
                return
        if self.state is RegistrationState.UNREGISTERING:
            if expires and 200 <= code < 300:
                # A refresh ended after the last user left: now remove the binding.
                self._send(0, realms, now)
                return
            self.state = RegistrationState.UNREGISTERED
            return
        if 200 <= code < 300:
            self.granted = self._granted_expires(event, expires)
            self.state = RegistrationState.REGISTERED
            if not self._users:
                self._unregister(now)
                return
            self._refresh_at = now + refresh_delay(self.granted)
            for user in list(self._users):
                user.registration_ready(now)
            return
        previous = self.state
        self.state = RegistrationState.FAILED
        self.host.log.warn(
            "REGISTER {aor} failed with {code} ({origin})", aor=str(self.aor.uri), code=code, origin=event.origin.value
        )
        if previous is RegistrationState.REGISTERING:
            users, self._users = self._users, []
            for user in users:
                user.registration_failed(event, now)

    def _granted_expires(self, event: ResponseEvent, requested: int) -> int:
        response = event.response
        try:
            contacts = response.contact
        except ValueError:
            contacts = []
        for contact in contacts:
            uri = contact.uri
            if (uri.user, uri.host.lower(), uri.port) == (
                self.contact.uri.user,
                self.contact.uri.host.lower(),
                self.contact.uri.port,
            ):
                value = contact.parameters.get("expires")
                if value and value.isdigit() and int(value) > 0:
                    return int(value)
        header = _safe_int(response, "Expires")
        return header if header else requested


def _safe_int(message: object, name: str) -> int | None:
    try:
        return header_int(message, name)  # type: ignore[arg-type]
    except ValueError:
        return None
