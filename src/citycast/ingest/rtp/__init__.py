"""RTP media for the conference telephone: packets, jitter buffer, RTCP, DTMF and the telephony codecs."""
