package executor

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/plan"
	"pgregory.net/rapid"
)

var t0 = time.Unix(1000, 0)

func starts(in []Intent) []int {
	var s []int
	for _, i := range in {
		if i.Kind == Start {
			s = append(s, i.Action)
		}
	}
	return s
}

func TestDependenciesAndFailureIsolation(t *testing.T) {
	acts := []Action{
		{Kind: cluster.Suspend, Task: "low", From: "n1", To: "n1"},
		{Kind: cluster.Boot, Task: "high", To: "n1", Deps: []int{0}},
		{Kind: cluster.Boot, Task: "other", To: "n2"},
		{Kind: cluster.Boot, Task: "after-high", To: "n1", Deps: []int{1}},
	}
	e, err := New(acts, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if got := starts(e.Ready(t0)); fmt.Sprint(got) != "[0 2]" {
		t.Fatalf("first starts %v", got)
	}
	if got := e.Ready(t0); len(got) != 0 {
		t.Fatalf("nothing new until acks: %v", got)
	}
	e.Advance(Ack{Kind: Succeeded, Action: 0, At: t0})
	if got := starts(e.Ready(t0)); fmt.Sprint(got) != "[1]" {
		t.Fatalf("after suspend: %v", got)
	}
	e.Advance(Ack{Kind: FailedAck, Action: 1, Err: "boom"})
	got := e.Ready(t0)
	if len(got) != 1 || got[0].Kind != Cancel || got[0].Action != 3 {
		t.Fatalf("dependent of a failure: %v", got)
	}
	if e.Done() {
		t.Fatal("action 2 still runs")
	}
	e.Advance(Ack{Kind: Succeeded, Action: 2})
	if !e.Done() || e.State(2) != Done || e.State(1) != Failed || e.State(3) != Cancelled {
		t.Fatalf("states %v %v %v done %v", e.State(1), e.State(2), e.State(3), e.Done())
	}
}

func TestMigrationLimits(t *testing.T) {
	var acts []Action
	for i := 0; i < 4; i++ { // four leave n0
		acts = append(acts, Action{Kind: cluster.Migrate, Task: fmt.Sprint("a", i), From: "n0", To: "x"})
	}
	for i := 0; i < 6; i++ { // six leave distinct nodes
		acts = append(acts, Action{Kind: cluster.Migrate, Task: fmt.Sprint("b", i), From: fmt.Sprint("m", i), To: "x"})
	}
	acts = append(acts, Action{Kind: cluster.Boot, Task: "c", To: "x"})
	e, _ := New(acts, DefaultLimits())
	got := starts(e.Ready(t0))
	// 2 from n0, then 3 from other nodes (cluster limit 5), and the boot.
	if fmt.Sprint(got) != "[0 1 4 5 6 10]" {
		t.Fatalf("starts %v", got)
	}
	e.Advance(Ack{Kind: Succeeded, Action: 0})
	if got := starts(e.Ready(t0)); fmt.Sprint(got) != "[2]" {
		t.Fatalf("after one from n0 ends: %v", got)
	}
	// A remote resume counts as a migration, a local one does not.
	if (Action{Kind: cluster.Resume, From: "a", To: "a"}).IsMigration() || !(Action{Kind: cluster.Resume, From: "a", To: "b"}).IsMigration() {
		t.Fatal("IsMigration")
	}
}

func TestTimeoutsAbortOnce(t *testing.T) {
	l := Limits{MaxMigrations: 5, MaxOutboundPerNode: 2, ProgressTimeout: 10 * time.Second, CompletionBase: 5 * time.Second, CompletionPerGiB: 100 * time.Second}
	acts := []Action{
		{Kind: cluster.Migrate, Task: "m", From: "a", To: "b", Bytes: 2 << 30},
		{Kind: cluster.Boot, Task: "b", To: "b"},
	}
	e, _ := New(acts, l)
	e.Ready(t0)
	if to := e.Timeout(0); to != 205*time.Second {
		t.Fatalf("timeout %v", to)
	}
	e.Advance(Ack{Kind: Progress, Action: 0, At: t0.Add(8 * time.Second), Bytes: 100})
	got := e.Ready(t0.Add(9 * time.Second))
	if len(got) != 1 || got[0].Kind != Abort || got[0].Action != 1 {
		t.Fatalf("boot past 5s: %v", got)
	}
	if got := e.Ready(t0.Add(17 * time.Second)); len(got) != 0 {
		t.Fatalf("progress at 8s keeps the migration: %v", got)
	}
	got = e.Ready(t0.Add(19 * time.Second))
	if len(got) != 1 || got[0].Kind != Abort || got[0].Action != 0 {
		t.Fatalf("no progress for 11s: %v", got)
	}
	if got := e.Ready(t0.Add(time.Hour)); len(got) != 0 {
		t.Fatalf("abort asked twice: %v", got)
	}
	e.Advance(Ack{Kind: FailedAck, Action: 0, Err: "aborted"})
	e.Advance(Ack{Kind: FailedAck, Action: 1, Err: "aborted"})
	if !e.Done() {
		t.Fatal("not done")
	}
}

func TestRejectsCycles(t *testing.T) {
	_, err := New([]Action{{Deps: []int{1}}, {Deps: []int{0}}}, DefaultLimits())
	if !errors.Is(err, ErrInvalid) {
		t.Fatal(err)
	}
	if _, err := New([]Action{{Deps: []int{5}}}, DefaultLimits()); !errors.Is(err, ErrInvalid) {
		t.Fatal(err)
	}
}

func TestRestoreFromJournal(t *testing.T) {
	acts := []Action{{Kind: cluster.Migrate, Task: "a", From: "n", To: "m"}, {Kind: cluster.Migrate, Task: "b", From: "n", To: "m"}, {Kind: cluster.Migrate, Task: "c", From: "n", To: "m"}}
	e, _ := New(acts, DefaultLimits())
	e.Restore(0, Done, t0)
	e.Restore(1, Running, t0)
	if got := starts(e.Ready(t0)); fmt.Sprint(got) != "[2]" {
		t.Fatalf("%v", got)
	}
}

func TestFromPlanDependencies(t *testing.T) {
	m := &cluster.Model{Resources: []string{"cpu", "memory"},
		Nodes: []cluster.Node{{Name: "n1", Capacity: []int64{1, 1}}, {Name: "n2", Capacity: []int64{1, 1}}, {Name: "n3", Capacity: []int64{1, 1}}},
		Tasks: []cluster.Task{
			{Name: "low", State: cluster.Running, Node: 0, Demand: []int64{1, 1 << 30}},
			{Name: "high", State: cluster.Ready, Node: cluster.NoNode, Demand: []int64{1, 1 << 20}},
			{Name: "x", State: cluster.Ready, Node: cluster.NoNode, Demand: []int64{1, 0}},
		}}
	p := &plan.Plan{Origin: m, Actions: []plan.Action{
		{Kind: cluster.Boot, Task: 1, From: cluster.NoNode, To: 0, Node: cluster.NoNode, Start: 5, End: 6},
		{Kind: cluster.Suspend, Task: 0, From: 0, To: 0, Node: cluster.NoNode, Start: 0, End: 5},
		{Kind: cluster.Boot, Task: 2, From: cluster.NoNode, To: 2, Node: cluster.NoNode, Start: 0, End: 1},
	}}
	acts := FromPlan(p, 1)
	if len(acts) != 3 || acts[0].Task != "low" || acts[1].Task != "x" || acts[2].Task != "high" {
		t.Fatalf("order %+v", acts)
	}
	if fmt.Sprint(acts[2].Deps) != "[0]" || len(acts[1].Deps) != 0 || acts[0].Bytes != 1<<30 || acts[2].From != "" || acts[2].To != "n1" {
		t.Fatalf("deps %+v", acts)
	}
}

// Property: whatever the acks, the executor never starts an action before
// its dependencies are done, never exceeds the limits, and ends.
func TestExecutorInvariants(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		n := rapid.IntRange(1, 25).Draw(rt, "n")
		acts := make([]Action, n)
		for i := range acts {
			kind := rapid.SampledFrom([]cluster.ActionKind{cluster.Boot, cluster.Migrate, cluster.Suspend, cluster.Resume}).Draw(rt, "k")
			acts[i] = Action{Kind: kind, Task: fmt.Sprint("t", i), From: fmt.Sprint("n", rapid.IntRange(0, 3).Draw(rt, "f")), To: fmt.Sprint("n", rapid.IntRange(0, 3).Draw(rt, "t"))}
			for j := 0; j < i; j++ {
				if rapid.IntRange(0, 4).Draw(rt, "dep") == 0 {
					acts[i].Deps = append(acts[i].Deps, j)
				}
			}
		}
		l := Limits{MaxMigrations: rapid.IntRange(1, 5).Draw(rt, "max"), MaxOutboundPerNode: rapid.IntRange(1, 2).Draw(rt, "out")}
		e, err := New(acts, l)
		if err != nil {
			rt.Fatal(err)
		}
		var running []int
		for step := 0; step < 200 && !e.Done(); step++ {
			for _, in := range e.Ready(t0) {
				if in.Kind != Start {
					continue
				}
				for _, d := range acts[in.Action].Deps {
					if e.State(d) != Done {
						rt.Fatalf("action %d started before dependency %d (%s)", in.Action, d, e.State(d))
					}
				}
				running = append(running, in.Action)
			}
			migs, out := 0, map[string]int{}
			for _, r := range running {
				if acts[r].IsMigration() {
					migs++
					out[acts[r].From]++
				}
			}
			if migs > l.MaxMigrations {
				rt.Fatalf("%d migrations > %d", migs, l.MaxMigrations)
			}
			for node, c := range out {
				if c > l.MaxOutboundPerNode {
					rt.Fatalf("%d outbound from %s", c, node)
				}
			}
			if len(running) == 0 {
				if !e.Done() {
					rt.Fatalf("stuck: nothing running, not done")
				}
				break
			}
			k := rapid.IntRange(0, len(running)-1).Draw(rt, "which")
			ok := rapid.IntRange(0, 5).Draw(rt, "ok") > 0
			kind := Succeeded
			if !ok {
				kind = FailedAck
			}
			e.Advance(Ack{Kind: kind, Action: running[k]})
			running = append(running[:k], running[k+1:]...)
		}
		if !e.Done() {
			rt.Fatal("did not finish")
		}
	})
}

