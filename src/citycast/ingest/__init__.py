"""citycast.ingest"""
