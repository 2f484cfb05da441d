"""Tests for the outgoing call leg (wcsgw.sip.leg, .dialog) driven through the sans-I/O core."""

from __future__ import annotations

from typing import Any

from sipmessage import AuthCredentials, Message, Request
from twisted.trial.unittest import SynchronousTestCase

from wcsgw.model import CallStatus, EndInfo
from wcsgw.sip.interfaces import CallStateError
from wcsgw.sip.leg import CallLeg, LegState
from wcsgw.sip.transaction import TimerConfig

from .sip_farend import FAR, OFFER, FarEnd, Recorder, answer_sdp, make_call, make_core

CHALLENGE = {"WWW-Authenticate": 'Digest realm="far", nonce="n1", qop="auth"'}


class LegTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.core = make_core()
        self.far = FarEnd(self.core)
        self.listener = Recorder()

    def place(self, **call: Any) -> CallLeg:
        return self.core.place_call(make_call(**call), OFFER, self.listener, self.far.now)

    def establish(self, headers: dict[str, str] | None = None, **call: Any) -> tuple[CallLeg, Message]:
        leg = self.place(**call)
        invite = self.far.take("INVITE")
        self.far.reply(invite, 180)
        self.far.reply(invite, 200, sdp=answer_sdp(), headers=headers)
        self.far.take("ACK")
        self.assertIs(leg.state, LegState.CONFIRMED)
        return leg, invite

    def assert_clean(self) -> None:
        """After every timer ran, nothing is left in the core."""
        self.far.advance(self.far.now + 10_000)
        self.assertTrue(self.core.idle, f"left: {self.core.legs} {self.core.transaction_count}")
        self.assertIsNone(self.core.next_deadline())


