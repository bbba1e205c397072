"""Bodies of the audit chain commands: audit keygen, audit seal, audit verify (docs/audit.md)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from dvt_cli import output as out
from dvt_cli.ops import _pg_url
from dvt_cli.settings import Settings
from dvt_engine.audit_keys import generate_key, load_keyring, load_signer
from dvt_engine.errors import UsageError
from dvt_engine.waiting import settles_within


async def _open(settings: Settings) -> Any:
    from dvt_statestore_pg.store import PostgresRunStateStore

    return await PostgresRunStateStore.open(_pg_url(settings))


async def keygen(settings: Settings, key_id: str, private_path: str, keyring: str) -> int:
    """Write a new Ed25519 signing key and add its public key to the keyring."""
    public = generate_key(key_id, private_path, keyring)
    if settings.json:
        out.emit_json({"key": {"keyId": key_id, "publicKey": public, "keyring": keyring,
                               "privateKey": private_path}})
    else:
        out.say(f"key {key_id}: private key in {private_path} (mode 0600), public key added"
                f" to {keyring}")
    return out.EXIT_OK


async def seal(settings: Settings, key_path: str | None, key_id: str | None,
               every: float | None) -> int:
    """Seal the events not yet sealed and sign a checkpoint; with ``every``, keep doing so."""
    from dvt_statestore_pg import audit

    if not key_path:
        raise UsageError("dvt audit seal needs the signing key (--signing-key or"
                         " DVT_AUDIT_SIGNING_KEY)")
    signer = load_signer(key_path, key_id or "")
    store = await _open(settings)
    try:
        while True:
            report = (await audit.seal(store, signer)).to_dict()
            if settings.json:
                out.emit_json({"seal": report})
            else:
                checkpoint = report["checkpoint"]
                out.say(f"sealed {report['events']} events of {report['runs']} runs"
                        + (f", checkpoint {checkpoint} ({signer.key_id})" if checkpoint else "")
                        + f" in {report['seconds']:.2f}s")
                for gap in report["gaps"]:
                    out.say(f"  not sealed past a gap: run {gap['runId']} at {gap['seq']}")
            if every is None or await _stopped(every):
                return out.EXIT_OK
    finally:
        await store.close()


async def _stopped(seconds: float) -> bool:
    """Wait ``seconds``; True when SIGTERM or SIGINT came meanwhile."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await settles_within(stop.wait(), seconds)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return stop.is_set()


async def verify(settings: Settings, keyring: str | None, tenant: str | None,
                 run: str | None) -> int:
    """Recompute the chains from the events (hot and cold) and check them and the checkpoints."""
    from dvt_statestore_pg import audit

    if not keyring:
        raise UsageError("dvt audit verify needs the public keys (--keyring or"
                         " DVT_AUDIT_KEYRING)")
    ring = load_keyring(keyring)
    store = await _open(settings)
    try:
        report = await audit.verify(store, ring, tenant_id=tenant, run_id=run)
    finally:
        await store.close()
    data = report.to_dict()
    if settings.json:
        out.emit_json({"verify": data})
    else:
        verdict = "ok" if report.ok else f"{len(report.findings)} problems"
        out.say(f"verified {data['runs']} runs, {data['events']} events,"
                f" {data['checkpoints']} checkpoints: {verdict}")
        for finding in data["findings"]:
            where = " ".join(f"{k}={finding[k]}" for k in ("checkpoint", "tenantId", "runId",
                                                          "seq") if k in finding)
            out.say(f"  {finding['what']}: {where}: {finding['detail']}")
        for stone in data["erasures"]:
            verb = "purged" if stone["kind"] == "purge" else "runs expired by retention"
            out.say(f"  tenant {stone['tenantId']}: {verb} at {stone['at']} by {stone['actor']}"
                    f" (tombstone {stone['tombstone']}, key {stone['keyId']}):"
                    " signature valid")
    return out.EXIT_OK if report.ok else out.EXIT_RUN_FAILED
