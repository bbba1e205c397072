package dvt

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Runs holds the calls on the runs of the key's tenant.
type Runs struct{ c *Client }

// CreateRunOptions is what a run is started with: exactly one of Plan and PlanRef.
type CreateRunOptions struct {
	Plan    map[string]any
	PlanRef string // a stored plan's sha256
	RunID   string
	Inputs  map[string]any
	Labels  map[string]string
	Engine  string
	// IdempotencyKey is sent as Idempotency-Key; a fresh one when empty.
	IdempotencyKey string
}

func runPath(runID string) string { return "/v1/runs/" + url.PathEscape(runID) }

// Create starts a run; safe to retry: the Idempotency-Key makes a repeat the first answer.
func (r *Runs) Create(ctx context.Context, o CreateRunOptions) (*Run, error) {
	if (o.Plan == nil) == (o.PlanRef == "") {
		return nil, errors.New("dvt: give exactly one of Plan and PlanRef")
	}
	body := CreateRun{}
	if o.Plan != nil {
		body.Plan = &o.Plan
	} else {
		body.PlanRef = &PlanRefIn{Sha256: o.PlanRef}
	}
	if o.RunID != "" {
		body.RunId = &o.RunID
	}
	if o.Inputs != nil {
		body.Inputs = &o.Inputs
	}
	if o.Labels != nil {
		body.Labels = &o.Labels
	}
	if o.Engine != "" {
		body.Engine = &o.Engine
	}
	data, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	key := o.IdempotencyKey
	if key == "" {
		key = newKey()
	}
	var run Run
	if err := r.c.doJSON(ctx, call{method: "POST", path: "/v1/runs", body: data, safe: true,
		headers: map[string]string{"Idempotency-Key": key}}, &run); err != nil {
		return nil, err
	}
	return &run, nil
}

// Get reads the run's snapshot.
func (r *Runs) Get(ctx context.Context, runID string) (*Run, error) {
	var run Run
	if err := r.c.doJSON(ctx, call{method: "GET", path: runPath(runID), safe: true}, &run); err != nil {
		return nil, err
	}
	return &run, nil
}

// ListOptions filters a run list; PageSize defaults to 50.
type ListOptions struct {
	Status        []RunStatus
	PlanID        string
	Labels        map[string]string
	CreatedAfter  time.Time
	CreatedBefore time.Time
	PageSize      int
}

// List yields every matching run, newest first, fetched a page at a time; an error ends it.
func (r *Runs) List(ctx context.Context, o ListOptions) iter.Seq2[Run, error] {
	return func(yield func(Run, error) bool) {
		q := url.Values{}
		for _, s := range o.Status {
			q.Add("status", string(s))
		}
		if o.PlanID != "" {
			q.Set("planId", o.PlanID)
		}
		for k, v := range o.Labels {
			q.Add("label", k+":"+v)
		}
		if !o.CreatedAfter.IsZero() {
			q.Set("createdAfter", o.CreatedAfter.Format(time.RFC3339Nano))
		}
		if !o.CreatedBefore.IsZero() {
			q.Set("createdBefore", o.CreatedBefore.Format(time.RFC3339Nano))
		}
		q.Set("limit", strconv.Itoa(cmpOr(o.PageSize, 50)))
		for {
			var page struct {
				Items      []Run   `json:"items"`
				NextCursor *string `json:"nextCursor"`
			}
			if err := r.c.doJSON(ctx, call{method: "GET", path: "/v1/runs", query: q, safe: true}, &page); err != nil {
				yield(Run{}, err)
				return
			}
			for _, run := range page.Items {
				if !yield(run, nil) {
					return
				}
			}
			if page.NextCursor == nil {
				return
			}
			q.Set("cursor", *page.NextCursor)
		}
	}
}

func cmpOr(v, fallback int) int {
	if v > 0 {
		return v
	}
	return fallback
}

