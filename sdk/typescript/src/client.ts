// The client of the dvt HTTP service: safe retries, pagination, the resumable run stream.
import { randomUUID } from "node:crypto";
import { createParser } from "eventsource-parser";
import { ApiError, ConnectionFailed, errorFor } from "./errors.js";
import {
  TERMINAL_EVENTS, TERMINAL_STATUSES, type PlanRef, type Run, type RunEvent, type RunStatus,
  type SignalAnswer, type SignalType, type ValidationReport,
} from "./models.js";
import type { components } from "./openapi.js";

/** How often and how long a safe request is retried (the Python client's defaults). */
export interface RetryPolicy {
  /** Every send counts; 1 turns retries off. */
  maxAttempts: number;
  /** First backoff in seconds when the answer carries no Retry-After; doubled per attempt. */
  backoffS: number;
  maxBackoffS: number;
  /** A longer Retry-After is not waited out: the typed error is thrown at once. */
  maxRetryAfterS: number;
}

export const DEFAULT_RETRY: RetryPolicy = {
  maxAttempts: 5, backoffS: 0.5, maxBackoffS: 8, maxRetryAfterS: 120,
};
const NO_RETRY: RetryPolicy = { ...DEFAULT_RETRY, maxAttempts: 1 };

export interface ClientOptions {
  retry?: Partial<RetryPolicy>;
  /** Per-request timeout in seconds (not applied to the stream, which stays open). */
  timeoutS?: number;
  /** How the client waits between attempts; a test may record the waits instead. */
  sleep?: (seconds: number) => Promise<void>;
  fetch?: typeof fetch;
}

export interface CreateRunOptions {
  plan?: Record<string, unknown> | string;
  planRef?: PlanRef | string;
  runId?: string;
  inputs?: Record<string, unknown>;
  labels?: Record<string, string>;
  engine?: string;
  idempotencyKey?: string;
}

export interface ListRunsOptions {
  status?: RunStatus | RunStatus[];
  planId?: string;
  labels?: Record<string, string>;
  createdAfter?: Date | string;
  createdBefore?: Date | string;
  pageSize?: number;
}

export interface SignalOptions { stepId?: string; reason?: string; signalId?: string }

type Query = Record<string, string | number | Date | (string | number)[] | undefined>;

const IN_FLIGHT_CODE = "IDEMPOTENCY_KEY_IN_USE";

/** `Retry-After` in seconds (delta-seconds or an HTTP date); undefined when absent or bad. */
export function retryAfterSeconds(headers: Headers): number | undefined {
  const value = headers.get("Retry-After")?.trim();
  if (value === undefined || value === "") return undefined;
  if (/^\d+$/.test(value)) return Number(value);
  const when = Date.parse(value);
  return Number.isNaN(when) ? undefined : Math.max(0, (when - Date.now()) / 1000);
}

function backoff(policy: RetryPolicy, attempt: number): number {
  return Math.random() * Math.min(policy.maxBackoffS, policy.backoffS * 2 ** (attempt - 1));
}

function defaultSleep(seconds: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, seconds * 1000));
}

/** A client of one service with one API key; `runs` and `plans` hold the calls. */
export class DvtClient {
  readonly retry: RetryPolicy;
  readonly runs: Runs;
  readonly plans: Plans;
  private readonly base: string;
  private readonly headers: Record<string, string>;
  private readonly timeoutS: number;
  private readonly fetchImpl: typeof fetch;
  /** @internal */
  readonly sleep: (seconds: number) => Promise<void>;

  constructor(baseUrl: string, apiKey?: string, options: ClientOptions = {}) {
    this.base = baseUrl.replace(/\/+$/, "");
    this.headers = apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
    this.retry = { ...DEFAULT_RETRY, ...options.retry };
    this.timeoutS = options.timeoutS ?? 30;
    this.sleep = options.sleep ?? defaultSleep;
    this.fetchImpl = options.fetch ?? fetch;
    this.runs = new Runs(this);
    this.plans = new Plans(this);
  }

