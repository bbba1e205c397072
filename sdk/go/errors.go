package dvt

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// ErrConnectionFailed is wrapped by every error for a service that could not be reached
// (after the retries the request allowed).
var ErrConnectionFailed = errors.New("dvt: connection failed")

// Error kinds, one per status family; errors.Is(err, dvt.ErrNotFound) tells them apart.
var (
	ErrUnauthenticated    = errors.New("dvt: unauthenticated")     // 401
	ErrForbidden          = errors.New("dvt: forbidden")           // 403
	ErrNotFound           = errors.New("dvt: not found")           // 404
	ErrConflict           = errors.New("dvt: conflict")            // 409
	ErrInvalidRequest     = errors.New("dvt: invalid request")     // 405, 413, 415, 422
	ErrRateLimited        = errors.New("dvt: rate limited")        // 429
	ErrServiceUnavailable = errors.New("dvt: service unavailable") // 503
	ErrServer             = errors.New("dvt: server error")        // any other
)

var kindByStatus = map[int]error{
	401: ErrUnauthenticated, 403: ErrForbidden, 404: ErrNotFound, 405: ErrInvalidRequest,
	409: ErrConflict, 413: ErrInvalidRequest, 415: ErrInvalidRequest, 422: ErrInvalidRequest,
	429: ErrRateLimited, 503: ErrServiceUnavailable,
}

// APIError is a problem+json answer: Code is the stable dvt code, Status the HTTP status.
type APIError struct {
	Problem Problem
	Code    string
	Status  int
	Detail  string
	// RequestID is the problem's instance.
	RequestID string
	// RetryAfter is the wait the service asked for when HasRetryAfter.
	RetryAfter    time.Duration
	HasRetryAfter bool
	kind          error
}

func (e *APIError) Error() string { return fmt.Sprintf("%s: %s", e.Code, e.Detail) }

// Unwrap gives the error's kind (ErrNotFound, ErrConflict, ...), for errors.Is.
func (e *APIError) Unwrap() error { return e.kind }

// Errors lists the broken rules of a refused request.
func (e *APIError) Errors() []ProblemItem {
	if e.Problem.Errors == nil {
		return nil
	}
	out := make([]ProblemItem, 0, len(*e.Problem.Errors))
	for _, item := range *e.Problem.Errors {
		out = append(out, ProblemItem{Path: item.Path, Message: item.Message})
	}
	return out
}

// ProblemItem is one broken rule of a refused request.
type ProblemItem struct {
	Path    string
	Message string
}

// errorFor builds the typed error of an error answer (a body that is not a problem gets a
// stand-in).
func errorFor(status int, body []byte, retryAfter time.Duration, hasRetryAfter bool) *APIError {
	var problem Problem
	if err := json.Unmarshal(body, &problem); err != nil || problem.Code == "" {
		detail := string(body)
		if len(detail) > 500 {
			detail = detail[:500]
		}
		problem = Problem{Type: "about:blank", Title: "HTTP error", Status: status,
			Detail: detail, Code: fmt.Sprintf("HTTP_%d", status)}
	}
	kind, ok := kindByStatus[status]
	if !ok {
		kind = ErrServer
	}
	return &APIError{Problem: problem, Code: problem.Code, Status: status, Detail: problem.Detail,
		RequestID: problem.Instance, RetryAfter: retryAfter, HasRetryAfter: hasRetryAfter, kind: kind}
}
