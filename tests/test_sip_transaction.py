"""Tests for wcsgw.sip.transaction: the four RFC 3261 section 17 machines, driven by plain ``now`` values."""

from __future__ import annotations

from sipmessage import Message, Request, Response
from twisted.trial.unittest import SynchronousTestCase

from wcsgw.sip.message import create_response
from wcsgw.sip.transaction import (
    ClientInviteState,
    ClientInviteTransaction,
    ClientNonInviteState,
    ClientNonInviteTransaction,
    ResponseEvent,
    ResponseOrigin,
    ServerFailureEvent,
    ServerInviteState,
    ServerInviteTransaction,
    ServerNonInviteState,
    ServerNonInviteTransaction,
    Timer,
    TimerConfig,
    Transaction,
    client_transaction_key,
    server_transaction_key,
)

DESTINATION = ("192.0.2.2", 5060)
CONFIG = TimerConfig()  # T1 0.5, T2 4, T4 5, D 32


def make_request(method: str, branch: str = "z9hG4bKabc", *, route: bool = False) -> Request:
    text = (
        f"{method} sip:bob@192.0.2.2 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@example.org>;tag=local\r\n"
        "To: <sip:bob@example.org>\r\n"
        "Call-ID: call-1\r\n"
        f"CSeq: 7 {method}\r\n"
        + ("Route: <sip:proxy.example.org;lr>\r\n" if route else "")
        + "Content-Length: 0\r\n\r\n"
    )
    message = Message.parse(text.encode())
    assert isinstance(message, Request)
    return message


def respond(request: Request, code: int, tag: str = "remote") -> Response:
    return create_response(request, code, to_tag=tag)


def sent(tx: Transaction) -> list[tuple[str, bool]]:
    """(method or status code, retransmission) of what the transaction sent since the last call."""
    return [(m.method if isinstance(m, Request) else str(getattr(m, "code")), r) for m, r in tx.take_messages()]


def events(tx: Transaction) -> list[tuple[int, ResponseOrigin | None]]:
    """(code, origin) of the events since the last call (origin None for server failures)."""
    return [(e.code, e.origin if isinstance(e, ResponseEvent) else None) for e in tx.take_events()]


def run_until(tx: Transaction, end: float) -> list[tuple[float, Message]]:
    """Fire every timer up to ``end``; return (time, message) for each message sent."""
    sent: list[tuple[float, Message]] = []
    while (deadline := tx.next_deadline()) is not None and deadline <= end:
        tx.handle_timers(deadline)
        sent.extend((deadline, message) for message, _r in tx.take_messages())
    return sent


