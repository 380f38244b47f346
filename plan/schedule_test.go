package plan_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/plan"
	"github.com/ferrycluster/ferry/plan/verify"
	"pgregory.net/rapid"
)

// vtdcHang is the problem the simulator's entropy policy posed at seed 13
// of the VTDC'10 workload (`ferry sim --vtdc --seed 13 --policy entropy`),
// on which the scheduler looped forever: eleven nodes of which several are
// already over their cpu capacity (the policy counts a task's cpu as 0 or 1
// by its activity), ten running tasks each fenced to another node, so that
// every arrival waits on a departure in one long chain of cycles. Memory is
// in bytes and the durations are the VTDC'10 ones.
func vtdcHang() *plan.Problem {
	const gib = 1 << 30
	m := &cluster.Model{Resources: []string{"cpu", "memory"}}
	for i, c := range [][2]int64{
		{0, 2 * gib}, {0, gib}, {0, 0}, {0, 2 * gib}, {1, 0}, {1, 0},
		{2, 3 * gib / 2}, {2, 5 * gib / 2}, {1, gib}, {1, gib}, {2, gib / 2},
	} {
		m.Nodes = append(m.Nodes, cluster.Node{Name: "node" + string(rune('a'+i)), Capacity: []int64{c[0], c[1]}})
	}
	for i, t := range []struct {
		cpu, mem int64
		on, to   int
	}{
		{1, gib, 3, 6}, {1, gib, 0, 7}, {1, gib, 0, 7}, {1, gib, 1, 8}, {0, gib, 6, 0},
		{0, gib, 7, 0}, {1, gib, 8, 9}, {0, gib, 7, 1}, {0, gib / 2, 9, 3}, {0, gib / 2, 9, 3},
	} {
		m.Tasks = append(m.Tasks, cluster.Task{Name: "t" + string(rune('0'+i)), State: cluster.Running, Node: t.on, Demand: []int64{t.cpu, t.mem}})
	}
	p := &plan.Problem{Model: m, Durations: cluster.BandwidthDurations{
		Memory: "memory", NetBandwidth: 110_000_000, DiskBandwidth: 50_000_000,
		BootTask: 15, ShutdownTask: 5, KillTask: 1, Latency: 2,
	}}
	for i, t := range []int{6, 7, 7, 8, 0, 0, 9, 1, 3, 3} {
		p.Constraints = append(p.Constraints, cluster.Fence{Tasks: []int{i}, Nodes: []int{t}})
	}
	return p
}

// The seed-13 problem gets a verified plan (or a named conflict) within
// the planner's own timeout, whether or not moves may go by suspend.
func TestScheduleBreaksLongWaitChains(t *testing.T) {
	for _, liveOnly := range []bool{false, true} {
		p := vtdcHang()
		pl, err := plan.Solve(context.Background(), p, plan.Options{Seed: 13, Timeout: 10 * time.Second, LiveOnly: liveOnly})
		if err != nil {
			t.Fatalf("LiveOnly=%v: Solve: %v", liveOnly, err)
		}
		if err := verify.Check(p, pl); err != nil {
			t.Fatalf("LiveOnly=%v: plan fails verification: %v\nplan:\n%s", liveOnly, err, dump(p, pl))
		}
		if pl.Stats.TimedOut {
			t.Errorf("LiveOnly=%v: the first plan took the whole timeout", liveOnly)
		}
	}
}

// manyEvents is a problem whose schedule has 2,500 distinct event times:
// 2,500 ready tasks boot on one large node, the i-th in i+1 units.
func manyEvents() *plan.Problem {
	m := world("n1:5000", "")
	for i := 0; i < 2500; i++ {
		m.Tasks = append(m.Tasks, cluster.Task{Name: fmt.Sprintf("t%d", i), State: cluster.Ready, Node: cluster.NoNode,
			Demand: []int64{1}, Durations: map[cluster.ActionKind]int64{cluster.Boot: int64(i + 1)}})
	}
	all := make([]int, len(m.Tasks))
	for i := range all {
		all[i] = i
	}
	return &plan.Problem{Model: m, Constraints: []cluster.Constraint{cluster.StateConstraint{State: cluster.Running, Tasks: all}}}
}

