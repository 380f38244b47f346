package sim_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/ferrycluster/ferry/policy"
	"github.com/ferrycluster/ferry/sim"
	"github.com/ferrycluster/ferry/sim/check"
	"github.com/ferrycluster/ferry/sim/workload"
)

func run(t *testing.T, w *workload.Workload, p policy.Policy) *sim.Result {
	t.Helper()
	r, err := sim.Run(context.Background(), sim.Config{Workload: w, Policy: p, Seed: 1})
	if err != nil {
		t.Fatalf("%s: %v", p.Name(), err)
	}
	if err := check.Run(w, r); err != nil {
		t.Fatalf("%s: %v", p.Name(), err)
	}
	return r
}

func TestVTDCEveryPolicyKeepsInvariantsAndIsDeterministic(t *testing.T) {
	w := workload.VTDC(1)
	for _, name := range policy.Names() {
		p, err := policy.ByName(name)
		if err != nil {
			t.Fatal(err)
		}
		a, b := run(t, w, p), run(t, w, p)
		var la, lb bytes.Buffer
		a.WriteLog(&la)
		b.WriteLog(&lb)
		if !bytes.Equal(la.Bytes(), lb.Bytes()) {
			t.Fatalf("%s: two runs with the same seed differ", name)
		}
		if a.Summary.Completed != len(w.Jobs) {
			t.Fatalf("%s: %d of %d jobs completed", name, a.Summary.Completed, len(w.Jobs))
		}
	}
}

func TestDynamicSchedulerBeatsFCFSOnVTDC(t *testing.T) {
	w := workload.VTDC(1)
	fcfs := run(t, w, policy.FCFS{})
	ent := run(t, w, policy.Entropy{})
	if ent.Summary.CumulatedCompletion >= fcfs.Summary.CumulatedCompletion {
		t.Fatalf("entropy %d s >= fcfs %d s", ent.Summary.CumulatedCompletion, fcfs.Summary.CumulatedCompletion)
	}
	if ent.Summary.Suspends == 0 {
		t.Fatal("entropy never suspended: the experiment exercises nothing")
	}
}

func TestStalledRunIsReported(t *testing.T) {
	w, err := workload.ParseScenario(strings.NewReader(`
nodes: {count: 1, cpu: 1}
jobs: [{name: a, tasks: 1, work: 10}]
`))
	if err != nil {
		t.Fatal(err)
	}
	_, err = sim.Run(context.Background(), sim.Config{Workload: w, Policy: never{}})
	if err == nil || !strings.Contains(err.Error(), "stalled") {
		t.Fatalf("err = %v", err)
	}
}

type never struct{}

func (never) Name() string { return "never" }
func (never) Decide(v *policy.View) (policy.Decision, error) {
	return policy.Current(v.Model), nil
}