class ClientInviteTests(SynchronousTestCase):
    def start(self, reliable: bool = False, config: TimerConfig = CONFIG) -> ClientInviteTransaction:
        tx = ClientInviteTransaction(make_request("INVITE", route=True), DESTINATION, config, reliable)
        tx.start(0.0)
        return tx

    def test_start_sends_and_arms_a_and_b(self) -> None:
        """Starting sends the INVITE once and arms Timer A at T1 and Timer B at 64*T1."""
        tx = self.start()
        self.assertEqual(sent(tx), [("INVITE", False)])
        self.assertEqual(tx.timers, {Timer.A: 0.5, Timer.B: 32.0})
        self.assertIs(tx.state, ClientInviteState.CALLING)

    def test_timer_a_doubles_without_cap(self) -> None:
        """Timer A retransmits at T1, 2*T1, 4*T1... (no T2 cap for INVITE) until Timer B."""
        tx = self.start()
        tx.take_messages()
        sent = run_until(tx, 31.9)
        self.assertEqual([t for t, _m in sent], [0.5, 1.5, 3.5, 7.5, 15.5, 31.5])
        self.assertEqual(tx.retransmissions, 6)

    def test_timer_b_times_out_with_408(self) -> None:
        """Timer B in Calling terminates the transaction and hands a synthesized 408 (TIMEOUT) to the TU."""
        tx = self.start()
        run_until(tx, 32.0)
        self.assertIs(tx.state, ClientInviteState.TERMINATED)
        self.assertEqual(tx.timers, {})
        [event] = tx.take_events()
        assert isinstance(event, ResponseEvent)
        self.assertEqual((event.code, event.origin), (408, ResponseOrigin.TIMEOUT))
        self.assertEqual(event.response.call_id, "call-1")

    def test_custom_t1_scales_timers(self) -> None:
        """A smaller T1 shortens Timer A and Timer B (64*T1)."""
        tx = self.start(config=TimerConfig(t1=0.05))
        self.assertEqual(tx.timers, {Timer.A: 0.05, Timer.B: 3.2})

    def test_provisional_stops_retransmissions(self) -> None:
        """A 1xx moves to Proceeding, cancels Timers A and B and reaches the TU."""
        tx = self.start()
        tx.take_messages()
        tx.receive_response(respond(tx.request, 180), 0.2)
        self.assertIs(tx.state, ClientInviteState.PROCEEDING)
        self.assertEqual(tx.timers, {})
        self.assertEqual([e.code for e in tx.take_events()], [180])  # type: ignore[union-attr]
        self.assertEqual(run_until(tx, 100.0), [])

    def test_2xx_terminates_without_ack(self) -> None:
        """A 2xx terminates the machine at once; the ACK for 2xx belongs to the dialog, not the transaction."""
        tx = self.start()
        tx.take_messages()
        tx.receive_response(respond(tx.request, 100), 0.1)
        tx.receive_response(respond(tx.request, 200), 0.2)
        self.assertIs(tx.state, ClientInviteState.TERMINATED)
        self.assertEqual(tx.take_messages(), [])
        self.assertEqual([e.code for e in tx.take_events()], [100, 200])  # type: ignore[union-attr]
        self.assertEqual(tx.timers, {})

    def test_failure_acks_and_waits_timer_d(self) -> None:
        """A 486 moves to Completed, sends an ACK built per section 17.1.1.3 and arms Timer D (32 s)."""
        tx = self.start()
        tx.take_messages()
        tx.receive_response(respond(tx.request, 486), 1.0)
        self.assertIs(tx.state, ClientInviteState.COMPLETED)
        [(ack, retransmission)] = tx.take_messages()
        assert isinstance(ack, Request)
        self.assertFalse(retransmission)
        self.assertEqual(ack.method, "ACK")
        self.assertEqual(str(ack.uri), "sip:bob@192.0.2.2")
        self.assertEqual(ack.via[0].parameters["branch"], "z9hG4bKabc")
        self.assertEqual(len(ack.via), 1)
        self.assertEqual(ack.to_address.parameters["tag"], "remote")
        self.assertEqual(str(ack.cseq), "7 ACK")
        self.assertEqual([str(r.uri) for r in ack.route], ["sip:proxy.example.org;lr"])
        self.assertEqual(tx.timers, {Timer.D: 33.0})
        self.assertEqual([e.code for e in tx.take_events()], [486])  # type: ignore[union-attr]

    def test_retransmitted_failure_is_acked_again(self) -> None:
        """In Completed a retransmitted final response is ACKed again and not passed to the TU."""
        tx = self.start()
        tx.receive_response(respond(tx.request, 486), 1.0)
        tx.take_messages()
        tx.take_events()
        tx.receive_response(respond(tx.request, 486), 2.0)
        self.assertEqual([(m.method, r) for m, r in tx.take_messages()], [("ACK", True)])  # type: ignore[attr-defined]
        self.assertEqual(tx.take_events(), [])

    def test_timer_d_terminates(self) -> None:
        """Timer D ends Completed in Terminated without telling the TU."""
        tx = self.start()
        tx.receive_response(respond(tx.request, 603), 1.0)
        tx.take_events()
        run_until(tx, 33.0)
        self.assertIs(tx.state, ClientInviteState.TERMINATED)
        self.assertEqual(tx.take_events(), [])

    def test_reliable_transport_has_no_timer_a_and_zero_timer_d(self) -> None:
        """Over a reliable transport there is no Timer A and Timer D is zero."""
        tx = self.start(reliable=True)
        self.assertEqual(tx.timers, {Timer.B: 32.0})
        tx.receive_response(respond(tx.request, 500), 1.0)
        self.assertEqual(tx.timers, {Timer.D: 1.0})

    def test_transport_error_gives_503(self) -> None:
        """A transport error in Calling terminates and hands a synthesized 503 to the TU."""
        tx = self.start()
        tx.transport_error(0.1)
        self.assertIs(tx.state, ClientInviteState.TERMINATED)
        [event] = tx.take_events()
        assert isinstance(event, ResponseEvent)
        self.assertEqual((event.code, event.origin), (503, ResponseOrigin.TRANSPORT_ERROR))

    def test_terminate_drops_timers(self) -> None:
        """Forcing Terminated (CANCEL without answer, section 9.1) drops every timer and ignores later input."""
        tx = self.start()
        tx.terminate()
        self.assertEqual(tx.timers, {})
        tx.receive_response(respond(tx.request, 200), 1.0)
        self.assertEqual(tx.take_events(), [])

    def test_rejects_other_methods(self) -> None:
        """The INVITE machine refuses a non-INVITE request."""
        self.assertRaises(ValueError, ClientInviteTransaction, make_request("BYE"), DESTINATION, CONFIG)


