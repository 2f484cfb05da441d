"""Per-call media clock: RTP timestamps of each track to FLV milliseconds, lip-synced through RTCP SRs.

Pure: every method takes the time it needs (``now``, ``arrival_now``: seconds on any monotonic clock the
caller uses for all calls, e.g. ``reactor.seconds()``); nothing here reads a clock.

How a track's RTP timestamp becomes a time on the gateway's clock ("local seconds"):

* RTP timestamps are unwrapped to 64 bits (the nearest value to the previous one) and divided by the track's
  clock rate.
* Before the far end's sender report (RFC 3550 6.4.1) for the track is known, the track's first packet is
  anchored at its arrival time: ``local = now0 + (rtp - rtp0) / rate``.
* Once an SR is known: ``local = offset + ntp_sr + (rtp - rtp_sr) / rate``.  ``offset`` (the sender's NTP clock
  to local seconds) is one per call, fixed by the first SR of any track so that *that* track's mapping stays
  continuous.  All tracks then share the sender's NTP clock, which lines audio up with video whatever their
  network delays.
* A change of mapping (a track's first SR, a later SR that disagrees with the earlier one) does not jump: the
  difference becomes a correction that is worked off at ``slew_rate`` seconds per second of media (10 % by
  default), so timestamps keep moving forwards.  A correction that would hold a track more than
  ``max_slew_s`` behind its true time is dropped at once instead (a forward jump, never a backward one).
* A track whose timeline leaves the arrival clock by more than ``resync_threshold_s`` (the far end restarted
  its timestamps, a new SSRC not announced through `reset_track`) is re-anchored at arrival.

FLV milliseconds are ``(local - origin) * 1000`` with ``origin`` the local time of the call's first output (so
the first output is 0), clamped per track to be never negative and never decreasing.  A track needs nothing
from the other one: an audio-only or video-only call runs on arrival anchoring and its own SRs.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MediaClock", "ntp_to_seconds", "NTP_UNIX_EPOCH_OFFSET"]

RTP_TIMESTAMP_MODULO = 1 << 32
_HALF_MODULO = RTP_TIMESTAMP_MODULO // 2
NTP_UNIX_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)


def ntp_to_seconds(ntp_timestamp: int) -> float:
    """An RTCP SR's 64-bit NTP timestamp (32.32 fixed point) as float seconds since 1900."""
    return (ntp_timestamp >> 32) + (ntp_timestamp & 0xFFFFFFFF) / 4294967296.0


@dataclass(slots=True)
class _Track:
    clock_rate: int
    last_ext: int | None = None  # last extended RTP timestamp seen: the reference for unwrapping
    anchor_ext: int | None = None  # arrival anchor: extended RTP timestamp ...
    anchor_local: float = 0.0  # ... and its arrival time
    sr_ext: int | None = None  # latest sender report: extended RTP timestamp ...
    sr_ntp: float = 0.0  # ... and its NTP time
    correction: float = 0.0  # seconds added to the mapping, worked off towards 0
    out_ext: int | None = None  # highest extended RTP timestamp output so far
    last_ms: int = 0  # last FLV timestamp output
    outputs: int = 0