class InviteTests(LegTestCase):
    def test_invite_shape(self) -> None:
        """The INVITE has Via with rport and a z9hG4bK branch, Max-Forwards, From with display name and tag, To,
        the REST callId as Call-ID, our public Contact, Supported timer, User-Agent and the SDP with its length."""
        self.place()
        invite = self.far.take("INVITE")
        assert isinstance(invite, Request)
        self.assertEqual(str(invite.uri), "sip:bob@192.0.2.2")
        via = invite.via[0]
        self.assertEqual((via.host, via.port), ("192.0.2.1", 5060))
        self.assertIn("rport", via.parameters)
        self.assertTrue(via.parameters["branch"].startswith("z9hG4bK"))  # type: ignore[union-attr]
        self.assertEqual(invite.max_forwards, 70)
        self.assertEqual(invite.from_address.name, "Alice")
        self.assertEqual(str(invite.from_address.uri), "sip:alice@192.0.2.2")
        self.assertTrue(invite.from_address.parameters.get("tag"))
        self.assertEqual(str(invite.to_address), "<sip:bob@192.0.2.2>")
        self.assertEqual(invite.call_id, "call-1")
        self.assertEqual(str(invite.contact[0].uri), "sip:alice@192.0.2.1:5060")
        self.assertEqual(invite.supported, ["timer"])
        self.assertEqual(invite.user_agent, "wcsgw/0.1")
        self.assertEqual(invite.body.decode(), OFFER)
        self.assertEqual(invite.content_length, len(invite.body))
        self.assertEqual(self.far.destination_of(invite), FAR)

    def test_port_goes_into_request_uri_without_proxy(self) -> None:
        """Without outbound proxy a non-default sipPort is the port of the Request-URI and of the destination."""
        self.place(port=5070)
        invite = self.far.take("INVITE")
        self.assertEqual(str(invite.uri), "sip:bob@192.0.2.2:5070")  # type: ignore[attr-defined]
        self.assertEqual(self.far.destination_of(invite), ("192.0.2.2", 5070))

    def test_outbound_proxy_is_first_hop(self) -> None:
        """With an outbound proxy the INVITE and the in-dialog requests go to proxy:sipPort."""
        leg, invite = self.establish(outbound_proxy="proxy.example.org", port=5080, domain="example.org")
        self.assertEqual(str(invite.uri), "sip:bob@example.org")  # type: ignore[attr-defined]
        self.assertEqual(self.far.destination_of(invite), ("proxy.example.org", 5080))
        self.core.hangup(leg, 1.0)
        self.assertEqual(self.far.destination_of(self.far.take("BYE")), ("proxy.example.org", 5080))

    def test_statuses_of_a_successful_call(self) -> None:
        """100 TRYING, 180 RING, 183 with SDP RING_MEDIA, 2xx ESTABLISHED with the answer, each with its code."""
        self.place()
        invite = self.far.take("INVITE")
        self.far.reply(invite, 100)
        self.far.reply(invite, 180)
        self.far.reply(invite, 183, sdp=answer_sdp())
        self.far.reply(invite, 200, sdp=answer_sdp())
        self.assertEqual(
            self.listener.statuses,
            [("TRYING", 100), ("RING", 180), ("RING_MEDIA", 183), ("ESTABLISHED", 200)],
        )
        self.assertEqual(self.listener.events[-1][3], answer_sdp())

    def test_183_without_sdp_is_session_progress(self) -> None:
        """183 without SDP reports SESSION_PROGRESS; a repeated identical provisional is not reported twice."""
        self.place()
        invite = self.far.take("INVITE")
        self.far.reply(invite, 183)
        self.far.reply(invite, 183)
        self.assertEqual(self.listener.statuses, [("SESSION_PROGRESS", 183)])

    def test_ack_for_2xx_and_its_retransmission(self) -> None:
        """The 2xx is ACKed by the dialog (new branch, CSeq of the INVITE, To tag, sent to the Contact); each
        retransmitted 2xx gets the same ACK again and no new status."""
        self.place()
        invite = self.far.take("INVITE")
        ok = self.far.reply(invite, 200, sdp=answer_sdp())
        ack = self.far.take("ACK")
        assert isinstance(ack, Request)
        self.assertEqual(str(ack.uri), "sip:bob@192.0.2.2:5060")
        self.assertEqual(str(ack.cseq), "1 ACK")
        self.assertEqual(ack.to_address.parameters["tag"], "far")
        self.assertNotEqual(ack.via[0].parameters["branch"], invite.via[0].parameters["branch"])
        first_ack = self.far.raw[-1]
        self.far.feed(ok)
        self.far.take("ACK")
        self.assertEqual(self.far.raw[-1], first_ack)
        self.assertEqual(self.listener.statuses, [("ESTABLISHED", 200)])

    def test_busy(self) -> None:
        """486 (and 600) end the call BUSY with BUSY_HERE; the transaction ACKs the failure."""
        for code in (486, 600):
            self.setUp()
            self.place()
            invite = self.far.take("INVITE")
            self.far.reply(invite, code)
            self.far.take("ACK")
            self.assertEqual(self.listener.ended, (CallStatus.BUSY, code, EndInfo.BUSY_HERE))
            self.assert_clean()

    def test_other_failure(self) -> None:
        """A 404 ends FAILED with FAILED_BY_ERROR and the code."""
        self.place()
        self.far.reply(self.far.take("INVITE"), 404)
        self.assertEqual(self.listener.ended, (CallStatus.FAILED, 404, EndInfo.FAILED_BY_ERROR))

    def test_timer_b(self) -> None:
        """No answer at all: the INVITE is retransmitted (Timer A) and Timer B ends FAILED 408 by timeout."""
        self.place()
        self.far.advance(31.9)
        self.assertIsNone(self.listener.ended)
        self.far.advance(32.0)
        self.assertEqual(self.listener.ended, (CallStatus.FAILED, 408, EndInfo.FAILED_BY_REQUEST_TIMEOUT))
        self.assertEqual(self.core.counters["retransmissions"], 6)
        self.assert_clean()

    def test_transport_error(self) -> None:
        """A transport error on the first hop ends FAILED 503 FAILED_BY_ERROR."""
        self.place()
        self.core.transport_error(FAR, 0.1)
        self.assertEqual(self.listener.ended, (CallStatus.FAILED, 503, EndInfo.FAILED_BY_ERROR))

    def test_no_common_codecs(self) -> None:
        """An answer without a common codec is ACKed, then BYE; the call ends FAILED NO_COMMON_CODECS."""
        self.place()
        invite = self.far.take("INVITE")
        self.far.reply(invite, 200, sdp=answer_sdp(audio="18", video_port=0))
        self.far.take("ACK")
        self.far.take("BYE")
        self.assertEqual(self.listener.ended, (CallStatus.FAILED, 200, EndInfo.NO_COMMON_CODECS))
        self.assertNotIn("ESTABLISHED", [s for s, _c in self.listener.statuses])

    def test_2xx_without_sdp_uses_early_answer(self) -> None:
        """A 2xx without SDP after a 183 with SDP uses the early answer; without any answer the call fails."""
        self.place()
        invite = self.far.take("INVITE")
        self.far.reply(invite, 183, sdp=answer_sdp())
        self.far.reply(invite, 200)
        self.assertEqual(self.listener.events[-1][:3], ("progress", CallStatus.ESTABLISHED, 200))
        self.setUp()
        self.place()
        self.far.reply(self.far.take("INVITE"), 200)
        self.far.take("BYE")
        self.assertEqual(self.listener.ended, (CallStatus.FAILED, 200, EndInfo.FAILED_BY_ERROR))

    def test_forked_second_2xx_is_acked_and_released(self) -> None:
        """A 2xx from a second fork is ACKed and BYEd; the listener sees one ESTABLISHED."""
        self.place()
        invite = self.far.take("INVITE")
        self.far.reply(invite, 200, sdp=answer_sdp())
        self.far.reply(invite, 200, sdp=answer_sdp(), tag="fork2")
        acks = [m for m in self.far.collect_pending() if getattr(m, "method", "") == "ACK"]
        self.assertEqual([a.to_address.parameters["tag"] for a in acks], ["far", "fork2"])
        bye = self.far.take("BYE")
        self.assertEqual(bye.to_address.parameters["tag"], "fork2")
        self.assertEqual(self.listener.statuses, [("ESTABLISHED", 200)])

    def test_duplicate_call_id_is_refused(self) -> None:
        """A second live call with the same Call-ID is refused."""
        self.place()
        self.assertRaises(ValueError, self.place)


