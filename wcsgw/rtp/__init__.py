"""RTP media plane: packets, RTCP, jitter buffer, depacketizers, DTMF; protocol.py adapts it to Twisted UDP."""
