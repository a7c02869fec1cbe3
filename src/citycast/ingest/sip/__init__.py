"""citycast.ingest.sip: the SIP side of the conference telephone (see docs/sip-internals.md)."""
