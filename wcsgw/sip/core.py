"""The user agent core: transaction layer, message routing and the call legs, sans I/O.

Inputs: :meth:`UserAgentCore.receive_datagram`, :meth:`UserAgentCore.handle_timers`,
:meth:`UserAgentCore.transport_error` and the call commands, each with ``now``. Outputs:
:meth:`UserAgentCore.take_datagrams` (bytes and a destination that may be a host name) and
:meth:`UserAgentCore.next_deadline`. Listener callbacks run synchronously inside the inputs.
"""

from __future__ import annotations

import collections
import dataclasses
import random
from collections.abc import Callable
from typing import Any

from sipmessage import Address, Message, Request, Response, URI
from twisted.logger import Logger

from wcsgw.model import CallStatus, EndInfo

from .digest import DigestClient
from .interfaces import CallListener, Destination, OutgoingCall, ResponseHandler
from .leg import ALLOW, SUPPORTED, CallLeg
from .message import (
    MalformedMessage,
    create_response,
    new_branch,
    order_headers,
    parse_datagram,
    random_token,
    response_destination,
    serialize,
    stamp_received,
    via_for,
)
from .register import Registration
from .transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ClientTransaction,
    ResponseEvent,
    ServerFailureEvent,
    ServerInviteState,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    ServerTransaction,
    TimerConfig,
    Transaction,
    client_transaction_key,
    server_transaction_key,
)

__all__ = ["Datagram", "UserAgentCore", "KNOWN_METHODS", "IN_DIALOG_METHODS"]

#: Methods we recognise (others get 501).
KNOWN_METHODS = frozenset(
    "INVITE ACK BYE CANCEL OPTIONS INFO UPDATE REGISTER PRACK SUBSCRIBE NOTIFY PUBLISH MESSAGE REFER".split()
)
#: Methods we accept inside a dialog (the other known ones get 405).
IN_DIALOG_METHODS = frozenset({"INVITE", "BYE", "OPTIONS", "INFO", "UPDATE"})
#: Option tags we support (RFC 3261 section 8.2.2.3: a Require with another one gets 420).
SUPPORTED_OPTIONS = frozenset({"timer"})


@dataclasses.dataclass(frozen=True)
class Datagram:
    """One datagram to send; ``destination`` may hold a host name (the adapter resolves it)."""

    data: bytes
    destination: Destination


