"""Tests for wcsgw.calls: the registry, uniqueness rules, status model and pushes."""

from __future__ import annotations

import itertools

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import RecordingBackend, RecordingSink
from wcsgw.calls import CallConflict, CallManager, CallNotFound, CallRequest, CallUnavailable, new_node_id
from wcsgw.model import CallStatus, EndInfo, RtmpStreamStatus

SPEC_FIELDS = [
    "custom", "nodeId", "appKey", "sessionId", "callId", "parentCallId", "incoming", "status", "sipStatus",
    "rtmpUrl", "rtmpStream", "streamName", "rtmpStreamStatus", "caller", "callee", "hasAudio", "hasVideo", "sdp",
    "visibleName", "inviteParameters", "mediaProvider", "sipMessageRaw", "isMsrp", "target", "holdForTransfer",
]
EVENT_FIELDS = [
    "nodeId", "appKey", "sessionId", "callId", "incoming", "status", "sipStatus", "rtmpUrl", "rtmpStream",
    "rtmpStreamStatus", "caller", "callee", "hasAudio", "hasVideo", "visibleName", "mediaProvider", "isMsrp",
]


def request(call_id: str = "c1", **kw: object) -> CallRequest:
    fields: dict[str, object] = dict(call_id=call_id, callee="10000", sip_domain="127.0.0.1", to_stream=call_id,
                                     rtmp_url="rtmp://localhost:1935/live", rtmp_stream=f"s-{call_id}",
                                     sip_login="10009", sip_password="secret-pw", session_id="127.0.0.1:1")
    fields.update(kw)
    return CallRequest(**fields)  # type: ignore[arg-type]


class ManagerTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.sink = RecordingSink()
        self.backend = RecordingBackend()
        ids = itertools.count(1)
        self.manager = CallManager(self.clock, self.sink, node_id="node@127.0.0.1", ended_call_ttl=60,
                                   backend=self.backend, id_factory=lambda: f"id{next(ids)}")


class StartupTests(ManagerTestCase):
    def test_call_waits_in_pending_with_the_backend(self) -> None:
        """A new call goes NEW -> PENDING, is handed to the backend and stays PENDING until the backend reports."""
        call = self.manager.startup(request())
        self.assertEqual(call.status, CallStatus.PENDING)
        self.assertEqual(self.backend.started, [call])
        self.assertEqual(self.sink.statuses("c1"), [("NEW", "RTMP_STREAM_WAIT"), ("PENDING", "RTMP_STREAM_WAIT")])

    def test_without_backend_nothing_fakes_progress(self) -> None:
        """With no backend a call waits in PENDING however long it waits."""
        manager = CallManager(self.clock, self.sink, node_id="n")
        manager.startup(request())
        self.clock.advance(3600)
        self.assertEqual(manager.get("c1").status, CallStatus.PENDING)

    def test_call_id_in_use_conflicts(self) -> None:
        """A second call with the callId of a live call is refused with 409."""
        self.manager.startup(request("c1"))
        with self.assertRaises(CallConflict) as caught:
            self.manager.startup(request("c1", rtmp_stream="other"))
        self.assertEqual(caught.exception.code, 409)

    def test_rtmp_destination_in_use_conflicts_after_normalization(self) -> None:
        """rtmpUrl+rtmpStream of a live call conflicts, comparing scheme/host case, default port, trailing slash."""
        self.manager.startup(request("c1", rtmp_url="rtmp://localhost/live", rtmp_stream="s"))
        with self.assertRaises(CallConflict):
            self.manager.startup(request("c2", rtmp_url="RTMP://LocalHost:1935/live/", rtmp_stream="s"))
        self.manager.startup(request("c3", rtmp_url="rtmp://localhost/live", rtmp_stream="t"))

    def test_ended_call_frees_call_id_and_destination(self) -> None:
        """A call that has ended frees both its callId and its rtmpUrl+rtmpStream."""
        self.manager.startup(request("c1"))
        self.manager.update_call("c1", CallStatus.FAILED, sip_status=503, info=EndInfo.FAILED_BY_ERROR)
        again = self.manager.startup(request("c1"))
        self.assertEqual(again.status, CallStatus.PENDING)
        self.assertEqual(len(self.manager.find(call_id="c1")), 1)
        self.manager.startup(request("c2", rtmp_stream="s-c1x"))

    def test_refused_by_backend(self) -> None:
        """A backend refusal (ports exhausted) is raised to the REST layer; no call is left, no event sent."""
        self.backend.refuse = CallUnavailable("media port range exhausted")
        with self.assertRaises(CallUnavailable):
            self.manager.startup(request("c1"))
        self.assertIsNone(self.manager.get("c1"))
        self.assertEqual(self.sink.events, [])
        self.backend.refuse = None
        self.manager.startup(request("c1"))

    def test_same_to_stream_conflicts(self) -> None:
        """Two live calls cannot publish the same toStream (pushes address streams by name)."""
        self.manager.startup(request("c1", to_stream="shared"))
        with self.assertRaises(CallConflict):
            self.manager.startup(request("c2", to_stream="shared", rtmp_stream="x"))


