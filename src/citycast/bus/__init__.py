"""citycast.bus"""
