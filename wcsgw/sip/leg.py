"""The outgoing call leg: INVITE client dialog, CANCEL/BYE, in-dialog requests both ways, session timers. Sans I/O.

Status mapping (reported to the :class:`~wcsgw.sip.interfaces.CallListener`): 100 TRYING, 180 RING, other 1xx
RING_MEDIA with SDP or SESSION_PROGRESS without, 2xx ESTABLISHED, 486/600 BUSY (BUSY_HERE), other final failures
FAILED (FAILED_BY_ERROR; FAILED_BY_REQUEST_TIMEOUT for a transaction timeout), far-end BYE FINISH
(NORMAL_CALL_CLEARING), far-end hold (re-INVITE/UPDATE offering sendonly/inactive) HOLD, resume ESTABLISHED.

``hangup`` reports ``call_ended`` at once; the leg then finishes the signalling (CANCEL when a provisional response
arrives, ACK of the 487, or BYE) without further reports.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

from sipmessage import Address, CSeq, Parameters, Request, Response, URI

from wcsgw.model import CallStatus, EndInfo

from .dialog import Dialog, PendingAnswer, uac_session_timer, uas_session_timer
from .digest import DigestClient, RealmKey
from .interfaces import CallListener, CallStateError, Destination, OutgoingCall, SipHost
from .message import SDP, create_response, header_int, sdp_body
from .register import Registration
from .sdp import SessionDescription, is_hold, negotiate
from .transaction import ClientInviteTransaction, ResponseEvent, ResponseOrigin, ServerTransaction, create_cancel

__all__ = ["LegState", "CallLeg", "ALLOW", "SUPPORTED"]

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE"
SUPPORTED = "timer"

FinalHandler = Callable[[ResponseEvent, Request, float], None]


class LegState(enum.Enum):
    REGISTERING = "registering"
    CALLING = "calling"  # INVITE sent, no provisional response yet
    PROCEEDING = "proceeding"  # a provisional response arrived
    CONFIRMED = "confirmed"  # 2xx received and ACKed
    TERMINATING = "terminating"  # ended for the listener, CANCEL/BYE/INVITE still in flight
    TERMINATED = "terminated"


def _sdp_changed(old: str | None, new: str) -> bool:
    """RFC 3264 section 8: an unchanged session keeps its o= session id and version."""
    try:
        before = SessionDescription.parse(old or "").origin
        after = SessionDescription.parse(new).origin
    except ValueError:
        return old != new
    return (before.session_id, before.session_version) != (after.session_id, after.session_version)


class CallLeg:
    """One outgoing call. Driven by :class:`~wcsgw.sip.core.UserAgentCore`."""

    def __init__(
        self,
        host: SipHost,
        call: OutgoingCall,
        offer_sdp: str,
        listener: CallListener,
        *,
        registration: Registration | None = None,
    ) -> None:
        self.host = host
        self.call = call
        self.listener = listener
        self.registration = registration
        self.status = CallStatus.PENDING
        self.sip_status: int | None = None
        self.ended = False
        self.dialog: Dialog | None = None
        self.auth = (
            DigestClient(call.authentication_name, call.password, cnonce=host.new_tag)
            if call.password is not None
            else None
        )
        self._offer_sdp = offer_sdp
        self.local_sdp = offer_sdp
        self.remote_sdp: str | None = None
        self._phase = LegState.REGISTERING if registration is not None else LegState.CALLING
        self._local_tag = host.new_tag()
        self._from = Address(
            uri=URI(scheme="sip", host=call.domain, user=call.login),
            name=call.display_name or "",
            parameters=Parameters(tag=self._local_tag),
        )
        self._to = Address(uri=URI(scheme="sip", host=call.domain, user=call.callee))
        port = call.port if not call.outbound_proxy and call.port not in (None, 5060) else None
        self._request_uri = URI(scheme="sip", host=call.domain, user=call.callee, port=port)
        self._contact = host.contact_for(call.login)
        self._invite_seq = 0
        self._invite_request: Request | None = None
        self._invite_tx: ClientInviteTransaction | None = None
        self._invite_pending = False
        self._invite_realms: frozenset[RealmKey] = frozenset()
        self._cancel_sent = False
        self._early_sdp: str | None = None
        self._reported_sdp: str | None = None
        self._pending = 0  # in-dialog client transactions still waiting for a final response
        self._deadlines: dict[str, float] = {}
        self._acks: dict[tuple[str, int], tuple[Request, Destination, float]] = {}
        self._answer: PendingAnswer | None = None
        self._offer_pending = False  # our re-INVITE/UPDATE in flight
        self._session_interval: int | None = None
        self._min_se: int | None = None
        self._remote_allow: str = ""
        self._update_refused = False

    def __repr__(self) -> str:
        return f"<CallLeg {self.call.call_id} state={self.state.value} status={self.status.value}>"

    # -- state ----------------------------------------------------------------------------------------------------

    @property
    def call_id(self) -> str:
        return self.call.call_id

    @property
    def local_tag(self) -> str:
        return self._local_tag

    @property
    def state(self) -> LegState:
        if not self.ended:
            return self._phase
        return LegState.TERMINATING if self.busy else LegState.TERMINATED

    @property
    def busy(self) -> bool:
        """The call is live or signalling for it is still in flight."""
        return not self.ended or self._invite_pending or self._pending > 0

    @property
    def finished(self) -> bool:
        """Nothing left to do, not even absorbing 2xx retransmissions: the core forgets the leg."""
        return not self.busy and not self._deadlines

    def matches(self, request: Request) -> bool:
        return self.dialog is not None and self.dialog.matches(request)

    # -- timers ---------------------------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return min(self._deadlines.values()) if self._deadlines else None

    def handle_timers(self, now: float) -> None:
        for name, deadline in sorted(self._deadlines.items(), key=lambda item: item[1]):
            if deadline <= now and self._deadlines.get(name) == deadline:
                del self._deadlines[name]
                getattr(self, f"_timer_{name}")(now)

    def _timer_ack_linger(self, now: float) -> None:
        self._acks = {key: value for key, value in self._acks.items() if value[2] > now}
        self._arm_ack_linger()

    def _arm_ack_linger(self) -> None:
        if self._acks:
            self._deadlines["ack_linger"] = min(expiry for _a, _d, expiry in self._acks.values())

    def _timer_cancel_guard(self, now: float) -> None:
        # RFC 3261 section 9.1: no final response 64*T1 after the CANCEL, consider the INVITE cancelled.
        if self._invite_pending and self._invite_tx is not None:
            self.host.abandon(self._invite_tx)
        self._invite_pending = False

    def _timer_answer_retransmit(self, now: float) -> None:
        answer = self._answer
        if answer is None:
            return
        self.host.send_stateless(answer.response, answer.destination)
        answer.interval = min(2 * answer.interval, self.host.timers.t2)
        self._deadlines["answer_retransmit"] = now + answer.interval

    def _timer_answer_timeout(self, now: float) -> None:
        # RFC 3261 section 13.3.1.4: no ACK for our 2xx within 64*T1, end the dialog with BYE.
        self._answer = None
        self._deadlines.pop("answer_retransmit", None)
        self._fail_dialog(408, now, bye=True)

    def _timer_session_refresh(self, now: float) -> None:
        self._refresh_session(now)

    _timer_glare_retry = _timer_session_refresh

    def _timer_session_expiry(self, now: float) -> None:
        # RFC 4028 section 10: the refresher did not refresh in time.
        self.host.log.info("call {call_id}: session expired without refresh", call_id=self.call_id)
        self._fail_dialog(408, now, bye=True)

    # -- listener -------------------------------------------------------------------------------------------------

    def _progress(self, status: CallStatus, code: int, sdp: str | None) -> None:
        self.status = status
        self._reported_sdp = sdp or self._reported_sdp
        try:
            self.listener.call_progress(status, code, sdp)
        except Exception:
            self.host.log.failure("call {call_id}: call_progress listener failed", call_id=self.call_id)

    def _end(self, status: CallStatus, code: int | None, info: EndInfo, now: float) -> None:
        if self.ended:
            return
        self.ended = True
        self.status = status
        self._answer = None
        for name in ("session_refresh", "session_expiry", "glare_retry", "answer_retransmit", "answer_timeout"):
            self._deadlines.pop(name, None)
        if self.registration is not None:
            registration, self.registration = self.registration, None
            registration.release(self, now)
        self.host.log.info(
            "call {call_id} ended {status} {code} {info}",
            call_id=self.call_id,
            status=status.value,
            code=code,
            info=info.value,
        )
        try:
            self.listener.call_ended(status, code, info)
        except Exception:
            self.host.log.failure("call {call_id}: call_ended listener failed", call_id=self.call_id)

    # -- commands -------------------------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """REGISTER first when required, then INVITE."""
        if self.registration is not None:
            self.registration.acquire(self, now)
        else:
            self._send_invite(frozenset(), now)

    def hangup(
        self, now: float, status: CallStatus = CallStatus.FINISH, info: EndInfo = EndInfo.TERMINATED_BY_REQUEST
    ) -> None:
        """End the call: CANCEL (at once, or when the first provisional response comes) or BYE."""
        if self.ended:
            return
        # Signal first, so that the BYE/CANCEL leaves before the un-REGISTER that _end may trigger.
        if self._phase is LegState.PROCEEDING and self._invite_pending:
            self._send_cancel(now)
        elif self._phase is LegState.CONFIRMED:
            self._send_bye(now)
        self._end(status, self.sip_status, info, now)

    def send_info(self, content_type: str, body: bytes, on_done: Callable[[int], None], now: float) -> None:
        """Send INFO in the dialog; ``on_done`` gets the final status (408 on timeout, 503 on transport error)."""
        if self.ended or self._phase is not LegState.CONFIRMED:
            raise CallStateError(f"call {self.call_id} is not established")

        def final(event: ResponseEvent, request: Request, now: float) -> None:
            if event.code in (408, 481):
                self._fail_dialog(event.code, now, bye=event.code == 408)
            on_done(event.code)

        self._send_in_dialog("INFO", now, body=body, content_type=content_type, on_final=final)

    # -- registration ---------------------------------------------------------------------------------------------

    def registration_ready(self, now: float) -> None:
        if not self.ended and self._phase is LegState.REGISTERING:
            self._phase = LegState.CALLING
            self._send_invite(frozenset(), now)

    def registration_failed(self, event: ResponseEvent, now: float) -> None:
        self.registration = None
        self.sip_status = event.code
        timeout = event.origin is ResponseOrigin.TIMEOUT
        info = EndInfo.FAILED_BY_REQUEST_TIMEOUT if timeout else EndInfo.FAILED_BY_ERROR
        self._end(CallStatus.FAILED, event.code, info, now)

    # -- INVITE client --------------------------------------------------------------------------------------------

    def _send_invite(self, realms: frozenset[RealmKey], now: float) -> None:
        self._invite_seq += 1
        request = Request("INVITE", self._request_uri)
        request.headers.set("From", str(self._from))
        request.headers.set("To", str(self._to))
        request.headers.set("Call-ID", self.call_id)
        request.cseq = CSeq(self._invite_seq, "INVITE")
        request.headers.set("Contact", str(self._contact))
        request.headers.set("Allow", ALLOW)
        request.headers.set("Supported", SUPPORTED)
        if self._min_se is not None:
            request.headers.set("Session-Expires", str(self._min_se))
            request.headers.set("Min-SE", str(self._min_se))
        request.headers.set("Content-Type", SDP)
        request.body = self._offer_sdp.encode("utf-8")
        if realms and self.auth is not None:
            self.auth.authorize(request, realms)
        self._invite_request = request
        self._invite_pending = True
        self._invite_realms = realms
        tx = self.host.send_request(request, self.call.first_hop, self._on_invite_response, now)
        self._invite_tx = tx  # type: ignore[assignment]

    def _send_cancel(self, now: float) -> None:
        invite = self._invite_request
        if invite is None or self._cancel_sent:
            return
        self._cancel_sent = True
        self._deadlines["cancel_guard"] = now + self.host.timers.timer_b
        self.host.send_request(create_cancel(invite), self.call.first_hop, lambda event, now: None, now)

    def _on_invite_response(self, event: ResponseEvent, now: float) -> None:
        response = event.response
        code = event.code
        self.sip_status = code
        if code < 200:
            if self.ended:
                self._send_cancel(now)
            else:
                self._phase = LegState.PROCEEDING
                self._report_provisional(response)
            return
        self._invite_pending = False
        self._deadlines.pop("cancel_guard", None)
        if code < 300:
            self._on_2xx(response, now)
            return
        if self.ended:
            return
        if code in (401, 407) and event.origin is ResponseOrigin.REMOTE and self.auth is not None:
            answered = self.auth.challenge(response, self._invite_realms)
            if answered is not None:
                self._phase = LegState.CALLING
                self._send_invite(answered, now)
                return
        if code == 422 and self._retry_min_se(response):
            self._phase = LegState.CALLING
            self._send_invite(self._invite_realms, now)
            return
        if code in (486, 600):
            self._end(CallStatus.BUSY, code, EndInfo.BUSY_HERE, now)
        elif event.origin is ResponseOrigin.TIMEOUT:
            self._end(CallStatus.FAILED, code, EndInfo.FAILED_BY_REQUEST_TIMEOUT, now)
        else:
            self._end(CallStatus.FAILED, code, EndInfo.FAILED_BY_ERROR, now)

    def _retry_min_se(self, response: Response) -> bool:
        try:
            minimum = header_int(response, "Min-SE")
        except ValueError:
            return False
        if minimum is None or (self._min_se is not None and minimum <= self._min_se):
            return False
        self._min_se = minimum
        return True

    def _report_provisional(self, response: Response) -> None:
        code = response.code
        sdp = sdp_body(response)
        if sdp is not None:
            self._early_sdp = sdp
        if code == 100:
            status = CallStatus.TRYING
        elif code == 180:
            status = CallStatus.RING
        elif sdp is not None:
            status = CallStatus.RING_MEDIA
        else:
            status = CallStatus.SESSION_PROGRESS
        if status is self.status and (sdp is None or sdp == self._reported_sdp):
            return
        self._progress(status, code, sdp)

    def receive_2xx_retransmission(self, response: Response, now: float) -> None:
        """A 2xx to one of our INVITEs that matched no transaction: ACK it again (or handle a late fork)."""
        self._on_2xx(response, now)

    def _on_2xx(self, response: Response, now: float) -> None:
        tag = response.to_address.parameters.get("tag") or ""
        sequence = response.cseq.sequence
        ack = self._acks.get((tag, sequence))
        if ack is not None:
            self.host.send_stateless(ack[0], ack[1])
            return
        invite = self._invite_request
        if invite is None or sequence != invite.cseq.sequence:
            return  # a 2xx to an older INVITE whose ACK we no longer keep
        try:
            dialog = Dialog.from_uac_response(invite, response)
        except ValueError as exc:
            self.host.log.warn("call {call_id}: unusable 2xx: {error}", call_id=self.call_id, error=str(exc))
            if self.dialog is None:
                self._end(CallStatus.FAILED, response.code, EndInfo.FAILED_BY_ERROR, now)
            return
        if self.dialog is not None:
            # RFC 3261 section 13.2.2.4: a second 2xx from another fork: ACK it, then BYE that dialog.
            self._ack_2xx(dialog, invite, now)
            bye = dialog.create_request("BYE")
            self.host.send_request(bye, self._destination(dialog), lambda event, now: None, now)
            return
        self.dialog = dialog
        self._remote_allow = response.headers.get("Allow", "") or ""
        self._ack_2xx(dialog, invite, now)
        if self.ended:
            self._send_bye(now)  # hung up before the answer came
            return
        answer = sdp_body(response) or self._early_sdp
        failure = self._check_answer(answer)
        if failure is not None:
            self._send_bye(now)
            self._end(CallStatus.FAILED, response.code, failure, now)
            return
        self.remote_sdp = answer
        self._phase = LegState.CONFIRMED
        self._apply_uac_session_timer(response, now)
        self._progress(CallStatus.ESTABLISHED, response.code, answer)

    def _ack_2xx(self, dialog: Dialog, invite: Request, now: float) -> None:
        ack = dialog.create_request("ACK", sequence=invite.cseq.sequence)
        for name in ("Authorization", "Proxy-Authorization"):
            values = invite.headers.getlist(name)
            if values:
                ack.headers.setlist(name, list(values))
        destination = self._destination(dialog)
        self.host.send_stateless(ack, destination)
        self._acks[(dialog.remote_tag, invite.cseq.sequence)] = (ack, destination, now + self.host.timers.timer_b)
        self._arm_ack_linger()

    def _check_answer(self, answer: str | None) -> EndInfo | None:
        if answer is None:
            self.host.log.warn("call {call_id}: 2xx without SDP answer", call_id=self.call_id)
            return EndInfo.FAILED_BY_ERROR
        try:
            offer = SessionDescription.parse(self._offer_sdp)
        except ValueError:
            return None  # not our SDP: the call manager judges the answer itself
        try:
            negotiation = negotiate(offer, answer)
        except ValueError as exc:
            self.host.log.warn("call {call_id}: bad SDP answer: {error}", call_id=self.call_id, error=str(exc))
            return EndInfo.FAILED_BY_ERROR
        return EndInfo.NO_COMMON_CODECS if negotiation.no_common_codecs else None

    # -- in-dialog client requests ------------------------------------------------------------------------------

    def _destination(self, dialog: Dialog) -> Destination:
        if self.call.outbound_proxy:
            return self.call.first_hop
        return dialog.next_hop()

    def _send_in_dialog(
        self,
        method: str,
        now: float,
        *,
        on_final: FinalHandler,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        realms: frozenset[RealmKey] = frozenset(),
    ) -> None:
        dialog = self.dialog
        assert dialog is not None
        request = dialog.create_request(method)
        if method in ("INVITE", "UPDATE"):
            request.headers.set("Contact", str(self._contact))
            request.headers.set("Allow", ALLOW)
        for name, value in headers:
            request.headers.set(name, value)
        if body:
            request.headers.set("Content-Type", content_type or "application/octet-stream")
            request.body = body
        if realms and self.auth is not None:
            self.auth.authorize(request, realms)
        self._pending += 1

        def on_response(event: ResponseEvent, now: float) -> None:
            if event.code < 200:
                return
            self._pending -= 1
            if event.code in (401, 407) and event.origin is ResponseOrigin.REMOTE and self.auth is not None:
                answered = self.auth.challenge(event.response, realms)
                if answered is not None:
                    self._send_in_dialog(
                        method,
                        now,
                        on_final=on_final,
                        body=body,
                        content_type=content_type,
                        headers=headers,
                        realms=answered,
                    )
                    return
            on_final(event, request, now)

        self.host.send_request(request, self._destination(dialog), on_response, now)

    def _send_bye(self, now: float) -> None:
        if self.dialog is None:
            return
        self._send_in_dialog("BYE", now, on_final=lambda event, request, now: None)

    def _fail_dialog(self, code: int, now: float, *, bye: bool) -> None:
        """RFC 3261 section 12.2.1.2 and RFC 4028 section 10: the dialog is gone (481) or dead (408)."""
        if self.ended:
            return
        if bye:
            self._send_bye(now)
        info = EndInfo.FAILED_BY_REQUEST_TIMEOUT if code == 408 else EndInfo.FAILED_BY_ERROR
        self.sip_status = code
        self._end(CallStatus.FAILED, code, info, now)

    # -- session timers (RFC 4028) ------------------------------------------------------------------------------

    def _arm_session_timer(self, interval: int, we_refresh: bool, now: float) -> None:
        self._session_interval = interval
        self._deadlines.pop("session_refresh", None)
        self._deadlines.pop("session_expiry", None)
        if we_refresh:
            self._deadlines["session_refresh"] = now + interval / 2
        else:
            self._deadlines["session_expiry"] = now + interval - min(32, interval / 3)

    def _session_timer_off(self) -> None:
        self._session_interval = None
        self._deadlines.pop("session_refresh", None)
        self._deadlines.pop("session_expiry", None)

    def _apply_uac_session_timer(self, response: Response, now: float) -> None:
        """Session-Expires in the 2xx to our (re-)INVITE or UPDATE."""
        negotiated = uac_session_timer(response)
        if negotiated is None:
            self._session_timer_off()
        else:
            self._arm_session_timer(*negotiated, now)

    def _apply_uas_session_timer(self, request: Request, response: Response, now: float) -> None:
        """Session-Expires in a far-end re-INVITE/UPDATE (echoed in our 2xx)."""
        negotiated = uas_session_timer(request, response)
        if negotiated is None:
            self._session_timer_off()
        else:
            self._arm_session_timer(*negotiated, now)

    def _refresh_session(self, now: float) -> None:
        if self.ended or self._phase is not LegState.CONFIRMED or self._session_interval is None:
            return
        if self._offer_pending or self._answer is not None:
            self._deadlines["glare_retry"] = now + self.host.timers.t2
            return
        headers = [
            ("Session-Expires", f"{self._session_interval};refresher=uac"),
            ("Supported", SUPPORTED),
        ]
        if self._min_se is not None:
            headers.append(("Min-SE", str(self._min_se)))
        self._offer_pending = True
        allow = {item.strip().upper() for item in self._remote_allow.split(",")}
        if "UPDATE" in allow and not self._update_refused:
            self._send_in_dialog("UPDATE", now, headers=headers, on_final=self._on_refresh_final)
        else:
            self._send_in_dialog(
                "INVITE",
                now,
                headers=headers,
                body=self.local_sdp.encode("utf-8"),
                content_type=SDP,
                on_final=self._on_refresh_final,
            )

    def _on_refresh_final(self, event: ResponseEvent, request: Request, now: float) -> None:
        self._offer_pending = False
        response = event.response
        code = event.code
        dialog = self.dialog
        if 200 <= code < 300 and dialog is not None:
            if request.method == "INVITE":
                self._ack_2xx(dialog, request, now)
            if self.ended:
                return
            dialog.refresh_target(response)
            self._apply_uac_session_timer(response, now)
            answer = sdp_body(response)
            if answer is not None and _sdp_changed(self.remote_sdp, answer):
                self.remote_sdp = answer
                self._progress(self.status, code, answer)
            return
        if self.ended:
            return
        if code == 491:
            # RFC 3261 section 14.1: we own the Call-ID, retry after 2.1 to 4 seconds.
            self._deadlines["glare_retry"] = now + self.host.random.uniform(2.1, 4.0)
        elif code == 422 and self._retry_min_se(response):
            self._session_interval = max(self._session_interval or 0, self._min_se or 0)
            self._refresh_session(now)
        elif code in (405, 501) and request.method == "UPDATE":
            self._update_refused = True
            self._refresh_session(now)
        elif code in (408, 481):
            self._fail_dialog(code, now, bye=code == 408)
        elif self._session_interval is not None:
            self._deadlines["session_refresh"] = now + self._session_interval / 2

    # -- far-end requests ---------------------------------------------------------------------------------------

    def _respond(self, transaction: ServerTransaction, request: Request, code: int, now: float) -> Response:
        response = create_response(request, code)
        if code == 405:
            response.headers.set("Allow", ALLOW)
        self.host.send_response(transaction, response, now)
        return response

    def receive_request(self, request: Request, transaction: ServerTransaction, now: float) -> None:
        """A request of the far end in our dialog (the core checked the dialog and the method)."""
        dialog = self.dialog
        assert dialog is not None
        method = request.method
        if method == "INVITE" and self._answer is not None and request.cseq.sequence == self._answer.sequence:
            self.host.send_response(transaction, self._answer.response, now)  # retransmitted re-INVITE
            return
        if not dialog.accept_remote_sequence(request):
            self._respond(transaction, request, 500, now)
            return
        if method == "BYE":
            self._respond(transaction, request, 200, now)
            self._end(CallStatus.FINISH, 200, EndInfo.NORMAL_CALL_CLEARING, now)
        elif self.ended:
            self._respond(transaction, request, 481, now)
        elif method in ("INVITE", "UPDATE"):
            self._receive_offer(request, transaction, now)
        elif method == "OPTIONS":
            response = create_response(request, 200)
            response.headers.set("Allow", ALLOW)
            response.headers.set("Accept", SDP)
            response.headers.set("Supported", SUPPORTED)
            self.host.send_response(transaction, response, now)
        elif method == "INFO":
            self._respond(transaction, request, 200, now)
        else:
            self._respond(transaction, request, 405, now)

    def _receive_offer(self, request: Request, transaction: ServerTransaction, now: float) -> None:
        is_invite = request.method == "INVITE"
        offer = sdp_body(request)
        if self._offer_pending and (is_invite or offer is not None):
            self._respond(transaction, request, 491, now)
            return
        if is_invite and self._answer is not None:
            self._drop_answer()  # a new re-INVITE implies the previous ACK was lost
        dialog = self.dialog
        assert dialog is not None
        dialog.refresh_target(request)
        allow = request.headers.get("Allow")
        if allow:
            self._remote_allow = allow
        response = create_response(request, 200)
        response.headers.set("Contact", str(self._contact))
        response.headers.set("Allow", ALLOW)
        response.headers.set("Supported", SUPPORTED)
        hold: bool | None = None
        if offer is not None:
            try:
                parsed = SessionDescription.parse(offer)
            except ValueError as exc:
                self.host.log.warn("call {call_id}: bad SDP offer: {error}", call_id=self.call_id, error=str(exc))
                self._respond(transaction, request, 488, now)
                return
            try:
                answer = self.listener.remote_offer(offer)
            except ValueError as exc:
                self.host.log.info("call {call_id}: offer refused: {error}", call_id=self.call_id, error=str(exc))
                self._respond(transaction, request, 488, now)
                return
            except Exception:
                self.host.log.failure("call {call_id}: remote_offer listener failed", call_id=self.call_id)
                self._respond(transaction, request, 500, now)
                return
            self.local_sdp = answer
            self.remote_sdp = offer
            hold = is_hold(parsed)
            response.headers.set("Content-Type", SDP)
            response.body = answer.encode("utf-8")
        elif is_invite:
            # An offerless re-INVITE: our 2xx carries an offer (our current SDP), the ACK the answer.
            response.headers.set("Content-Type", SDP)
            response.body = self.local_sdp.encode("utf-8")
        self._apply_uas_session_timer(request, response, now)
        self.host.send_response(transaction, response, now)
        if is_invite:
            self._answer = PendingAnswer(response, request.cseq.sequence, self.host.timers.t1, offer is None)
            self._deadlines["answer_retransmit"] = now + self.host.timers.t1
            self._deadlines["answer_timeout"] = now + self.host.timers.timer_b
        if hold is not None:
            self._report_hold(hold, offer)

    def _report_hold(self, hold: bool, sdp: str | None) -> None:
        if hold and self.status is CallStatus.ESTABLISHED:
            self._progress(CallStatus.HOLD, 200, sdp)
        elif not hold and self.status is CallStatus.HOLD:
            self._progress(CallStatus.ESTABLISHED, 200, sdp)

    def _drop_answer(self) -> None:
        self._answer = None
        self._deadlines.pop("answer_retransmit", None)
        self._deadlines.pop("answer_timeout", None)

    def receive_ack(self, request: Request, now: float) -> None:
        """An ACK for our 2xx to a far-end re-INVITE."""
        answer = self._answer
        if answer is None or request.cseq.sequence != answer.sequence:
            return
        self._drop_answer()
        sdp = sdp_body(request)
        if answer.offerless and sdp is not None and not self.ended:
            self.remote_sdp = sdp
            try:
                hold = is_hold(SessionDescription.parse(sdp))
            except ValueError:
                return
            self._report_hold(hold, sdp)