class AuthTests(LegTestCase):
    def test_invite_retried_with_credentials(self) -> None:
        """A 401 is ACKed and the INVITE is sent again with Authorization, CSeq+1, a new branch and the same
        Call-ID and From tag; sipAuthenticationName is the digest username."""
        self.place(auth_name="alice-auth")
        first = self.far.take("INVITE")
        self.far.reply(first, 401, headers=CHALLENGE)
        self.far.take("ACK")
        second = self.far.take("INVITE")
        self.assertEqual(str(second.cseq), "2 INVITE")
        self.assertNotEqual(second.via[0].parameters["branch"], first.via[0].parameters["branch"])
        self.assertEqual(second.from_address.parameters["tag"], first.from_address.parameters["tag"])
        credentials = AuthCredentials.parse(second.headers["Authorization"])
        assert credentials.parameters is not None
        self.assertEqual(credentials.parameters["username"], "alice-auth")
        self.far.reply(second, 200, sdp=answer_sdp())
        self.assertEqual(self.listener.statuses, [("ESTABLISHED", 200)])
        ack = self.far.take("ACK")
        self.assertIn("Authorization", ack.headers.keys())

    def test_login_is_the_default_auth_name(self) -> None:
        """Without sipAuthenticationName the login authenticates; a 407 is answered in Proxy-Authorization."""
        self.place()
        self.far.reply(self.far.take("INVITE"), 407, headers={"Proxy-Authenticate": 'Digest realm="p", nonce="x"'})
        second = self.far.take("INVITE")
        credentials = AuthCredentials.parse(second.headers["Proxy-Authorization"])
        self.assertEqual(credentials.parameters["username"], "alice")  # type: ignore[index]

    def test_second_challenge_fails_with_its_status(self) -> None:
        """A challenge after our credentials (wrong password) ends FAILED with that status (401 or 403)."""
        self.place()
        self.far.reply(self.far.take("INVITE"), 401, headers=CHALLENGE)
        self.far.reply(self.far.take("INVITE"), 401, headers=CHALLENGE)
        self.assertEqual(self.listener.ended, (CallStatus.FAILED, 401, EndInfo.FAILED_BY_ERROR))
        self.setUp()
        self.place()
        self.far.reply(self.far.take("INVITE"), 401, headers=CHALLENGE)
        self.far.reply(self.far.take("INVITE"), 403)
        self.assertEqual(self.listener.ended, (CallStatus.FAILED, 403, EndInfo.FAILED_BY_ERROR))

    def test_no_password_no_retry(self) -> None:
        """Without a password a challenge ends the call FAILED 401."""
        self.place(password=None)
        self.far.reply(self.far.take("INVITE"), 401, headers=CHALLENGE)
        self.assertEqual(self.listener.ended, (CallStatus.FAILED, 401, EndInfo.FAILED_BY_ERROR))

    def test_bye_retried_with_credentials(self) -> None:
        """A challenged BYE is sent again with credentials and a higher CSeq."""
        leg, _invite = self.establish()
        self.core.hangup(leg, 1.0)
        bye = self.far.take("BYE")
        self.far.reply(bye, 407, headers={"Proxy-Authenticate": 'Digest realm="p", nonce="x"'})
        again = self.far.take("BYE")
        self.assertEqual(again.cseq.sequence, bye.cseq.sequence + 1)
        self.assertIn("Proxy-Authorization", again.headers.keys())
        self.far.reply(again, 200)
        self.assert_clean()

    def test_password_not_in_repr(self) -> None:
        """The password appears neither in the call's repr nor in the leg's."""
        leg = self.place(password="hunter2")
        self.assertNotIn("hunter2", repr(leg.call) + repr(leg) + repr(leg.auth))


