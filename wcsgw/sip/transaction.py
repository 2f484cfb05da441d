"""RFC 3261 section 17 transaction state machines, sans I/O.

Each machine is one class with an enum of states. Inputs are messages, timer firings and transport errors, each with
``now`` (seconds, any monotonic origin). Outputs are read back by the owner:

- :meth:`Transaction.take_messages`: messages to hand to the transport, in order, for :attr:`Transaction.destination`;
- :meth:`Transaction.take_events`: what the transaction user (TU) must learn;
- :attr:`Transaction.timers` / :meth:`Transaction.next_deadline`: the pending RFC timers (absolute deadlines).

A timer is never armed outside the transaction: the owner calls :meth:`Transaction.handle_timers` when the earliest
deadline is reached. Every timer is dropped when the machine reaches its Terminated state.

Timeouts and transport errors of client transactions reach the TU as synthesized 408 and 503 responses
(:class:`ResponseEvent` with a :class:`ResponseOrigin` saying so), as RFC 3261 section 8.1.3.1 suggests.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

from sipmessage import CSeq, Message, Request, Response

from .message import BRANCH_MAGIC_COOKIE, create_response

__all__ = [
    "TimerConfig",
    "Timer",
    "ResponseOrigin",
    "ResponseEvent",
    "ServerFailureEvent",
    "TransactionEvent",
    "ClientInviteState",
    "ClientNonInviteState",
    "ServerInviteState",
    "ServerNonInviteState",
    "Transaction",
    "ClientTransaction",
    "ServerTransaction",
    "ClientInviteTransaction",
    "ClientNonInviteTransaction",
    "ServerInviteTransaction",
    "ServerNonInviteTransaction",
    "client_transaction_key",
    "server_transaction_key",
    "create_non_2xx_ack",
    "create_cancel",
]

Destination = tuple[str, int]


@dataclasses.dataclass(frozen=True)
class TimerConfig:
    """The RFC 3261 timer base values (section 17.1.1.1 and table 4), in seconds."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    #: Timer D for unreliable transports ("at least 32 seconds").
    timer_d: float = 32.0

    def __post_init__(self) -> None:
        if not (self.t1 > 0 and self.t2 >= self.t1 and self.t4 >= 0 and self.timer_d >= 0):
            raise ValueError(f"invalid SIP timer values {self!r}")

    @property
    def timer_b(self) -> float:
        """Timer B, F, H and J: 64*T1."""
        return 64 * self.t1


class Timer(str, enum.Enum):
    """RFC 3261 table 4 timer names."""

    A = "A"  # INVITE request retransmit interval (UDP only)
    B = "B"  # INVITE transaction timeout
    D = "D"  # wait time for response retransmits (client INVITE, Completed)
    E = "E"  # non-INVITE request retransmit interval (UDP only)
    F = "F"  # non-INVITE transaction timeout
    G = "G"  # INVITE response retransmit interval
    H = "H"  # wait time for ACK receipt
    I = "I"  # noqa: E741  wait time for ACK retransmits (server INVITE, Confirmed)
    J = "J"  # wait time for non-INVITE request retransmits
    K = "K"  # wait time for response retransmits (client non-INVITE, Completed)


class ResponseOrigin(enum.Enum):
    """Where a response handed to the TU came from."""

    REMOTE = "remote"
    TIMEOUT = "timeout"  # synthesized 408 (Timer B or F)
    TRANSPORT_ERROR = "transport-error"  # synthesized 503


@dataclasses.dataclass(frozen=True)
class ResponseEvent:
    """A client transaction passes a response (received or synthesized) to its TU."""

    response: Response
    origin: ResponseOrigin = ResponseOrigin.REMOTE

    @property
    def code(self) -> int:
        return self.response.code


@dataclasses.dataclass(frozen=True)
class ServerFailureEvent:
    """A server transaction tells its TU that a response could not be delivered.

    ``code`` is 408 when Timer H fired without an ACK, 503 on a transport error.
    """

    code: int


TransactionEvent = ResponseEvent | ServerFailureEvent


class ClientInviteState(enum.Enum):
    """RFC 3261 figure 5."""

    CALLING = "Calling"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    TERMINATED = "Terminated"


class ClientNonInviteState(enum.Enum):
    """RFC 3261 figure 6."""

    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    TERMINATED = "Terminated"


