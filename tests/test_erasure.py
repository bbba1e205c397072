"""The pure rules of tombstones and of checkpoints re-made without a purged tenant."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from dvt_engine.audit import Head, checkpoint_payload, heads_of, payload_digest
from dvt_engine.audit_keys import generate_key, load_keyring, load_signer
from dvt_engine.erasure import (
    Tombstone,
    cold_cutoff,
    expired_heads,
    names_tenant,
    tombstone_summary,
    without_tenant,
)

AT = datetime(2026, 12, 5, 10, 0, 0, 123456, tzinfo=UTC)


def test_a_checkpoint_without_a_tenant_keeps_the_others_and_relinks() -> None:
    heads = [Head("a", "r1", 3, "11" * 32), Head("b", "r2", 5, "22" * 32),
             Head("a", "r3", 1, "33" * 32)]
    original = checkpoint_payload(7, "ab" * 32, "old", AT, heads).decode()
    assert names_tenant(original, "a")
    assert not names_tenant(original, "c")
    new, dropped = without_tenant(original, "a", "cd" * 32, "new", AT)
    data = json.loads(new)
    assert dropped == 2
    assert heads_of(data) == [Head("b", "r2", 5, "22" * 32)]
    assert (data["checkpoint"], data["previous"], data["keyId"]) == (7, "cd" * 32, "new")
    assert data["createdAt"] == json.loads(original)["createdAt"]
    assert not names_tenant(new.decode(), "a")
    assert payload_digest(new) != payload_digest(original.encode())


def test_a_tombstone_signs_its_canonical_payload(tmp_path: Path) -> None:
    generate_key("k1", tmp_path / "k.pem", tmp_path / "ring.json")
    signer, ring = load_signer(tmp_path / "k.pem", "k1"), load_keyring(tmp_path / "ring.json")
    stone = Tombstone(4, "retention", "acme", AT, "k1", "nightly", {"runs": 1, "objects": 2},
                      runs=[{"runId": "r1", "seq": 9, "chainHash": "ee" * 32}])
    payload = stone.payload()
    assert payload == Tombstone(4, "retention", "acme", AT, "k1", "nightly",
                                {"objects": 2, "runs": 1},
                                runs=[{"chainHash": "ee" * 32, "seq": 9, "runId": "r1"}]).payload()
    assert ring.verify("k1", payload, signer.sign(payload)) is None
    assert ring.verify("k1", payload.replace(b"nightly", b"someone"), signer.sign(payload))
    data = json.loads(payload)
    assert expired_heads(data) == {"r1": (9, "ee" * 32)}
    assert tombstone_summary(data)["at"] == "2026-12-05T10:00:00.123456Z"
    assert "checkpoints" not in data
    purge = json.loads(Tombstone(5, "purge", "acme", AT, "k1", "a", {}, checkpoints={
        "rewritten": [1, 2]}).payload())
    assert "runs" not in purge
    assert purge["checkpoints"] == {"rewritten": [1, 2]}


def test_the_cold_term_counts_back_whole_years() -> None:
    assert cold_cutoff(datetime(2026, 3, 14).date(), 7) == datetime(2019, 3, 14).date()
    assert cold_cutoff(datetime(2028, 2, 29).date(), 1) == datetime(2027, 2, 28).date()
