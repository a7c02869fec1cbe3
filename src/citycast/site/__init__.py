"""citycast.site"""