class TeardownTests(LegTestCase):
    def test_cancel_after_provisional(self) -> None:
        """hangup after a 180 reports FINISH at once and sends CANCEL (same branch, CSeq n CANCEL, no To tag);
        the 487 is ACKed and nothing is left."""
        leg = self.place()
        invite = self.far.take("INVITE")
        self.far.reply(invite, 180)
        self.core.hangup(leg, 1.0)
        self.assertEqual(self.listener.ended, (CallStatus.FINISH, 180, EndInfo.TERMINATED_BY_REQUEST))
        cancel = self.far.take("CANCEL")
        self.assertEqual(cancel.via[0].parameters["branch"], invite.via[0].parameters["branch"])
        self.assertEqual(str(cancel.cseq), "1 CANCEL")
        self.assertNotIn("tag", cancel.to_address.parameters)
        self.far.reply(cancel, 200)
        self.far.reply(invite, 487)
        self.far.take("ACK")
        self.assertIs(leg.state, LegState.TERMINATED)
        self.assertEqual(len(self.listener.events), 2)
        self.assert_clean()

    def test_cancel_waits_for_a_provisional(self) -> None:
        """hangup before any provisional response sends nothing until one arrives (RFC 3261 section 9.1)."""
        leg = self.place()
        invite = self.far.take("INVITE")
        self.core.hangup(leg, 0.1)
        self.assertEqual(self.far.nothing_sent(), [])
        self.far.reply(invite, 100)
        self.far.take("CANCEL")

    def test_2xx_racing_the_cancel_gets_ack_and_bye(self) -> None:
        """A 2xx that crosses our CANCEL is ACKed and the call is released with BYE."""
        leg = self.place()
        invite = self.far.take("INVITE")
        self.far.reply(invite, 180)
        self.core.hangup(leg, 1.0)
        self.far.take("CANCEL")
        self.far.reply(invite, 200, sdp=answer_sdp())
        self.far.take("ACK")
        bye = self.far.take("BYE")
        self.far.reply(bye, 200)
        self.assertNotIn("ESTABLISHED", [s for s, _c in self.listener.statuses])
        self.assert_clean()

    def test_cancel_without_final_response_gives_up(self) -> None:
        """No final response 64*T1 after the CANCEL: the INVITE transaction is abandoned."""
        leg = self.place()
        self.far.reply(self.far.take("INVITE"), 180)
        self.core.hangup(leg, 1.0)
        self.far.advance(64 * 0.5 + 1.0)
        self.assertFalse(leg.busy)
        self.assert_clean()

    def test_bye_after_establishment(self) -> None:
        """hangup of an established call sends BYE in the dialog and reports FINISH TERMINATED_BY_REQUEST."""
        leg, invite = self.establish()
        self.core.hangup(leg, 2.0)
        bye = self.far.take("BYE")
        self.assertEqual(str(bye.cseq), "2 BYE")
        self.assertEqual(bye.call_id, "call-1")
        self.assertEqual(self.listener.ended, (CallStatus.FINISH, 200, EndInfo.TERMINATED_BY_REQUEST))
        self.assertTrue(self.core.busy)
        self.far.reply(bye, 200)
        self.assertFalse(self.core.busy)
        self.assert_clean()

    def test_far_end_bye(self) -> None:
        """A far-end BYE is answered 200 and ends FINISH NORMAL_CALL_CLEARING."""
        leg, invite = self.establish()
        self.far.request("BYE", invite)
        ok = self.far.take(200)
        self.assertEqual(str(ok.cseq).split()[1], "BYE")
        self.assertEqual(self.listener.ended, (CallStatus.FINISH, 200, EndInfo.NORMAL_CALL_CLEARING))
        self.assert_clean()

    def test_shutdown_hangs_up_everything(self) -> None:
        """shutdown ends every live call with GATEWAY_SHUTDOWN."""
        leg, _invite = self.establish()
        self.core.shutdown(3.0)
        self.far.take("BYE")
        self.assertEqual(self.listener.ended, (CallStatus.FINISH, 200, EndInfo.GATEWAY_SHUTDOWN))


class RouteSetTests(LegTestCase):
    def test_loose_route_set(self) -> None:
        """Record-Route of the 2xx, reversed, becomes the Route of ACK and BYE, sent to the first route."""
        headers = {"Record-Route": "<sip:p2.example.org;lr>, <sip:192.0.2.9:5090;lr>"}
        leg, _invite = self.establish(headers=headers)
        ack = [m for m, _d in self.far.sent if getattr(m, "method", "") == "ACK"][-1]
        self.assertEqual([str(r.uri) for r in ack.route], ["sip:192.0.2.9:5090;lr", "sip:p2.example.org;lr"])
        self.assertEqual(str(ack.uri), "sip:bob@192.0.2.2:5060")  # type: ignore[attr-defined]
        self.core.hangup(leg, 1.0)
        bye = self.far.take("BYE")
        self.assertEqual(self.far.destination_of(bye), ("192.0.2.9", 5090))
        self.assertEqual(len(bye.route), 2)

    def test_strict_route(self) -> None:
        """A strict router (no lr) takes the Request-URI; the remote target becomes the last Route."""
        leg, _invite = self.establish(headers={"Record-Route": "<sip:192.0.2.9:5090>"})
        self.core.hangup(leg, 1.0)
        bye = self.far.take("BYE")
        self.assertEqual(str(bye.uri), "sip:192.0.2.9:5090")  # type: ignore[attr-defined]
        self.assertEqual([str(r.uri) for r in bye.route], ["sip:bob@192.0.2.2:5060"])


