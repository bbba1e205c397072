// Unit tests with a fake fetch: Retry-After decisions that a real server gives only slowly.
import assert from "node:assert/strict";
import { test } from "node:test";
import { DvtClient, RateLimited, ServiceUnavailable } from "../src/index.js";

function problem(status: number, code: string, retryAfter?: string): Response {
  return new Response(JSON.stringify({ type: "about:blank", title: code, status, code,
    detail: code, instance: "req-1" }), {
    status,
    headers: { "Content-Type": "application/problem+json",
      ...(retryAfter ? { "Retry-After": retryAfter } : {}) },
  });
}

function fakeFetch(answers: Response[], seen: Request[]): typeof fetch {
  return async (input, init) => {
    seen.push(new Request(input as string, init));
    const next = answers.shift();
    assert.ok(next, "more requests than answers");
    return next;
  };
}

test("fake service: 503 and 429 are retried after their Retry-After", async () => {
  const seen: Request[] = [];
  const waits: number[] = [];
  const dvt = new DvtClient("http://fake.invalid", "k", {
    sleep: async (s) => { waits.push(s); },
    fetch: fakeFetch([problem(503, "STORE_UNAVAILABLE", "7"), problem(429, "RATE_LIMITED", "3"),
      new Response(JSON.stringify({ signalId: "s", decision: "accepted", duplicate: false }))],
    seen),
  });
  const answer = await dvt.runs.pause("r1");
  assert.equal(answer.decision, "accepted");
  assert.deepEqual(waits, [7, 3]);
  const ids = await Promise.all(seen.map(async (r) => ((await r.json()) as { signalId: string }).signalId));
  assert.equal(new Set(ids).size, 1, "every retry carries the same signalId");
});

test("fake service: a Retry-After over the limit is thrown at once, typed", async () => {
  const waits: number[] = [];
  const dvt = new DvtClient("http://fake.invalid", "k", {
    retry: { maxRetryAfterS: 10 }, sleep: async (s) => { waits.push(s); },
    fetch: fakeFetch([problem(503, "STORE_UNAVAILABLE", "60")], []),
  });
  await assert.rejects(dvt.runs.get("r1"), (err: unknown) =>
    err instanceof ServiceUnavailable && err.retryAfter === 60 && err.code === "STORE_UNAVAILABLE");
  assert.deepEqual(waits, []);
});

test("fake service: retries of a create carry one Idempotency-Key", async () => {
  const seen: Request[] = [];
  const dvt = new DvtClient("http://fake.invalid", "k", {
    sleep: async () => {},
    fetch: fakeFetch([problem(429, "RATE_LIMITED", "1"), problem(409, "IDEMPOTENCY_KEY_IN_USE"),
      new Response(JSON.stringify({ runId: "r1", status: "PENDING" }), { status: 201 })], seen),
  });
  assert.equal((await dvt.runs.create({ plan: { steps: [] } })).runId, "r1");
  const keys = new Set(seen.map((r) => r.headers.get("Idempotency-Key")));
  assert.equal(seen.length, 3);
  assert.equal(keys.size, 1);
  assert.ok([...keys][0]);
});

test("fake service: retries stop after maxAttempts with the typed error", async () => {
  const dvt = new DvtClient("http://fake.invalid", "k", {
    retry: { maxAttempts: 2 }, sleep: async () => {},
    fetch: fakeFetch([problem(429, "RATE_LIMITED", "1"), problem(429, "RATE_LIMITED", "1")], []),
  });
  await assert.rejects(dvt.runs.get("r1"), RateLimited);
});
