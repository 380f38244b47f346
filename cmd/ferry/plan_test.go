package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/plan"
	"github.com/ferrycluster/ferry/plan/btrplace"
	"github.com/ferrycluster/ferry/plan/verify"
)

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	if err != nil {
		return 1
	}
	return 0
}

func planOpts() planFlags { return planFlags{timeout: 10 * time.Second, liveOnly: true} }

func TestPlanWritesAVerifiedPlan(t *testing.T) {
	out := filepath.Join(t.TempDir(), "plan.json")
	f := planOpts()
	f.output = out
	var stdout, stderr bytes.Buffer
	if err := runPlan(context.Background(), f, "../../examples/plan/cycle.json", &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if stdout.Len() != 0 {
		t.Fatalf("with -o nothing goes to stdout, got %q", stdout.String())
	}
	fh, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	_, pl, err := btrplace.ReadPlan(fh)
	if err != nil {
		t.Fatal(err)
	}
	in, err := btrplace.ReadInstanceFile("../../examples/plan/cycle.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := verify.Check(in.Problem, pl); err != nil {
		t.Fatalf("written plan fails the verifier: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Dir(out))
	if len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
}

func TestPlanStdinAndStdout(t *testing.T) {
	fh, err := os.Open("../../examples/plan/drain.json")
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	old := os.Stdin
	os.Stdin = fh
	t.Cleanup(func() { os.Stdin = old })
	var stdout, stderr bytes.Buffer
	f := planOpts()
	f.objective = "migrations"
	f.liveOnly = true
	if err := runPlan(context.Background(), f, "-", &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	_, pl, err := btrplace.ReadPlan(&stdout)
	if err != nil {
		t.Fatalf("stdout is not a plan: %v", err)
	}
	for _, a := range pl.Actions {
		if a.Kind == cluster.Suspend {
			t.Fatalf("--live-only plan suspends a running VM: %+v", a)
		}
	}
}

func TestPlanExplain(t *testing.T) {
	var stdout, stderr bytes.Buffer
	f := planOpts()
	f.explain = true
	if err := runPlan(context.Background(), f, "../../examples/plan/drain.json", &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"plan: ", "MTTR", "makespan", "lower bound", "steps", "t=0", "shut down node 1", "load per node", "online -> offline", "solved in"} {
		if !strings.Contains(stdout.String(), want) {
			t.Fatalf("explanation lacks %q:\n%s", want, stdout.String())
		}
	}
}

func TestPlanExitCodes(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	model := `{"mapping":{"readyVMs":[],"onlineNodes":{"0":{"runningVMs":[0],"sleepingVMs":[]},"1":{"runningVMs":[],"sleepingVMs":[]}},"offlineNodes":[]},"attributes":{},` +
		`"views":[{"id":"shareableResource","rcId":"cpu","defConsumption":1,"defCapacity":2,"vms":{},"nodes":{}}]}`
	for _, tc := range []struct {
		name, body string
		code       int
		want       string
	}{
		{"malformed.json", `{"model": [`, 2, "malformed.json"},
		{"unknown-vm.json", `{"model":` + model + `,"constraints":[{"id":"ban","vm":9,"nodes":[0]}]}`, 2, "unknown vm 9"},
		{"unknown-constraint.json", `{"model":` + model + `,"constraints":[{"id":"teleport","vm":0}]}`, 2, `unknown constraint id "teleport"`},
		{"no-plan.json", `{"model":` + model + `,"constraints":[{"id":"ban","vm":0,"nodes":[0,1]}]}`, 3, "no viable plan"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(dir, "out-"+tc.name)
			f := planOpts()
			f.output = out
			var stdout, stderr bytes.Buffer
			err := runPlan(context.Background(), f, write(tc.name, tc.body), &stdout, &stderr)
			if got := exitCode(err); got != tc.code {
				t.Fatalf("exit %d (%v), want %d", got, err, tc.code)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("message %q does not name %q", err, tc.want)
			}
			if _, serr := os.Stat(out); !os.IsNotExist(serr) {
				t.Fatalf("an output file was written on failure")
			}
		})
	}
	f := planOpts()
	f.objective = "speed"
	if err := runPlan(context.Background(), f, "../../examples/plan/cycle.json", &bytes.Buffer{}, &bytes.Buffer{}); exitCode(err) != 2 {
		t.Fatalf("bad --objective: exit %d (%v)", exitCode(err), err)
	}
	if err := runPlan(context.Background(), planOpts(), filepath.Join(dir, "missing.json"), &bytes.Buffer{}, &bytes.Buffer{}); exitCode(err) != 2 {
		t.Fatalf("missing file: exit %d (%v)", exitCode(err), err)
	}
}

func TestPlanCheck(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "plan.json")
	f := planOpts()
	f.output = out
	if err := runPlan(context.Background(), f, "../../examples/plan/cycle.json", &bytes.Buffer{}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	var stdout bytes.Buffer
	f = planOpts()
	f.check = out
	if err := runPlan(context.Background(), f, "../../examples/plan/cycle.json", &stdout, &bytes.Buffer{}); err != nil {
		t.Fatalf("a written plan fails --check: %v", err)
	}
	if !strings.Contains(stdout.String(), "valid plan") {
		t.Fatalf("output %q", stdout.String())
	}
	// Shift the arrival of VM 1 on node 0 before VM 0 left: capacity breaks.
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(b), `"start": 2,`, `"start": 0,`, 1)
	bad = strings.Replace(bad, `"end": 5`, `"end": 3`, 1)
	if bad == string(b) {
		t.Fatalf("mutation not applied:\n%s", b)
	}
	badPath := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(badPath, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	stdout.Reset()
	f.check = badPath
	err = runPlan(context.Background(), f, "../../examples/plan/cycle.json", &stdout, &bytes.Buffer{})
	if exitCode(err) != 4 || !strings.Contains(stdout.String(), "capacity") {
		t.Fatalf("exit %d (%v), output %q; want 4 and a capacity violation", exitCode(err), err, stdout.String())
	}
	f.check = "../../examples/plan/drain.json" // an instance, not a plan
	if err := runPlan(context.Background(), f, "../../examples/plan/cycle.json", &bytes.Buffer{}, &bytes.Buffer{}); exitCode(err) != 2 {
		t.Fatalf("checking a non-plan: exit %d (%v)", exitCode(err), err)
	}
}

func TestExplainIsBounded(t *testing.T) {
	in, err := btrplace.ReadInstanceFile("../../examples/plan/drain.json")
	if err != nil {
		t.Fatal(err)
	}
	pl := &plan.Plan{}
	for i := 0; i < maxExplainActions+50; i++ {
		pl.Actions = append(pl.Actions, plan.Action{Kind: cluster.Migrate, Task: 0, Node: -1, From: 0, To: 2, Start: int64(i), End: int64(i + 1)})
	}
	var out bytes.Buffer
	explainPlan(&out, "drain.json", in, pl, time.Millisecond)
	if !strings.Contains(out.String(), "... and 50 more actions") {
		t.Fatalf("the action list is not bounded:\n%s", out.String())
	}
	if got := strings.Count(out.String(), "migrate vm 0"); got != maxExplainActions {
		t.Fatalf("%d actions listed, want %d", got, maxExplainActions)
	}
}
