package dvt_test

// The client against a real `dvt serve` (DVT_API_URL and DVT_API_KEY, set by
// tests/sdk/test_go_sdk.py), and Retry-After decisions against a fake service.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dvt "github.com/dvt-dev/dvt/sdk/go"
)

func service(t *testing.T) (string, string) {
	t.Helper()
	u, key := os.Getenv("DVT_API_URL"), os.Getenv("DVT_API_KEY")
	if u == "" || key == "" {
		t.Fatal("DVT_API_URL and DVT_API_KEY must name a running dvt serve")
	}
	return u, key
}

func chainPlan(n int, planID string) map[string]any {
	steps := []any{}
	for i := range n {
		step := map[string]any{"stepId": fmt.Sprintf("s%d", i), "kind": "noop"}
		if i > 0 {
			step["dependsOn"] = []string{fmt.Sprintf("s%d", i-1)}
		}
		steps = append(steps, step)
	}
	return map[string]any{"metadata": map[string]any{"planId": planID, "planVersion": "1",
		"schemaVersion": "v1.2"}, "steps": steps}
}

func gatedPlan() map[string]any {
	return map[string]any{
		"metadata": map[string]any{"planId": "gated", "planVersion": "1", "schemaVersion": "v1.2"},
		"steps": []any{
			map[string]any{"stepId": "build", "kind": "noop"},
			map[string]any{"stepId": "signoff", "kind": "approval", "dependsOn": []string{"build"}},
			map[string]any{"stepId": "publish", "kind": "echo", "dependsOn": []string{"signoff"}},
		},
	}
}

func collect[T any](t *testing.T, seq func(func(T, error) bool)) []T {
	t.Helper()
	var out []T
	for item, err := range seq {
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, item)
	}
	return out
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func ids(events []dvt.RunEvent) []string {
	out := []string{}
	for _, e := range events {
		out = append(out, e.EventID)
	}
	return out
}

func TestCreateFollowAndReadTheLog(t *testing.T) {
	u, key := service(t)
	ctx := context.Background()
	c := dvt.New(u, key)
	run := must[*dvt.Run](t)(c.Runs.Create(ctx, dvt.CreateRunOptions{Plan: chainPlan(3, "chain"),
		Labels: map[string]string{"team": "go"}}))
	if run.Labels["team"] != "go" {
		t.Fatalf("labels %v", run.Labels)
	}
	streamed := collect(t, c.Runs.Stream(ctx, run.RunID, 0))
	for i, e := range streamed {
		if e.RunSeq != i+1 {
			t.Fatalf("event %d has runSeq %d", i, e.RunSeq)
		}
	}
	if last := streamed[len(streamed)-1]; last.EventType != "RunCompleted" {
		t.Fatalf("last event %s", last.EventType)
	}
	stored := collect(t, c.Runs.Events(ctx, run.RunID, 0, 2))
	if !slices.Equal(ids(stored), ids(streamed)) {
		t.Fatalf("stored %v, streamed %v", ids(stored), ids(streamed))
	}
	done := must[*dvt.Run](t)(c.Runs.Get(ctx, run.RunID))
	if done.Status != dvt.COMPLETED || done.LastEventSeq != len(streamed) {
		t.Fatalf("run %s at %d", done.Status, done.LastEventSeq)
	}
}

func TestSameIdempotencyKeyStartsOneRun(t *testing.T) {
	u, key := service(t)
	ctx := context.Background()
	c := dvt.New(u, key)
	opts := dvt.CreateRunOptions{Plan: chainPlan(1, "chain"), IdempotencyKey: "go-" + time.Now().Format(time.RFC3339Nano)}
	first := must[*dvt.Run](t)(c.Runs.Create(ctx, opts))
	again := must[*dvt.Run](t)(c.Runs.Create(ctx, opts))
	other := must[*dvt.Run](t)(c.Runs.Create(ctx, dvt.CreateRunOptions{Plan: chainPlan(1, "chain")}))
	if again.RunID != first.RunID || other.RunID == first.RunID {
		t.Fatalf("first %s, again %s, other %s", first.RunID, again.RunID, other.RunID)
	}
}

// cuttingProxy forwards to the real service and closes the first `cuts` stream connections
// after `after` bytes of their answers; it records each request's head.
type cuttingProxy struct {
	mu    sync.Mutex
	heads []string
	cuts  int
	after int
	ln    net.Listener
}