  /** The URL of `path` with `query` (unset values left out, lists repeated). */
  url(path: string, query: Query = {}): string {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(query)) {
      if (value === undefined) continue;
      for (const item of Array.isArray(value) ? value : [value]) {
        params.append(name, item instanceof Date ? item.toISOString() : String(item));
      }
    }
    const qs = params.toString();
    return `${this.base}${path}${qs ? `?${qs}` : ""}`;
  }

  /** Send once, without retries; the raw answer. `timeout` false leaves a stream open. */
  async send(method: string, url: string, init: { body?: string; headers?: Record<string, string>;
    signal?: AbortSignal; timeout?: boolean } = {}): Promise<Response> {
    const signals = [init.signal, init.timeout === false ? undefined
      : AbortSignal.timeout(this.timeoutS * 1000)].filter((s): s is AbortSignal => !!s);
    return this.fetchImpl(url, {
      method,
      body: init.body,
      headers: { ...this.headers, ...(init.body ? { "Content-Type": "application/json" } : {}),
        ...init.headers },
      signal: signals.length ? AbortSignal.any(signals) : undefined,
    });
  }

  /** Send a request (again, when `safe`, after a retryable failure); a 2xx answer. */
  async request(method: string, path: string, opts: { safe: boolean; query?: Query;
    body?: unknown; headers?: Record<string, string> }): Promise<Response> {
    const policy = opts.safe ? this.retry : NO_RETRY;
    const body = opts.body === undefined ? undefined
      : typeof opts.body === "string" ? opts.body : JSON.stringify(opts.body);
    const url = this.url(path, opts.query);
    for (let attempt = 1; ; attempt++) {
      let response: Response;
      try {
        response = await this.send(method, url, { body, headers: opts.headers });
      } catch (err) {
        if (attempt >= policy.maxAttempts) {
          throw new ConnectionFailed(`${method} ${path}: ${describe(err)}`, { cause: err });
        }
        await this.sleep(backoff(policy, attempt));
        continue;
      }
      if (response.ok) return response;
      const error = await errorOf(response);
      const wait = retryWait(error, policy, attempt);
      if (wait === undefined) throw error;
      await this.sleep(wait);
    }
  }

  /** The answer's JSON body, typed by the caller. */
  async json<T>(method: string, path: string, opts: { safe: boolean; query?: Query;
    body?: unknown; headers?: Record<string, string> }): Promise<T> {
    return (await (await this.request(method, path, opts)).json()) as T;
  }
}

function describe(err: unknown): string {
  if (err instanceof Error) {
    const cause = (err as { cause?: unknown }).cause;
    return cause instanceof Error ? `${err.message} (${cause.message})` : err.message;
  }
  return String(err);
}

/** The typed error of an error answer (its body consumed). */
export async function errorOf(response: Response): Promise<ApiError> {
  const text = await response.text();
  let body: unknown = text;
  try { body = JSON.parse(text); } catch { /* not JSON: the text stands in */ }
  return errorFor(response.status, body, retryAfterSeconds(response.headers));
}

/** How long to wait before sending again, or undefined when this answer is final. */
export function retryWait(error: ApiError, policy: RetryPolicy, attempt: number): number | undefined {
  const retryable = error.status === 429 || error.status === 503 ||
    (error.status === 409 && error.code === IN_FLIGHT_CODE);
  if (!retryable || attempt >= policy.maxAttempts) return undefined;
  if (error.retryAfter === undefined) return backoff(policy, attempt);
  return error.retryAfter <= policy.maxRetryAfterS ? error.retryAfter : undefined;
}

function runPath(runId: string): string {
  return `/v1/runs/${encodeURIComponent(runId)}`;
}

/** Stored plans of the key's tenant. */
export class Plans {
  constructor(private readonly c: DvtClient) {}

  /** Validate and store a plan (content-addressed, so storing twice is harmless). */
  async store(plan: Record<string, unknown> | string): Promise<PlanRef> {
    const answer = await this.c.json<{ planRef: PlanRef }>("POST", "/v1/plans",
      { safe: true, body: plan });
    return answer.planRef;
  }

