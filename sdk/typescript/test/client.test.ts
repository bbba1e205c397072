// The client against a real `dvt serve` (URL and key from the environment).
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  ApiError, Conflict, ConnectionFailed, DvtClient, InvalidRequest, NotFound, RateLimited,
  Unauthenticated,
  type RunEvent,
} from "../src/index.js";
import { chainPlan, CuttingProxy, gatedPlan, service } from "./helpers.js";

const { url, key } = service();

async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}

async function until(events: AsyncIterator<RunEvent>, type: string): Promise<RunEvent> {
  for (;;) {
    const next = await events.next();
    assert.ok(!next.done, `the stream ended before ${type}`);
    if (next.value.eventType === type) return next.value;
  }
}

test("create, follow to the end, and read the stored log", async () => {
  const dvt = new DvtClient(url, key);
  const run = await dvt.runs.create({ plan: chainPlan(3), labels: { team: "ts" } });
  assert.equal(run.labels?.team, "ts");
  const streamed = await collect(dvt.runs.stream(run.runId));
  assert.deepEqual(streamed.map((e) => e.runSeq), streamed.map((_, i) => i + 1));
  assert.equal(streamed.at(-1)?.eventType, "RunCompleted");
  const stored = await collect(dvt.runs.events(run.runId, { pageSize: 2 }));
  assert.deepEqual(stored.map((e) => e.eventId), streamed.map((e) => e.eventId));
  const done = await dvt.runs.get(run.runId);
  assert.equal(done.status, "COMPLETED");
  assert.equal(done.lastEventSeq, streamed.length);
});

test("the same Idempotency-Key twice starts one run", async () => {
  const dvt = new DvtClient(url, key);
  const idempotencyKey = crypto.randomUUID();
  const first = await dvt.runs.create({ plan: chainPlan(1), idempotencyKey });
  const again = await dvt.runs.create({ plan: chainPlan(1), idempotencyKey });
  assert.equal(again.runId, first.runId);
  const other = await dvt.runs.create({ plan: chainPlan(1) });
  assert.notEqual(other.runId, first.runId);
});

test("the stream resumes with Last-Event-ID after cut connections, each event once", async () => {
  const proxy = new CuttingProxy(new URL(url), 2, 1200);
  const proxied = await proxy.start();
  try {
    const waits: number[] = [];
    const dvt = new DvtClient(proxied, key, { sleep: async (s) => { waits.push(s); } });
    const run = await dvt.runs.create({ plan: chainPlan(4) });
    const streamed = await collect(dvt.runs.stream(run.runId));
    const stored = await collect(dvt.runs.events(run.runId));
    assert.deepEqual(streamed.map((e) => e.eventId), stored.map((e) => e.eventId));
    const resumed = proxy.heads.filter((h) => h.includes("/stream") && /last-event-id: \d+/i.test(h));
    assert.equal(resumed.length, 2, proxy.heads.join("\n---\n"));
    assert.ok(waits.length >= 2);
  } finally {
    await proxy.stop();
  }
});

test("pause, resume, approve, and refusals are typed errors with stable codes", async () => {
  const dvt = new DvtClient(url, key);
  const run = await dvt.runs.create({ plan: gatedPlan() });
  const events = dvt.runs.stream(run.runId);
  await until(events, "StepAwaitingApproval");
  assert.equal((await dvt.runs.pause(run.runId, { reason: "window" })).decision, "accepted");
  await until(events, "RunPaused");
  assert.equal((await dvt.runs.get(run.runId)).status, "PAUSED");
  assert.equal((await dvt.runs.resume(run.runId)).decision, "accepted");
  await until(events, "RunResumed");
  await assert.rejects(dvt.runs.approve(run.runId, "no-such-step"), (err: unknown) =>
    err instanceof InvalidRequest && err.code === "STEP_NOT_FOUND" && err.status === 422);
  const answer = await dvt.runs.approve(run.runId, "signoff");
  assert.equal(answer.decision, "accepted");
  assert.equal(typeof answer.runSeq, "number");
  await until(events, "RunCompleted");
  assert.equal((await dvt.runs.wait(run.runId)).status, "COMPLETED");
  await assert.rejects(dvt.runs.cancel(run.runId), (err: unknown) =>
    err instanceof Conflict && err.code === "RUN_TERMINAL");
  await assert.rejects(dvt.runs.get("no-such-run"), (err: unknown) =>
    err instanceof NotFound && err.code === "RUN_NOT_FOUND" && err.requestId !== "");
  const stranger = new DvtClient(url, "dvt_sk_wrong");
  await assert.rejects(stranger.runs.get(run.runId), (err: unknown) =>
    err instanceof Unauthenticated && err.code === "UNAUTHENTICATED" && err.status === 401);
});

