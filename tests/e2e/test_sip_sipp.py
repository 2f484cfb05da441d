"""End-to-end tests of SipUserAgent against SIPp as the far end (real reactor, 127.0.0.1)."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from wcsgw.model import CallStatus, EndInfo
from wcsgw.sip.interfaces import OutgoingCall
from wcsgw.sip.protocol import CallHandle, SipUserAgent
from wcsgw.sip.sdp import MediaKind, MediaOffer, SessionOffer, build_answer, build_offer

from .flows import lose_first
from .sipp import Sipp, require_sipp

reactor: Any = _reactor
Steps = Generator[Any, Any, None]

LOCAL_SESSION = SessionOffer(
    "127.0.0.1", (MediaOffer(MediaKind.AUDIO, 40000), MediaOffer(MediaKind.VIDEO, 40002)), session_id=1
)
OFFER = build_offer(LOCAL_SESSION)


class WaitingListener:
    """Records the call's statuses and lets a test wait for one, with a deadline."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int | None, Any]] = []
        self._waiters: list[tuple[Callable[[], bool], Deferred[None]]] = []
        self._version = 1

    def call_progress(self, status: CallStatus, sip_status: int, remote_sdp: str | None) -> None:
        self.events.append((status.value, sip_status, None))
        self._check()

    def call_ended(self, status: CallStatus, sip_status: int | None, info: EndInfo) -> None:
        self.events.append((status.value, sip_status, info))
        self._check()

    def remote_offer(self, sdp: str) -> str:
        self._version += 1
        return build_answer(sdp, LOCAL_SESSION, session_version=self._version)

    @property
    def statuses(self) -> list[str]:
        return [status for status, _code, _info in self.events]

    @property
    def ended(self) -> tuple[str, int | None, Any] | None:
        return self.events[-1] if self.events and self.events[-1][2] is not None else None

    def wait(self, status: str, timeout: float = 10.0) -> Deferred[None]:
        """Fires once ``status`` was reported; fails after ``timeout`` seconds."""

        def reached() -> bool:
            return status in self.statuses

        waiter: Deferred[None] = Deferred()
        self._waiters.append((reached, waiter))
        self._check()
        return waiter.addTimeout(timeout, reactor)

    def _check(self) -> None:
        for reached, waiter in list(self._waiters):
            if reached() and not waiter.called:
                self._waiters.remove((reached, waiter))
                waiter.callback(None)