class UserAgentCore:
    """All SIP state of the gateway: transactions, call legs and registrations."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        user_agent: str = "wcsgw/0.1",
        timers: TimerConfig = TimerConfig(),
        max_message_size: int = 65535,
        register_expires: int = 3600,
        token: Callable[[], str] = random_token,
        rng: random.Random | None = None,
        log: Logger | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.user_agent = user_agent
        self.timers = timers
        self.max_message_size = max_message_size
        self.register_expires = register_expires
        self.random = rng or random.Random()
        self.log = log or Logger(namespace="wcsgw.sip")
        self._token = token
        self.counters: collections.Counter[str] = collections.Counter()
        self._client: dict[tuple[Any, ...], ClientTransaction] = {}
        self._handlers: dict[tuple[Any, ...], ResponseHandler] = {}
        self._server: dict[tuple[Any, ...], ServerTransaction] = {}
        self._legs: dict[str, CallLeg] = {}
        self._registrations: dict[tuple[Any, ...], Registration] = {}
        self._out: list[Datagram] = []

    # -- introspection --------------------------------------------------------------------------------------------

    @property
    def transaction_count(self) -> int:
        return len(self._client) + len(self._server)

    @property
    def legs(self) -> dict[str, CallLeg]:
        return dict(self._legs)

    @property
    def registrations(self) -> list[Registration]:
        return list(self._registrations.values())

    @property
    def busy(self) -> bool:
        """A call is live or its signalling (or a REGISTER) is in flight."""
        return any(leg.busy for leg in self._legs.values()) or any(r.busy for r in self._registrations.values())

    @property
    def idle(self) -> bool:
        """No transaction, leg or registration left and no timer pending."""
        return not (self._client or self._server or self._legs or self._registrations)

    # -- outputs --------------------------------------------------------------------------------------------------

    def take_datagrams(self) -> list[Datagram]:
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> float | None:
        deadlines = [d for tx in self._all_transactions() if (d := tx.next_deadline()) is not None]
        deadlines += [d for leg in self._legs.values() if (d := leg.next_deadline()) is not None]
        deadlines += [d for reg in self._registrations.values() if (d := reg.next_deadline()) is not None]
        return min(deadlines) if deadlines else None

    # -- SipHost --------------------------------------------------------------------------------------------------

    def new_tag(self) -> str:
        return self._token()

    def new_call_id(self) -> str:
        return f"{self._token()}@{self.host}"

    def contact_for(self, user: str) -> Address:
        return Address(uri=URI(scheme="sip", host=self.host, user=user, port=self.port))

    def send_request(
        self, request: Request, destination: Destination, on_response: ResponseHandler, now: float
    ) -> ClientTransaction:
        self._prepare(request)
        tx: ClientTransaction
        if request.method == "INVITE":
            tx = ClientInviteTransaction(request, destination, self.timers)
        else:
            tx = ClientNonInviteTransaction(request, destination, self.timers)
        key = client_transaction_key(request)
        assert key is not None
        tx.key = key
        self._client[key] = tx
        self._handlers[key] = on_response
        tx.start(now)
        self._flush(tx, now)
        return tx

    def send_stateless(self, message: Message, destination: Destination) -> None:
        if isinstance(message, Request):
            self._prepare(message)
        self._emit(message, destination, retransmission=False)

    def send_response(self, transaction: ServerTransaction, response: Response, now: float) -> None:
        if response.headers.get("Server") is None:
            response.headers.set("Server", self.user_agent)
        order_headers(response)
        transaction.send_response(response, now)
        self._flush(transaction, now)

    def abandon(self, transaction: ClientTransaction) -> None:
        transaction.terminate()
        key = transaction.key
        if key is not None and self._client.get(key) is transaction:
            del self._client[key]
            self._handlers.pop(key, None)

    # -- calls ----------------------------------------------------------------------------------------------------

    def place_call(self, call: OutgoingCall, offer_sdp: str, listener: CallListener, now: float) -> CallLeg:
        """Start an outgoing call. ``ValueError`` when a live call has the same Call-ID."""
        if not call.call_id or any(c in call.call_id for c in " \t\r\n"):
            raise ValueError(f"invalid Call-ID {call.call_id!r}")
        existing = self._legs.get(call.call_id)
        if existing is not None and not existing.ended:
            raise ValueError(f"a call with Call-ID {call.call_id!r} is already live")
        registration = self._registration_for(call) if call.register_required else None
        leg = CallLeg(self, call, offer_sdp, listener, registration=registration)
        self._legs[call.call_id] = leg
        self.counters["calls"] += 1
        leg.start(now)
        self._sweep()
        return leg

    def hangup(
        self,
        leg: CallLeg,
        now: float,
        status: CallStatus = CallStatus.FINISH,
        info: EndInfo = EndInfo.TERMINATED_BY_REQUEST,
    ) -> None:
        leg.hangup(now, status, info)
        self._sweep()

    def send_info(
        self, leg: CallLeg, content_type: str, body: bytes, on_done: Callable[[int], None], now: float
    ) -> None:
        try:
            leg.send_info(content_type, body, on_done, now)
        finally:
            self._sweep()

    def shutdown(self, now: float) -> None:
        """Hang up every live call (GATEWAY_SHUTDOWN)."""
        for leg in list(self._legs.values()):
            leg.hangup(now, CallStatus.FINISH, EndInfo.GATEWAY_SHUTDOWN)
        self._sweep()

    def _registration_for(self, call: OutgoingCall) -> Registration:
        key = (call.login, call.domain.lower(), call.first_hop, call.authentication_name)
        registration = self._registrations.get(key)
        if registration is None or not registration.usable:
            port = call.port if not call.outbound_proxy and call.port not in (None, 5060) else None
            auth = None
            if call.password is not None:
                auth = DigestClient(call.authentication_name, call.password, cnonce=self.new_tag)
            registration = Registration(
                self,
                login=call.login,
                domain=call.domain,
                registrar_uri=URI(scheme="sip", host=call.domain, port=port),
                destination=call.first_hop,
                auth=auth,
                expires=self.register_expires,
            )
            self._registrations[key] = registration
        return registration

    # -- inputs ---------------------------------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, source: Destination, now: float) -> None:
        """One datagram from ``source``. Never raises: bad input is logged, counted and dropped."""
        self.counters["received"] += 1
        try:
            self._receive(data, source, now)
        except Exception:
            self.counters["errors"] += 1
            self.log.failure("internal error on a datagram from {source}", source=source)
        finally:
            self._sweep()

    def handle_timers(self, now: float) -> None:
        """Fire every timer due at ``now``."""
        try:
            for tx in self._all_transactions():
                if (deadline := tx.next_deadline()) is not None and deadline <= now:
                    tx.handle_timers(now)
                    self._flush(tx, now)
            for leg in list(self._legs.values()):
                if (deadline := leg.next_deadline()) is not None and deadline <= now:
                    leg.handle_timers(now)
            for registration in list(self._registrations.values()):
                if (deadline := registration.next_deadline()) is not None and deadline <= now:
                    registration.handle_timers(now)
        except Exception:
            self.counters["errors"] += 1
            self.log.failure("internal error in a SIP timer")
        finally:
            self._sweep()

    def transport_error(self, destination: Destination, now: float) -> None:
        """Sending to ``destination`` failed (unresolvable host, socket error): fail its transactions (503)."""
        for tx in self._all_transactions():
            if tx.destination == destination and not tx.terminated:
                tx.transport_error(now)
                self._flush(tx, now)
        self._sweep()

    # -- receiving ------------------------------------------------------------------------------------------------

    def _receive(self, data: bytes, source: Destination, now: float) -> None:
        if len(data) > self.max_message_size:
            self.counters["oversized"] += 1
            self.counters["dropped"] += 1
            self.log.warn("dropped a {size} byte datagram from {source}", size=len(data), source=source)
            return
        if not data.strip(b"\r\n\t \x00"):
            self.counters["keepalives"] += 1
            return
        try:
            message = parse_datagram(data)
        except MalformedMessage as exc:
            self.counters["malformed"] += 1
            self.log.info("malformed datagram from {source}: {reason}", source=source, reason=exc.reason)
            if exc.request is not None and exc.request.method != "ACK":
                self._reject_malformed(exc.request, exc.reason, source)
            return
        if isinstance(message, Response):
            self.counters["responses_received"] += 1
            self._receive_response(message, now)
        else:
            self.counters["requests_received"] += 1
            self._receive_request(message, source, now)

    def _reject_malformed(self, request: Request, reason: str, source: Destination) -> None:
        try:
            stamp_received(request, source)
            destination = response_destination(request)  # type: ignore[arg-type]
        except ValueError:
            destination = source
        phrase = "Bad Request (" + "".join(c for c in reason if c.isprintable())[:100] + ")"
        response = create_response(request, 400, phrase)
        response.headers.set("Server", self.user_agent)
        self.counters["bad_requests_answered"] += 1
        self._emit(response, destination, retransmission=False)

    def _receive_response(self, response: Response, now: float) -> None:
        top = response.via[0]
        if top.host.lower() != self.host.lower() or (top.port or 5060) != self.port:
            self.counters["dropped"] += 1
            self.log.info("dropped a response for sent-by {host}:{port}", host=top.host, port=top.port)
            return
        key = client_transaction_key(response)
        tx = self._client.get(key) if key is not None else None
        if tx is not None:
            tx.receive_response(response, now)
            self._flush(tx, now)
            return
        if 200 <= response.code < 300 and response.cseq.method == "INVITE":
            leg = self._legs.get(response.call_id)
            if leg is not None and response.from_address.parameters.get("tag") == leg.local_tag:
                leg.receive_2xx_retransmission(response, now)
                return
        self.counters["dropped"] += 1
        self.log.debug("dropped a {code} response matching no transaction", code=response.code)

    def _dialog_leg(self, request: Request) -> CallLeg | None:
        leg = self._legs.get(request.call_id)
        if leg is not None and leg.matches(request):
            return leg
        return None

    def _receive_request(self, request: Request, source: Destination, now: float) -> None:
        stamp_received(request, source)
        key = server_transaction_key(request)
        existing = self._server.get(key)
        if existing is not None:
            existing.receive_request(request, now)
            self._flush(existing, now)
            return
        method = request.method
        if method == "ACK":
            leg = self._dialog_leg(request)
            if leg is not None:
                leg.receive_ack(request, now)
            else:
                self.counters["dropped"] += 1
            return
        destination = response_destination(request)  # type: ignore[arg-type]
        tx: ServerTransaction
        if method == "INVITE":
            tx = ServerInviteTransaction(request, destination, self.timers)
        else:
            tx = ServerNonInviteTransaction(request, destination, self.timers)
        tx.key = key
        self._server[key] = tx
        if method == "CANCEL":
            self._receive_cancel(request, key, tx, now)
            return
        if method not in KNOWN_METHODS:
            self._answer(tx, request, 501, now)
            return
        unsupported = [tag for tag in request.require if tag.lower() not in SUPPORTED_OPTIONS]
        if unsupported:
            response = self._response(request, 420)
            response.headers.set("Unsupported", ", ".join(unsupported))
            self.send_response(tx, response, now)
            return
        if request.to_address.parameters.get("tag"):
            leg = self._dialog_leg(request)
            if leg is None:
                self._answer(tx, request, 481, now)
            elif method not in IN_DIALOG_METHODS:
                self._answer(tx, request, 405, now)
            else:
                leg.receive_request(request, tx, now)
        elif method == "OPTIONS":
            response = self._response(request, 200)
            response.headers.set("Accept", "application/sdp")
            response.headers.set("Supported", ", ".join(sorted(SUPPORTED_OPTIONS)))
            self.send_response(tx, response, now)
        elif method == "INVITE":
            self._answer(tx, request, 403, now)  # the gateway places calls, it does not take them
        elif method in ("BYE", "INFO", "UPDATE", "PRACK"):
            self._answer(tx, request, 481, now)
        else:
            self._answer(tx, request, 405, now)

    def _receive_cancel(self, request: Request, key: tuple[Any, ...], tx: ServerTransaction, now: float) -> None:
        invite = self._server.get(key[:-1] + ("INVITE",))
        if not isinstance(invite, ServerInviteTransaction):
            self._answer(tx, request, 481, now)
            return
        self._answer(tx, request, 200, now)
        if invite.state is ServerInviteState.PROCEEDING:
            self.send_response(invite, self._response(invite.request, 487), now)

    def _response(self, request: Request, code: int) -> Response:
        response = create_response(request, code, to_tag=self.new_tag())
        if code in (200, 405):
            response.headers.set("Allow", ALLOW)
        if code == 200:
            response.headers.set("Supported", SUPPORTED)
        return response

    def _answer(self, tx: ServerTransaction, request: Request, code: int, now: float) -> None:
        self.send_response(tx, self._response(request, code), now)

    # -- plumbing -------------------------------------------------------------------------------------------------

    def _all_transactions(self) -> list[Transaction]:
        return [*self._client.values(), *self._server.values()]

    def _prepare(self, request: Request) -> None:
        if not request.headers.get("Via"):
            request.via = [via_for(self.host, self.port, new_branch(self._token))]
        if request.headers.get("Max-Forwards") is None:
            request.headers.set("Max-Forwards", "70")
        if request.headers.get("User-Agent") is None:
            request.headers.set("User-Agent", self.user_agent)
        order_headers(request)

    def _emit(self, message: Message, destination: Destination, *, retransmission: bool) -> None:
        data = serialize(message)
        self.counters["sent"] += 1
        if retransmission:
            self.counters["retransmissions"] += 1
        self._out.append(Datagram(data, destination))

    def _flush(self, tx: Transaction, now: float) -> None:
        key = tx.key
        client = isinstance(tx, ClientTransaction)
        for message, retransmission in tx.take_messages():
            self._emit(message, tx.destination, retransmission=retransmission)
        handler = self._handlers.get(key) if client and key is not None else None
        for event in tx.take_events():
            if isinstance(event, ResponseEvent) and handler is not None:
                handler(event, now)
            elif isinstance(event, ServerFailureEvent):
                self.log.info(
                    "server transaction {method} failed with {code}", method=tx.request.method, code=event.code
                )
        if tx.terminated and key is not None:
            table: dict[tuple[Any, ...], Any] = self._client if client else self._server
            if table.get(key) is tx:
                del table[key]
                if client:
                    self._handlers.pop(key, None)

    def _sweep(self) -> None:
        for call_id, leg in list(self._legs.items()):
            if leg.finished:
                del self._legs[call_id]
        for key, registration in list(self._registrations.items()):
            if registration.finished:
                del self._registrations[key]
