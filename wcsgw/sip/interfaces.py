"""The types shared by the SIP user agent's parts and its users: the call request, the listener, the host protocol."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Protocol

from sipmessage import Address, Message, Request, Response
from twisted.logger import Logger

from wcsgw.model import CallStatus, EndInfo

from .transaction import ClientTransaction, ResponseEvent, ServerTransaction, TimerConfig

__all__ = ["OutgoingCall", "CallListener", "CallStateError", "SipHost", "Destination", "ResponseHandler"]

Destination = tuple[str, int]
ResponseHandler = Callable[[ResponseEvent, float], None]


@dataclasses.dataclass(frozen=True, kw_only=True)
class OutgoingCall:
    """What the call manager asks for: the REST ``/call/startup`` SIP parameters.

    ``port`` is the port of the first hop (the outbound proxy when given, else ``domain``), 5060 when ``None``.
    ``auth_name`` defaults to ``login``. The password is kept out of ``repr``.
    """

    call_id: str
    callee: str
    domain: str
    login: str
    port: int | None = None
    outbound_proxy: str | None = None
    auth_name: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    display_name: str | None = None
    register_required: bool = False

    @property
    def first_hop(self) -> Destination:
        return (self.outbound_proxy or self.domain, self.port or 5060)

    @property
    def authentication_name(self) -> str:
        return self.auth_name or self.login


class CallListener(Protocol):
    """How a call reports to the call manager. Every method is called from the reactor thread.

    ``call_progress`` reports TRYING, RING, RING_MEDIA, SESSION_PROGRESS, ESTABLISHED and HOLD with the status code
    that caused it and the far end's SDP when the response or request carried one. ``call_ended`` is called exactly
    once. ``remote_offer`` receives the SDP offer of a far-end re-INVITE or UPDATE and returns our answer (raise
    ``ValueError`` to refuse it with 488).
    """

    def call_progress(self, status: CallStatus, sip_status: int, remote_sdp: str | None) -> None: ...

    def call_ended(self, status: CallStatus, sip_status: int | None, info: EndInfo) -> None: ...

    def remote_offer(self, sdp: str) -> str: ...


class CallStateError(RuntimeError):
    """The call is not in a state that allows the operation (e.g. INFO before the answer)."""


class SipHost(Protocol):
    """What call legs and registrations need from the user agent core (implemented by ``UserAgentCore``)."""

    timers: TimerConfig
    random: random.Random
    log: Logger
    user_agent: str

    def new_tag(self) -> str: ...

    def new_call_id(self) -> str: ...

    def contact_for(self, user: str) -> Address: ...

    def send_request(
        self, request: Request, destination: Destination, on_response: ResponseHandler, now: float
    ) -> ClientTransaction: ...

    def send_stateless(self, message: Message, destination: Destination) -> None: ...

    def send_response(self, transaction: ServerTransaction, response: Response, now: float) -> None: ...

    def abandon(self, transaction: ClientTransaction) -> None: ...
