"""citycast.bench"""