func startProxy(t *testing.T, target string, cuts, after int) *cuttingProxy {
	t.Helper()
	tu, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cuttingProxy{cuts: cuts, after: after, ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			go p.pipe(client, tu.Host)
		}
	}()
	return p
}

func (p *cuttingProxy) pipe(client net.Conn, host string) {
	upstream, err := net.Dial("tcp", host)
	if err != nil {
		client.Close()
		return
	}
	defer client.Close()
	defer upstream.Close()
	var mu sync.Mutex
	isStream, seen := false, 0
	go func() {
		buf := make([]byte, 32*1024)
		for {
			n, err := client.Read(buf)
			if n > 0 {
				head := string(buf[:n])
				if regexp.MustCompile(`^[A-Z]+ `).MatchString(head) {
					p.mu.Lock()
					p.heads = append(p.heads, strings.SplitN(head, "\r\n\r\n", 2)[0])
					p.mu.Unlock()
					mu.Lock()
					isStream = strings.HasPrefix(head, "GET ") && strings.Contains(strings.SplitN(head, " ", 3)[1], "/stream")
					seen = 0
					mu.Unlock()
				}
				upstream.Write(buf[:n])
			}
			if err != nil {
				upstream.Close()
				return
			}
		}
	}()
	buf := make([]byte, 32*1024)
	for {
		n, err := upstream.Read(buf)
		if n > 0 {
			mu.Lock()
			cut := isStream && seen+n >= p.after
			before := seen
			seen += n
			mu.Unlock()
			p.mu.Lock()
			if cut && p.cuts > 0 {
				p.cuts--
				p.mu.Unlock()
				// Only the bytes before the cut go through, so the client never sees the rest.
				client.Write(buf[:p.after-before])
				return
			}
			p.mu.Unlock()
			client.Write(buf[:n])
		}
		if err != nil {
			return
		}
	}
}

func TestStreamResumesAfterCutConnections(t *testing.T) {
	u, key := service(t)
	ctx := context.Background()
	proxy := startProxy(t, u, 2, 1200)
	var waits []time.Duration
	c := dvt.New("http://"+proxy.ln.Addr().String(), key,
		dvt.WithSleep(func(_ context.Context, d time.Duration) error { waits = append(waits, d); return nil }))
	run := must[*dvt.Run](t)(c.Runs.Create(ctx, dvt.CreateRunOptions{Plan: chainPlan(4, "chain")}))
	streamed := collect(t, c.Runs.Stream(ctx, run.RunID, 0))
	stored := collect(t, c.Runs.Events(ctx, run.RunID, 0, 0))
	if !slices.Equal(ids(streamed), ids(stored)) {
		t.Fatalf("streamed %v, stored %v", ids(streamed), ids(stored))
	}
	resumed := 0
	lastEventID := regexp.MustCompile(`(?i)last-event-id: \d+`)
	proxy.mu.Lock()
	for _, h := range proxy.heads {
		if strings.Contains(h, "/stream") && lastEventID.MatchString(h) {
			resumed++
		}
	}
	proxy.mu.Unlock()
	if resumed != 2 || len(waits) < 2 {
		t.Fatalf("%d resumed connections, waits %v, heads %q", resumed, waits, proxy.heads)
	}
}

func until(t *testing.T, next func() (dvt.RunEvent, error, bool), eventType string) dvt.RunEvent {
	t.Helper()
	for {
		e, err, ok := next()
		if !ok {
			t.Fatalf("the stream ended before %s", eventType)
		}
		if err != nil {
			t.Fatal(err)
		}
		if e.EventType == eventType {
			return e
		}
	}
}

func wantCode(t *testing.T, err error, kind error, code string, status int) *dvt.APIError {
	t.Helper()
	var apiErr *dvt.APIError
	if !errors.As(err, &apiErr) || !errors.Is(err, kind) || apiErr.Code != code || apiErr.Status != status {
		t.Fatalf("want %v %s %d, got %v", kind, code, status, err)
	}
	return apiErr
}

