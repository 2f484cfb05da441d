"""wcsgw: a SIP-to-RTMP gateway on Twisted."""

__version__ = "0.1.0"