class InDialogTests(LegTestCase):
    def test_hold_and_resume(self) -> None:
        """A re-INVITE offering sendonly is answered 200 with our answer (recvonly) and reports HOLD; the 2xx
        is retransmitted until the ACK; sendrecv then reports ESTABLISHED again."""
        leg, invite = self.establish()
        reinvite = self.far.request("INVITE", invite, sdp=answer_sdp("sendonly", version=2))
        ok = self.far.take(200)
        self.assertIn(b"a=recvonly", ok.body)
        self.assertEqual(ok.headers["Content-Type"], "application/sdp")
        self.assertEqual(self.listener.statuses[-1], ("HOLD", 200))
        self.assertEqual(len(self.listener.offers), 1)
        self.far.advance(0.5)
        self.far.take(200)
        self.far.request("ACK", invite, cseq=reinvite.cseq.sequence)
        self.far.advance(40.0)
        self.assertEqual(self.far.nothing_sent(), [])
        self.far.at(41.0).request("INVITE", invite, sdp=answer_sdp("sendrecv", version=3))
        self.far.take(200)
        self.assertEqual(self.listener.statuses[-1], ("ESTABLISHED", 200))
        self.assertEqual([s for s, _c in self.listener.statuses], ["RING", "ESTABLISHED", "HOLD", "ESTABLISHED"])

    def test_unacknowledged_reinvite_2xx_ends_the_call(self) -> None:
        """Without ACK our 2xx is retransmitted (T1 doubling to T2) and after 64*T1 the call ends with BYE."""
        leg, invite = self.establish()
        self.far.request("INVITE", invite, sdp=answer_sdp("sendonly", version=2))
        self.far.collect_pending()
        self.far.advance(31.9)
        retransmitted = [m for m in self.far.collect_pending() if getattr(m, "code", 0) == 200]
        # The first 2xx, then at 0.5 1.5 3.5 7.5 11.5 15.5 19.5 23.5 27.5 31.5.
        self.assertEqual(len(retransmitted), 1 + 10)
        self.far.advance(32.0)
        self.far.take("BYE")
        self.assertEqual(self.listener.ended, (CallStatus.FAILED, 408, EndInfo.FAILED_BY_REQUEST_TIMEOUT))

    def test_offerless_reinvite(self) -> None:
        """A re-INVITE without SDP gets our current SDP as offer; the ACK's answer is taken."""
        leg, invite = self.establish()
        reinvite = self.far.request("INVITE", invite)
        ok = self.far.take(200)
        self.assertEqual(ok.body.decode(), OFFER)
        self.far.request("ACK", invite, cseq=reinvite.cseq.sequence, sdp=answer_sdp("inactive", version=2))
        self.assertEqual(self.listener.statuses[-1], ("HOLD", 200))

    def test_retransmitted_reinvite_gets_the_same_2xx(self) -> None:
        """A retransmitted re-INVITE (same CSeq) gets the same 2xx and no second offer to the listener."""
        leg, invite = self.establish()
        reinvite = self.far.request("INVITE", invite, sdp=answer_sdp("sendonly", version=2))
        first = self.far.take(200)
        self.far.feed(reinvite)
        again = self.far.take(200)
        self.assertEqual(again.body, first.body)
        self.assertEqual(len(self.listener.offers), 1)

    def test_update_options_info_answered(self) -> None:
        """UPDATE, OPTIONS and INFO in the dialog get 200; NOTIFY gets 405, an unknown method 501."""
        leg, invite = self.establish()
        for method in ("UPDATE", "OPTIONS", "INFO"):
            self.far.request(method, invite)
            self.assertEqual(str(self.far.take(200).cseq).split()[1], method)
        self.far.request("NOTIFY", invite)
        self.assertIn("Allow", self.far.take(405).headers.keys())
        self.far.request("FOO", invite)
        self.far.take(501)

    def test_update_with_hold_offer(self) -> None:
        """An UPDATE carrying a hold offer is answered with SDP and reports HOLD."""
        leg, invite = self.establish()
        self.far.request("UPDATE", invite, sdp=answer_sdp("inactive", version=2))
        self.assertIn(b"a=inactive", self.far.take(200).body)
        self.assertEqual(self.listener.statuses[-1], ("HOLD", 200))

    def test_bad_offer_is_refused(self) -> None:
        """An unparseable re-offer gets 488 and changes nothing."""
        leg, invite = self.establish()
        self.far.request("INVITE", invite, sdp="v=1\r\n")
        self.far.take(488)
        self.assertEqual(self.listener.statuses, [("RING", 180), ("ESTABLISHED", 200)])

    def test_lower_cseq_gets_500(self) -> None:
        """A far-end request with a CSeq lower than the previous one gets 500."""
        leg, invite = self.establish()
        self.far.request("INFO", invite, cseq=50)
        self.far.take(200)
        self.far.request("INFO", invite, cseq=49)
        self.far.take(500)

    def test_send_info(self) -> None:
        """send_info sends INFO in the dialog with the body and reports the final status."""
        leg, invite = self.establish()
        results: list[int] = []
        self.core.send_info(leg, "application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n", results.append, 1.0)
        info = self.far.take("INFO")
        self.assertEqual(info.headers["Content-Type"], "application/dtmf-relay")
        self.assertEqual(info.body, b"Signal=5\r\nDuration=160\r\n")
        self.far.reply(info, 200)
        self.assertEqual(results, [200])

    def test_send_info_needs_an_established_call(self) -> None:
        """INFO before the answer is refused with CallStateError."""
        leg = self.place()
        self.assertRaises(CallStateError, self.core.send_info, leg, "text/plain", b"x", lambda code: None, 0.0)

    def test_info_481_ends_the_call(self) -> None:
        """A 481 to our INFO means the dialog is gone: the call ends FAILED."""
        leg, invite = self.establish()
        results: list[int] = []
        self.core.send_info(leg, "text/plain", b"x", results.append, 1.0)
        self.far.reply(self.far.take("INFO"), 481)
        self.assertEqual(results, [481])
        self.assertEqual(self.listener.ended, (CallStatus.FAILED, 481, EndInfo.FAILED_BY_ERROR))