// Events yields the run's stored events after runSeq after, in order, a page at a time.
func (r *Runs) Events(ctx context.Context, runID string, after, pageSize int) iter.Seq2[RunEvent, error] {
	return func(yield func(RunEvent, error) bool) {
		for {
			q := url.Values{"after": {strconv.Itoa(after)}, "limit": {strconv.Itoa(cmpOr(pageSize, 100))}}
			var page struct {
				Items     []RunEvent `json:"items"`
				NextAfter int        `json:"nextAfter"`
			}
			err := r.c.doJSON(ctx, call{method: "GET", path: runPath(runID) + "/events", query: q, safe: true}, &page)
			if err != nil {
				yield(RunEvent{}, err)
				return
			}
			for _, e := range page.Items {
				if !yield(e, nil) {
					return
				}
			}
			if len(page.Items) == 0 {
				return
			}
			after = page.NextAfter
		}
	}
}

// Stream yields the run's events after runSeq after as they happen, until its terminal
// event. A dropped connection is resumed with Last-Event-ID, so every event comes once, in
// runSeq order; an error wrapping ErrConnectionFailed ends it after Retry.MaxAttempts
// reconnections in a row that brought nothing.
func (r *Runs) Stream(ctx context.Context, runID string, after int) iter.Seq2[RunEvent, error] {
	return func(yield func(RunEvent, error) bool) {
		last, failures := after, 0
		var hint time.Duration
		hasHint := false
		policy := r.c.Retry
		for {
			headers := map[string]string{"Accept": "text/event-stream"}
			if last > 0 {
				headers["Last-Event-ID"] = strconv.Itoa(last)
			}
			var asked *time.Duration // the wait a 429 or 503 answer asked for
			done, err := func() (bool, error) {
				req, err := r.c.newRequest(ctx, "GET", runPath(runID)+"/stream", nil, nil, headers)
				if err != nil {
					return true, err
				}
				resp, err := r.c.http.Do(req)
				if err != nil {
					return false, err
				}
				defer resp.Body.Close()
				if resp.StatusCode < 200 || resp.StatusCode >= 300 {
					data, _ := readAllLimited(resp)
					apiErr := errorOf(resp, data)
					wait, again := retryWait(apiErr, policy, failures+1)
					if !again {
						return true, apiErr
					}
					asked = &wait
					return false, nil
				}
				var s sseReader
				s.scanner = bufio.NewScanner(resp.Body)
				s.scanner.Buffer(make([]byte, 64*1024), 16*1024*1024)
				for {
					msg, ok := s.next()
					if s.retrySet {
						hint, hasHint = s.retry, true
					}
					if !ok {
						break
					}
					if msg.id == "" {
						continue
					}
					var event RunEvent
					if err := json.Unmarshal([]byte(msg.data), &event); err != nil {
						return true, fmt.Errorf("dvt: stream of %s: %w", runID, err)
					}
					if event.RunSeq <= last {
						continue // never twice, whatever the server resends
					}
					last, failures = event.RunSeq, 0
					if !yield(event, nil) || event.IsTerminal() {
						return true, nil
					}
				}
				if err := s.scanner.Err(); err != nil {
					return false, err
				}
				// A clean end without the terminal event: the run had ended before after, or
				// the service closed the stream (a restart); look before resuming.
				run, err := r.Get(ctx, runID)
				if err != nil {
					return true, err
				}
				return run.IsTerminal() && run.LastEventSeq <= last, nil
			}()
			if done {
				if err != nil {
					yield(RunEvent{}, err)
				}
				return
			}
			if ctx.Err() != nil {
				yield(RunEvent{}, ctx.Err())
				return
			}
			if err != nil && failures+1 >= policy.MaxAttempts {
				yield(RunEvent{}, fmt.Errorf("%w: stream of %s: %v", ErrConnectionFailed, runID, err))
				return
			}
			failures++
			wait := policy.backoff(failures)
			if asked != nil {
				wait = *asked
			} else if hasHint && (failures == 1 || hint > wait) {
				wait = hint // the service's retry: hint first, never less than it after
			}
			if err := r.c.Sleep(ctx, wait); err != nil {
				yield(RunEvent{}, err)
				return
			}
		}
	}
}

