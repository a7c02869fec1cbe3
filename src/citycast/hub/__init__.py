"""citycast.hub"""