class ClientNonInviteTests(SynchronousTestCase):
    def start(self, reliable: bool = False) -> ClientNonInviteTransaction:
        tx = ClientNonInviteTransaction(make_request("BYE"), DESTINATION, CONFIG, reliable)
        tx.start(0.0)
        tx.take_messages()
        return tx

    def test_start_arms_e_and_f(self) -> None:
        """Starting arms Timer E at T1 and Timer F at 64*T1."""
        self.assertEqual(self.start().timers, {Timer.E: 0.5, Timer.F: 32.0})

    def test_timer_e_doubles_up_to_t2(self) -> None:
        """In Trying, Timer E retransmits with intervals T1, 2T1, 4T1, then T2 until Timer F."""
        tx = self.start()
        times = [t for t, _m in run_until(tx, 31.9)]
        self.assertEqual(times[:6], [0.5, 1.5, 3.5, 7.5, 11.5, 15.5])
        self.assertEqual(times[-1], 31.5)

    def test_proceeding_retransmits_every_t2(self) -> None:
        """After a 1xx, Timer E retransmits every T2."""
        tx = self.start()
        tx.receive_response(respond(tx.request, 100), 0.2)
        self.assertIs(tx.state, ClientNonInviteState.PROCEEDING)
        times = [t for t, _m in run_until(tx, 10.0)]
        self.assertEqual(times, [0.5, 4.5, 8.5])

    def test_timer_f_times_out(self) -> None:
        """Timer F in Trying or Proceeding gives a synthesized 408 (TIMEOUT) and terminates."""
        tx = self.start()
        tx.receive_response(respond(tx.request, 100), 0.2)
        tx.take_events()
        run_until(tx, 32.0)
        self.assertIs(tx.state, ClientNonInviteState.TERMINATED)
        self.assertEqual(events(tx), [(408, ResponseOrigin.TIMEOUT)])
        self.assertEqual(tx.timers, {})

    def test_final_response_completes_with_timer_k(self) -> None:
        """A final response moves to Completed, cancels E and F and arms Timer K (T4)."""
        tx = self.start()
        tx.receive_response(respond(tx.request, 200), 1.0)
        self.assertIs(tx.state, ClientNonInviteState.COMPLETED)
        self.assertEqual(tx.timers, {Timer.K: 6.0})
        self.assertEqual([e.code for e in tx.take_events()], [200])  # type: ignore[union-attr]

    def test_completed_absorbs_retransmissions_then_k_terminates(self) -> None:
        """Completed absorbs retransmitted responses; Timer K then terminates."""
        tx = self.start()
        tx.receive_response(respond(tx.request, 200), 1.0)
        tx.take_events()
        tx.receive_response(respond(tx.request, 200), 2.0)
        self.assertEqual(tx.take_events(), [])
        self.assertEqual(tx.take_messages(), [])
        run_until(tx, 6.0)
        self.assertIs(tx.state, ClientNonInviteState.TERMINATED)

    def test_reliable_k_is_zero(self) -> None:
        """Over a reliable transport Timer K is zero and there is no Timer E."""
        tx = self.start(reliable=True)
        self.assertEqual(tx.timers, {Timer.F: 32.0})
        tx.receive_response(respond(tx.request, 200), 1.0)
        self.assertEqual(tx.timers, {Timer.K: 1.0})

    def test_transport_error_gives_503(self) -> None:
        """A transport error gives a synthesized 503 (TRANSPORT_ERROR)."""
        tx = self.start()
        tx.transport_error(0.1)
        self.assertEqual(events(tx), [(503, ResponseOrigin.TRANSPORT_ERROR)])
        self.assertTrue(tx.terminated)


