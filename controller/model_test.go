package controller

import (
	"testing"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/store"
)

// drainState: two 1-CPU nodes, each full with a 1-CPU job; n2 is draining
// with the given deadline (unix ns, 0 none).
func drainState(deadline int64) *store.State {
	s := store.NewState()
	for _, n := range []string{"n1", "n2"} {
		s.Nodes[n] = &store.Node{Name: n, Capacity: store.Resources{CPUMilli: 1000, MemoryBytes: 1 << 30}, Status: store.NodeOnline}
	}
	s.Nodes["n2"].Status, s.Nodes["n2"].Drained, s.Nodes["n2"].DrainDeadline = store.NodeDraining, true, deadline
	for i, j := range []string{"a", "b"} {
		tn := j + ".c.0"
		s.Jobs[j] = &store.Job{Name: j, Priority: 5, Submitted: int64(i), Want: store.WantRun, Preemptible: true, Tasks: []string{tn}}
		s.Tasks[tn] = &store.Task{Name: tn, Job: j, Demand: store.Resources{CPUMilli: 1000, MemoryBytes: 64 << 20},
			Phase: store.TaskRunning, Node: []string{"n1", "n2"}[i], Epoch: 1}
	}
	return s
}

// wantOf returns the state the problem asks of a task.
func wantOf(t *testing.T, snap *Snapshot, task string) cluster.TaskState {
	t.Helper()
	p, err := snap.Problem(Priority{})
	if err != nil {
		t.Fatal(err)
	}
	ti := p.Model.TaskIndex(task)
	if ti < 0 {
		t.Fatalf("%s not in the model", task)
	}
	for _, c := range p.Constraints {
		if sc, ok := c.(cluster.StateConstraint); ok {
			for _, x := range sc.Tasks {
				if x == ti {
					return sc.State
				}
			}
		}
	}
	return p.Model.Tasks[ti].State
}

func TestProblemDrainDeadline(t *testing.T) {
	const now = 1000 // seconds
	for _, tc := range []struct {
		name     string
		deadline int64
		want     cluster.TaskState
		due      bool
	}{
		{"no deadline suspends at once", 0, cluster.Sleeping, false},
		{"before the deadline keeps running", (now + 60) * 1e9, cluster.Running, false},
		{"at the deadline suspends", now * 1e9, cluster.Sleeping, true},
		{"after the deadline suspends", (now - 5) * 1e9, cluster.Sleeping, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			snap := BuildSnapshot(drainState(tc.deadline), now, nil)
			if got := wantOf(t, snap, "b.c.0"); got != tc.want {
				t.Fatalf("b.c.0 (no room elsewhere) wanted %v, want %v", got, tc.want)
			}
			if got := wantOf(t, snap, "a.c.0"); got != cluster.Running {
				t.Fatalf("a.c.0 wanted %v, want running", got)
			}
			if due := len(snap.DrainDue) == 1 && snap.DrainDue[0] == "n2"; due != tc.due {
				t.Fatalf("DrainDue %v, want n2 due: %v", snap.DrainDue, tc.due)
			}
		})
	}
}

// An operator's suspend wins over the drain's grace period.
func TestProblemDrainDeadlineOperatorSuspendWins(t *testing.T) {
	s := drainState(2000 * 1e9)
	s.Jobs["b"].Want = store.WantSleep
	if got := wantOf(t, BuildSnapshot(s, 1000, nil), "b.c.0"); got != cluster.Sleeping {
		t.Fatalf("operator-suspended b.c.0 wanted %v, want sleeping", got)
	}
}