class SessionTimerTests(LegTestCase):
    def test_we_refresh_with_update(self) -> None:
        """Session-Expires 90;refresher=uac in the 2xx: we send UPDATE at 45 s (peer allows UPDATE), every 45 s,
        so the call lasts hours."""
        headers = {"Session-Expires": "90;refresher=uac", "Require": "timer", "Allow": "INVITE, ACK, BYE, UPDATE"}
        leg, invite = self.establish(headers=headers)
        for cycle in range(1, 241):  # three hours
            self.far.advance(45.0 * cycle)
            update = self.far.take("UPDATE")
            self.assertEqual(update.headers["Session-Expires"], "90;refresher=uac")
            self.far.reply(update, 200, headers={"Session-Expires": "90;refresher=uac"})
        self.assertIsNone(self.listener.ended)
        self.assertIs(leg.state, LegState.CONFIRMED)

    def test_we_refresh_with_reinvite(self) -> None:
        """Without UPDATE in the peer's Allow, the refresh is a re-INVITE with our SDP, ACKed on 2xx."""
        leg, invite = self.establish(headers={"Session-Expires": "120;refresher=uac"})
        self.far.advance(60.0)
        reinvite = self.far.take("INVITE")
        self.assertEqual(reinvite.body.decode(), OFFER)
        self.assertEqual(reinvite.cseq.sequence, 2)
        self.far.reply(reinvite, 200, sdp=answer_sdp(), headers={"Session-Expires": "120;refresher=uac"})
        self.assertEqual(str(self.far.take("ACK").cseq), "2 ACK")
        self.far.advance(120.0)
        self.far.take("INVITE")

    def test_refresh_glare_retries(self) -> None:
        """A 491 to our refresh re-INVITE is retried 2.1 to 4 seconds later."""
        leg, invite = self.establish(headers={"Session-Expires": "120;refresher=uac"})
        self.far.advance(60.0)
        self.far.reply(self.far.take("INVITE"), 491)
        self.far.advance(62.0)
        self.assertEqual([m for m in self.far.nothing_sent() if m.startswith("INVITE")], [])
        self.far.advance(64.0)
        self.far.take("INVITE")

    def test_refresh_timeout_ends_call(self) -> None:
        """A refresh that times out ends the call with BYE, FAILED FAILED_BY_REQUEST_TIMEOUT."""
        leg, invite = self.establish(headers={"Session-Expires": "90;refresher=uac", "Allow": "UPDATE"})
        self.far.advance(45.0 + 32.0)
        self.far.take("BYE")
        self.assertEqual(self.listener.ended, (CallStatus.FAILED, 408, EndInfo.FAILED_BY_REQUEST_TIMEOUT))

    def test_far_end_refreshes(self) -> None:
        """refresher=uas: the far end refreshes; each refresh re-arms the expiry; without one we BYE at
        interval - min(32, interval/3)."""
        leg, invite = self.establish(headers={"Session-Expires": "90;refresher=uas"})
        self.far.advance(50.0)
        self.far.request("UPDATE", invite, headers={"Session-Expires": "90;refresher=uac", "Supported": "timer"})
        ok = self.far.take(200)
        self.assertEqual(ok.headers["Session-Expires"], "90;refresher=uac")
        self.assertEqual(ok.headers["Require"], "timer")
        self.far.advance(50.0 + 59.0)
        self.assertIsNone(self.listener.ended)
        self.far.advance(50.0 + 60.0)
        self.far.take("BYE")
        self.assertEqual(self.listener.ended, (CallStatus.FAILED, 408, EndInfo.FAILED_BY_REQUEST_TIMEOUT))

    def test_422_retries_with_min_se(self) -> None:
        """A 422 to the INVITE is retried with Session-Expires and Min-SE set to the Min-SE received."""
        self.place()
        self.far.reply(self.far.take("INVITE"), 422, headers={"Min-SE": "1800"})
        again = self.far.take("INVITE")
        self.assertEqual((again.headers["Session-Expires"], again.headers["Min-SE"]), ("1800", "1800"))