func TestPauseResumeApproveAndTypedRefusals(t *testing.T) {
	u, key := service(t)
	ctx := context.Background()
	c := dvt.New(u, key)
	run := must[*dvt.Run](t)(c.Runs.Create(ctx, dvt.CreateRunOptions{Plan: gatedPlan()}))
	next, stop := iterPull(c.Runs.Stream(ctx, run.RunID, 0))
	defer stop()
	until(t, next, "StepAwaitingApproval")
	if a := must[*dvt.SignalAnswer](t)(c.Runs.Pause(ctx, run.RunID, "window")); a.Decision != dvt.SignalAnswerDecisionAccepted {
		t.Fatalf("pause %s", a.Decision)
	}
	until(t, next, "RunPaused")
	if r := must[*dvt.Run](t)(c.Runs.Get(ctx, run.RunID)); r.Status != dvt.PAUSED {
		t.Fatalf("status %s", r.Status)
	}
	must[*dvt.SignalAnswer](t)(c.Runs.Resume(ctx, run.RunID))
	until(t, next, "RunResumed")
	_, err := c.Runs.Approve(ctx, run.RunID, "no-such-step", "")
	wantCode(t, err, dvt.ErrInvalidRequest, "STEP_NOT_FOUND", 422)
	answer := must[*dvt.SignalAnswer](t)(c.Runs.Approve(ctx, run.RunID, "signoff", "ok"))
	if answer.Decision != dvt.SignalAnswerDecisionAccepted || answer.RunSeq == nil {
		t.Fatalf("approve %+v", answer)
	}
	until(t, next, "RunCompleted")
	if r := must[*dvt.Run](t)(c.Runs.Wait(ctx, run.RunID)); r.Status != dvt.COMPLETED {
		t.Fatalf("status %s", r.Status)
	}
	_, err = c.Runs.Cancel(ctx, run.RunID, "")
	wantCode(t, err, dvt.ErrConflict, "RUN_TERMINAL", 409)
	_, err = c.Runs.Get(ctx, "no-such-run")
	if wantCode(t, err, dvt.ErrNotFound, "RUN_NOT_FOUND", 404).RequestID == "" {
		t.Fatal("no request id")
	}
	_, err = dvt.New(u, "dvt_sk_wrong").Runs.Get(ctx, run.RunID)
	wantCode(t, err, dvt.ErrUnauthenticated, "UNAUTHENTICATED", 401)
}

func TestRetryAndSkipStepReachTheCore(t *testing.T) {
	u, key := service(t)
	ctx := context.Background()
	c := dvt.New(u, key)
	run := must[*dvt.Run](t)(c.Runs.Create(ctx, dvt.CreateRunOptions{Plan: gatedPlan()}))
	next, stop := iterPull(c.Runs.Stream(ctx, run.RunID, 0))
	defer stop()
	until(t, next, "StepAwaitingApproval")
	_, err := c.Runs.RetryStep(ctx, run.RunID, "build", "again")
	var apiErr *dvt.APIError
	if !errors.As(err, &apiErr) || apiErr.Code != "STEP_NOT_RETRYABLE" {
		t.Fatalf("retry: %v", err)
	}
	must[*dvt.SignalAnswer](t)(c.Runs.SkipStep(ctx, run.RunID, "publish", ""))
	must[*dvt.SignalAnswer](t)(c.Runs.Approve(ctx, run.RunID, "signoff", ""))
	if r := must[*dvt.Run](t)(c.Runs.Wait(ctx, run.RunID)); r.Status != dvt.COMPLETED {
		t.Fatalf("status %s", r.Status)
	}
	types := []string{}
	for _, e := range collect(t, c.Runs.Events(ctx, run.RunID, 0, 0)) {
		types = append(types, e.EventType)
	}
	if !slices.Contains(types, "StepSkipped") {
		t.Fatalf("log %v", types)
	}
}

func TestRunListPagesNewestFirst(t *testing.T) {
	u, key := service(t)
	ctx := context.Background()
	c := dvt.New(u, key)
	batch := fmt.Sprintf("b%d", time.Now().UnixNano())
	var made []string
	for range 5 {
		r := must[*dvt.Run](t)(c.Runs.Create(ctx, dvt.CreateRunOptions{Plan: chainPlan(1, "chain"),
			Labels: map[string]string{"batch": batch}}))
		made = append(made, r.RunID)
	}
	var listed []string
	for _, r := range collect(t, c.Runs.List(ctx, dvt.ListOptions{Labels: map[string]string{"batch": batch}, PageSize: 2})) {
		listed = append(listed, r.RunID)
	}
	slices.Reverse(made)
	if !slices.Equal(listed, made) {
		t.Fatalf("listed %v, made %v", listed, made)
	}
	if none := collect(t, c.Runs.List(ctx, dvt.ListOptions{Labels: map[string]string{"batch": "none"}})); len(none) != 0 {
		t.Fatalf("%d runs", len(none))
	}
}