// The scheduler honours the deadline itself: with a clock always past it,
// the first schedule of a problem with many events stops with ErrTimeout
// (and the context's error when the context ended it) instead of running
// on; without a deadline the same problem gets a verified plan.
func TestScheduleStopsAtTheDeadline(t *testing.T) {
	p := manyEvents()
	now := time.Unix(0, 0)
	late := func() time.Time { now = now.Add(time.Hour); return now }
	_, err := plan.Solve(context.Background(), p, plan.Options{Timeout: time.Second, Now: late})
	var te *plan.TimeoutError
	if !errors.Is(err, plan.ErrTimeout) || !errors.As(err, &te) || te.Stage != "schedule" {
		t.Fatalf("clock past the deadline: got %v, want a schedule *TimeoutError", err)
	}
	if errors.Is(err, plan.ErrNoSolution) {
		t.Fatalf("a timeout reported as a conflict: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	calls := 0
	// The clock cancels the context at the scheduler's first look at the
	// deadline; the scheduler sees it at its second.
	cancelling := func() time.Time {
		if calls++; calls > 1 {
			cancel()
		}
		return time.Unix(0, 0)
	}
	_, err = plan.Solve(ctx, p, plan.Options{Timeout: time.Hour, Now: cancelling})
	if !errors.Is(err, plan.ErrTimeout) || !errors.Is(err, context.Canceled) {
		t.Fatalf("context cancelled while scheduling: got %v", err)
	}

	pl, err := plan.Solve(context.Background(), p, plan.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := verify.Check(p, pl); err != nil {
		t.Fatal(err)
	}
	if got := pl.Makespan(); got != 2500 {
		t.Errorf("makespan %d, want 2500 (every boot starts at 0)", got)
	}
}

// Every running task fenced to one other node, where the final placement
// fits but the current one is often over capacity (as the simulator's
// policies pose them): arrivals wait on departures in chains and cycles
// that only pivots break. Solve ends well within its timeout with a
// verified plan or a named conflict, never by the deadline.
func TestScheduleEndsOnFencedRotations(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		m := &cluster.Model{Resources: []string{"cpu", "mem"}}
		nN := rapid.IntRange(3, 12).Draw(t, "nodes")
		free := make([][2]int64, nN)
		for n := 0; n < nN; n++ {
			c := []int64{int64(rapid.IntRange(0, 2).Draw(t, "cpu")), int64(rapid.IntRange(0, 5).Draw(t, "mem"))}
			free[n] = [2]int64{c[0], c[1]}
			m.Nodes = append(m.Nodes, cluster.Node{Name: fmt.Sprintf("n%d", n), Capacity: c})
		}
		p := &plan.Problem{Model: m}
		nT := rapid.IntRange(2, 24).Draw(t, "tasks")
		for i := 0; i < nT; i++ {
			d := [2]int64{int64(rapid.IntRange(0, 1).Draw(t, "dcpu")), int64(rapid.IntRange(1, 2).Draw(t, "dmem"))}
			// The target: the first node from a drawn one where d fits.
			to, k := -1, rapid.IntRange(0, nN-1).Draw(t, "to")
			for j := 0; j < nN && to < 0; j++ {
				if n := (k + j) % nN; free[n][0] >= d[0] && free[n][1] >= d[1] {
					to = n
				}
			}
			if to < 0 {
				break
			}
			free[to][0] -= d[0]
			free[to][1] -= d[1]
			on := (to + rapid.IntRange(1, nN-1).Draw(t, "shift")) % nN
			m.Tasks = append(m.Tasks, cluster.Task{Name: fmt.Sprintf("t%d", i), State: cluster.Running, Node: on,
				Demand: []int64{d[0], d[1]},
				// Durations by size, as with bandwidths: tasks of one size
				// tie, so the shortest-first choices meet the same tasks.
				Durations: map[cluster.ActionKind]int64{
					cluster.Migrate: 2 + 5*d[1],
					cluster.Suspend: 2 + 10*d[1],
					cluster.Resume:  2 + 15*d[1],
				}})
			p.Constraints = append(p.Constraints, cluster.Fence{Tasks: []int{len(m.Tasks) - 1}, Nodes: []int{to}})
		}
		pl, err := plan.Solve(context.Background(), p, plan.Options{Seed: 1, Timeout: 10 * time.Second, LiveOnly: rapid.Bool().Draw(t, "liveOnly")})
		if err != nil {
			if !errors.Is(err, plan.ErrNoSolution) {
				t.Fatalf("Solve: %v (neither a plan nor a conflict)", err)
			}
			return
		}
		if pl.Stats.TimedOut {
			t.Fatalf("the first plan took the whole timeout")
		}
		if err := verify.Check(p, pl); err != nil {
			t.Fatalf("plan fails verification: %v\nplan:\n%s", err, dump(p, pl))
		}
	})
}