class RegisterTests(LegTestCase):
    def test_register_then_invite_then_unregister(self) -> None:
        """sipRegisterRequired: REGISTER (challenged, then accepted) before the INVITE, refresh before expiry,
        Expires: 0 when the call ends."""
        leg = self.place(register_required=True)
        register = self.far.take("REGISTER")
        self.assertEqual(str(register.uri), "sip:192.0.2.2")  # type: ignore[attr-defined]
        self.assertEqual(str(register.to_address), "<sip:alice@192.0.2.2>")
        self.assertEqual(str(register.contact[0].uri), "sip:alice@192.0.2.1:5060")
        self.assertEqual(register.expires, 3600)
        self.assertEqual(self.far.nothing_sent(), [])
        self.far.reply(register, 401, headers=CHALLENGE)
        second = self.far.take("REGISTER")
        self.assertEqual(second.cseq.sequence, 2)
        self.assertEqual(second.call_id, register.call_id)
        self.assertIn("Authorization", second.headers.keys())
        self.far.reply(second, 200, headers={"Expires": "120"})
        invite = self.far.take("INVITE")
        self.far.reply(invite, 200, sdp=answer_sdp())
        self.far.advance(59.0)
        self.assertEqual([m for m in self.far.nothing_sent() if m.startswith("REGISTER")], [])
        self.far.advance(60.0)
        refresh = self.far.take("REGISTER")
        self.assertEqual(refresh.cseq.sequence, 3)
        self.far.reply(refresh, 200, headers={"Expires": "120"})
        self.core.hangup(leg, 70.0)
        self.far.reply(self.far.take("BYE"), 200)
        unregister = self.far.take("REGISTER")
        self.assertEqual(unregister.expires, 0)
        self.far.reply(unregister, 200)
        self.assert_clean()

    def test_failed_register_fails_the_call(self) -> None:
        """A REGISTER refused with 403 ends the call FAILED 403 without an INVITE."""
        self.place(register_required=True)
        self.far.reply(self.far.take("REGISTER"), 403)
        self.assertEqual(self.listener.ended, (CallStatus.FAILED, 403, EndInfo.FAILED_BY_ERROR))
        self.assertEqual(self.far.nothing_sent(), [])
        self.assert_clean()

    def test_register_second_challenge_fails(self) -> None:
        """A second challenge to the REGISTER ends the call FAILED with its status."""
        self.place(register_required=True)
        self.far.reply(self.far.take("REGISTER"), 401, headers=CHALLENGE)
        self.far.reply(self.far.take("REGISTER"), 401, headers=CHALLENGE)
        self.assertEqual(self.listener.ended, (CallStatus.FAILED, 401, EndInfo.FAILED_BY_ERROR))

    def test_calls_share_one_registration(self) -> None:
        """Two calls of one login share one REGISTER; only the last one to end removes the binding."""
        first = self.place(register_required=True)
        second = self.core.place_call(make_call(call_id="call-2", register_required=True), OFFER, Recorder(), 0.0)
        register = self.far.take("REGISTER")
        self.far.reply(register, 200)
        self.far.take("INVITE")
        self.far.take("INVITE")
        self.core.hangup(first, 1.0)
        self.assertEqual([m for m in self.far.nothing_sent() if m.startswith("REGISTER")], [])
        self.core.hangup(second, 2.0)
        self.assertEqual(self.far.take("REGISTER").expires, 0)