class ObjectTests(ManagerTestCase):
    def test_call_object_has_every_spec_field_in_order(self) -> None:
        """call/find objects have the spec example's fields, in its order, with real values."""
        call = self.manager.startup(request(app_key="defaultApp", visible_name="Alice"))
        body = call.to_json()
        self.assertEqual(list(body), SPEC_FIELDS)
        self.assertEqual(body["callId"], "c1")
        self.assertEqual(body["status"], "PENDING")
        self.assertEqual(body["caller"], "10009")
        self.assertEqual(body["visibleName"], "Alice")
        self.assertEqual(body["streamName"], "c1")
        self.assertEqual(body["rtmpStreamStatus"], "RTMP_STREAM_WAIT")
        self.assertEqual(body["appKey"], "defaultApp")
        self.assertEqual(body["nodeId"], "node@127.0.0.1")
        self.assertEqual((body["incoming"], body["mediaProvider"], body["isMsrp"]), (False, "Flash", False))

    def test_event_has_spec_fields_and_no_password(self) -> None:
        """Events carry the spec's event fields, appKey callApp, and never the SIP password."""
        self.manager.startup(request())
        event = self.sink.events[-1]
        self.assertEqual(list(event), EVENT_FIELDS)
        self.assertEqual(event["appKey"], "callApp")
        self.assertNotIn("secret-pw", repr(self.sink.events))
        self.assertNotIn("secret-pw", repr(self.manager.get("c1")))
        self.assertNotIn("secret-pw", repr(self.manager.get("c1").to_json()))

    def test_ended_call_carries_info(self) -> None:
        """An ended call has its reason in the extra field info, in the object and the event."""
        self.manager.startup(request())
        self.manager.update_call("c1", CallStatus.FAILED, sip_status=408, info=EndInfo.FAILED_BY_REQUEST_TIMEOUT)
        self.assertEqual(self.manager.get("c1").to_json()["info"], "FAILED_BY_REQUEST_TIMEOUT")
        self.assertEqual(self.sink.events[-1]["info"], "FAILED_BY_REQUEST_TIMEOUT")
        self.assertEqual(self.sink.events[-1]["sipStatus"], 408)

    def test_node_id_shape(self) -> None:
        """Node ids look like WCS's: 32 letters and digits, @, the address."""
        node = new_node_id("192.0.2.1")
        name, _, address = node.partition("@")
        self.assertEqual((len(name), name.isalnum(), address), (32, True, "192.0.2.1"))


