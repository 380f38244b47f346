package check

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/policy"
	"github.com/ferrycluster/ferry/sim"
	"github.com/ferrycluster/ferry/sim/workload"
)

func result(t *testing.T) (*workload.Workload, *sim.Result) {
	t.Helper()
	w, err := workload.ParseScenario(strings.NewReader(`
nodes: {count: 2, cpu: 1, memory_mib: 2048}
jobs:
  - {name: long, submit: 0, tasks: 2, work: 2000, walltime: 2000}
  - {name: short, submit: 100, tasks: 1, work: 30, walltime: 30}
`))
	if err != nil {
		t.Fatal(err)
	}
	r, err := sim.Run(context.Background(), sim.Config{Workload: w, Policy: policy.Selective{Factor: 2}})
	if err != nil {
		t.Fatal(err)
	}
	if err := Run(w, r); err != nil {
		t.Fatalf("clean run rejected: %v", err)
	}
	return w, r
}

// Each mutation of a real log breaks one invariant; the checker must say so.
func TestCheckerCatchesBrokenLogs(t *testing.T) {
	find := func(r *sim.Result, kind sim.EventKind, act cluster.ActionKind) int {
		for i, e := range r.Events {
			if e.Kind == kind && (kind != sim.EvStart && kind != sim.EvEnd || e.Action == act) {
				return i
			}
		}
		t.Fatalf("no %s %s event", kind, act)
		return -1
	}
	cases := map[string]struct {
		mutate func(r *sim.Result)
		want   string
	}{
		"over capacity": {func(r *sim.Result) {
			i := find(r, sim.EvStart, cluster.Boot)
			r.Events[i+1].To = r.Events[i].To // both tasks booted on one 1-cpu node
		}, "over capacity"},
		"completes twice": {func(r *sim.Result) {
			i := find(r, sim.EvComplete, 0)
			r.Events = append(r.Events[:i+1], r.Events[i:]...)
		}, "completes"},
		"never completes": {func(r *sim.Result) {
			r.Events = r.Events[:len(r.Events)-1]
		}, "completed 0 times"},
		"work created": {func(r *sim.Result) {
			i := find(r, sim.EvComplete, 0)
			r.Events[i].T -= 5
		}, "work created"},
		"work lost": {func(r *sim.Result) {
			r.Events[len(r.Events)-1].T += 50
		}, "work lost"},
		"work kept across a restart": {func(r *sim.Result) {
			// long's suspend and resume made a shutdown and a boot: its
			// 299 s before are lost, and it does not run 2,000 s after.
			for i, e := range r.Events {
				switch {
				case (e.Kind == sim.EvStart || e.Kind == sim.EvEnd) && e.Action == cluster.Suspend:
					r.Events[i].Action = cluster.Shutdown
				case (e.Kind == sim.EvStart || e.Kind == sim.EvEnd) && e.Action == cluster.Resume:
					r.Events[i].Action = cluster.Boot
				}
			}
		}, "work created"},
		"resume of a running task": {func(r *sim.Result) {
			i := find(r, sim.EvStart, cluster.Suspend)
			r.Events[i].Action = cluster.Resume
		}, "resume of task"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			w, r := result(t)
			c.mutate(r)
			err := Run(w, r)
			if !errors.Is(err, ErrViolation) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
		})
	}
}
