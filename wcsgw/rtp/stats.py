"""Per-SSRC receive statistics (RFC 3550 appendices A.1, A.3 and A.8) and the RR report block built from them.

The last sender report's NTP/RTP mapping and its arrival time are kept in ``last_sender_report``: the lip-sync
reference for the RTMP pipeline, and the source of LSR/DLSR in our reports.
"""

from __future__ import annotations

from dataclasses import dataclass

from .packet import RTP_SEQ_MOD, RTP_TIMESTAMP_HALF, RTP_TIMESTAMP_MOD, RtpPacket, fill_ring
from .rtcp import ReportBlock, RtcpSenderReport, ntp_middle, ntp_to_seconds

MAX_DROPOUT = 3000
MAX_MISORDER = 100
_DUPLICATE_WINDOW = 1024


@dataclass(frozen=True)
class SenderReportInfo:
    """What a sender report told us: its NTP <-> RTP timestamp mapping and when it arrived (our clock)."""

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    arrival: float

    @property
    def ntp_seconds(self) -> float:
        """The sender's wall clock at ``rtp_timestamp``, as Unix seconds."""
        return ntp_to_seconds(self.ntp_timestamp)


class ReceiverStats:
    """Reception statistics for one SSRC; feed every packet that passed validation to ``on_packet``."""

    def __init__(self, ssrc: int, clock_rate: int) -> None:
        if clock_rate <= 0:
            raise ValueError(f"clock rate {clock_rate} must be positive")
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.received = 0
        self.reordered = 0
        self.duplicated = 0
        self.late = 0
        self.octets = 0
        self.last_sender_report: SenderReportInfo | None = None
        self.last_arrival: float | None = None
        self._base_seq = 0
        self._max_seq = 0
        self._cycles = 0
        self._bad_seq: int | None = None
        self._started = False
        self._expected_prior = 0
        self._received_prior = 0
        self._received_since_report = 0
        self._transit: int | None = None
        self._jitter = 0.0
        # slot n % _DUPLICATE_WINDOW holds the last extended sequence number counted there
        self._recent: list[int] = [-1] * _DUPLICATE_WINDOW

    @property
    def extended_highest_sequence(self) -> int:
        return self._cycles + self._max_seq

    @property
    def expected(self) -> int:
        if not self._started:
            return 0
        return self.extended_highest_sequence - self._base_seq + 1

    @property
    def lost(self) -> int:
        """Cumulative packets lost: expected less received (negative with duplicates, as RFC 3550 allows)."""
        return self.expected - self.received

    @property
    def jitter(self) -> float:
        """Interarrival jitter in timestamp units (RFC 3550 A.8)."""
        return self._jitter

    def count_late(self, count: int = 1) -> None:
        """Count packets that arrived after the jitter buffer had released past them."""
        self.late += count

    def on_packet(self, packet: RtpPacket, arrival: float, jitter: bool = True) -> None:
        """Account one received packet (A.1 sequence tracking, A.8 jitter, our duplicate/reorder counters).
        ``jitter`` false: ``arrival`` was not measured (taken from another packet's) and gives the jitter no
        sample."""
        seq = packet.sequence_number
        self.last_arrival = arrival
        if not self._started:
            self._init_sequence(seq)
            self._started = True
        else:
            udelta = (seq - self._max_seq) % RTP_SEQ_MOD
            if udelta == 0:
                self.duplicated += 1
                self.received += 1
                self._received_since_report += 1
                return
            if udelta < MAX_DROPOUT:
                if seq < self._max_seq:
                    self._cycles += RTP_SEQ_MOD
                self._max_seq = seq
            elif udelta <= RTP_SEQ_MOD - MAX_MISORDER:
                # a very large jump: resynchronise only if the next packet follows this one (A.1)
                if self._bad_seq is not None and seq == self._bad_seq:
                    self._init_sequence(seq)
                    self._transit = None
                else:
                    self._bad_seq = (seq + 1) % RTP_SEQ_MOD
                    return
            else:
                extended = self._extend(seq)
                if self._recent[extended % _DUPLICATE_WINDOW] == extended:
                    self.duplicated += 1
                    self.received += 1
                    self._received_since_report += 1
                    return
                self.reordered += 1
                self._remember(extended)
                self.received += 1
                self._received_since_report += 1
                self.octets += len(packet.payload)
                return
        highest = self._cycles + self._max_seq
        self._recent[highest % _DUPLICATE_WINDOW] = highest
        self.received += 1
        self._received_since_report += 1
        self.octets += len(packet.payload)
        # interarrival jitter (A.8), inline: this runs for every packet
        if not jitter:
            return
        transit = int(arrival * self.clock_rate) - packet.timestamp
        if self._transit is not None:
            d = (transit - self._transit) % RTP_TIMESTAMP_MOD  # modulo 2**32: a timestamp wrap is not a jump
            if d >= RTP_TIMESTAMP_HALF:
                d = RTP_TIMESTAMP_MOD - d
            self._jitter += (d - self._jitter) / 16.0
        self._transit = transit

    def next_in_order(self) -> int | None:
        """The 16-bit sequence number that simply follows the highest seen, or None while the next packet needs
        ``on_packet`` (nothing received yet, or no transit time to take jitter from)."""
        if not self._started or self._transit is None:
            return None
        return (self._max_seq + 1) % RTP_SEQ_MOD

    def on_packets_in_order(self, packets: list[tuple[float, int] | list[float]], octets: int) -> None:
        """Account packets each of which followed the one before in sequence, the first one ``next_in_order()``,
        given as ``(arrival, timestamp)`` with ``octets`` of payload in all: what ``on_packet`` does for each of
        them, in one call (the session's fast path for runs of in-order packets).  An entry that is the entry
        before it again (the same object) is a packet with the arrival and timestamp of the one before: its
        transit time is that one's (D = 0), which takes no arithmetic but the jitter's decay.  An entry that is a
        list, ``[arrival, timestamp]``, is a packet whose arrival was not measured (``on_packet`` with ``jitter``
        false): it gives the jitter no sample, and the next measured one's D is from the last measured one."""
        count = len(packets)
        if not count:
            return
        rate = self.clock_rate
        jitter = self._jitter
        previous = self._transit
        assert previous is not None
        entry_before = None
        for entry in packets:  # A.8, as in on_packet
            if entry is entry_before:
                jitter += -jitter / 16.0  # (D - jitter) / 16 with D = 0
                continue
            entry_before = entry
            if entry.__class__ is list:  # an arrival not measured: no sample
                continue
            arrival, timestamp = entry
            transit = int(arrival * rate) - timestamp
            d = transit - previous
            if d < 0:
                d = -d
            if d >= RTP_TIMESTAMP_HALF:  # a timestamp wrap between the two: modulo 2**32, as on_packet does
                d = (transit - previous) % RTP_TIMESTAMP_MOD
                if d >= RTP_TIMESTAMP_HALF:
                    d = RTP_TIMESTAMP_MOD - d
            jitter += (d - jitter) / 16.0
            previous = transit
        self._jitter = jitter
        self._transit = previous
        highest = self._cycles + self._max_seq
        fill_ring(self._recent, highest + 1, count)
        highest += count
        self._max_seq = highest % RTP_SEQ_MOD
        self._cycles = highest - self._max_seq
        self.received += count
        self._received_since_report += count
        self.octets += octets
        self.last_arrival = packets[-1][0]

    def on_sender_report(self, report: RtcpSenderReport, arrival: float) -> SenderReportInfo:
        """Keep a sender report's timing for LSR/DLSR and lip sync."""
        info = SenderReportInfo(
            ssrc=report.ssrc,
            ntp_timestamp=report.ntp_timestamp,
            rtp_timestamp=report.rtp_timestamp,
            packet_count=report.packet_count,
            octet_count=report.octet_count,
            arrival=arrival,
        )
        self.last_sender_report = info
        return info

    @property
    def received_since_report(self) -> int:
        return self._received_since_report

    def report_block(self, now: float) -> ReportBlock:
        """The RR report block for this source (A.3), starting a new reporting interval."""
        expected = self.expected
        expected_interval = expected - self._expected_prior
        received_interval = self.received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self.received
        self._received_since_report = 0
        lost_interval = expected_interval - received_interval
        if expected_interval <= 0 or lost_interval <= 0:
            fraction = 0
        else:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        lost = max(-(1 << 23), min((1 << 23) - 1, self.lost))
        lsr = dlsr = 0
        if self.last_sender_report is not None:
            lsr = ntp_middle(self.last_sender_report.ntp_timestamp)
            dlsr = max(0, min(0xFFFFFFFF, int((now - self.last_sender_report.arrival) * 65536)))
        return ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=fraction,
            packets_lost=lost,
            highest_sequence=self.extended_highest_sequence & 0xFFFFFFFF,
            jitter=int(self._jitter),
            lsr=lsr,
            dlsr=dlsr,
        )

    def _init_sequence(self, seq: int) -> None:
        self._base_seq = seq
        self._max_seq = seq
        self._bad_seq = None
        self._cycles = 0
        self.received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._recent = [-1] * _DUPLICATE_WINDOW

    def _extend(self, seq: int) -> int:
        """Extended value of a sequence number just below the highest one (misordered packets)."""
        extended = self._cycles + seq
        if seq > self._max_seq:
            extended -= RTP_SEQ_MOD
        return extended

    def _remember(self, extended: int) -> None:
        self._recent[extended % _DUPLICATE_WINDOW] = extended