test("retry and skip a step reach the core's decision", async () => {
  const dvt = new DvtClient(url, key);
  const run = await dvt.runs.create({ plan: gatedPlan() });
  const events = dvt.runs.stream(run.runId);
  await until(events, "StepAwaitingApproval");
  await assert.rejects(dvt.runs.retryStep(run.runId, "build", { reason: "again" }),
    (err: unknown) => err instanceof ApiError && err.code === "STEP_NOT_RETRYABLE");
  assert.equal((await dvt.runs.skipStep(run.runId, "publish")).decision, "accepted");
  await dvt.runs.approve(run.runId, "signoff");
  assert.equal((await dvt.runs.wait(run.runId)).status, "COMPLETED");
  const log = (await collect(dvt.runs.events(run.runId))).map((e) => e.eventType);
  assert.ok(log.includes("StepSkipped"), log.join(","));
});

test("run lists are iterated page by page, newest first", async () => {
  const dvt = new DvtClient(url, key);
  const batch = crypto.randomUUID().slice(0, 8);
  const made: string[] = [];
  for (let i = 0; i < 5; i++) {
    made.push((await dvt.runs.create({ plan: chainPlan(1), labels: { batch } })).runId);
  }
  const listed = await collect(dvt.runs.list({ labels: { batch }, pageSize: 2 }));
  assert.deepEqual(listed.map((r) => r.runId), made.reverse());
  assert.deepEqual(await collect(dvt.runs.list({ labels: { batch: "none" } })), []);
});

test("plans are stored, validated and run by reference", async () => {
  const dvt = new DvtClient(url, key);
  const plan = chainPlan(2, "by-ref");
  const report = await dvt.plans.validate(plan);
  assert.ok(report.ok);
  assert.equal(report.planId, "by-ref");
  const broken = await dvt.plans.validate({ planId: "x" });
  assert.ok(!broken.ok && broken.issues.length > 0);
  const ref = await dvt.plans.store(plan);
  assert.deepEqual(await dvt.plans.store(plan), ref);
  const run = await dvt.runs.create({ planRef: ref });
  assert.equal((await dvt.runs.wait(run.runId)).status, "COMPLETED");
  assert.ok(new TextDecoder().decode(await dvt.plans.get(ref.sha256)).includes('"by-ref"'));
});

test("an unreachable service is retried with backoff, then ConnectionFailed", async () => {
  const waits: number[] = [];
  // Port 9 on loopback (discard) has no listener here: every connection is refused.
  const dvt = new DvtClient("http://127.0.0.1:9", key,
    { retry: { maxAttempts: 3 }, sleep: async (s) => { waits.push(s); } });
  await assert.rejects(dvt.runs.get("any"), ConnectionFailed);
  assert.equal(waits.length, 2);
  assert.ok(waits.every((w) => w >= 0 && w <= 8));
});

test("a real 429 is waited out as Retry-After says, then thrown typed", async () => {
  // The service's engine refuses signals to one run over DVT_SIGNALS_PER_MINUTE (set by pytest).
  const limit = Number(process.env.DVT_SIGNALS_PER_MINUTE);
  assert.ok(limit > 0 && limit % 2 === 0, "DVT_SIGNALS_PER_MINUTE must be an even limit");
  const waits: number[] = [];
  const dvt = new DvtClient(url, key,
    { retry: { maxAttempts: 3 }, sleep: async (s) => { waits.push(s); } });
  const run = await dvt.runs.create({ plan: gatedPlan() });
  const events = dvt.runs.stream(run.runId);
  await until(events, "StepAwaitingApproval");
  for (let i = 0; i < limit / 2; i++) {
    await dvt.runs.pause(run.runId);
    await until(events, "RunPaused");
    await dvt.runs.resume(run.runId);
    await until(events, "RunResumed");
  }
  assert.deepEqual(waits, []);
  await assert.rejects(dvt.runs.approve(run.runId, "signoff"), (err: unknown) =>
    err instanceof RateLimited && err.code === "SIGNAL_RATE_LIMITED" && err.retryAfter === 60);
  assert.deepEqual(waits, [60, 60]); // three sends, each refusal's Retry-After waited
  const after = await dvt.runs.get(run.runId);
  assert.ok(!["COMPLETED", "FAILED", "CANCELLED"].includes(after.status));
  await events.return(undefined);
});
