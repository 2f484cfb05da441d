"""wcsgw bench (issue 6): the gateway against one ffmpeg per call. See bench/README.rst."""