  /** The validation report for `engine` (default: the served one); stores nothing. */
  async validate(plan: Record<string, unknown> | string, engine?: string): Promise<ValidationReport> {
    return this.c.json("POST", "/v1/plans/validate", { safe: true, body: plan, query: { engine } });
  }

  /** The stored plan's exact bytes. */
  async get(sha256: string): Promise<Uint8Array> {
    const answer = await this.c.request("GET", `/v1/plans/${sha256}`, { safe: true });
    return new Uint8Array(await answer.arrayBuffer());
  }
}

/** Runs of the key's tenant: create, read, list, follow and steer them. */
export class Runs {
  constructor(private readonly c: DvtClient) {}

  /** Start a run of a plan document or a stored plan; safe to retry (Idempotency-Key). */
  async create(options: CreateRunOptions): Promise<Run> {
    const { plan, planRef } = options;
    if ((plan === undefined) === (planRef === undefined)) {
      throw new TypeError("give exactly one of plan and planRef");
    }
    const body: components["schemas"]["CreateRun"] = {};
    if (plan !== undefined) body.plan = typeof plan === "string" ? JSON.parse(plan) : plan;
    if (planRef !== undefined) {
      body.planRef = { sha256: typeof planRef === "string" ? planRef : planRef.sha256 };
    }
    if (options.runId !== undefined) body.runId = options.runId;
    if (options.inputs !== undefined) body.inputs = options.inputs;
    if (options.labels !== undefined) body.labels = options.labels;
    if (options.engine !== undefined) body.engine = options.engine;
    const key = options.idempotencyKey ?? randomUUID();
    return this.c.json("POST", "/v1/runs",
      { safe: true, body, headers: { "Idempotency-Key": key } });
  }

  /** The run's snapshot. */
  async get(runId: string): Promise<Run> {
    return this.c.json("GET", runPath(runId), { safe: true });
  }

  /** Every matching run, newest first, fetched a page at a time. */
  async *list(options: ListRunsOptions = {}): AsyncGenerator<Run, void, undefined> {
    let cursor: string | undefined;
    const label = options.labels
      ? Object.entries(options.labels).map(([k, v]) => `${k}:${v}`) : undefined;
    for (;;) {
      const page = await this.c.json<{ items: Run[]; nextCursor: string | null }>(
        "GET", "/v1/runs", { safe: true, query: {
          status: options.status, planId: options.planId, label,
          createdAfter: options.createdAfter, createdBefore: options.createdBefore,
          limit: options.pageSize ?? 50, cursor,
        } });
      yield* page.items;
      if (page.nextCursor === null || page.nextCursor === undefined) return;
      cursor = page.nextCursor;
    }
  }

  /** The run's stored events after runSeq `after`, in order, a page at a time. */
  async *events(runId: string, options: { after?: number; pageSize?: number } = {}
  ): AsyncGenerator<RunEvent, void, undefined> {
    let after = options.after ?? 0;
    for (;;) {
      const page = await this.c.json<{ items: RunEvent[]; nextAfter: number }>(
        "GET", `${runPath(runId)}/events`,
        { safe: true, query: { after, limit: options.pageSize ?? 100 } });
      yield* page.items;
      if (page.items.length === 0) return;
      after = page.nextAfter;
    }
  }