class ServerInviteState(enum.Enum):
    """RFC 3261 figure 7."""

    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    TERMINATED = "Terminated"


class ServerNonInviteState(enum.Enum):
    """RFC 3261 figure 8."""

    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    TERMINATED = "Terminated"


def _top_branch(message: Message) -> str | None:
    vias = message.via
    if not vias:
        return None
    return vias[0].parameters.get("branch")


def client_transaction_key(message: Message) -> tuple[str, str] | None:
    """The key matching a response to a client transaction (RFC 3261 section 17.1.3).

    It is the branch of the top Via and the CSeq method (a CANCEL shares the INVITE's branch). Messages without a
    branch give ``None``.
    """
    branch = _top_branch(message)
    if not branch:
        return None
    return (branch, message.cseq.method)


def server_transaction_key(request: Request) -> tuple[str, ...]:
    """The key matching a request to a server transaction (RFC 3261 section 17.2.3).

    With an RFC 3261 branch (``z9hG4bK`` prefix) the key is the branch, the sent-by of the top Via and the method,
    ACK counting as INVITE. Otherwise the RFC 2543 rules are approximated by Request-URI, From tag, Call-ID, CSeq
    number, top Via and method.
    """
    method = "INVITE" if request.method == "ACK" else request.method
    via = request.via[0]
    branch = via.parameters.get("branch") or ""
    sent_by = f"{via.host.lower()}:{via.port or 5060}"
    if branch.startswith(BRANCH_MAGIC_COOKIE):
        return ("3261", branch, sent_by, method)
    from_tag = request.from_address.parameters.get("tag") or ""
    return (
        "2543",
        str(request.uri),
        from_tag,
        request.call_id,
        str(request.cseq.sequence),
        f"{via.transport}/{sent_by}/{branch}",
        method,
    )


def create_non_2xx_ack(request: Request, response: Response) -> Request:
    """The ACK a client INVITE transaction sends for a 300-699 response (RFC 3261 section 17.1.1.3)."""
    ack = Request("ACK", request.uri)
    ack.via = request.via[:1]
    max_forwards = request.headers.get("Max-Forwards")
    if max_forwards is not None:
        ack.headers.set("Max-Forwards", max_forwards)
    ack.headers.set("From", request.headers["From"])
    ack.headers.set("To", response.headers["To"])
    ack.headers.set("Call-ID", request.call_id)
    ack.cseq = CSeq(request.cseq.sequence, "ACK")
    routes = request.headers.getlist("Route")
    if routes:
        ack.headers.setlist("Route", list(routes))
    ack.headers.set("Content-Length", "0")
    return ack


def create_cancel(request: Request) -> Request:
    """The CANCEL of a pending ``request`` (RFC 3261 section 9.1): same Request-URI, top Via (hence branch), From,
    To, Call-ID, Route and CSeq number, method CANCEL."""
    cancel = Request("CANCEL", request.uri)
    cancel.via = request.via[:1]
    for name in ("Max-Forwards", "From", "To", "Call-ID"):
        value = request.headers.get(name)
        if value is not None:
            cancel.headers.set(name, value)
    cancel.cseq = CSeq(request.cseq.sequence, "CANCEL")
    routes = request.headers.getlist("Route")
    if routes:
        cancel.headers.setlist("Route", list(routes))
    cancel.headers.set("Content-Length", "0")
    return cancel


