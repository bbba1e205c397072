// Package dvt is the Go client of the dvt HTTP service.
//
// It behaves like the Python client (docs/client-sdk.md): requests that are safe to send
// twice are retried after connection errors and 429/503 answers honouring Retry-After; run
// creation always carries an Idempotency-Key and signals a signalId; lists and event logs are
// iterated page by page; the run stream resumes with Last-Event-ID; problem+json answers are
// returned as *APIError carrying the stable code. types.gen.go is generated from
// docs/openapi.json by oapi-codegen (go generate); runs and events, which the document leaves
// open, are typed by hand in models.go.
package dvt

//go:generate go tool oapi-codegen -config oapi-codegen.yaml ../../docs/openapi.json