func TestPlansStoreValidateAndRunByReference(t *testing.T) {
	u, key := service(t)
	ctx := context.Background()
	c := dvt.New(u, key)
	plan := chainPlan(2, "by-ref")
	report := must[*dvt.ValidationReport](t)(c.Plans.Validate(ctx, plan, ""))
	if !report.OK || report.PlanID == nil || *report.PlanID != "by-ref" {
		t.Fatalf("report %+v", report)
	}
	broken := must[*dvt.ValidationReport](t)(c.Plans.Validate(ctx, map[string]any{"planId": "x"}, ""))
	if broken.OK || len(broken.Issues) == 0 {
		t.Fatalf("broken %+v", broken)
	}
	ref := must[*dvt.PlanRef](t)(c.Plans.Store(ctx, plan))
	if again := must[*dvt.PlanRef](t)(c.Plans.Store(ctx, plan)); *again != *ref {
		t.Fatalf("%+v != %+v", again, ref)
	}
	run := must[*dvt.Run](t)(c.Runs.Create(ctx, dvt.CreateRunOptions{PlanRef: ref.Sha256}))
	if r := must[*dvt.Run](t)(c.Runs.Wait(ctx, run.RunID)); r.Status != dvt.COMPLETED {
		t.Fatalf("status %s", r.Status)
	}
	if body := must[[]byte](t)(c.Plans.Get(ctx, ref.Sha256)); !strings.Contains(string(body), `"by-ref"`) {
		t.Fatalf("plan %s", body)
	}
}

func TestUnreachableServiceIsRetriedThenConnectionFailed(t *testing.T) {
	var waits []time.Duration
	// Port 9 (discard) has no listener on loopback here: every connection is refused.
	c := dvt.New("http://127.0.0.1:9", "k", dvt.WithRetry(dvt.RetryPolicy{MaxAttempts: 3,
		Backoff: time.Second, MaxBackoff: 8 * time.Second}),
		dvt.WithSleep(func(_ context.Context, d time.Duration) error { waits = append(waits, d); return nil }))
	_, err := c.Runs.Get(context.Background(), "any")
	if !errors.Is(err, dvt.ErrConnectionFailed) || len(waits) != 2 {
		t.Fatalf("%v after waits %v", err, waits)
	}
}

// fakeService answers from a list of canned responses: for Retry-After decisions that a
// real service gives only after minutes.
func fakeService(t *testing.T, answers []func(http.ResponseWriter)) (*httptest.Server, *[]*http.Request, *[]string) {
	var seen []*http.Request
	var bodies []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		seen = append(seen, r)
		bodies = append(bodies, string(body))
		if len(answers) == 0 {
			t.Errorf("more requests than answers")
			w.WriteHeader(500)
			return
		}
		answers[0](w)
		answers = answers[1:]
	}))
	t.Cleanup(srv.Close)
	return srv, &seen, &bodies
}

func problem(status int, code, retryAfter string) func(http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "application/problem+json")
		if retryAfter != "" {
			w.Header().Set("Retry-After", retryAfter)
		}
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"type":"about:blank","title":%q,"status":%d,"code":%q,"detail":%q,"instance":"req-1"}`,
			code, status, code, code)
	}
}

func TestFakeServiceRetryAfterIsHonoured(t *testing.T) {
	srv, seen, bodies := fakeService(t, []func(http.ResponseWriter){
		problem(503, "STORE_UNAVAILABLE", "7"), problem(429, "RATE_LIMITED", "3"),
		func(w http.ResponseWriter) { fmt.Fprint(w, `{"signalId":"s","decision":"accepted","duplicate":false}`) },
	})
	var waits []time.Duration
	c := dvt.New(srv.URL, "k", dvt.WithSleep(func(_ context.Context, d time.Duration) error { waits = append(waits, d); return nil }))
	if _, err := c.Runs.Pause(context.Background(), "r1", ""); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(waits, []time.Duration{7 * time.Second, 3 * time.Second}) || len(*seen) != 3 {
		t.Fatalf("waits %v", waits)
	}
	id := regexp.MustCompile(`"signalId":"[^"]+"`)
	if b := *bodies; id.FindString(b[0]) != id.FindString(b[1]) || id.FindString(b[1]) != id.FindString(b[2]) {
		t.Fatalf("signal ids differ: %v", b)
	}
}

