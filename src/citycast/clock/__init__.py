"""citycast.clock"""
