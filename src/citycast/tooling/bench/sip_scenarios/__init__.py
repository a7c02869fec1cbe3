"""sipp scenarios of `citycast bench-sip` (package data: the XML files beside this one)."""
