"""Fakes shared by unit tests: an event sink that records, and a call backend that records what it was asked."""

from __future__ import annotations

from typing import Any

from wcsgw.calls import Call, CallError, Destination


class RecordingSink:
    """An ``EventSink`` that keeps every event, in order."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def call_changed(self, call_id: str, event: dict[str, Any]) -> None:
        assert event["callId"] == call_id
        self.events.append(event)

    def statuses(self, call_id: str) -> list[tuple[str, str | None]]:
        return [(e["status"], e["rtmpStreamStatus"]) for e in self.events if e["callId"] == call_id]


class RecordingBackend:
    """A ``CallBackend`` that records calls made to it; ``refuse`` makes start_call raise."""

    def __init__(self) -> None:
        self.started: list[Call] = []
        self.terminated: list[Call] = []
        self.dtmf: list[tuple[str, str, str]] = []
        self.destinations_started: list[Destination] = []
        self.destinations_stopped: list[Destination] = []
        self.refuse: CallError | None = None
        self.dtmf_error: CallError | None = None

    def start_call(self, call: Call) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.started.append(call)

    def terminate_call(self, call: Call) -> None:
        self.terminated.append(call)

    def send_dtmf(self, call: Call, digits: str, method: str) -> None:
        if self.dtmf_error is not None:
            raise self.dtmf_error
        self.dtmf.append((call.call_id, digits, method))

    def start_destination(self, call: Call, destination: Destination) -> None:
        self.destinations_started.append(destination)

    def stop_destination(self, call: Call, destination: Destination) -> None:
        self.destinations_stopped.append(destination)
