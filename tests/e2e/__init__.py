"""End-to-end tests with real peers (nginx-rtmp, SIPp, ffmpeg) on 127.0.0.1."""
