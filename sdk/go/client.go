package dvt

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// RetryPolicy says how often and how long a safe request is retried (the Python client's
// defaults). Without Retry-After the wait is exponential (Backoff doubled per attempt, at
// most MaxBackoff) with full jitter; a Retry-After over MaxRetryAfter is not waited out: the
// typed error is returned at once.
type RetryPolicy struct {
	MaxAttempts   int
	Backoff       time.Duration
	MaxBackoff    time.Duration
	MaxRetryAfter time.Duration
}

// DefaultRetry is the policy of a client made without one.
var DefaultRetry = RetryPolicy{MaxAttempts: 5, Backoff: 500 * time.Millisecond,
	MaxBackoff: 8 * time.Second, MaxRetryAfter: 120 * time.Second}

var noRetry = RetryPolicy{MaxAttempts: 1}

func (p RetryPolicy) backoff(attempt int) time.Duration {
	ceiling := math.Min(float64(p.MaxBackoff), float64(p.Backoff)*math.Pow(2, float64(attempt-1)))
	return time.Duration(mrand.Float64() * ceiling)
}

// Client talks to one service with one API key; Runs and Plans hold the calls.
type Client struct {
	base  string
	key   string
	http  *http.Client
	Retry RetryPolicy
	// Sleep waits between attempts; a test may record the waits instead.
	Sleep func(ctx context.Context, d time.Duration) error
	Runs  *Runs
	Plans *Plans
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient sends through h (its Timeout must be 0 for streams to stay open; use
// contexts for deadlines).
func WithHTTPClient(h *http.Client) Option { return func(c *Client) { c.http = h } }

// WithRetry sets the retry policy; RetryPolicy{MaxAttempts: 1} turns retries off.
func WithRetry(p RetryPolicy) Option { return func(c *Client) { c.Retry = p } }

// WithSleep replaces the wait between attempts.
func WithSleep(s func(ctx context.Context, d time.Duration) error) Option {
	return func(c *Client) { c.Sleep = s }
}

// New makes a client of the service at baseURL authenticated with apiKey.
func New(baseURL, apiKey string, options ...Option) *Client {
	c := &Client{base: strings.TrimRight(baseURL, "/"), key: apiKey, http: &http.Client{},
		Retry: DefaultRetry, Sleep: sleepCtx}
	for _, o := range options {
		o(c)
	}
	c.Runs = &Runs{c: c}
	c.Plans = &Plans{c: c}
	return c
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (c *Client) newRequest(ctx context.Context, method, path string, query url.Values,
	body []byte, headers map[string]string) (*http.Request, error) {
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var reader io.Reader
	if body != nil {
		reader = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, reader)
	if err != nil {
		return nil, err
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	return req, nil
}

type call struct {
	method  string
	path    string
	query   url.Values
	body    []byte
	headers map[string]string
	safe    bool
}

// do sends a request (again, when safe, after a retryable failure); the 2xx answer's body.
func (c *Client) do(ctx context.Context, r call) ([]byte, error) {
	policy := noRetry
	if r.safe {
		policy = c.Retry
	}
	for attempt := 1; ; attempt++ {
		req, err := c.newRequest(ctx, r.method, r.path, r.query, r.body, r.headers)
		if err != nil {
			return nil, err
		}
		resp, err := c.http.Do(req)
		var data []byte
		if err == nil {
			data, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if attempt >= policy.MaxAttempts {
				return nil, fmt.Errorf("%w: %s %s: %v", ErrConnectionFailed, r.method, r.path, err)
			}
			if err := c.Sleep(ctx, policy.backoff(attempt)); err != nil {
				return nil, err
			}
			continue
		}
		if resp.StatusCode >= 200 && resp.StatusCode < 300 {
			return data, nil
		}
		apiErr := errorOf(resp, data)
		wait, again := retryWait(apiErr, policy, attempt)
		if !again {
			return nil, apiErr
		}
		if err := c.Sleep(ctx, wait); err != nil {
			return nil, err
		}
	}
}

func (c *Client) doJSON(ctx context.Context, r call, out any) error {
	data, err := c.do(ctx, r)
	if err != nil {
		return err
	}
	return json.Unmarshal(data, out)
}

func errorOf(resp *http.Response, body []byte) *APIError {
	wait, ok := retryAfter(resp.Header.Get("Retry-After"))
	return errorFor(resp.StatusCode, body, wait, ok)
}

// retryAfter reads Retry-After (delta-seconds or an HTTP date).
func retryAfter(value string) (time.Duration, bool) {
	value = strings.TrimSpace(value)
	if value == "" {
		return 0, false
	}
	if n, err := strconv.Atoi(value); err == nil && n >= 0 {
		return time.Duration(n) * time.Second, true
	}
	when, err := http.ParseTime(value)
	if err != nil {
		return 0, false
	}
	return max(0, time.Until(when)), true
}

// retryWait says how long to wait before sending again, or false when the answer is final.
func retryWait(e *APIError, policy RetryPolicy, attempt int) (time.Duration, bool) {
	retryable := e.Status == 429 || e.Status == 503 ||
		(e.Status == 409 && e.Code == "IDEMPOTENCY_KEY_IN_USE")
	if !retryable || attempt >= policy.MaxAttempts {
		return 0, false
	}
	if !e.HasRetryAfter {
		return policy.backoff(attempt), true
	}
	return e.RetryAfter, e.RetryAfter <= policy.MaxRetryAfter
}

// newKey makes a fresh idempotency key or signal id (a random UUID).
func newKey() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
