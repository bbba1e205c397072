// Bodies of the API. The components of docs/openapi.json come from the generated
// openapi.ts; runs and events are open objects there (the service answers them from the
// core's snapshot and envelope), so they are typed here after the contract.
import type { components } from "./openapi.js";

type Schemas = components["schemas"];
export type Problem = Schemas["Problem"];
export type SignalAnswer = Schemas["SignalAnswer"];
export type SignalType = Schemas["SignalBody"]["type"];
export type RunStatus = Schemas["RunStatus"];
export type ApiRole = Schemas["ApiRole"];
export type KeyCreated = Schemas["KeyCreated"];
export type KeyInfo = Schemas["KeyInfo"];
export type CreateRun = Schemas["CreateRun"];

/** Why a step attempt failed. */
export interface StepError { code: string; message: string; retryable?: boolean }

/** The projected state of one step. */
export interface StepSnapshot {
  stepId: string;
  status: string;
  substatus?: string | null;
  logicalAttemptId?: number;
  startedAt?: string | null;
  completedAt?: string | null;
  output?: unknown;
  error?: StepError | null;
  skipReason?: string | null;
  [field: string]: unknown;
}

/** A run's snapshot as the service answers it (`GET /v1/runs/{runId}`). */
export interface Run {
  runId: string;
  tenantId: string;
  projectId: string;
  environmentId: string;
  planId: string;
  planVersion: string;
  status: RunStatus;
  substatus?: string | null;
  lastEventSeq: number;
  startedAt?: string | null;
  completedAt?: string | null;
  durationMs?: number | null;
  steps: StepSnapshot[];
  failure?: { stepId?: string | null; code: string; message: string } | null;
  pauseCount?: number;
  engine?: string | null;
  labels?: Record<string, string>;
  checksum?: string | null;
  createdAt?: string | null;
  updatedAt?: string | null;
  [field: string]: unknown;
}

/** One stored event of a run's log (the envelope, with its runSeq). */
export interface RunEvent {
  eventId: string;
  eventType: string;
  tenantId: string;
  runId: string;
  stepId?: string | null;
  planId: string;
  planVersion: string;
  runSeq: number;
  emittedAt: string;
  persistedAt?: string | null;
  occurredAt?: string | null;
  causedBySignalId?: string | null;
  payload: Record<string, unknown>;
  [field: string]: unknown;
}

/** Where a stored plan is: its digest, identity and `plan://sha256/...` address. */
export interface PlanRef { planId: string; planVersion: string; sha256: string; uri: string }

/** Whether a plan is valid for an engine, and why not. */
export interface ValidationReport {
  ok: boolean;
  engine?: string | null;
  planId?: string | null;
  planVersion?: string | null;
  issues: { code: string; message: string; severity?: string | null }[];
  [field: string]: unknown;
}

export const TERMINAL_STATUSES: ReadonlySet<string> = new Set(["COMPLETED", "FAILED", "CANCELLED"]);
export const TERMINAL_EVENTS: ReadonlySet<string> = new Set(["RunCompleted", "RunFailed", "RunCancelled"]);