class ServerInviteTests(SynchronousTestCase):
    def create(self) -> ServerInviteTransaction:
        return ServerInviteTransaction(make_request("INVITE"), DESTINATION, CONFIG)

    def test_retransmission_repeats_last_provisional(self) -> None:
        """In Proceeding a retransmitted INVITE repeats the last provisional response (nothing before one)."""
        tx = self.create()
        tx.receive_request(tx.request, 0.1)
        self.assertEqual(tx.take_messages(), [])
        tx.send_response(respond(tx.request, 180), 0.2)
        tx.take_messages()
        tx.receive_request(tx.request, 0.3)
        self.assertEqual([(m.code, r) for m, r in tx.take_messages()], [(180, True)])  # type: ignore[attr-defined]

    def test_2xx_terminates(self) -> None:
        """Sending a 2xx terminates the machine (the TU retransmits the 2xx)."""
        tx = self.create()
        tx.send_response(respond(tx.request, 200), 0.1)
        self.assertIs(tx.state, ServerInviteState.TERMINATED)
        self.assertEqual(len(tx.take_messages()), 1)
        self.assertEqual(tx.timers, {})

    def test_failure_retransmits_with_timer_g(self) -> None:
        """A 3xx-6xx moves to Completed; Timer G retransmits at T1 doubling up to T2 until Timer H."""
        tx = self.create()
        tx.send_response(respond(tx.request, 486), 0.0)
        tx.take_messages()
        self.assertIs(tx.state, ServerInviteState.COMPLETED)
        self.assertEqual(tx.timers, {Timer.G: 0.5, Timer.H: 32.0})
        times = [t for t, _m in run_until(tx, 16.0)]
        self.assertEqual(times, [0.5, 1.5, 3.5, 7.5, 11.5, 15.5])

    def test_retransmitted_invite_in_completed_repeats_response(self) -> None:
        """In Completed a retransmitted INVITE gets the final response again."""
        tx = self.create()
        tx.send_response(respond(tx.request, 486), 0.0)
        tx.take_messages()
        tx.receive_request(tx.request, 0.2)
        self.assertEqual([m.code for m, _r in tx.take_messages()], [486])  # type: ignore[attr-defined]

    def test_ack_confirms_then_timer_i_terminates(self) -> None:
        """The ACK moves to Confirmed (G and H cancelled, I = T4); further ACKs are absorbed; I terminates."""
        tx = self.create()
        tx.send_response(respond(tx.request, 486), 0.0)
        tx.take_messages()
        ack = make_request("ACK")
        tx.receive_request(ack, 1.0)
        self.assertIs(tx.state, ServerInviteState.CONFIRMED)
        self.assertEqual(tx.timers, {Timer.I: 6.0})
        tx.receive_request(ack, 2.0)
        self.assertEqual(tx.take_messages(), [])
        run_until(tx, 6.0)
        self.assertIs(tx.state, ServerInviteState.TERMINATED)

    def test_timer_h_reports_missing_ack(self) -> None:
        """Timer H without an ACK terminates and reports a 408 failure to the TU."""
        tx = self.create()
        tx.send_response(respond(tx.request, 486), 0.0)
        run_until(tx, 32.0)
        self.assertIs(tx.state, ServerInviteState.TERMINATED)
        self.assertEqual(tx.take_events(), [ServerFailureEvent(408)])
        self.assertEqual(tx.timers, {})

    def test_transport_error_reports_503(self) -> None:
        """A transport error terminates and reports 503 to the TU."""
        tx = self.create()
        tx.send_response(respond(tx.request, 486), 0.0)
        tx.transport_error(0.1)
        self.assertEqual(tx.take_events(), [ServerFailureEvent(503)])
        self.assertEqual(tx.timers, {})


