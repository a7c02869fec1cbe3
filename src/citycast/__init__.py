"""citycast: one live voice on every loudspeaker of a city, in sync."""

__version__ = "0.1.0"
