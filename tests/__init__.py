"""Trial tests for wcsgw."""