class UnitTimerTests(SynchronousTestCase):
    def test_small_t1(self) -> None:
        """A small T1 makes Timer B fire after 64*T1."""
        core = make_core(timers=TimerConfig(t1=0.01))
        far = FarEnd(core)
        listener = Recorder()
        core.place_call(make_call(), OFFER, listener, 0.0)
        far.advance(0.64)
        self.assertEqual(listener.ended, (CallStatus.FAILED, 408, EndInfo.FAILED_BY_REQUEST_TIMEOUT))


def raw_request(method: str, *, to_tag: str = "", extra: str = "", call_id: str = "other") -> bytes:
    tag = f";tag={to_tag}" if to_tag else ""
    return (
        f"{method} sip:alice@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.2:5060;branch=z9hG4bK{method}x\r\n"
        f"From: <sip:bob@192.0.2.2>;tag=b\r\nTo: <sip:alice@192.0.2.1>{tag}\r\nCall-ID: {call_id}\r\n"
        f"CSeq: 1 {method}\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


class OutOfDialogTests(LegTestCase):
    def test_unknown_dialog_gets_481(self) -> None:
        """BYE or INFO for a dialog we do not know gets 481."""
        self.far.feed(raw_request("BYE", to_tag="nope"))
        self.far.take(481)
        self.far.feed(raw_request("INFO"))
        self.far.take(481)

    def test_incoming_invite_is_refused(self) -> None:
        """The gateway takes no incoming call: an out-of-dialog INVITE gets 403 (then its ACK is absorbed)."""
        self.far.feed(raw_request("INVITE"))
        self.far.take(403)
        self.assertEqual(self.core.transaction_count, 1)

    def test_unknown_method_and_not_allowed(self) -> None:
        """An unknown method gets 501, a known one we do not serve (SUBSCRIBE) 405 with Allow."""
        self.far.feed(raw_request("FROB"))
        self.far.take(501)
        self.far.feed(raw_request("SUBSCRIBE"))
        self.assertIn("BYE", self.far.take(405).headers["Allow"])

    def test_unsupported_require_gets_420(self) -> None:
        """A Require with an option tag we do not support gets 420 listing it in Unsupported."""
        self.far.feed(raw_request("OPTIONS", extra="Require: 100rel, timer\r\n"))
        self.assertEqual(self.far.take(420).headers["Unsupported"], "100rel")

    def test_cancel_without_transaction_gets_481(self) -> None:
        """A CANCEL matching no INVITE server transaction gets 481."""
        self.far.feed(raw_request("CANCEL"))
        self.far.take(481)

    def test_retransmitted_request_gets_the_same_response(self) -> None:
        """A retransmitted OPTIONS is answered by its server transaction with the same response."""
        self.far.feed(raw_request("OPTIONS"))
        self.far.take(200)
        first = self.far.raw[-1]
        self.far.feed(raw_request("OPTIONS"))
        self.far.take(200)
        self.assertEqual(self.far.raw[-1], first)
        self.assertEqual(self.core.counters["requests_received"], 2)

    def test_response_for_another_sent_by_is_dropped(self) -> None:
        """A response whose top Via is not ours is dropped (RFC 3261 section 18.1.2)."""
        self.place()
        invite = self.far.take("INVITE")
        response = self.far.reply(invite, 180)
        self.far.feed(bytes(response).replace(b"192.0.2.1:5060", b"198.51.100.9:5060"))
        self.assertEqual(self.core.counters["dropped"], 1)

    def test_register_423_retries_with_min_expires(self) -> None:
        """A 423 Interval Too Brief is retried with the Min-Expires value."""
        self.place(register_required=True)
        self.far.reply(self.far.take("REGISTER"), 423, headers={"Min-Expires": "7200"})
        self.assertEqual(self.far.take("REGISTER").expires, 7200)


class RefreshAnswerTests(LegTestCase):
    def test_refresh_answer_with_new_version_is_reported(self) -> None:
        """A refresh 2xx whose SDP has a new o= version reports the new SDP; the same version reports nothing."""
        leg, invite = self.establish(headers={"Session-Expires": "120;refresher=uac"})
        self.far.advance(60.0)
        self.far.reply(self.far.take("INVITE"), 200, sdp=answer_sdp(), headers={"Session-Expires": "120"})
        self.assertEqual(len(self.listener.events), 2)
        self.far.advance(120.0)
        self.far.reply(self.far.take("INVITE"), 200, sdp=answer_sdp(version=2), headers={"Session-Expires": "120"})
        self.assertEqual(self.listener.events[-1][:3], ("progress", CallStatus.ESTABLISHED, 200))
        self.assertEqual(self.listener.events[-1][3], answer_sdp(version=2))