// Wait follows the run to its end and returns its final snapshot.
func (r *Runs) Wait(ctx context.Context, runID string) (*Run, error) {
	for _, err := range r.Stream(ctx, runID, 0) {
		if err != nil {
			return nil, err
		}
	}
	return r.Get(ctx, runID)
}

// SignalOptions are a signal's optional fields; SignalID is fresh when empty.
type SignalOptions struct {
	StepID   string
	Reason   string
	SignalID string
}

// Signal sends a signal; retried safely (its signalId makes a repeat the same decision).
func (r *Runs) Signal(ctx context.Context, runID string, kind SignalBodyType, o SignalOptions) (*SignalAnswer, error) {
	id := o.SignalID
	if id == "" {
		id = newKey()
	}
	body := SignalBody{Type: kind, SignalId: &id}
	if o.StepID != "" {
		body.StepId = &o.StepID
	}
	if o.Reason != "" {
		body.Reason = &o.Reason
	}
	data, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	var answer SignalAnswer
	if err := r.c.doJSON(ctx, call{method: "POST", path: runPath(runID) + "/signals", body: data, safe: true}, &answer); err != nil {
		return nil, err
	}
	return &answer, nil
}

// Pause pauses the run: running steps finish, no new step starts.
func (r *Runs) Pause(ctx context.Context, runID, reason string) (*SignalAnswer, error) {
	return r.Signal(ctx, runID, PAUSE, SignalOptions{Reason: reason})
}

// Resume resumes a paused run.
func (r *Runs) Resume(ctx context.Context, runID string) (*SignalAnswer, error) {
	return r.Signal(ctx, runID, RESUME, SignalOptions{})
}

// Cancel cancels the run.
func (r *Runs) Cancel(ctx context.Context, runID, reason string) (*SignalAnswer, error) {
	return r.Signal(ctx, runID, CANCEL, SignalOptions{Reason: reason})
}

// RetryStep runs a failed step again.
func (r *Runs) RetryStep(ctx context.Context, runID, stepID, reason string) (*SignalAnswer, error) {
	return r.Signal(ctx, runID, RETRYSTEP, SignalOptions{StepID: stepID, Reason: reason})
}

// SkipStep skips a step.
func (r *Runs) SkipStep(ctx context.Context, runID, stepID, reason string) (*SignalAnswer, error) {
	return r.Signal(ctx, runID, SKIPSTEP, SignalOptions{StepID: stepID, Reason: reason})
}

// Approve approves an approval step, or (with an empty stepID) a run awaiting approval.
func (r *Runs) Approve(ctx context.Context, runID, stepID, comment string) (*SignalAnswer, error) {
	if stepID == "" {
		return r.Signal(ctx, runID, APPROVERUN, SignalOptions{Reason: comment})
	}
	return r.Signal(ctx, runID, APPROVESTEP, SignalOptions{StepID: stepID, Reason: comment})
}

// Reject rejects an approval step.
func (r *Runs) Reject(ctx context.Context, runID, stepID, comment string) (*SignalAnswer, error) {
	return r.Signal(ctx, runID, REJECTSTEP, SignalOptions{StepID: stepID, Reason: comment})
}

// sseMessage is one server-sent event.
type sseMessage struct{ id, event, data string }

// sseReader turns text/event-stream lines into messages (comments dropped, retry: kept).
type sseReader struct {
	scanner  *bufio.Scanner
	retry    time.Duration
	retrySet bool
}

func (s *sseReader) next() (sseMessage, bool) {
	var msg sseMessage
	var data []string
	for s.scanner.Scan() {
		line := s.scanner.Text()
		if line == "" {
			if data != nil {
				msg.data = strings.Join(data, "\n")
				return msg, true
			}
			msg = sseMessage{}
			continue
		}
		if strings.HasPrefix(line, ":") {
			continue
		}
		name, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch name {
		case "id":
			msg.id = value
		case "event":
			msg.event = value
		case "data":
			data = append(data, value)
		case "retry":
			if ms, err := strconv.Atoi(value); err == nil {
				s.retry, s.retrySet = time.Duration(ms)*time.Millisecond, true
			}
		}
	}
	return msg, false
}