  /**
   * The run's events after `after` as they happen, until its terminal event.
   *
   * A dropped connection is resumed with `Last-Event-ID`, so every event comes once, in
   * runSeq order. Throws ConnectionFailed after `retry.maxAttempts` reconnections in a row
   * that brought nothing.
   */
  async *stream(runId: string, options: { after?: number; signal?: AbortSignal } = {}
  ): AsyncGenerator<RunEvent, void, undefined> {
    let last = options.after ?? 0;
    let failures = 0;
    let hintMs: number | undefined;
    const url = this.c.url(`${runPath(runId)}/stream`);
    for (;;) {
      const headers: Record<string, string> = { Accept: "text/event-stream" };
      if (last) headers["Last-Event-ID"] = String(last);
      try {
        const response = await this.c.send("GET", url,
          { headers, signal: options.signal, timeout: false });
        if (!response.ok) {
          const error = await errorOf(response);
          const wait = retryWait(error, this.c.retry, failures + 1);
          if (wait === undefined) throw error;
          failures += 1;
          await this.c.sleep(wait);
          continue;
        }
        const pending: RunEvent[] = [];
        const parser = createParser({
          onEvent: (message) => {
            if (message.id === undefined) return;
            pending.push(JSON.parse(message.data) as RunEvent);
          },
          onRetry: (ms) => { hintMs = ms; },
        });
        const decoder = new TextDecoder();
        for await (const chunk of response.body ?? []) {
          parser.feed(decoder.decode(chunk as Uint8Array, { stream: true }));
          while (pending.length) {
            const event = pending.shift() as RunEvent;
            if (event.runSeq <= last) continue; // never twice, whatever the server resends
            last = event.runSeq;
            failures = 0;
            yield event;
            if (TERMINAL_EVENTS.has(event.eventType)) return;
          }
        }
        // A clean end without the terminal event: the run had ended before `after`, or the
        // service closed the stream (a restart); look before resuming.
        const run = await this.get(runId);
        if (TERMINAL_STATUSES.has(run.status) && run.lastEventSeq <= last) return;
      } catch (err) {
        if (err instanceof ApiError || options.signal?.aborted) throw err;
        if (failures + 1 >= this.c.retry.maxAttempts) {
          throw new ConnectionFailed(`stream of ${runId}: ${describe(err)}`, { cause: err });
        }
      }
      failures += 1;
      const hint = (hintMs ?? 0) / 1000;
      await this.c.sleep(failures === 1 && hintMs !== undefined ? hint
        : Math.max(backoff(this.c.retry, failures), hint));
    }
  }

  /** Follow the run to its end; its final snapshot. */
  async wait(runId: string): Promise<Run> {
    for await (const _ of this.stream(runId)) { /* drained to the terminal event */ }
    return this.get(runId);
  }

  /** Send a signal; retried safely (its signalId makes a repeat the same decision). */
  async signal(runId: string, type: SignalType, options: SignalOptions = {}): Promise<SignalAnswer> {
    const body: components["schemas"]["SignalBody"] = {
      type, signalId: options.signalId ?? randomUUID(),
    };
    if (options.stepId !== undefined) body.stepId = options.stepId;
    if (options.reason !== undefined) body.reason = options.reason;
    return this.c.json("POST", `${runPath(runId)}/signals`, { safe: true, body });
  }

  /** Pause the run: running steps finish, no new step starts. */
  pause(runId: string, options: { reason?: string } = {}): Promise<SignalAnswer> {
    return this.signal(runId, "PAUSE", options);
  }

  /** Resume a paused run. */
  resume(runId: string): Promise<SignalAnswer> {
    return this.signal(runId, "RESUME");
  }

  /** Cancel the run. */
  cancel(runId: string, options: { reason?: string } = {}): Promise<SignalAnswer> {
    return this.signal(runId, "CANCEL", options);
  }

  /** Run a failed step again. */
  retryStep(runId: string, stepId: string, options: { reason?: string } = {}): Promise<SignalAnswer> {
    return this.signal(runId, "RETRY_STEP", { ...options, stepId });
  }

  /** Skip a step. */
  skipStep(runId: string, stepId: string, options: { reason?: string } = {}): Promise<SignalAnswer> {
    return this.signal(runId, "SKIP_STEP", { ...options, stepId });
  }

  /** Approve an approval step, or (without `stepId`) a run awaiting approval. */
  approve(runId: string, stepId?: string, options: { comment?: string } = {}): Promise<SignalAnswer> {
    return stepId === undefined
      ? this.signal(runId, "APPROVE_RUN", { reason: options.comment })
      : this.signal(runId, "APPROVE_STEP", { stepId, reason: options.comment });
  }

  /** Reject an approval step. */
  reject(runId: string, stepId: string, options: { comment?: string } = {}): Promise<SignalAnswer> {
    return this.signal(runId, "REJECT_STEP", { stepId, reason: options.comment });
  }
}
