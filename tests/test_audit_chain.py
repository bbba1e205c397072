"""The pure audit chain rules: the bytes hashed, the chain, and how a run's tampering is named."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from dvt_engine.audit import (
    GENESIS,
    RunEvidence,
    check_run,
    content_hash,
    event_bytes,
    event_forms,
    seal_events,
)
from dvt_engine.checksum import canonical_json

AT = datetime(2026, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                               max_size=3),
    max_leaves=12)


@given(st.dictionaries(st.text(max_size=6), json_values, max_size=5),
       st.integers(1, 2**40), st.integers(-720, 720))
def test_the_fast_forms_are_the_canonical_json_forms(envelope: dict, seq: int,  # type: ignore[type-arg]
                                                     offset: int) -> None:
    at = AT.astimezone(timezone(timedelta(minutes=offset)))
    text = json.dumps(envelope, indent=1)
    data, content = event_forms(seq, at, text)
    assert data == event_bytes(seq, at, text)
    assert data == canonical_json({"runSeq": seq, "persistedAt": "2026-03-14T09:26:53.589793Z",
                                   "envelope": envelope})
    assert content == content_hash(at, text)


def test_the_chain_is_sha256_of_the_previous_hash_and_the_event_bytes() -> None:
    rows = [(1, AT, '{"a": 1}'), (2, AT, '{"b": [1, 2]}')]
    links = seal_events(GENESIS, rows)
    first = hashlib.sha256(bytes(32) + b'{"envelope":{"a":1},"persistedAt":'
                           b'"2026-03-14T09:26:53.589793Z","runSeq":1}').digest()
    second = hashlib.sha256(first + b'{"envelope":{"b":[1,2]},"persistedAt":'
                            b'"2026-03-14T09:26:53.589793Z","runSeq":2}').digest()
    assert [link.chain_hash for link in links] == [first.hex(), second.hex()]
    # Key order and spacing of the stored text do not matter; the values do.
    assert seal_events(GENESIS, [(1, AT, '{ "a" :1 }')])[0] == links[0]


def _run(events: list[tuple[int, datetime, str]], sealed: int, last_seq: int) -> RunEvidence:
    original = [(i, AT, json.dumps({"n": i})) for i in range(1, sealed + 1)]
    links = {link.run_seq: link for link in seal_events(GENESIS, original)}
    return RunEvidence("t", "r", events, links, last_seq)


def test_each_kind_of_tampering_is_named_at_its_first_event() -> None:
    good = [(i, AT, json.dumps({"n": i})) for i in range(1, 6)]
    assert check_run(_run(good, 5, 5)) is None
    assert check_run(_run([*good, (6, AT, '{"n": 6}')], 5, 6)) is None  # not sealed yet
    cases = {
        "altered": [*good[:2], (3, AT, '{"n": 33}'), *good[3:]],
        "deleted": good[:2] + good[3:],
        "reordered": [*good[:1], (2, AT, good[2][2]), (3, AT, good[1][2]), *good[3:]],
    }
    for what, events in cases.items():
        finding = check_run(_run(events, 5, 5))
        assert finding is not None
        assert (finding.what, finding.run_seq) == (what, 2 if what == "reordered" else 3)
    forged = check_run(_run([*good, (9, AT, '{"n": 9}')], 5, 5))
    assert forged is not None
    assert (forged.what, forged.run_seq) == ("inserted", 9)
    shifted = [*good[:2], (3, AT, '{"x": 1}'), *[(i + 1, AT, e) for i, _, e in good[2:]]]
    inserted = check_run(_run(shifted, 5, 6))
    assert inserted is not None
    assert (inserted.what, inserted.run_seq) == ("inserted", 3)
    persisted = check_run(_run([*good[:3], (4, AT + timedelta(seconds=1), good[3][2]),
                                good[4]], 5, 5))
    assert persisted is not None
    assert (persisted.what, persisted.run_seq) == ("altered", 4)


def test_a_signed_head_that_the_events_do_not_reach_is_a_signature_finding() -> None:
    good = [(i, AT, json.dumps({"n": i})) for i in range(1, 4)]
    run = _run(good, 3, 3)
    run.signed = [(3, "00" * 32, 7)]
    finding = check_run(run)
    assert finding is not None
    assert (finding.what, finding.run_seq, finding.checkpoint) == ("signature", 3, 7)