class MediaClock:
    """Maps each track's RTP timestamps to FLV milliseconds for one call (see the module docstring)."""

    def __init__(
        self,
        *,
        slew_rate: float = 0.1,
        max_slew_s: float = 1.0,
        resync_threshold_s: float = 3.0,
    ) -> None:
        if not 0 < slew_rate < 1:
            raise ValueError(f"slew_rate must be between 0 and 1, not {slew_rate}")
        self._slew_rate = slew_rate
        self._max_slew_s = max_slew_s
        self._resync_threshold_s = resync_threshold_s
        self._tracks: dict[str, _Track] = {}
        self._ntp_offset: float | None = None  # local seconds minus sender NTP seconds
        self._origin: float | None = None  # local time of FLV 0

    # -- setup -------------------------------------------------------------------------------------------------

    def add_track(self, track: str, clock_rate: int) -> None:
        """Declare a track (e.g. ``"audio"`` at 8000 Hz, ``"video"`` at 90000 Hz)."""
        if clock_rate <= 0:
            raise ValueError(f"clock rate of track {track!r} must be positive, not {clock_rate}")
        if track in self._tracks:
            raise ValueError(f"track {track!r} already added")
        self._tracks[track] = _Track(clock_rate)

    def reset_track(self, track: str) -> None:
        """Forget the track's RTP timeline (a new SSRC): its next packet anchors again at arrival.

        Its output stays monotonic: it continues from the last timestamp it gave.
        """
        old = self._track(track)
        fresh = _Track(old.clock_rate, last_ms=old.last_ms, outputs=old.outputs)
        self._tracks[track] = fresh

    # -- inputs ------------------------------------------------------------------------------------------------

    def on_sender_report(self, track: str, ntp_seconds: float, rtp_timestamp: int, arrival_now: float) -> None:
        """Take an RTCP SR of ``track``: its NTP time (seconds, see `ntp_to_seconds`) and RTP timestamp."""
        state = self._track(track)
        ext = self._unwrap(state, rtp_timestamp, remember=state.last_ext is None)
        before = self._applied(state, state.out_ext) if state.out_ext is not None else None
        if self._ntp_offset is None:
            if state.anchor_ext is not None:
                # Keep this track's timeline where arrival anchoring put it.
                self._ntp_offset = self._arrival_mapping(state, ext) - ntp_seconds
            else:
                self._ntp_offset = arrival_now - ntp_seconds
        state.sr_ext = ext
        state.sr_ntp = ntp_seconds
        if before is not None and state.out_ext is not None:
            correction = before - self._target(state, state.out_ext)
            if correction < -self._max_slew_s:
                correction = 0.0  # far behind: jump forwards rather than crawl
            state.correction = correction

    def timestamp_ms(self, track: str, rtp_timestamp: int, now: float) -> int:
        """The FLV timestamp of the frame of ``track`` with ``rtp_timestamp``, handed over at ``now``.

        This runs for every frame: ``_unwrap`` and ``_applied`` are written out here (same arithmetic)."""
        state = self._tracks.get(track)
        if state is None:
            raise ValueError(f"unknown track {track!r}")
        rtp_timestamp %= RTP_TIMESTAMP_MODULO
        last = state.last_ext
        if last is None:
            ext = rtp_timestamp
        else:
            delta = (rtp_timestamp - last) % RTP_TIMESTAMP_MODULO
            if delta >= _HALF_MODULO:
                delta -= RTP_TIMESTAMP_MODULO
            ext = last + delta
        state.last_ext = ext
        rate = state.clock_rate
        if state.anchor_ext is None:
            state.anchor_ext = ext
            state.anchor_local = now
            target = self._target(state, ext)
        else:
            sr_ext, offset = state.sr_ext, self._ntp_offset
            if sr_ext is not None and offset is not None:
                target = offset + state.sr_ntp + (ext - sr_ext) / rate
            else:
                target = state.anchor_local + (ext - state.anchor_ext) / rate
            if abs(target + state.correction - now) > self._resync_threshold_s:
                # The RTP timeline left the arrival clock: start the track again from here.
                state.anchor_ext = ext
                state.anchor_local = now
                state.sr_ext = None
                state.correction = 0.0
                state.out_ext = None
                target = self._target(state, ext)
        out_ext = state.out_ext
        correction = state.correction
        if out_ext is not None and ext > out_ext and correction:
            step = (ext - out_ext) / rate * self._slew_rate
            if abs(correction) <= step:
                correction = 0.0
            elif correction > 0:
                correction -= step
            else:
                correction += step
            state.correction = correction
        local = target + correction
        origin = self._origin
        if origin is None:
            origin = self._origin = local
        ms = round((local - origin) * 1000.0)
        if ms < state.last_ms:
            ms = state.last_ms
        if ms < 0:
            ms = 0
        state.last_ms = ms
        state.outputs += 1
        if out_ext is None or ext > out_ext:
            state.out_ext = ext
        return ms

    # -- inspection (metrics, tests) ---------------------------------------------------------------------------

    @property
    def tracks(self) -> tuple[str, ...]:
        return tuple(self._tracks)

    def is_synchronized(self, track: str) -> bool:
        """True once the track maps through the sender's NTP clock (it had an SR)."""
        return self._track(track).sr_ext is not None and self._ntp_offset is not None

    def correction_ms(self, track: str) -> float:
        """What is left of the track's last mapping change, in milliseconds (0 when settled)."""
        return self._track(track).correction * 1000.0

    # -- internals ---------------------------------------------------------------------------------------------

    def _track(self, track: str) -> _Track:
        try:
            return self._tracks[track]
        except KeyError:
            raise ValueError(f"unknown track {track!r}") from None

    def _unwrap(self, state: _Track, rtp_timestamp: int, *, remember: bool) -> int:
        rtp_timestamp %= RTP_TIMESTAMP_MODULO
        if state.last_ext is None:
            ext = rtp_timestamp
        else:
            delta = (rtp_timestamp - state.last_ext) % RTP_TIMESTAMP_MODULO
            if delta >= RTP_TIMESTAMP_MODULO // 2:
                delta -= RTP_TIMESTAMP_MODULO
            ext = state.last_ext + delta
        if remember:
            state.last_ext = ext
        return ext

    def _arrival_mapping(self, state: _Track, ext: int) -> float:
        assert state.anchor_ext is not None
        return state.anchor_local + (ext - state.anchor_ext) / state.clock_rate

    def _target(self, state: _Track, ext: int) -> float:
        if state.sr_ext is not None and self._ntp_offset is not None:
            return self._ntp_offset + state.sr_ntp + (ext - state.sr_ext) / state.clock_rate
        return self._arrival_mapping(state, ext)

    def _applied(self, state: _Track, ext: int) -> float:
        return self._target(state, ext) + state.correction
