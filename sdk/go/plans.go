package dvt

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
)

// Plans holds the calls on the stored plans of the key's tenant.
type Plans struct{ c *Client }

// Store validates and stores a plan (content-addressed, so storing twice is harmless).
func (p *Plans) Store(ctx context.Context, plan map[string]any) (*PlanRef, error) {
	data, err := json.Marshal(plan)
	if err != nil {
		return nil, err
	}
	var answer struct {
		PlanRef PlanRef `json:"planRef"`
	}
	if err := p.c.doJSON(ctx, call{method: "POST", path: "/v1/plans", body: data, safe: true}, &answer); err != nil {
		return nil, err
	}
	return &answer.PlanRef, nil
}

// Validate reports whether the plan is valid for engine (empty: the served one); stores nothing.
func (p *Plans) Validate(ctx context.Context, plan map[string]any, engine string) (*ValidationReport, error) {
	data, err := json.Marshal(plan)
	if err != nil {
		return nil, err
	}
	q := url.Values{}
	if engine != "" {
		q.Set("engine", engine)
	}
	var report ValidationReport
	if err := p.c.doJSON(ctx, call{method: "POST", path: "/v1/plans/validate", query: q, body: data, safe: true}, &report); err != nil {
		return nil, err
	}
	return &report, nil
}

// Get returns the stored plan's exact bytes.
func (p *Plans) Get(ctx context.Context, sha256 string) ([]byte, error) {
	return p.c.do(ctx, call{method: "GET", path: "/v1/plans/" + url.PathEscape(sha256), safe: true})
}

func readAllLimited(resp *http.Response) ([]byte, error) {
	return io.ReadAll(io.LimitReader(resp.Body, 1<<20))
}