class ServerNonInviteTests(SynchronousTestCase):
    def create(self, reliable: bool = False) -> ServerNonInviteTransaction:
        return ServerNonInviteTransaction(make_request("BYE"), DESTINATION, CONFIG, reliable)

    def test_trying_discards_retransmissions(self) -> None:
        """In Trying a retransmitted request is discarded."""
        tx = self.create()
        tx.receive_request(tx.request, 0.1)
        self.assertEqual(tx.take_messages(), [])
        self.assertIs(tx.state, ServerNonInviteState.TRYING)

    def test_proceeding_repeats_provisional(self) -> None:
        """After a 1xx, a retransmitted request repeats it."""
        tx = self.create()
        tx.send_response(respond(tx.request, 100), 0.0)
        tx.take_messages()
        self.assertIs(tx.state, ServerNonInviteState.PROCEEDING)
        tx.receive_request(tx.request, 0.5)
        self.assertEqual([(m.code, r) for m, r in tx.take_messages()], [(100, True)])  # type: ignore[attr-defined]

    def test_final_completes_with_timer_j(self) -> None:
        """A final response moves to Completed with Timer J (64*T1); retransmissions get it again; J terminates."""
        tx = self.create()
        tx.send_response(respond(tx.request, 200), 0.0)
        tx.take_messages()
        self.assertEqual(tx.timers, {Timer.J: 32.0})
        tx.receive_request(tx.request, 1.0)
        self.assertEqual([m.code for m, _r in tx.take_messages()], [200])  # type: ignore[attr-defined]
        tx.send_response(respond(tx.request, 500), 2.0)
        self.assertEqual(tx.take_messages(), [])
        run_until(tx, 32.0)
        self.assertIs(tx.state, ServerNonInviteState.TERMINATED)
        self.assertEqual(tx.timers, {})

    def test_reliable_j_is_zero(self) -> None:
        """Over a reliable transport Timer J is zero."""
        tx = self.create(reliable=True)
        tx.send_response(respond(tx.request, 200), 3.0)
        self.assertEqual(tx.timers, {Timer.J: 3.0})

    def test_transport_error_reports_503(self) -> None:
        """A transport error terminates and reports 503."""
        tx = self.create()
        tx.transport_error(0.0)
        self.assertEqual(tx.take_events(), [ServerFailureEvent(503)])
        self.assertTrue(tx.terminated)


class KeyTests(SynchronousTestCase):
    def test_client_key_is_branch_and_cseq_method(self) -> None:
        """A response matches a client transaction by top Via branch and CSeq method (section 17.1.3)."""
        invite = make_request("INVITE")
        self.assertEqual(client_transaction_key(respond(invite, 200)), ("z9hG4bKabc", "INVITE"))
        cancel = make_request("CANCEL")
        self.assertNotEqual(client_transaction_key(cancel), client_transaction_key(invite))

    def test_server_key_maps_ack_to_invite(self) -> None:
        """An ACK has the server key of its INVITE (section 17.2.3)."""
        self.assertEqual(server_transaction_key(make_request("ACK")), server_transaction_key(make_request("INVITE")))
        self.assertEqual(server_transaction_key(make_request("INVITE"))[0], "3261")

    def test_server_key_without_magic_cookie_uses_rfc2543_rules(self) -> None:
        """A branch without z9hG4bK falls back to the RFC 2543 matching fields."""
        key = server_transaction_key(make_request("BYE", branch="old"))
        self.assertEqual(key[0], "2543")
        self.assertIn("call-1", key)

    def test_timer_config_validates(self) -> None:
        """T1 must be positive and T2 at least T1."""
        self.assertRaises(ValueError, TimerConfig, t1=0)
        self.assertRaises(ValueError, TimerConfig, t1=1.0, t2=0.5)


class CancelTests(SynchronousTestCase):
    def test_cancel_copies_the_invite(self) -> None:
        """A CANCEL keeps the INVITE's Request-URI, top Via (branch), From, To, Call-ID, Route and CSeq number."""
        from wcsgw.sip.transaction import create_cancel

        invite = make_request("INVITE", route=True)
        cancel = create_cancel(invite)
        self.assertEqual((cancel.method, str(cancel.uri)), ("CANCEL", str(invite.uri)))
        self.assertEqual(cancel.via, invite.via[:1])
        self.assertEqual(str(cancel.cseq), "7 CANCEL")
        for name in ("From", "To", "Call-ID", "Route", "Max-Forwards"):
            self.assertEqual(cancel.headers.get(name), invite.headers.get(name))
        self.assertEqual(client_transaction_key(cancel), ("z9hG4bKabc", "CANCEL"))
