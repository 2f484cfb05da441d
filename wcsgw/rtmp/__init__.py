"""RTMP client: AMF0, FLV, chunking and handshake (pure) with a Twisted protocol and publisher."""
