"""The sans-I/O receiver of one media line (audio or video) of an established call.

Datagrams go in with ``receive_rtp`` / ``receive_rtcp`` and the time; frames and notices come out of ``events()``
and datagrams to send out of ``datagrams_to_send()``; ``get_timer()`` says when ``handle_timer`` is due next.

Per RTP datagram: RTCP demultiplexing (RFC 5761), source check and symmetric-RTP latching, SRTP unprotect, parse,
payload type filter, statistics, jitter buffer, then depacketizer (H.264, VP8) or audio frames and RFC 4733 digits.
On timers: receiver reports (RFC 3550 interval, with SDES CNAME), keyframe requests (PLI, FIR when offered, rate
limited and repeated until a keyframe arrives), keep-alive silence, DTMF packets at their pace, inactivity.
"""

from __future__ import annotations

import random
import struct
from collections import deque

from twisted.logger import Logger

from . import dtmf
from .h264 import AccessUnit, H264Depacketizer
from .jitterbuffer import JitterBuffer, Released
from .latch import SourceLatch
from .packet import (
    RTCP_MUX_FIRST_SECOND_BYTE,
    RTCP_MUX_LAST_SECOND_BYTE,
    RTP_SEQ_MOD,
    RTP_TIMESTAMP_HALF,
    RTP_TIMESTAMP_MOD,
    RtpPacket,
    TimestampUnwrapper,
    is_rtcp,
    timestamp_delta,
)
from .params import (
    AUDIO,
    SENDRECV,
    VIDEO,
    Address,
    AudioFrame,
    ByeReceived,
    DtmfReceived,
    KeyframeNeeded,
    MediaEvent,
    MediaParams,
    RtpInactivity,
    SenderReportReceived,
    SessionConfig,
    SessionCounters,
    StreamRestarted,
    silence_payload,
)
from .rtcp import (
    SDES_CNAME,
    ReportBlock,
    RtcpBye,
    RtcpCompound,
    RtcpFir,
    RtcpNack,
    RtcpPacket,
    RtcpPli,
    RtcpReceiverReport,
    RtcpSenderReport,
    RtcpSourceDescription,
    SdesChunk,
    ntp_from_seconds,
    ntp_middle,
    rtcp_report_interval,
)
from .srtp import SrtpContext
from .stats import ReceiverStats
from .vp8 import Vp8Depacketizer, Vp8Frame

__all__ = [
    "AccessUnit",
    "AudioFrame",
    "ByeReceived",
    "DtmfReceived",
    "KeyframeNeeded",
    "MediaEvent",
    "MediaParams",
    "MediaStreamSession",
    "RtpInactivity",
    "SenderReportReceived",
    "SessionConfig",
    "SessionCounters",
    "StreamRestarted",
    "Vp8Frame",
]

log = Logger()

COMFORT_NOISE_PT = 13
# the fixed header: V/P/X/CC and M/PT as one number, sequence number, timestamp, SSRC
_RTP_WORDS = struct.Struct("!HHII")
_RTP_TIMESTAMP = struct.Struct("!I")
_MAX_STATS = 8
_MAX_RUN = 1000  # fast-path packets kept before the statistics are brought up to date anyway