class SippCallTests(TestCase):
    timeout = 40

    def setUp(self) -> None:
        require_sipp()

    def agent(self, t1: float = 0.5) -> SipUserAgent:
        agent = SipUserAgent(reactor, bind_address="127.0.0.1", port=0, public_address="127.0.0.1", t1=t1)
        agent.start()
        self.addCleanup(agent.stop)
        return agent

    @inlineCallbacks
    def sipp(self, scenario: str, **kwargs: Any) -> Any:
        sipp = Sipp(reactor, scenario, workdir=self.mktemp(), **kwargs)
        self.addCleanup(sipp.stop)
        yield sipp.start()
        self._sipp = sipp
        return sipp

    def call(self, agent: SipUserAgent, sipp: Sipp, **kwargs: Any) -> tuple[CallHandle, WaitingListener]:
        values: dict[str, Any] = {
            "call_id": f"e2e-{self.id().rsplit('.', 1)[-1]}",
            "callee": "bob",
            "domain": "127.0.0.1",
            "port": sipp.port,
            "login": "alice",
            "password": "secret",
            "display_name": "Alice",
        }
        values.update(kwargs)
        listener = WaitingListener()
        return agent.place_call(OutgoingCall(**values), OFFER, listener), listener

    def assert_sipp_passed(self, code: int) -> None:
        self.assertEqual(code, 0, self._sipp.describe())

    @inlineCallbacks
    def test_far_end_answers(self) -> Steps:
        """The far end rings and answers; we hang up: TRYING, RING, ESTABLISHED, FINISH; SIPp's scenario passes."""
        agent = self.agent()
        sipp = yield self.sipp("uas_answer.xml")
        handle, listener = self.call(agent, sipp)
        yield listener.wait("ESTABLISHED")
        handle.hangup()
        code = yield sipp.wait_exit(timeout=10)
        self.assert_sipp_passed(code)
        self.assertEqual(
            listener.events,
            [
                ("TRYING", 100, None),
                ("RING", 180, None),
                ("ESTABLISHED", 200, None),
                ("FINISH", 200, EndInfo.TERMINATED_BY_REQUEST),
            ],
        )

    @inlineCallbacks
    def test_far_end_busy(self) -> Steps:
        """The far end answers 486: TRYING then BUSY 486 BUSY_HERE; our ACK completes SIPp's scenario."""
        agent = self.agent()
        sipp = yield self.sipp("uas_busy.xml")
        _handle, listener = self.call(agent, sipp)
        yield listener.wait("BUSY")
        code = yield sipp.wait_exit(timeout=10)
        self.assert_sipp_passed(code)
        self.assertEqual(listener.events, [("TRYING", 100, None), ("BUSY", 486, EndInfo.BUSY_HERE)])

    @inlineCallbacks
    def test_far_end_never_answers(self) -> Steps:
        """No response at all: the INVITE is retransmitted (Timer A) and Timer B (64*T1, T1 = 50 ms) ends the call
        FAILED 408 FAILED_BY_REQUEST_TIMEOUT."""
        agent = self.agent(t1=0.05)
        sipp = yield self.sipp("uas_silent.xml")
        _handle, listener = self.call(agent, sipp)
        yield listener.wait("FAILED", timeout=10)
        self.assertEqual(listener.events, [("FAILED", 408, EndInfo.FAILED_BY_REQUEST_TIMEOUT)])
        invites = [line for line in sipp.start_lines("received") if line.startswith("INVITE ")]
        self.assertGreaterEqual(len(invites), 5, sipp.describe())
        self.assertGreaterEqual(agent.counters["retransmissions"], 5)

    @inlineCallbacks
    def test_digest_challenge_right_password(self) -> Steps:
        """The far end challenges with 401 (qop "auth,auth-int") and verifies our digest (SIPp verifyauth): the
        call is established, then ended by our BYE."""
        agent = self.agent()
        sipp = yield self.sipp("uas_auth.xml", variables={"user": "alice-auth", "password": "s3cret"})
        handle, listener = self.call(agent, sipp, auth_name="alice-auth", password="s3cret")
        yield listener.wait("ESTABLISHED")
        handle.hangup()
        code = yield sipp.wait_exit(timeout=10)
        self.assert_sipp_passed(code)
        self.assertEqual(listener.statuses, ["ESTABLISHED", "FINISH"])

    @inlineCallbacks
    def test_digest_challenge_wrong_password(self) -> Steps:
        """With a wrong password the far end answers 403 to our credentials: FAILED 403 FAILED_BY_ERROR."""
        agent = self.agent()
        sipp = yield self.sipp("uas_auth.xml", variables={"user": "alice", "password": "right"})
        _handle, listener = self.call(agent, sipp, password="wrong")
        yield listener.wait("FAILED")
        code = yield sipp.wait_exit(timeout=10)
        self.assert_sipp_passed(code)
        self.assertEqual(listener.events, [("FAILED", 403, EndInfo.FAILED_BY_ERROR)])

    @inlineCallbacks
    def test_register_challenged_then_call(self) -> Steps:
        """sipRegisterRequired: REGISTER challenged with 401, accepted with our digest, then the INVITE; when the
        call ends the binding is removed with Expires: 0 (SIPp checks it)."""
        agent = self.agent()
        sipp = yield self.sipp("uas_register.xml", calls=2, variables={"user": "alice", "password": "secret"})
        handle, listener = self.call(agent, sipp, register_required=True)
        yield listener.wait("ESTABLISHED")
        handle.hangup()
        code = yield sipp.wait_exit(timeout=10)
        self.assert_sipp_passed(code)
        self.assertEqual(listener.statuses, ["ESTABLISHED", "FINISH"])
        received = sipp.start_lines("received")
        methods = [line.split()[0] for line in received]
        self.assertEqual(methods, ["REGISTER", "REGISTER", "INVITE", "ACK", "BYE", "REGISTER"])

    @inlineCallbacks
    def test_far_end_hangs_up(self) -> Steps:
        """The far end answers then sends BYE: ESTABLISHED, then FINISH 200 NORMAL_CALL_CLEARING."""
        agent = self.agent()
        sipp = yield self.sipp("uas_hangup.xml")
        _handle, listener = self.call(agent, sipp)
        yield listener.wait("FINISH")
        code = yield sipp.wait_exit(timeout=10)
        self.assert_sipp_passed(code)
        self.assertEqual(listener.events, [("ESTABLISHED", 200, None), ("FINISH", 200, EndInfo.NORMAL_CALL_CLEARING)])

    @inlineCallbacks
    def test_terminate_before_answer(self) -> Steps:
        """Hanging up while it rings sends CANCEL; the far end answers 200 and 487, which we ACK."""
        agent = self.agent()
        sipp = yield self.sipp("uas_cancel.xml")
        handle, listener = self.call(agent, sipp)
        yield listener.wait("RING")
        handle.hangup()
        code = yield sipp.wait_exit(timeout=10)
        self.assert_sipp_passed(code)
        self.assertEqual(
            listener.events,
            [("TRYING", 100, None), ("RING", 180, None), ("FINISH", 180, EndInfo.TERMINATED_BY_REQUEST)],
        )
        self.assertEqual([line.split()[0] for line in sipp.start_lines("received")], ["INVITE", "CANCEL", "ACK"])

    @inlineCallbacks
    def test_hold_and_resume(self) -> Steps:
        """A re-INVITE with sendonly reports HOLD and is answered recvonly (SIPp checks); a sendrecv one reports
        ESTABLISHED again."""
        agent = self.agent()
        sipp = yield self.sipp("uas_hold.xml")
        handle, listener = self.call(agent, sipp)
        yield listener.wait("HOLD")
        yield listener.wait("ESTABLISHED")
        yield self._wait_for(lambda: listener.statuses.count("ESTABLISHED") == 2)
        handle.hangup()
        code = yield sipp.wait_exit(timeout=10)
        self.assert_sipp_passed(code)
        self.assertEqual(listener.statuses, ["ESTABLISHED", "HOLD", "ESTABLISHED", "FINISH"])

    @inlineCallbacks
    def test_lost_invite_and_lost_200_recovered(self) -> Steps:
        """The first INVITE and the first 200 are lost on our socket: Timer A resends the INVITE, SIPp resends the
        200, and the call is established with a single ACK."""
        agent = self.agent(t1=0.1)
        sipp = yield self.sipp("uas_answer.xml")
        lost = lose_first(agent._port, self, b"INVITE ", b"SIP/2.0 200")
        handle, listener = self.call(agent, sipp)
        yield listener.wait("ESTABLISHED")
        handle.hangup()
        code = yield sipp.wait_exit(timeout=10)
        self.assert_sipp_passed(code)
        self.assertEqual(len(lost), 2)
        self.assertEqual(listener.statuses, ["TRYING", "RING", "ESTABLISHED", "FINISH"])
        sent = [line for line in sipp.start_lines("sent") if line.startswith("SIP/2.0 200")]
        self.assertGreaterEqual(len(sent), 2, sipp.describe())
        received = [line.split()[0] for line in sipp.start_lines("received")]
        self.assertEqual(received, ["INVITE", "ACK", "BYE"])

    @inlineCallbacks
    def _wait_for(self, condition: Callable[[], bool], timeout: float = 10.0) -> Steps:
        from twisted.internet import task

        deadline = reactor.seconds() + timeout
        while not condition():
            if reactor.seconds() > deadline:
                self.fail("condition not reached in time")
            yield task.deferLater(reactor, 0.02, lambda: None)
