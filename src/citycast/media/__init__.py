"""citycast.media"""