class MediaStreamSession:
    """Receives one media line; see the module docstring."""

    # Slots rather than an instance dict: CPython 3.11 keeps an instance's attributes in a compact array beside
    # it only up to 30 of them (the class's shared keys); past that every instance gets a dict of its own, and
    # each attribute of the per-packet path is looked up in it (1.6 to 4.5 times slower in a micro-benchmark,
    # the more so the colder the object, as 100 calls' objects are; bench.pipeline at 50 calls: 2 % fewer
    # instructions and 3 % fewer L1 data misses per packet).  '__dict__': tests put stand-ins on instances.
    __slots__ = (
        'config', 'counters', '_rng', 'params', '_events', '_outgoing', '_stats', '_last_ssrc', '_last_stats',
        'round_trip_time', 'on_hold', 'closed', 'ssrc', '_tx_sequence', '_tx_timestamp_base', '_tx_start',
        '_tx_packets', '_tx_octets', '_sent_since_report', '_rtcp_size', '_next_rtcp', '_kf_needed', '_kf_fresh',
        '_kf_reason', '_kf_attempts', '_kf_last', '_fir_sequence', '_frames_seen', '_dtmf_digits', '_dtmf_due',
        '_dtmf_timestamp', '_dtmf_next_start', '_dtmf_last_end', '_last_rtp', '_inactivity_reported',
        '_next_keepalive', 'deadlines_unchanged', '_run', '_run_next', '_run_octets', '_rtp_latch', '_rtcp_latch',
        '_srtp', '_buffer', '_depacketizer', '_buffer_seen', '_unwrapper', '_video_started', '_broken_seen',
        '_silence', '_receives', '_telephone_event_pt', '_accepted_types', '_arrival_base', '__dict__',
    )

    def __init__(
        self, params: MediaParams, config: SessionConfig, now: float, rng: random.Random | None = None
    ) -> None:
        params.validate()
        self.config = config
        self.counters = SessionCounters()
        self._rng = rng or random.Random()
        self.params = params
        self._events: list[MediaEvent] = []
        self._outgoing: list[tuple[bytes, Address, str]] = []
        self._stats: dict[int, ReceiverStats] = {}
        self._last_ssrc: int | None = None  # the SSRC of _last_stats, the entry of _stats used last
        self._last_stats: ReceiverStats | None = None
        self.round_trip_time: float | None = None
        self.on_hold = False
        self.closed = False
        # our outgoing stream (keep-alive, DTMF, RTCP)
        self.ssrc = self._rng.getrandbits(32)
        self._tx_sequence = self._rng.getrandbits(16)
        self._tx_timestamp_base = self._rng.getrandbits(32)
        self._tx_start = now
        self._tx_packets = 0
        self._tx_octets = 0
        self._sent_since_report = False
        # RTCP
        self._rtcp_size = 100.0
        self._next_rtcp = now + self._rtcp_interval(initial=True)
        # keyframe requests
        self._kf_needed = False
        self._kf_fresh = False
        self._kf_reason = ""
        self._kf_attempts = 0
        self._kf_last: float | None = None
        self._fir_sequence = 0
        self._frames_seen = False
        # DTMF out
        self._dtmf_digits: deque[tuple[str, int | None]] = deque()
        self._dtmf_due: deque[tuple[float, dtmf.ScheduledEventPacket]] = deque()
        self._dtmf_timestamp = 0
        self._dtmf_next_start = now
        self._dtmf_last_end: int | None = None
        # activity
        self._last_rtp = now
        self._inactivity_reported = False
        self._next_keepalive = now
        # set by receive_rtp_many: True when that batch moved no deadline of get_timer() earlier
        self.deadlines_unchanged = False
        # the fast path's packets not yet in the statistics and the jitter buffer (see _receive_in_order)
        self._run: list[tuple[float, int] | list[float]] = []
        self._run_next = 0  # the sequence number that continues the run
        self._run_octets = 0
        # (arrival, RTP timestamp) of the last RTP packet that came with its arrival time: what a packet read
        # after it without one (arrival None, see receive_rtp_many) takes its arrival from
        self._arrival_base: tuple[float, int] | None = None
        self._apply_params(params, now, first=True)

    # --- configuration ----------------------------------------------------------------------------------------

    def _apply_params(self, params: MediaParams, now: float, first: bool = False) -> None:
        old = self.params
        self.params = params
        if first or params.remote_rtp != old.remote_rtp:
            self._rtp_latch = SourceLatch(params.remote_rtp)
        if first or params.remote_rtcp != old.remote_rtcp:
            self._rtcp_latch = SourceLatch(params.remote_rtcp)
        if first or (params.local_crypto, params.remote_crypto) != (old.local_crypto, old.remote_crypto):
            self._srtp = (
                SrtpContext(params.local_crypto, params.remote_crypto)
                if params.local_crypto is not None and params.remote_crypto is not None
                else None
            )
        media_changed = (params.kind, params.codec.upper(), params.payload_type, params.clock_rate) != (
            old.kind,
            old.codec.upper(),
            old.payload_type,
            old.clock_rate,
        )
        if first or media_changed:
            self._buffer = JitterBuffer(
                params.clock_rate,
                depth_ms=self.config.jitter_buffer_ms,
                enabled=self.config.rtp_in_buffer,
                max_packets=self.config.jitter_buffer_max_packets,
            )
            self._depacketizer: H264Depacketizer | Vp8Depacketizer | None = None
            if params.kind == VIDEO and params.codec.upper() == "H264":
                sprop = params.fmtp.get("sprop-parameter-sets")
                try:
                    self._depacketizer = H264Depacketizer(sprop, self.config.drop_until_keyframe)
                except ValueError as exc:
                    log.warn("ignoring sprop-parameter-sets {sprop!r}: {error}", sprop=sprop, error=exc)
                    self._depacketizer = H264Depacketizer(None, self.config.drop_until_keyframe)
            elif params.kind == VIDEO:
                self._depacketizer = Vp8Depacketizer(drop_until_keyframe=self.config.drop_until_keyframe)
            self._buffer_seen = [0, 0, 0]  # the buffer's late, duplicates, out_of_range already counted
            self._unwrapper = TimestampUnwrapper()
            self._frames_seen = False
            self._video_started = False
            self._broken_seen = 0
        self._silence = (
            silence_payload(params.codec, params.clock_rate, params.channels) if params.kind == AUDIO else None
        )
        self._receives = params.receives
        self._telephone_event_pt = params.telephone_event_pt
        self._accepted_types = {params.payload_type}
        if params.telephone_event_pt is not None:
            self._accepted_types.add(params.telephone_event_pt)
        self._accepted_types.add(params.comfort_noise_pt if params.comfort_noise_pt is not None else COMFORT_NOISE_PT)
        self._last_rtp = now
        self._inactivity_reported = False

    def update_params(self, params: MediaParams, now: float) -> None:
        """New negotiated parameters (re-INVITE): addresses re-latch, keys and codec reset what depends on them."""
        params.validate()
        self._sync()
        self._apply_params(params, now)

    def set_hold(self, on_hold: bool, now: float) -> None:
        """The call is on hold (or resumed): inactivity detection is suspended meanwhile."""
        if self.on_hold and not on_hold:
            self._last_rtp = now
            self._inactivity_reported = False
        self.on_hold = on_hold

    @property
    def stats(self) -> dict[int, ReceiverStats]:
        """Receive statistics per SSRC."""
        self._sync()
        return dict(self._stats)

    @property
    def jitter_buffer(self) -> JitterBuffer:
        self._sync()
        return self._buffer

    @property
    def depacketizer(self) -> H264Depacketizer | Vp8Depacketizer | None:
        return self._depacketizer

    @property
    def latched_rtp_address(self) -> Address | None:
        return self._rtp_latch.latched

    @property
    def srtp(self) -> SrtpContext | None:
        return self._srtp

    # --- outputs ----------------------------------------------------------------------------------------------

    def events(self) -> list[MediaEvent]:
        """Events since the last call, oldest first."""
        out = self._events
        if not out:
            return []
        self._events = []
        return out

    def datagrams_to_send(self) -> list[tuple[bytes, Address, str]]:
        """``(data, address, "rtp" | "rtcp")``: the socket to send from is named (RTCP goes on "rtp" with mux)."""
        out = self._outgoing
        if not out:
            return []
        self._outgoing = []
        return out

    def get_timer(self) -> float | None:
        """When ``handle_timer`` is due next (None: closed).  Runs after every datagram, hence the plain code."""
        if self.closed:
            return None
        when = self._next_rtcp
        deadline = self._buffer.next_deadline()
        if deadline is not None and deadline < when:
            when = deadline
        if self._kf_needed and self._buffer.ssrc is not None:
            due = self._keyframe_due()
            if due < when:
                when = due
        if self._next_keepalive < when and self._keepalive_active():
            when = self._next_keepalive
        if self._dtmf_due:
            if self._dtmf_due[0][0] < when:
                when = self._dtmf_due[0][0]
        elif self._dtmf_digits and self._dtmf_next_start < when:
            when = self._dtmf_next_start
        timeout = self.config.rtp_activity_timeout
        if timeout and self._last_rtp + timeout < when and self._inactivity_watched():
            when = self._last_rtp + timeout
        return when

    def timer_may_lag(self) -> bool:
        """Whether ``get_timer``'s deadlines may be met up to a few tens of ms late: not while DTMF packets are
        paced out nor while the jitter buffer waits for a missing packet (RTCP reports, keep-alive RTP, keyframe
        requests and inactivity may)."""
        return not self._dtmf_due and not self._dtmf_digits and self._buffer.next_deadline() is None

    def handle_timer(self, now: float) -> None:
        if self.closed:
            return
        self._sync()
        self._dispatch(self._buffer.poll(now), now)
        self._pump_dtmf(now)
        if self._keepalive_active() and now >= self._next_keepalive:
            self._send_keepalive(now)
        if self._kf_needed:
            self._service_keyframe(now)
        if now >= self._next_rtcp:
            self._send_report(now, [])
            self._next_rtcp = now + self._rtcp_interval(initial=False)
        if self._inactivity_watched():
            assert self.config.rtp_activity_timeout is not None
            if now >= self._last_rtp + self.config.rtp_activity_timeout:
                self._inactivity_reported = True
                self._events.append(RtpInactivity(now - self._last_rtp))

    def close(self, now: float) -> None:
        """Say BYE and stop: timers end, later datagrams are ignored."""
        if self.closed:
            return
        self._sync()
        self._send_report(now, [RtcpBye([self.ssrc])])
        self.closed = True

    # --- receiving RTP ----------------------------------------------------------------------------------------

    def receive_rtp_many(self, datagrams: list[tuple[bytes, Address, float | None]], now: float) -> int:
        """``receive_rtp`` for each ``(data, addr, arrival)`` in turn; return how many raised (each is logged; the
        others are served).

        ``arrival`` None: the packet was read after the last one that came with its arrival (its socket's reads
        stamp only the first datagram of each, see `wcsgw.rtp.udp.MediaSockets.bind`), and it arrived when that
        one did plus the media time between their RTP timestamps (``_estimated_arrival``), at or after that one
        and not after ``now`` (``now`` itself when none came with its arrival yet).  Such a packet gives the
        interarrival jitter no sample: it is taken from the packets that came with their times only.

        Runs of packets that simply continue the stream (the latched source, no SRTP, a plain header with the
        media's payload type, the SSRC in force and the next sequence number, nothing held in the jitter buffer)
        take ``_receive_in_order``: the same statistics, buffer state, frames and events as ``receive_rtp``, at a
        fraction of its cost.  Anything else goes through ``receive_rtp``."""
        failed = 0
        index, count = 0, len(datagrams)
        quiet = not self._inactivity_reported
        keyframe_needed = self._kf_needed
        while index < count:
            index, raised = self._receive_in_order(datagrams, index, now)
            failed += raised
            if index < count:
                quiet = False
                data, addr, arrival = datagrams[index]
                index += 1
                try:
                    if arrival is None:
                        estimated = self._estimated_arrival(data, now)
                        if estimated is None:
                            self.receive_rtp(data, addr, now)
                        else:
                            self.receive_rtp(data, addr, estimated, estimated=True)
                    else:
                        if len(data) >= 12 and not is_rtcp(data):
                            self._arrival_base = (arrival, _RTP_TIMESTAMP.unpack_from(data, 4)[0])
                        self.receive_rtp(data, addr, arrival)
                except Exception:
                    failed += 1
                    log.failure("media RTP datagram from {addr} failed", addr=addr)
        # Only the fast path ran and it asked for no keyframe: no deadline of get_timer() moved earlier (the
        # inactivity deadline moved later, which a timer armed before may fire early for, and find nothing).
        self.deadlines_unchanged = quiet and (keyframe_needed or not self._kf_needed)
        return failed

    def _receive_in_order(self, datagrams: list[tuple[bytes, Address, float | None]], index: int,
                          now: float) -> tuple[int, int]:
        """Take datagrams from ``index`` on while each is the next packet of the stream in force (see
        ``receive_rtp_many``); return the index of the first one not taken, and 1 if one raised (it is taken).

        Per packet only the header is checked and the payload passed on.  The packets taken are kept as
        ``(arrival, timestamp)`` in ``_run`` and the statistics and the jitter buffer brought up to date with them
        only when something else needs them (``_sync``): every other way into the session syncs first, so the run
        only ever grows by packets that follow one another, and a batch that continues the run checks nothing
        but the packets themselves."""
        run = self._run
        latched = self._rtp_latch.latched
        media_type = self.params.payload_type
        ssrc = self._buffer.ssrc
        if run:
            expected = self._run_next  # nothing but this path ran since the run began
        else:
            stats = self._last_stats
            if (latched is None or self.closed or self._srtp is not None or not self._receives or stats is None
                    or ssrc is None or ssrc != self._last_ssrc or 64 <= media_type <= 95  # 64-95: RTCP-mux range
                    or (not self._video_started and self.params.kind == VIDEO)):
                return index, 0
            first_extended = self._buffer.next_in_order()
            if first_extended is None:
                return index, 0
            expected = first_extended % RTP_SEQ_MOD
            if stats.next_in_order() != expected:
                return index, 0
        append = run.append
        octets = 0
        position, end = index, len(datagrams)
        raised = 0
        counters = self.counters
        depacketizer = self._depacketizer
        # The audio and video loops below check the header alike; they are apart to keep a call per packet off.
        unpack_words = _RTP_WORDS.unpack_from
        first_word = 0x8000 | media_type  # V=2, no padding, extension or CSRC, the media's type (marker masked)
        try:
            if depacketizer is None:  # audio: a frame per packet
                events = self._events
                unwrapper = self._unwrapper
                last, extended = unwrapper._last, unwrapper._extended  # TimestampUnwrapper.unwrap, written out
                frames = 0
                base = self._arrival_base
                rate = self.params.clock_rate
                try:
                    while position < end:
                        data, addr, arrival = datagrams[position]
                        if addr != latched or len(data) <= 12:
                            break
                        flags, sequence, timestamp, packet_ssrc = unpack_words(data)
                        if flags & 0xFF7F != first_word or sequence != expected or packet_ssrc != ssrc:
                            break
                        position += 1
                        expected = (sequence + 1) & 0xFFFF
                        if arrival is None:
                            if base is None:
                                arrival = now
                                append((arrival, timestamp))
                            else:  # _estimated_arrival, written out; a list: no jitter sample (see stats)
                                delta = (timestamp - base[1]) % RTP_TIMESTAMP_MOD
                                if delta >= RTP_TIMESTAMP_HALF:
                                    delta -= RTP_TIMESTAMP_MOD
                                arrival = base[0] + delta / rate
                                if arrival > now:
                                    arrival = now
                                elif arrival < base[0]:
                                    arrival = base[0]
                                append([arrival, timestamp])
                        else:
                            base = (arrival, timestamp)
                            append(base)
                        payload = data[12:]
                        octets += len(payload)
                        if last is None:
                            extended = timestamp
                        else:
                            delta = (timestamp - last) % RTP_TIMESTAMP_MOD
                            extended += delta - RTP_TIMESTAMP_MOD if delta >= RTP_TIMESTAMP_HALF else delta
                        last = timestamp
                        frames += 1
                        events.append(AudioFrame(extended, payload, media_type, arrival))
                finally:
                    unwrapper._last, unwrapper._extended = last, extended
                    counters.frames += frames
                    self._arrival_base = base
            else:
                push = depacketizer.push_payload
                h264 = type(depacketizer) is H264Depacketizer
                unit_timestamp = -1  # the first packet of the batch is looked after too
                middle_of: list[bytes] | None = None  # the fragment whose FU bytes ``middle`` are
                middle = b""
                entry = (now, -1)  # the packet before's (arrival, timestamp) in the run, in this loop
                while position < end:
                    data, addr, arrival = datagrams[position]
                    if addr != latched or len(data) <= 12:
                        break
                    flags, sequence, timestamp, packet_ssrc = unpack_words(data)
                    if flags & 0xFF7F != first_word or sequence != expected or packet_ssrc != ssrc:
                        break
                    position += 1
                    expected = (sequence + 1) & 0xFFFF
                    if arrival is None:
                        arrival = now
                    if timestamp == unit_timestamp and flags < 0x8080 and h264:  # no marker
                        # The middle of an H.264 NAL unit fragmented with FU-A (most video packets): the packet
                        # before it, in this loop, was of the same unit, so appending the fragment is all that
                        # push_payload would do (see H264Depacketizer.fragment), and no unit ends here.  The FU
                        # indicator and header of a middle fragment are the same for every one of a NAL unit.
                        fragment = depacketizer.fragment  # type: ignore[union-attr]
                        if fragment is not None:
                            if fragment is not middle_of:
                                middle_of = fragment
                                nal_header = fragment[0][0]
                                middle = bytes(((nal_header & 0xE0) | 28, nal_header & 0x1F))
                            if data[12:14] == middle and len(data) > 14:
                                # With the arrival of the packet before (a drain's packets share its time) the
                                # run gets that packet's entry again, not a new one: the statistics take an
                                # entry repeated for a packet whose transit time is the one before's (D = 0).
                                if arrival != entry[0]:
                                    entry = (arrival, timestamp)
                                append(entry)
                                octets += len(data) - 12
                                fragment.append(data[14:])
                                continue
                    entry = (arrival, timestamp)
                    append(entry)
                    marker = flags >= 0x8080
                    payload = data[12:]
                    octets += len(payload)
                    errors = depacketizer.errors
                    frames = push(payload, timestamp, marker)
                    if depacketizer.errors > errors:
                        counters.depacketizer_errors += depacketizer.errors - errors
                        log.debug("video payload error: {error}", error=depacketizer.last_error)
                    if frames:
                        self._emit_frames(frames, arrival)
                    # receive_rtp asks for a keyframe when loss broke a unit; that can change only when a unit
                    # ends (a marker or a new timestamp), or before the run.  (A request sends an RTCP report,
                    # which syncs the statistics first.)
                    if marker or timestamp != unit_timestamp:
                        if self._broken_wants_keyframe():
                            self._run_octets += octets
                            octets = 0
                            self._check_broken(arrival)
                            run = self._run  # the report synced: a new run
                            append = run.append
                        else:
                            self._broken_seen = depacketizer.dropped_broken
                    unit_timestamp = timestamp
        except Exception:
            raised = 1
            log.failure("media RTP datagram from {addr} failed", addr=datagrams[position - 1][1])
        if position > index:
            taken = position - index
            self._run_next = expected
            self._run_octets += octets
            counters.rtp_datagrams += taken
            counters.rtp_accepted += taken
            last_arrival = datagrams[position - 1][2]
            self._last_rtp = now if last_arrival is None else last_arrival
            self._inactivity_reported = False
            if len(run) >= _MAX_RUN:
                self._sync()
        return position, raised

    def _estimated_arrival(self, data: bytes, now: float) -> float | None:
        """The arrival of an RTP packet read without its own after ``_arrival_base``'s (see ``receive_rtp_many``):
        that one's plus the media time between their RTP timestamps, kept between that one's and ``now``; None
        without a base, or for what is not an RTP header (RTCP, a runt)."""
        base = self._arrival_base
        if base is None or len(data) < 12 or is_rtcp(data):
            return None
        delta = timestamp_delta(_RTP_TIMESTAMP.unpack_from(data, 4)[0], base[1])
        return min(now, max(base[0], base[0] + delta / self.params.clock_rate))

    def _sync(self) -> None:
        """Bring the statistics and the jitter buffer up to date with the packets of the fast path's run."""
        run = self._run
        if run:
            self._run = []
            stats = self._last_stats
            assert stats is not None
            stats.on_packets_in_order(run, self._run_octets)
            self._buffer.took_in_order(len(run), run[-1][1])
            self._run_octets = 0

    def receive_rtp(self, data: bytes, addr: Address, now: float, estimated: bool = False) -> None:
        """A datagram from the RTP socket (RTCP too with rtcp-mux); ``addr`` is a ``(host, port)`` tuple.
        ``estimated``: ``now``, its arrival, was taken from another packet's (see ``receive_rtp_many``), and gives
        the interarrival jitter no sample.

        This runs for every packet: attributes are read once into locals, and the usual case (the latched
        source, no SRTP, the next packet in order) takes no detour."""
        if self.closed:
            return
        self._sync()
        if len(data) >= 2 and RTCP_MUX_FIRST_SECOND_BYTE <= data[1] <= RTCP_MUX_LAST_SECOND_BYTE:
            self.receive_rtcp(data, addr, now)
            return
        counters = self.counters
        counters.rtp_datagrams += 1
        latch = self._rtp_latch
        latched = latch.latched
        if (addr != latched) if latched is not None else not latch.accepts(addr):  # no call once latched
            counters.dropped_unexpected_source += 1
            log.debug("RTP from unexpected source {addr} dropped", addr=addr)
            return
        if self._srtp is not None:
            try:
                data = self._srtp.unprotect(data)
            except ValueError as exc:
                counters.dropped_srtp += 1
                log.debug("SRTP packet from {addr} dropped: {error}", addr=addr, error=exc)
                return
        try:
            packet = RtpPacket.parse(data)
        except ValueError as exc:
            counters.dropped_malformed += 1
            log.debug("malformed RTP from {addr} dropped: {error}", addr=addr, error=exc)
            return
        payload_type = packet.payload_type
        if payload_type not in self._accepted_types:
            counters.dropped_payload_type += 1
            return
        if not self._receives:
            counters.dropped_not_receiving += 1
            return
        if latched is None:
            latch.confirm((addr[0], addr[1]))
        counters.rtp_accepted += 1
        self._last_rtp = now
        self._inactivity_reported = False
        ssrc = packet.ssrc
        stats = self._last_stats if ssrc == self._last_ssrc else self._stats_for(ssrc)
        stats.on_packet(packet, now, jitter=not estimated)  # type: ignore[union-attr]

        buffer = self._buffer
        if payload_type == self._telephone_event_pt and buffer.ssrc is not None and ssrc != buffer.ssrc:
            # digits on their own SSRC: keep them out of the media stream's buffer
            self._receive_telephone_event(packet)
            return
        dropped = buffer.dropped
        released = buffer.push(packet, now)
        if buffer.dropped != dropped:
            self._count_buffer_drops(ssrc)
        if released:
            self._dispatch(released, now)
        if not self._video_started and self.params.kind == VIDEO:
            self._video_started = True
            self.request_keyframe(now, "start")

    def _count_buffer_drops(self, ssrc: int) -> None:
        """Carry what the jitter buffer dropped since the last look into the session's counters."""
        buffer, counters, seen = self._buffer, self.counters, self._buffer_seen
        late = buffer.late - seen[0]
        if late > 0:
            counters.dropped_late += late
            self._stats_for(ssrc).count_late(late)
        counters.dropped_duplicate += buffer.duplicates - seen[1]
        counters.dropped_out_of_range += buffer.out_of_range - seen[2]
        self._buffer_seen = [buffer.late, buffer.duplicates, buffer.out_of_range]

    def _check_broken(self, now: float) -> None:
        """Ask for a keyframe when loss broke a frame (or the depacketizer waits for one)."""
        depacketizer = self._depacketizer
        if depacketizer is None:
            return
        if self._broken_wants_keyframe():
            self.request_keyframe(now, "loss" if self._frames_seen else "start")
        self._broken_seen = depacketizer.dropped_broken

    def _broken_wants_keyframe(self) -> bool:
        """Whether ``_check_broken`` would ask for a keyframe now."""
        depacketizer = self._depacketizer
        return (depacketizer is not None and not self._kf_needed
                and (depacketizer.dropped_broken > self._broken_seen or depacketizer.keyframe_needed))

    def _stats_for(self, ssrc: int) -> ReceiverStats:
        if ssrc == self._last_ssrc:  # already the most recently used
            return self._last_stats  # type: ignore[return-value]
        stats = self._stats.pop(ssrc, None)
        if stats is None:
            stats = ReceiverStats(ssrc, self.params.clock_rate)
            if len(self._stats) >= _MAX_STATS:
                del self._stats[next(iter(self._stats))]
        self._stats[ssrc] = stats  # most recently used last
        self._last_ssrc, self._last_stats = ssrc, stats
        return stats

    def _dispatch(self, released: list[Released], now: float) -> None:
        params = self.params
        media_type = params.payload_type
        depacketizer = self._depacketizer
        events = self._events
        counters = self.counters
        unwrap = self._unwrapper.unwrap
        for packet, lost_before, reset, arrival in released:
            if reset:
                self._unwrapper.reset()
                if depacketizer is not None:
                    depacketizer.reset()
                events.append(StreamRestarted(packet.ssrc))
            if lost_before and depacketizer is not None:
                depacketizer.lost(lost_before)
            payload_type = packet.payload_type
            if payload_type != media_type:
                if payload_type == params.telephone_event_pt:
                    self._receive_telephone_event(packet)
                else:
                    counters.comfort_noise += 1
            elif depacketizer is not None:
                errors = depacketizer.errors
                frames: list[AccessUnit] | list[Vp8Frame] = depacketizer.push(packet)
                if depacketizer.errors > errors:
                    counters.depacketizer_errors += depacketizer.errors - errors
                    log.debug("video payload error: {error}", error=depacketizer.last_error)
                if frames:
                    self._emit_frames(frames, arrival)
            elif packet.payload:
                counters.frames += 1
                events.append(AudioFrame(unwrap(packet.timestamp), packet.payload, payload_type, arrival))
            else:
                counters.dropped_empty += 1
        if released and self._video_started:
            self._check_broken(now)

    def _emit_frames(self, frames: list[AccessUnit] | list[Vp8Frame], arrival: float) -> None:
        """Video frames the depacketizer completed with a packet that arrived at ``arrival``."""
        unwrap = self._unwrapper.unwrap
        for frame in frames:
            self._frames_seen = True
            frame.timestamp = unwrap(frame.timestamp)
            frame.arrival = arrival
            if frame.keyframe:
                self._kf_needed = False
                self._kf_attempts = 0
            self.counters.frames += 1
            self._events.append(frame)

    def _receive_telephone_event(self, packet: RtpPacket) -> None:
        try:
            event = dtmf.TelephoneEvent.parse(packet.payload)
        except ValueError:
            self.counters.dropped_malformed += 1
            return
        if not event.end or self._dtmf_last_end == packet.timestamp:
            return
        self._dtmf_last_end = packet.timestamp
        if event.event < len(dtmf.DTMF_DIGITS):
            duration_ms = event.duration * 1000 // self.params.telephone_event_clock_rate
            self._events.append(DtmfReceived(dtmf.event_to_digit(event.event), duration_ms))

    # --- receiving RTCP ---------------------------------------------------------------------------------------

    def receive_rtcp(self, data: bytes, addr: Address, now: float) -> None:
        """A datagram from the RTCP socket."""
        if self.closed:
            return
        self._sync()
        counters = self.counters
        counters.rtcp_datagrams += 1
        addr = (addr[0], addr[1])
        latch = self._rtp_latch if self.params.rtcp_mux else self._rtcp_latch
        rtp_host = self._rtp_latch.latched[0] if self._rtp_latch.latched else None
        if not latch.accepts(addr) and addr[0] != rtp_host:
            counters.rtcp_dropped_unexpected_source += 1
            return
        if self._srtp is not None:
            try:
                data = self._srtp.unprotect_rtcp(data)
            except ValueError as exc:
                counters.rtcp_dropped_srtp += 1
                log.debug("SRTCP packet from {addr} dropped: {error}", addr=addr, error=exc)
                return
        try:
            compound = RtcpCompound.parse(data)
        except ValueError as exc:
            counters.rtcp_malformed += 1
            log.debug("malformed RTCP from {addr} dropped: {error}", addr=addr, error=exc)
            return
        if not self.params.rtcp_mux:
            self._rtcp_latch.confirm(addr)
        counters.rtcp_accepted += 1
        counters.rtcp_unknown += compound.skipped
        for packet in compound.packets:
            self._handle_rtcp(packet, now)

    def _handle_rtcp(self, packet: RtcpPacket, now: float) -> None:
        if isinstance(packet, RtcpSenderReport):
            info = self._stats_for(packet.ssrc).on_sender_report(packet, now)
            self._events.append(SenderReportReceived(info, self._unwrapper.peek(packet.rtp_timestamp)))
            self._note_round_trip(packet.reports, now)
        elif isinstance(packet, RtcpReceiverReport):
            self._note_round_trip(packet.reports, now)
        elif isinstance(packet, RtcpBye):
            for source in packet.sources:
                self._events.append(ByeReceived(source, packet.reason))
        elif isinstance(packet, (RtcpPli, RtcpFir, RtcpNack)):
            self.counters.feedback_received += 1

    def _note_round_trip(self, reports: list[ReportBlock], now: float) -> None:
        for block in reports:
            if block.ssrc == self.ssrc and block.lsr:
                arrival = ntp_middle(ntp_from_seconds(now))
                rtt = ((arrival - block.lsr - block.dlsr) & 0xFFFFFFFF) / 65536.0
                if rtt < 60:
                    self.round_trip_time = rtt

    # --- keyframe requests ------------------------------------------------------------------------------------

    def request_keyframe(self, now: float, reason: str = "requested") -> None:
        """Ask the far end for a keyframe (video only); repeated until one arrives, rate limited."""
        if self.params.kind != VIDEO or self.closed:
            return
        if not self._kf_needed:
            self._kf_needed = True
            self._kf_attempts = 0
            self._kf_reason = reason
        self._kf_fresh = True
        self._service_keyframe(now)

    def _keyframe_due(self) -> float:
        if self._kf_last is None:
            return self._tx_start
        interval = (
            self.config.keyframe_request_min_interval if self._kf_fresh else self.config.keyframe_request_retry_interval
        )
        return self._kf_last + interval

    def _service_keyframe(self, now: float) -> None:
        media_ssrc = self._buffer.ssrc
        if not self._kf_needed or media_ssrc is None or now < self._keyframe_due():
            return
        params = self.params
        feedback: list[RtcpPacket] = [RtcpPli(self.ssrc, media_ssrc)]
        self.counters.pli_sent += 1
        if params.remote_fir:
            self._fir_sequence = (self._fir_sequence + 1) % 256
            feedback.append(RtcpFir(self.ssrc, [(media_ssrc, self._fir_sequence)]))
            self.counters.fir_sent += 1
        sent = self._send_report(now, feedback)
        # SIP INFO picture_fast_update is the last resort: when RTCP cannot go out, or after
        # ``keyframe_sip_info_after`` unanswered RTCP requests (many devices honour PLI without offering it).
        sip_info = not sent or self._kf_attempts >= self.config.keyframe_sip_info_after
        self._events.append(KeyframeNeeded(self._kf_reason, self._kf_attempts, sip_info))
        self.counters.keyframe_requests += 1
        self._kf_attempts += 1
        self._kf_last = now
        self._kf_fresh = False

    # --- sending ----------------------------------------------------------------------------------------------

    def _rtcp_interval(self, initial: bool) -> float:
        # 5 % of the session bandwidth for RTCP; audio 64 kbit/s, video 1 Mbit/s are good enough estimates
        bandwidth = (8000.0 if self.params.kind == AUDIO else 125000.0) * 0.05
        return rtcp_report_interval(
            members=2,
            senders=2 if self._sent_since_report else 1,
            rtcp_bandwidth=bandwidth,
            we_sent=self._sent_since_report,
            average_rtcp_size=self._rtcp_size,
            initial=initial,
            random_value=self._rng.random(),
            minimum=self.config.rtcp_min_interval,
        )

    def _send_report(self, now: float, extra: list[RtcpPacket]) -> bool:
        """Send SR or RR + SDES (+ ``extra``); False if there is nowhere to send it."""
        self._sync()
        destination = self._rtcp_destination()
        blocks: list[ReportBlock] = []
        for stats in self._stats.values():
            if stats.received_since_report and len(blocks) < 31:
                blocks.append(stats.report_block(now))
        if self._sent_since_report:
            report: RtcpPacket = RtcpSenderReport(
                self.ssrc,
                ntp_from_seconds(now),
                self._tx_rtp_timestamp(now, self.params.clock_rate),
                self._tx_packets & 0xFFFFFFFF,
                self._tx_octets & 0xFFFFFFFF,
                blocks,
            )
        else:
            report = RtcpReceiverReport(self.ssrc, blocks)
        self._sent_since_report = False
        sdes = RtcpSourceDescription([SdesChunk(self.ssrc, [(SDES_CNAME, self.config.cname.encode()[:255])])])
        data = bytes(RtcpCompound([report, sdes, *extra]))
        self._rtcp_size = self._rtcp_size * 15 / 16 + (len(data) + 28) / 16  # A.7 avg_rtcp_size, with UDP/IP
        if destination is None:
            self.counters.send_skipped_no_destination += 1
            return False
        if self._srtp is not None:
            data = self._srtp.protect_rtcp(data)
        self._outgoing.append((data, destination, "rtp" if self.params.rtcp_mux else "rtcp"))
        self.counters.rtcp_sent += 1
        return True

    def _rtcp_destination(self) -> Address | None:
        if self.params.rtcp_mux:
            return self._rtp_latch.destination
        if self._rtcp_latch.latched is not None:
            return self._rtcp_latch.latched
        expected = self._rtcp_latch.expected
        rtp_latched = self._rtp_latch.latched
        if rtp_latched is not None and (expected is None or self._rtcp_latch.learn_any):
            # the far end is behind NAT: its RTCP port is likely next to the RTP port it sends from
            return (rtp_latched[0], rtp_latched[1] + 1)
        return expected

    def _tx_rtp_timestamp(self, now: float, clock_rate: int) -> int:
        return (self._tx_timestamp_base + int((now - self._tx_start) * clock_rate)) % (1 << 32)

    def _send_rtp(self, now: float, payload_type: int, marker: bool, timestamp: int, payload: bytes) -> bool:
        destination = self._rtp_latch.destination
        if destination is None:
            self.counters.send_skipped_no_destination += 1
            return False
        packet = RtpPacket(
            payload_type=payload_type,
            marker=marker,
            sequence_number=self._tx_sequence,
            timestamp=timestamp,
            ssrc=self.ssrc,
            payload=payload,
        )
        self._tx_sequence = (self._tx_sequence + 1) % (1 << 16)
        data = bytes(packet)
        if self._srtp is not None:
            data = self._srtp.protect(data)
        self._outgoing.append((data, destination, "rtp"))
        self._tx_packets += 1
        self._tx_octets += len(payload)
        self._sent_since_report = True
        return True

    def _keepalive_active(self) -> bool:
        return (
            self.config.keepalive
            and self._silence is not None
            and self.params.direction == SENDRECV
            and not self._dtmf_due
        )

    def _send_keepalive(self, now: float) -> None:
        if self._send_rtp(
            now,
            self.params.payload_type,
            True,
            self._tx_rtp_timestamp(now, self.params.clock_rate),
            self._silence or b"",
        ):
            self.counters.keepalive_sent += 1
        self._next_keepalive = now + self.config.keepalive_interval

    def send_dtmf(self, digit: str, now: float, duration_ms: int | None = None) -> None:
        """Queue one RFC 4733 digit; its packets go out at real pace through the timer."""
        dtmf.digit_to_event(digit)
        if self.params.telephone_event_pt is None:
            raise ValueError("telephone-event was not negotiated")
        if not self.params.sends:
            raise ValueError(f"cannot send DTMF in direction {self.params.direction}")
        self._dtmf_digits.append((digit, duration_ms))
        if not self._dtmf_due:
            self._dtmf_next_start = max(self._dtmf_next_start, now)
        self._pump_dtmf(now)

    def _pump_dtmf(self, now: float) -> None:
        params = self.params
        while True:
            if not self._dtmf_due:
                if not self._dtmf_digits or now < self._dtmf_next_start:
                    return
                digit, duration = self._dtmf_digits.popleft()
                start = self._dtmf_next_start
                rate = params.telephone_event_clock_rate
                self._dtmf_timestamp = self._tx_rtp_timestamp(start, rate)
                for scheduled in dtmf.digit_packets(
                    digit,
                    clock_rate=rate,
                    duration_ms=duration if duration is not None else self.config.dtmf_duration_ms,
                    volume=self.config.dtmf_volume,
                    packet_interval_ms=self.config.dtmf_packet_interval_ms,
                ):
                    self._dtmf_due.append((start + scheduled.offset, scheduled))
            due, scheduled = self._dtmf_due[0]
            if now < due:
                return
            self._dtmf_due.popleft()
            assert params.telephone_event_pt is not None
            if self._send_rtp(
                now, params.telephone_event_pt, scheduled.marker, self._dtmf_timestamp, scheduled.payload
            ):
                self.counters.dtmf_packets_sent += 1
            if not self._dtmf_due:
                self._dtmf_next_start = due + self.config.dtmf_gap_ms / 1000.0
                self._next_keepalive = now + self.config.keepalive_interval

    # --- inactivity -------------------------------------------------------------------------------------------

    def _inactivity_watched(self) -> bool:
        timeout = self.config.rtp_activity_timeout
        return bool(timeout) and self.params.receives and not self.on_hold and not self._inactivity_reported
