package dvt_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The README's example runs as written against the real service: it is built inside this
// module through an overlay, so nothing is written to the source tree.
func TestReadmeExampleRunsAsWritten(t *testing.T) {
	u, key := service(t)
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```go\n(.*?)```").FindAllStringSubmatch(string(readme), -1)
	if len(blocks) != 1 {
		t.Fatalf("the README has %d Go blocks, want one", len(blocks))
	}
	tmp := t.TempDir()
	source := filepath.Join(tmp, "main.go")
	if err := os.WriteFile(source, []byte(blocks[0][1]), 0o644); err != nil {
		t.Fatal(err)
	}
	here, _ := os.Getwd()
	overlay, _ := json.Marshal(map[string]any{"Replace": map[string]string{
		filepath.Join(here, "internal", "readme", "main.go"): source}})
	overlayPath := filepath.Join(tmp, "overlay.json")
	if err := os.WriteFile(overlayPath, overlay, 0o644); err != nil {
		t.Fatal(err)
	}
	binary := filepath.Join(tmp, "example")
	build := exec.Command("go", "build", "-overlay", overlayPath, "-o", binary, "./internal/readme")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	run := exec.Command(binary)
	run.Env = append(os.Environ(), "DVT_API_URL="+u, "DVT_API_KEY="+key)
	out, err := run.Output()
	if err != nil {
		t.Fatalf("example: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if lines[len(lines)-1] != "COMPLETED" {
		t.Fatalf("output %q", out)
	}
	var types []string
	for i, line := range lines[:len(lines)-1] {
		fields := strings.Fields(line)
		if seq, _ := strconv.Atoi(fields[0]); seq != i+1 {
			t.Fatalf("line %d: %q", i, line)
		}
		types = append(types, fields[1])
	}
	at := func(s string) int { return slices.Index(types, s) }
	if at("StepAwaitingApproval") < 0 || !(at("StepAwaitingApproval") < at("RunPaused") &&
		at("RunPaused") < at("RunResumed") && at("RunResumed") < at("RunCompleted")) {
		t.Fatalf("events %v", types)
	}
	paused := 0
	for _, ty := range types {
		if ty == "RunPaused" {
			paused++
		}
	}
	if paused != 1 {
		t.Fatalf("%d RunPaused in %v", paused, types)
	}
}