class Transaction:
    """What every machine shares: pending timers, the outbox and the event queue.

    Subclasses implement ``_fire(timer, now)`` and keep :attr:`state`; :attr:`terminated` is true once the machine
    reached Terminated, after which it has no timer and ignores every input.
    """

    destination: Destination
    request: Request

    def __init__(self, request: Request, destination: Destination, config: TimerConfig, reliable: bool) -> None:
        self.request = request
        self.destination = destination
        self.config = config
        self.reliable = reliable
        self._timers: dict[Timer, float] = {}
        self._messages: list[tuple[Message, bool]] = []
        self._events: list[TransactionEvent] = []
        self.retransmissions = 0
        #: The owner's table key (set by the transaction layer).
        self.key: tuple[object, ...] | None = None

    # -- outputs -------------------------------------------------------------------------------------------------

    @property
    def timers(self) -> Mapping[Timer, float]:
        """The pending timers and their absolute deadlines."""
        return dict(self._timers)

    def next_deadline(self) -> float | None:
        """The earliest pending deadline, or ``None`` when no timer runs."""
        return min(self._timers.values()) if self._timers else None

    def take_messages(self) -> list[tuple[Message, bool]]:
        """Messages to send to :attr:`destination`, each with ``True`` when it is a retransmission."""
        messages, self._messages = self._messages, []
        return messages

    def take_events(self) -> list[TransactionEvent]:
        """Events for the TU, oldest first."""
        events, self._events = self._events, []
        return events

    @property
    def terminated(self) -> bool:
        raise NotImplementedError

    # -- inputs --------------------------------------------------------------------------------------------------

    def handle_timers(self, now: float) -> None:
        """Fire, in deadline order, every timer whose deadline is ``now`` or earlier."""
        while self._timers:
            timer, deadline = min(self._timers.items(), key=lambda item: item[1])
            if deadline > now:
                return
            del self._timers[timer]
            self._fire(timer, now)

    def transport_error(self, now: float) -> None:
        """The transport could not send this transaction's last message (RFC 3261 sections 17.1.4 and 17.2.4)."""
        raise NotImplementedError

    def terminate(self) -> None:
        """Force the Terminated state (the TU destroys the transaction, e.g. RFC 3261 section 9.1)."""
        self._set_terminated()

    # -- helpers -------------------------------------------------------------------------------------------------

    def _fire(self, timer: Timer, now: float) -> None:
        raise NotImplementedError

    def _start(self, timer: Timer, now: float, delay: float) -> None:
        self._timers[timer] = now + delay

    def _send(self, message: Message, retransmission: bool = False) -> None:
        if retransmission:
            self.retransmissions += 1
        self._messages.append((message, retransmission))

    def _set_terminated(self) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.request.method} {self.request.cseq.sequence}"
            f" state={getattr(self, 'state', None)} timers={sorted(t.value for t in self._timers)}>"
        )


class ClientTransaction(Transaction):
    """A client transaction: it owns a request and reports responses as :class:`ResponseEvent`."""

    def start(self, now: float) -> None:
        raise NotImplementedError

    def receive_response(self, response: Response, now: float) -> None:
        raise NotImplementedError

    def _synthesize(self, code: int, origin: ResponseOrigin) -> None:
        self._events.append(ResponseEvent(create_response(self.request, code), origin))


class ClientInviteTransaction(ClientTransaction):
    """The INVITE client transaction (RFC 3261 section 17.1.1, figure 5).

    A 2xx ends the machine at once: the dialog owns the ACK for 2xx and sees 2xx retransmissions itself.
    """

    def __init__(
        self, request: Request, destination: Destination, config: TimerConfig, reliable: bool = False
    ) -> None:
        if request.method != "INVITE":
            raise ValueError(f"an INVITE client transaction cannot carry {request.method}")
        super().__init__(request, destination, config, reliable)
        self.state = ClientInviteState.CALLING
        self._timer_a_interval = config.t1
        self._ack: Request | None = None

    @property
    def terminated(self) -> bool:
        return self.state is ClientInviteState.TERMINATED

    def start(self, now: float) -> None:
        """Send the INVITE, start Timer B and, on an unreliable transport, Timer A."""
        self._send(self.request)
        if not self.reliable:
            self._start(Timer.A, now, self._timer_a_interval)
        self._start(Timer.B, now, self.config.timer_b)

    def receive_response(self, response: Response, now: float) -> None:
        code = response.code
        if self.state in (ClientInviteState.CALLING, ClientInviteState.PROCEEDING):
            if code < 200:
                # Proceeding neither retransmits nor times out (RFC 3261 section 17.1.1.2).
                self.state = ClientInviteState.PROCEEDING
                self._timers.pop(Timer.A, None)
                self._timers.pop(Timer.B, None)
                self._events.append(ResponseEvent(response))
            elif code < 300:
                self._set_terminated()
                self._events.append(ResponseEvent(response))
            else:
                self.state = ClientInviteState.COMPLETED
                self._timers.pop(Timer.A, None)
                self._timers.pop(Timer.B, None)
                self._ack = create_non_2xx_ack(self.request, response)
                self._send(self._ack)
                self._start(Timer.D, now, 0.0 if self.reliable else self.config.timer_d)
                self._events.append(ResponseEvent(response))
        elif self.state is ClientInviteState.COMPLETED and code >= 300 and self._ack is not None:
            # A retransmitted final response: ACK it again, the TU has seen it already.
            self._send(self._ack, retransmission=True)

    def transport_error(self, now: float) -> None:
        if self.state is ClientInviteState.CALLING:
            self._set_terminated()
            self._synthesize(503, ResponseOrigin.TRANSPORT_ERROR)
        elif self.state is ClientInviteState.COMPLETED:
            self._set_terminated()

    def _fire(self, timer: Timer, now: float) -> None:
        if timer is Timer.A and self.state is ClientInviteState.CALLING:
            self._send(self.request, retransmission=True)
            self._timer_a_interval *= 2
            self._start(Timer.A, now, self._timer_a_interval)
        elif timer is Timer.B and self.state is ClientInviteState.CALLING:
            self._set_terminated()
            self._synthesize(408, ResponseOrigin.TIMEOUT)
        elif timer is Timer.D and self.state is ClientInviteState.COMPLETED:
            self._set_terminated()

    def _set_terminated(self) -> None:
        self.state = ClientInviteState.TERMINATED
        self._timers.clear()


