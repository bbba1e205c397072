// Refusals of the dvt service as typed errors carrying the stable error code.
import type { Problem } from "./models.js";

/** Base of every error this package throws. */
export class DvtClientError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The service could not be reached (after the retries the request allowed). */
export class ConnectionFailed extends DvtClientError {}

/** A problem+json answer: `code` is the stable dvt code, `status` the HTTP status. */
export class ApiError extends DvtClientError {
  readonly problem: Problem;
  readonly code: string;
  readonly status: number;
  readonly detail: string;
  readonly errors: { path: string; message: string }[];
  readonly requestId: string;
  /** Seconds the service asked to wait before trying again, when it said. */
  readonly retryAfter: number | undefined;

  constructor(problem: Problem, retryAfter?: number) {
    super(`${problem.code}: ${problem.detail}`);
    this.problem = problem;
    this.code = problem.code;
    this.status = problem.status;
    this.detail = problem.detail;
    this.errors = problem.errors ?? [];
    this.requestId = problem.instance;
    this.retryAfter = retryAfter;
  }
}

/** 401: no valid API key. */
export class Unauthenticated extends ApiError {}
/** 403: the key lacks the role the request needs. */
export class Forbidden extends ApiError {}
/** 404: no such run, plan, key or webhook for this tenant. */
export class NotFound extends ApiError {}
/** 409: the request conflicts with the run's state (RUN_TERMINAL, STEP_TERMINAL, ...). */
export class Conflict extends ApiError {}
/** 405, 413, 415, 422: the request (or its plan, labels, cursor) was refused. */
export class InvalidRequest extends ApiError {}
/** 429: too many requests; `retryAfter` says when to try again. */
export class RateLimited extends ApiError {}
/** 503: the service's store or engine is unavailable; `retryAfter` says when to retry. */
export class ServiceUnavailable extends ApiError {}
/** 500 or any other status the service does not document. */
export class ServerError extends ApiError {}

const BY_STATUS: Record<number, new (p: Problem, r?: number) => ApiError> = {
  401: Unauthenticated, 403: Forbidden, 404: NotFound, 405: InvalidRequest, 409: Conflict,
  413: InvalidRequest, 415: InvalidRequest, 422: InvalidRequest, 429: RateLimited,
  503: ServiceUnavailable,
};

function isProblem(body: unknown): body is Problem {
  if (typeof body !== "object" || body === null) return false;
  const b = body as Record<string, unknown>;
  return typeof b.code === "string" && typeof b.status === "number" &&
    typeof b.detail === "string";
}

/** The typed error for an error answer (a body that is not a problem gets a stand-in). */
export function errorFor(status: number, body: unknown, retryAfter?: number): ApiError {
  const problem: Problem = isProblem(body)
    ? body
    : {
      type: "about:blank", title: "HTTP error", status, code: `HTTP_${status}`, instance: "",
      detail: String(typeof body === "string" ? body : JSON.stringify(body)).slice(0, 500),
    };
  const Kind = BY_STATUS[status] ?? ServerError;
  return new Kind(problem, retryAfter);
}