class StatusTests(ManagerTestCase):
    def test_progress_notified_in_order(self) -> None:
        """Every change of status and rtmpStreamStatus is an event, in order; repeats are not."""
        call = self.manager.startup(request())
        self.manager.update_call("c1", CallStatus.TRYING, sip_status=100)
        self.manager.update_call("c1", CallStatus.TRYING, sip_status=100)
        self.manager.update_call("c1", CallStatus.RING, sip_status=180)
        self.manager.update_call("c1", CallStatus.ESTABLISHED, sip_status=200, sdp="v=0\r\n")
        assert call.destination is not None
        self.manager.update_destination(call.destination.media_session_id, RtmpStreamStatus.RTMP_STREAM_ACTIVE)
        self.manager.update_destination(call.destination.media_session_id, RtmpStreamStatus.RTMP_STREAM_ACTIVE)
        self.assertEqual(self.sink.statuses("c1"), [
            ("NEW", "RTMP_STREAM_WAIT"), ("PENDING", "RTMP_STREAM_WAIT"), ("TRYING", "RTMP_STREAM_WAIT"),
            ("RING", "RTMP_STREAM_WAIT"), ("ESTABLISHED", "RTMP_STREAM_WAIT"), ("ESTABLISHED", "RTMP_STREAM_ACTIVE"),
        ])
        self.assertEqual([e["sipStatus"] for e in self.sink.events], [None, None, 100, 180, 200, 200])
        self.assertEqual(call.sdp, "v=0\r\n")

    def test_nothing_changes_after_the_end(self) -> None:
        """Reports for an ended call are ignored: the final status stays."""
        self.manager.startup(request())
        self.manager.update_call("c1", CallStatus.BUSY, sip_status=486)
        self.manager.update_call("c1", CallStatus.ESTABLISHED, sip_status=200)
        self.assertEqual(self.manager.get("c1").status, CallStatus.BUSY)

    def test_ended_call_findable_for_ttl(self) -> None:
        """An ended call stays findable with its final status for ended_call_ttl seconds, then goes."""
        self.manager.startup(request())
        self.manager.update_call("c1", CallStatus.FINISH)
        self.clock.advance(59)
        self.assertEqual([c.status for c in self.manager.find(status="FINISH")], [CallStatus.FINISH])
        self.clock.advance(1)
        self.assertEqual(self.manager.find(), [])

    def test_terminate_goes_to_backend(self) -> None:
        """call/terminate asks the backend to hang up; the call ends when the backend reports it."""
        self.manager.startup(request())
        self.manager.terminate("c1")
        self.assertEqual([c.call_id for c in self.backend.terminated], ["c1"])
        self.assertEqual(self.manager.get("c1").status, CallStatus.PENDING)

    def test_terminate_without_backend_finishes(self) -> None:
        """Without a backend there is nothing to hang up: the call ends FINISH at once."""
        manager = CallManager(self.clock, self.sink, node_id="n")
        manager.startup(request())
        manager.terminate("c1")
        self.assertEqual(manager.get("c1").status, CallStatus.FINISH)
        self.assertEqual(manager.get("c1").info, EndInfo.NORMAL_CALL_CLEARING)

    def test_terminate_unknown_or_ended(self) -> None:
        """Terminating an unknown or ended call is 404."""
        with self.assertRaises(CallNotFound):
            self.manager.terminate("nope")
        self.manager.startup(request())
        self.manager.update_call("c1", CallStatus.FINISH)
        with self.assertRaises(CallNotFound):
            self.manager.terminate("c1")

    def test_find_filters_combine(self) -> None:
        """find matches every filter given: callId, callee, rtmpUrl (normalized) and status."""
        self.manager.startup(request("c1", callee="a"))
        self.manager.startup(request("c2", callee="b", rtmp_url="rtmp://other/live"))
        self.manager.update_call("c2", CallStatus.TRYING, sip_status=100)
        ids = lambda calls: [c.call_id for c in calls]  # noqa: E731
        self.assertEqual(ids(self.manager.find()), ["c1", "c2"])
        self.assertEqual(ids(self.manager.find(callee="b")), ["c2"])
        self.assertEqual(ids(self.manager.find(status="PENDING")), ["c1"])
        self.assertEqual(ids(self.manager.find(rtmp_url="RTMP://OTHER:1935/live/")), ["c2"])
        self.assertEqual(ids(self.manager.find(callee="a", status="TRYING")), [])


