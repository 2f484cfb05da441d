"""twistd plugin: ``twistd wcsgw``."""

from twisted.application.service import ServiceMaker

wcsgw = ServiceMaker("wcsgw", "wcsgw.tap", "SIP-to-RTMP gateway with the REST API of Flashphoner WCS", "wcsgw")
