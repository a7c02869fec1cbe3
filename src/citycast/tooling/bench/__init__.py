"""citycast.tooling.bench"""
