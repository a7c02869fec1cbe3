"""Everything that crosses the bus, one module per section of docs/protocol.md.

`subjects` (Subjects), `frame` and `channel` (Frame), `time` (Time service), `desired` (Desired state),
`telemetry` (Telemetry), `commands` (Commands). The hub, the site, ingest and the clock import these modules, never
the other way round (`frame` takes only the packet duration and key ids from citycast.media).
"""