class ClientNonInviteTransaction(ClientTransaction):
    """The non-INVITE client transaction (RFC 3261 section 17.1.2, figure 6)."""

    def __init__(
        self, request: Request, destination: Destination, config: TimerConfig, reliable: bool = False
    ) -> None:
        if request.method in ("INVITE", "ACK"):
            raise ValueError(f"a non-INVITE client transaction cannot carry {request.method}")
        super().__init__(request, destination, config, reliable)
        self.state = ClientNonInviteState.TRYING
        self._timer_e_interval = config.t1

    @property
    def terminated(self) -> bool:
        return self.state is ClientNonInviteState.TERMINATED

    def start(self, now: float) -> None:
        """Send the request, start Timer F and, on an unreliable transport, Timer E."""
        self._send(self.request)
        if not self.reliable:
            self._start(Timer.E, now, self._timer_e_interval)
        self._start(Timer.F, now, self.config.timer_b)

    def receive_response(self, response: Response, now: float) -> None:
        if self.state not in (ClientNonInviteState.TRYING, ClientNonInviteState.PROCEEDING):
            return  # Completed absorbs retransmissions.
        if response.code < 200:
            self.state = ClientNonInviteState.PROCEEDING
            self._events.append(ResponseEvent(response))
        else:
            self.state = ClientNonInviteState.COMPLETED
            self._timers.pop(Timer.E, None)
            self._timers.pop(Timer.F, None)
            self._start(Timer.K, now, 0.0 if self.reliable else self.config.t4)
            self._events.append(ResponseEvent(response))

    def transport_error(self, now: float) -> None:
        if self.state in (ClientNonInviteState.TRYING, ClientNonInviteState.PROCEEDING):
            self._set_terminated()
            self._synthesize(503, ResponseOrigin.TRANSPORT_ERROR)

    def _fire(self, timer: Timer, now: float) -> None:
        if timer is Timer.E and self.state is ClientNonInviteState.TRYING:
            self._send(self.request, retransmission=True)
            self._timer_e_interval = min(2 * self._timer_e_interval, self.config.t2)
            self._start(Timer.E, now, self._timer_e_interval)
        elif timer is Timer.E and self.state is ClientNonInviteState.PROCEEDING:
            self._send(self.request, retransmission=True)
            self._start(Timer.E, now, self.config.t2)
        elif timer is Timer.F and self.state in (ClientNonInviteState.TRYING, ClientNonInviteState.PROCEEDING):
            self._set_terminated()
            self._synthesize(408, ResponseOrigin.TIMEOUT)
        elif timer is Timer.K and self.state is ClientNonInviteState.COMPLETED:
            self._set_terminated()

    def _set_terminated(self) -> None:
        self.state = ClientNonInviteState.TERMINATED
        self._timers.clear()


class ServerTransaction(Transaction):
    """A server transaction: created by a request, it sends the TU's responses to :attr:`destination`."""

    last_response: Response | None

    def receive_request(self, request: Request, now: float) -> None:
        """A retransmission of the request (or, for INVITE, an ACK) matched this transaction."""
        raise NotImplementedError

    def send_response(self, response: Response, now: float) -> None:
        """The TU's response to the request."""
        raise NotImplementedError