func TestFakeServiceLongRetryAfterIsReturnedAtOnce(t *testing.T) {
	srv, _, _ := fakeService(t, []func(http.ResponseWriter){problem(503, "STORE_UNAVAILABLE", "60")})
	policy := dvt.DefaultRetry
	policy.MaxRetryAfter = 10 * time.Second
	var waits []time.Duration
	c := dvt.New(srv.URL, "k", dvt.WithRetry(policy),
		dvt.WithSleep(func(_ context.Context, d time.Duration) error { waits = append(waits, d); return nil }))
	_, err := c.Runs.Get(context.Background(), "r1")
	apiErr := wantCode(t, err, dvt.ErrServiceUnavailable, "STORE_UNAVAILABLE", 503)
	if apiErr.RetryAfter != 60*time.Second || len(waits) != 0 {
		t.Fatalf("retry after %v, waits %v", apiErr.RetryAfter, waits)
	}
}

func TestFakeServiceCreateRetriesCarryOneKey(t *testing.T) {
	srv, seen, _ := fakeService(t, []func(http.ResponseWriter){
		problem(429, "RATE_LIMITED", "1"), problem(409, "IDEMPOTENCY_KEY_IN_USE", ""),
		func(w http.ResponseWriter) { w.WriteHeader(201); fmt.Fprint(w, `{"runId":"r1","status":"PENDING"}`) },
	})
	c := dvt.New(srv.URL, "k", dvt.WithSleep(func(context.Context, time.Duration) error { return nil }))
	run, err := c.Runs.Create(context.Background(), dvt.CreateRunOptions{Plan: map[string]any{}})
	if err != nil || run.RunID != "r1" {
		t.Fatalf("%v %v", run, err)
	}
	keys := map[string]bool{}
	for _, r := range *seen {
		keys[r.Header.Get("Idempotency-Key")] = true
	}
	if len(*seen) != 3 || len(keys) != 1 || keys[""] {
		t.Fatalf("keys %v", keys)
	}
}

func TestRealRateLimitIsWaitedOutThenReturnedTyped(t *testing.T) {
	u, key := service(t)
	// The service's engine refuses signals to one run over DVT_SIGNALS_PER_MINUTE (set by pytest).
	limit, err := strconv.Atoi(os.Getenv("DVT_SIGNALS_PER_MINUTE"))
	if err != nil || limit <= 0 || limit%2 != 0 {
		t.Fatalf("DVT_SIGNALS_PER_MINUTE must be an even limit: %v", err)
	}
	ctx := context.Background()
	var waits []time.Duration
	policy := dvt.DefaultRetry
	policy.MaxAttempts = 3
	c := dvt.New(u, key, dvt.WithRetry(policy),
		dvt.WithSleep(func(_ context.Context, d time.Duration) error { waits = append(waits, d); return nil }))
	run := must[*dvt.Run](t)(c.Runs.Create(ctx, dvt.CreateRunOptions{Plan: gatedPlan()}))
	next, stop := iterPull(c.Runs.Stream(ctx, run.RunID, 0))
	defer stop()
	until(t, next, "StepAwaitingApproval")
	for range limit / 2 {
		must[*dvt.SignalAnswer](t)(c.Runs.Pause(ctx, run.RunID, ""))
		until(t, next, "RunPaused")
		must[*dvt.SignalAnswer](t)(c.Runs.Resume(ctx, run.RunID))
		until(t, next, "RunResumed")
	}
	if len(waits) != 0 {
		t.Fatalf("waits before the limit: %v", waits)
	}
	_, err = c.Runs.Approve(ctx, run.RunID, "signoff", "")
	apiErr := wantCode(t, err, dvt.ErrRateLimited, "SIGNAL_RATE_LIMITED", 429)
	if apiErr.RetryAfter != time.Minute || !slices.Equal(waits, []time.Duration{time.Minute, time.Minute}) {
		t.Fatalf("retry after %v, waits %v", apiErr.RetryAfter, waits)
	}
	if after := must[*dvt.Run](t)(c.Runs.Get(ctx, run.RunID)); after.IsTerminal() {
		t.Fatalf("the refused approval ended the run: %s", after.Status)
	}
}
