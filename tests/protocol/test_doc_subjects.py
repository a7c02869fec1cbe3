"""The subjects table of docs/protocol.md and `Subjects` spell the same subjects, both ways."""

from __future__ import annotations

import inspect
import re

from tests.protocol.protocol_doc import first_cells, section

from citycast.protocol.subjects import DEFAULT_PREFIX, Subjects, time_request

S = Subjects()


def documented() -> set[str]:
    table = section("Subjects").split("\n\n| subject |", 1)[1]
    rows = first_cells("| subject |" + table)
    return {re.fullmatch(r"`([^`]+)`", r).group(1) for r in rows[1:]}  # type: ignore[union-attr]


def spelled_by_the_code() -> set[str]:
    """Every concrete subject `Subjects` makes, its arguments shown as `<name>` like the table does; a time
    subject both bare and with a zone, each also as a site's own request subject (`time_request`)."""
    out: set[str] = set()
    for name, method in inspect.getmembers(Subjects, inspect.isfunction):
        if name.startswith("_") or name.endswith("_all"):
            continue
        params = [p for p in inspect.signature(method).parameters if p != "self"]
        if name == "time":
            for zone in (None, "<zone>"):
                out.add(S.time(zone))
                out.add(time_request(S.time(zone), "<site>"))
            continue
        out.add(getattr(S, name)(*(f"<{p}>" for p in params)))
    return out


def test_every_subject_in_the_table_is_spelled_by_subjects_and_vice_versa() -> None:
    doc = documented()
    code = spelled_by_the_code()
    assert doc == code, f"only in the doc: {sorted(doc - code)}; only in the code: {sorted(code - doc)}"
    assert all(s.startswith(f"{DEFAULT_PREFIX}.") for s in doc)


def test_every_wildcard_is_a_documented_subject_with_a_star() -> None:
    doc = documented()
    wildcards = [name for name, _ in inspect.getmembers(Subjects, inspect.isfunction) if name.endswith("_all")]
    assert wildcards, "Subjects has no wildcard subscriptions?"
    text = section("Subjects")
    for name in wildcards:
        assert f"`{name}`" in text or f"`Subjects.{name}`" in text, f"{name} is not mentioned in the doc"
        # time_site_all, like time, has a bare form and one per zone
        zones = [(), ("<zone>",)] if name == "time_site_all" else [()]
        subjects = [getattr(S, name)(*zone) for zone in zones]
        for wildcard in subjects:
            head = wildcard.removesuffix(".*")
            assert wildcard.endswith(".*") and any(re.fullmatch(rf"{re.escape(head)}\.<\w+>", d) for d in doc), (
                f"{name}() = {wildcard} matches no documented subject"
            )
