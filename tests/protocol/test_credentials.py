"""The renewal answer on `<prefix>.creds-renew.<site>`: the document's table, the bytes hubs send, clear refusals."""

from __future__ import annotations

import pytest
from tests.protocol.protocol_doc import first_cells, section

from citycast.protocol.credentials import (
    MAX_RENEWAL_BYTES,
    RenewalAnswer,
    RenewalAnswerError,
    decode_renewal,
)


def documented_answers() -> list[bytes]:
    return [c.strip("`").encode() for c in first_cells(section("Credentials")) if c.startswith("`{")]


def test_every_documented_answer_decodes_and_the_refusal_is_what_the_hub_writes() -> None:
    renewal, refusal = documented_answers()
    assert decode_renewal(renewal) == RenewalAnswer(jwt="eyJ…")
    assert decode_renewal(refusal) == RenewalAnswer(error="not enrolled or revoked: enrol again")
    assert RenewalAnswer(error="not enrolled or revoked: enrol again").encode() == refusal
    token = "eyJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.c2ln"  # JWTs are ASCII, so the wire form is exactly this
    assert RenewalAnswer(jwt=token).encode() == b'{"v":1,"jwt":"' + token.encode() + b'"}'


def test_an_answer_is_a_jwt_or_an_error_never_both_or_neither() -> None:
    with pytest.raises(ValueError, match="either"):
        RenewalAnswer()
    with pytest.raises(ValueError, match="either"):
        RenewalAnswer(jwt="a", error="b")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"{", "not JSON"),
        (b"[1]", "renewal v1"),
        (b'{"jwt":"eyJ"}', "renewal v1"),
        (b'{"v":2,"jwt":"eyJ"}', "renewal v1"),
        (b'{"v":1}', "no JWT"),
        (b'{"v":1,"jwt":""}', "no JWT"),
        (b'{"v":1,"jwt":7}', "no JWT"),
        (b'{"v":1,"jwt":"' + b"e" * MAX_RENEWAL_BYTES + b'"}', "more than"),
    ],
)
def test_what_is_not_an_answer_is_refused_with_the_reason(data: bytes, why: str) -> None:
    with pytest.raises(RenewalAnswerError, match=why):
        decode_renewal(data)


def test_a_hubs_long_reason_is_cut_for_the_sites_log() -> None:
    answer = decode_renewal(RenewalAnswer(error="x" * 5000).encode())
    assert answer.error == "x" * 200
