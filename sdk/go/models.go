package dvt

import (
	"encoding/json"
	"time"
)

// StepError says why a step attempt failed.
type StepError struct {
	Code      string `json:"code"`
	Message   string `json:"message"`
	Retryable bool   `json:"retryable,omitempty"`
}

// StepSnapshot is the projected state of one step.
type StepSnapshot struct {
	StepID           string          `json:"stepId"`
	Status           string          `json:"status"`
	Substatus        *string         `json:"substatus,omitempty"`
	LogicalAttemptID int             `json:"logicalAttemptId,omitempty"`
	StartedAt        *time.Time      `json:"startedAt,omitempty"`
	CompletedAt      *time.Time      `json:"completedAt,omitempty"`
	Output           json.RawMessage `json:"output,omitempty"`
	Error            *StepError      `json:"error,omitempty"`
	SkipReason       *string         `json:"skipReason,omitempty"`
}

// RunFailure is the root cause of a FAILED run.
type RunFailure struct {
	StepID  *string `json:"stepId,omitempty"`
	Code    string  `json:"code"`
	Message string  `json:"message"`
}

// Run is a run's snapshot as the service answers it (GET /v1/runs/{runId}).
type Run struct {
	RunID         string            `json:"runId"`
	TenantID      string            `json:"tenantId"`
	ProjectID     string            `json:"projectId"`
	EnvironmentID string            `json:"environmentId"`
	PlanID        string            `json:"planId"`
	PlanVersion   string            `json:"planVersion"`
	Status        RunStatus         `json:"status"`
	Substatus     *string           `json:"substatus,omitempty"`
	LastEventSeq  int               `json:"lastEventSeq"`
	StartedAt     *time.Time        `json:"startedAt,omitempty"`
	CompletedAt   *time.Time        `json:"completedAt,omitempty"`
	DurationMs    *int              `json:"durationMs,omitempty"`
	Steps         []StepSnapshot    `json:"steps"`
	Failure       *RunFailure       `json:"failure,omitempty"`
	PauseCount    int               `json:"pauseCount,omitempty"`
	Engine        *string           `json:"engine,omitempty"`
	Labels        map[string]string `json:"labels,omitempty"`
	Checksum      *string           `json:"checksum,omitempty"`
	CreatedAt     *time.Time        `json:"createdAt,omitempty"`
	UpdatedAt     *time.Time        `json:"updatedAt,omitempty"`
}

// IsTerminal reports whether the run has finished (COMPLETED, FAILED or CANCELLED).
func (r *Run) IsTerminal() bool {
	return r.Status == COMPLETED || r.Status == FAILED || r.Status == CANCELLED
}

// RunEvent is one stored event of a run's log (the envelope, with its runSeq).
type RunEvent struct {
	EventID          string                 `json:"eventId"`
	EventType        string                 `json:"eventType"`
	TenantID         string                 `json:"tenantId"`
	RunID            string                 `json:"runId"`
	StepID           *string                `json:"stepId,omitempty"`
	PlanID           string                 `json:"planId"`
	PlanVersion      string                 `json:"planVersion"`
	RunSeq           int                    `json:"runSeq"`
	EmittedAt        time.Time              `json:"emittedAt"`
	PersistedAt      *time.Time             `json:"persistedAt,omitempty"`
	OccurredAt       *time.Time             `json:"occurredAt,omitempty"`
	CausedBySignalID *string                `json:"causedBySignalId,omitempty"`
	Payload          map[string]interface{} `json:"payload,omitempty"`
}

// IsTerminal reports whether this event ends the run.
func (e *RunEvent) IsTerminal() bool {
	return e.EventType == "RunCompleted" || e.EventType == "RunFailed" || e.EventType == "RunCancelled"
}

// PlanRef says where a stored plan is: its digest, identity and plan://sha256/... address.
type PlanRef struct {
	PlanID      string `json:"planId"`
	PlanVersion string `json:"planVersion"`
	Sha256      string `json:"sha256"`
	URI         string `json:"uri"`
}

// ValidationIssue is one issue of a validation report.
type ValidationIssue struct {
	Code     string  `json:"code"`
	Message  string  `json:"message"`
	Severity *string `json:"severity,omitempty"`
}

// ValidationReport says whether a plan is valid for an engine, and why not.
type ValidationReport struct {
	OK          bool              `json:"ok"`
	Engine      *string           `json:"engine,omitempty"`
	PlanID      *string           `json:"planId,omitempty"`
	PlanVersion *string           `json:"planVersion,omitempty"`
	Issues      []ValidationIssue `json:"issues"`
}