// Actions appended to a running executor and pending actions cancelled from
// outside (a drain deadline mid-plan): appended ones start at once when
// they have no dependencies, a cancelled one dooms its dependents, and the
// executor still ends.
func TestAppendAndCancel(t *testing.T) {
	acts := []Action{
		{Kind: cluster.Migrate, Task: "slow", From: "n1", To: "n4"},
		{Kind: cluster.Migrate, Task: "b", From: "n3", To: "n1", Deps: []int{0}},
		{Kind: cluster.Boot, Task: "c", To: "n3", Deps: []int{1}},
	}
	e, err := New(acts, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if got := starts(e.Ready(t0)); fmt.Sprint(got) != "[0]" {
		t.Fatalf("first starts %v", got)
	}
	if e.Cancel(0, "running") {
		t.Fatal("a running action was cancelled")
	}
	if !e.Cancel(1, "deadline") || e.State(1) != Cancelled || e.Err(1) != "deadline" {
		t.Fatalf("cancel pending: %v %q", e.State(1), e.Err(1))
	}
	if err := e.Append([]Action{{Kind: cluster.Suspend, Task: "b", From: "n3", Deps: []int{5}}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("append with a dependency on a later action: %v", err)
	}
	if err := e.Append([]Action{{Kind: cluster.Suspend, Task: "b", From: "n3"}}); err != nil {
		t.Fatal(err)
	}
	got := e.Ready(t0)
	if len(got) != 2 || got[0].Kind != Cancel || got[0].Action != 2 || got[1].Kind != Start || got[1].Action != 3 {
		t.Fatalf("after append: %+v", got)
	}
	e.Advance(Ack{Kind: Succeeded, Action: 3})
	if e.Done() {
		t.Fatal("done with the migration still running")
	}
	e.Advance(Ack{Kind: Succeeded, Action: 0})
	if !e.Done() || len(e.Actions()) != 4 {
		t.Fatalf("done %v with %d actions", e.Done(), len(e.Actions()))
	}
}
