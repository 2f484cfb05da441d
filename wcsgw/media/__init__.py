"""Media pipeline: PyAV transcoding (synchronous), worker threads and the per-call media clock."""
