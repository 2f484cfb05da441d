"""SIP user agent: sans-I/O transactions, dialogs, digest auth, SDP; protocol.py adapts it to Twisted UDP."""
