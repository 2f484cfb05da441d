"""REST API: Klein application with WCS-compatible routes, JSON errors, auth and TLS."""