class ServerInviteTransaction(ServerTransaction):
    """The INVITE server transaction (RFC 3261 section 17.2.1, figure 7).

    Sending a 2xx ends the machine: the TU retransmits the 2xx until the ACK arrives (RFC 3261 section 13.3.1.4).
    """

    def __init__(
        self, request: Request, destination: Destination, config: TimerConfig, reliable: bool = False
    ) -> None:
        if request.method != "INVITE":
            raise ValueError(f"an INVITE server transaction cannot carry {request.method}")
        super().__init__(request, destination, config, reliable)
        self.state = ServerInviteState.PROCEEDING
        self.last_response = None
        self._timer_g_interval = config.t1

    @property
    def terminated(self) -> bool:
        return self.state is ServerInviteState.TERMINATED

    def receive_request(self, request: Request, now: float) -> None:
        if request.method == "INVITE":
            if self.state in (ServerInviteState.PROCEEDING, ServerInviteState.COMPLETED) and self.last_response:
                self._send(self.last_response, retransmission=True)
        elif request.method == "ACK" and self.state is ServerInviteState.COMPLETED:
            self.state = ServerInviteState.CONFIRMED
            self._timers.pop(Timer.G, None)
            self._timers.pop(Timer.H, None)
            self._start(Timer.I, now, 0.0 if self.reliable else self.config.t4)
        # ACKs in Confirmed are absorbed.

    def send_response(self, response: Response, now: float) -> None:
        if self.state is not ServerInviteState.PROCEEDING:
            return
        self.last_response = response
        self._send(response)
        if response.code < 200:
            return
        if response.code < 300:
            self._set_terminated()
            return
        self.state = ServerInviteState.COMPLETED
        if not self.reliable:
            self._start(Timer.G, now, self._timer_g_interval)
        self._start(Timer.H, now, self.config.timer_b)

    def transport_error(self, now: float) -> None:
        if not self.terminated:
            self._set_terminated()
            self._events.append(ServerFailureEvent(503))

    def _fire(self, timer: Timer, now: float) -> None:
        if timer is Timer.G and self.state is ServerInviteState.COMPLETED and self.last_response is not None:
            self._send(self.last_response, retransmission=True)
            self._timer_g_interval = min(2 * self._timer_g_interval, self.config.t2)
            self._start(Timer.G, now, self._timer_g_interval)
        elif timer is Timer.H and self.state is ServerInviteState.COMPLETED:
            self._set_terminated()
            self._events.append(ServerFailureEvent(408))
        elif timer is Timer.I and self.state is ServerInviteState.CONFIRMED:
            self._set_terminated()

    def _set_terminated(self) -> None:
        self.state = ServerInviteState.TERMINATED
        self._timers.clear()


class ServerNonInviteTransaction(ServerTransaction):
    """The non-INVITE server transaction (RFC 3261 section 17.2.2, figure 8)."""

    def __init__(
        self, request: Request, destination: Destination, config: TimerConfig, reliable: bool = False
    ) -> None:
        if request.method in ("INVITE", "ACK"):
            raise ValueError(f"a non-INVITE server transaction cannot carry {request.method}")
        super().__init__(request, destination, config, reliable)
        self.state = ServerNonInviteState.TRYING
        self.last_response = None

    @property
    def terminated(self) -> bool:
        return self.state is ServerNonInviteState.TERMINATED

    def receive_request(self, request: Request, now: float) -> None:
        # Trying discards retransmissions; Proceeding and Completed repeat the last response.
        if self.state in (ServerNonInviteState.PROCEEDING, ServerNonInviteState.COMPLETED) and self.last_response:
            self._send(self.last_response, retransmission=True)

    def send_response(self, response: Response, now: float) -> None:
        if self.state not in (ServerNonInviteState.TRYING, ServerNonInviteState.PROCEEDING):
            return
        self.last_response = response
        self._send(response)
        if response.code < 200:
            self.state = ServerNonInviteState.PROCEEDING
        else:
            self.state = ServerNonInviteState.COMPLETED
            self._start(Timer.J, now, 0.0 if self.reliable else self.config.timer_b)

    def transport_error(self, now: float) -> None:
        if not self.terminated:
            self._set_terminated()
            self._events.append(ServerFailureEvent(503))

    def _fire(self, timer: Timer, now: float) -> None:
        if timer is Timer.J and self.state is ServerNonInviteState.COMPLETED:
            self._set_terminated()

    def _set_terminated(self) -> None:
        self.state = ServerNonInviteState.TERMINATED
        self._timers.clear()