class DtmfTests(ManagerTestCase):
    def test_dtmf_needs_an_established_call(self) -> None:
        """DTMF goes to the backend for an established call; before that it is a 409 conflict."""
        self.manager.startup(request())
        with self.assertRaises(CallConflict):
            self.manager.send_dtmf("c1", "1", "RFC2833")
        self.manager.update_call("c1", CallStatus.ESTABLISHED, sip_status=200)
        self.manager.send_dtmf("c1", "1#", "INFO")
        self.assertEqual(self.backend.dtmf, [("c1", "1#", "INFO")])

    def test_dtmf_unknown_call(self) -> None:
        """DTMF to an unknown call is 404."""
        with self.assertRaises(CallNotFound):
            self.manager.send_dtmf("nope", "1", "RFC2833")


class PushTests(ManagerTestCase):
    def test_push_lifecycle(self) -> None:
        """push/startup adds a destination to a live call's stream; find, status and terminate work on it."""
        self.manager.startup(request("c1"))
        push = self.manager.push_startup("c1", "rtmp://b/live", None)
        self.assertEqual(push.to_json(), {"mediaSessionId": push.media_session_id, "streamName": "c1",
                                          "rtmpUrl": "rtmp://b/live", "rtmpStream": "c1",
                                          "status": "RTMP_STREAM_WAIT"})
        self.assertEqual(self.backend.destinations_started, [push])
        self.manager.update_destination(push.media_session_id, RtmpStreamStatus.RTMP_STREAM_ACTIVE)
        self.assertEqual(self.manager.push_find(media_session_id=push.media_session_id)[0].status,
                         RtmpStreamStatus.RTMP_STREAM_ACTIVE)
        self.assertEqual(self.manager.push_find(rtmp_url="rtmp://B:1935/live"), [push])
        self.manager.push_terminate(push.media_session_id)
        self.assertEqual(self.backend.destinations_stopped, [push])
        self.assertEqual(self.manager.push_find(), [])
        with self.assertRaises(CallNotFound):
            self.manager.push_terminate(push.media_session_id)

    def test_push_status_is_not_a_call_event(self) -> None:
        """A push's status change does not change the call's rtmpStreamStatus or make a call event."""
        self.manager.startup(request("c1"))
        push = self.manager.push_startup("c1", "rtmp://b/live", "x")
        before = len(self.sink.events)
        self.manager.update_destination(push.media_session_id, RtmpStreamStatus.RTMP_CONNECTION_FAILED)
        self.assertEqual(len(self.sink.events), before)

    def test_push_unknown_stream(self) -> None:
        """push/startup for a stream no live call publishes is 404."""
        with self.assertRaises(CallNotFound):
            self.manager.push_startup("nope", "rtmp://b/live", None)

    def test_same_destination_twice_conflicts(self) -> None:
        """The same destination twice (or the call's own) is 409."""
        self.manager.startup(request("c1"))
        self.manager.push_startup("c1", "rtmp://b/live", "x")
        with self.assertRaises(CallConflict):
            self.manager.push_startup("c1", "rtmp://B/live/", "x")
        with self.assertRaises(CallConflict):
            self.manager.push_startup("c1", "rtmp://localhost:1935/live", "s-c1")

    def test_pushes_end_with_the_call(self) -> None:
        """Pushes end with their call: not findable, destinations free again."""
        self.manager.startup(request("c1"))
        self.manager.push_startup("c1", "rtmp://b/live", "x")
        self.manager.push_startup("c1", "rtmp://c/live", "y")
        self.manager.update_call("c1", CallStatus.FINISH)
        self.assertEqual(self.manager.push_find(), [])
        self.manager.startup(request("c2"))
        self.manager.push_startup("c2", "rtmp://b/live", "x")
