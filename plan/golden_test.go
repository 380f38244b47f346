package plan_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/plan"
	"github.com/ferrycluster/ferry/plan/verify"
)

var update = flag.Bool("update", false, "rewrite the golden plans in testdata/golden")

// world builds a model from a compact description: nodes "name:cpu" (a
// trailing "!" marks an offline node), tasks "name:cpu@node" (node "-" for
// ready, a trailing "~" for sleeping), every duration 1 unless set later.
func world(nodes, tasks string) *cluster.Model {
	m := &cluster.Model{Resources: []string{"cpu"}}
	idx := map[string]int{}
	for _, f := range strings.Fields(nodes) {
		name, rest, _ := strings.Cut(f, ":")
		n := cluster.Node{Name: name}
		if strings.HasSuffix(rest, "!") {
			n.State = cluster.NodeOffline
			rest = strings.TrimSuffix(rest, "!")
		}
		var c int64
		fmt.Sscan(rest, &c)
		n.Capacity = []int64{c}
		idx[name] = len(m.Nodes)
		m.Nodes = append(m.Nodes, n)
	}
	for _, f := range strings.Fields(tasks) {
		name, rest, _ := strings.Cut(f, ":")
		dem, on, _ := strings.Cut(rest, "@")
		t := cluster.Task{Name: name, Node: cluster.NoNode, Durations: map[cluster.ActionKind]int64{}}
		var d int64
		fmt.Sscan(dem, &d)
		t.Demand = []int64{d}
		switch {
		case on == "-":
			t.State = cluster.Ready
		case strings.HasSuffix(on, "~"):
			t.State, t.Node = cluster.Sleeping, idx[strings.TrimSuffix(on, "~")]
		default:
			t.State, t.Node = cluster.Running, idx[on]
		}
		m.Tasks = append(m.Tasks, t)
	}
	return m
}

// render prints a plan one action a line, in plan order, with names.
func render(m *cluster.Model, pl *plan.Plan) string {
	var b strings.Builder
	name := func(n int) string {
		if n < 0 {
			return "-"
		}
		return m.Nodes[n].Name
	}
	for _, a := range pl.Actions {
		if a.Kind.IsNodeAction() {
			fmt.Fprintf(&b, "[%d,%d) %s %s\n", a.Start, a.End, a.Kind, name(a.Node))
			continue
		}
		fmt.Fprintf(&b, "[%d,%d) %s %s %s->%s\n", a.Start, a.End, a.Kind, m.Tasks[a.Task].Name, name(a.From), name(a.To))
	}
	fmt.Fprintf(&b, "mttr %d makespan %d migrations %d lowerbound %d\n", pl.MTTR(), pl.Makespan(), pl.Migrations(), pl.Stats.LowerBound)
	return b.String()
}

type golden struct {
	name string
	p    *plan.Problem
	opts plan.Options
	// check asserts what the scenario is about, beyond the golden text.
	check func(t *testing.T, pl *plan.Plan)
}

func goldens() []golden {
	var gs []golden

	// A swap: a must go where b is and b where a is; neither node has room
	// for the other until one leaves. n3 has room: a goes there first.
	{
		m := world("n1:4 n2:4 n3:4", "a:3@n1 b:3@n2")
		m.Tasks[0].Durations[cluster.Migrate] = 2
		m.Tasks[1].Durations[cluster.Migrate] = 3
		p := &plan.Problem{Model: m, Constraints: []cluster.Constraint{
			cluster.Fence{Tasks: []int{0}, Nodes: []int{1}},
			cluster.Fence{Tasks: []int{1}, Nodes: []int{0}},
		}}
		gs = append(gs, golden{"cycle-pivot-third-node", p, plan.Options{LiveOnly: true}, func(t *testing.T, pl *plan.Plan) {
			if pl.Migrations() != 3 {
				t.Errorf("want 3 migrations (one through the pivot node), got %d", pl.Migrations())
			}
		}})
	}
	// The same swap with no third node: one of them is suspended, the other
	// moves, then it resumes where the other was.
	{
		m := world("n1:4 n2:4", "a:3@n1 b:3@n2")
		m.Tasks[0].Durations[cluster.Migrate] = 2
		m.Tasks[1].Durations[cluster.Migrate] = 3
		p := &plan.Problem{Model: m, Constraints: []cluster.Constraint{
			cluster.Fence{Tasks: []int{0}, Nodes: []int{1}},
			cluster.Fence{Tasks: []int{1}, Nodes: []int{0}},
		}}
		gs = append(gs, golden{"cycle-pivot-suspend", p, plan.Options{LiveOnly: true}, func(t *testing.T, pl *plan.Plan) {
			kinds := map[cluster.ActionKind]int{}
			for _, a := range pl.Actions {
				kinds[a.Kind]++
			}
			if kinds[cluster.Suspend] != 1 || kinds[cluster.Resume] != 1 || kinds[cluster.Migrate] != 1 {
				t.Errorf("want one suspend, one resume, one migration; got %v", kinds)
			}
		}})
	}
	// A three-way rotation a->n2, b->n3, c->n1 with full nodes and a spare.
	{
		m := world("n1:4 n2:4 n3:4 n4:4", "a:3@n1 b:3@n2 c:3@n3")
		p := &plan.Problem{Model: m, Constraints: []cluster.Constraint{
			cluster.Fence{Tasks: []int{0}, Nodes: []int{1}},
			cluster.Fence{Tasks: []int{1}, Nodes: []int{2}},
			cluster.Fence{Tasks: []int{2}, Nodes: []int{0}},
		}}
		gs = append(gs, golden{"cycle-rotation", p, plan.Options{LiveOnly: true}, nil})
	}
	// Draining a node: its tasks leave, the node shuts down after the last
	// departure ends.
	{
		m := world("n1:8 n2:8 n3:8", "a:2@n1 b:3@n1 c:4@n2 d:1@n3")
		m.Tasks[0].Durations[cluster.Migrate] = 2
		m.Tasks[1].Durations[cluster.Migrate] = 5
		m.Nodes[0].Durations = map[cluster.ActionKind]int64{cluster.ShutdownNode: 3}
		p := &plan.Problem{Model: m, Constraints: []cluster.Constraint{
			cluster.NodeStateConstraint{State: cluster.NodeOffline, Nodes: []int{0}},
		}}
		gs = append(gs, golden{"node-shutdown", p, plan.Options{LiveOnly: true}, func(t *testing.T, pl *plan.Plan) {
			for _, a := range pl.Actions {
				if a.Kind == cluster.ShutdownNode && a.Start != 5 {
					t.Errorf("shutdownNode starts at %d, want 5 (when b has left)", a.Start)
				}
			}
		}})
	}
	// No room for a task that must run: an offline node boots and the task
	// boots on it once it is up.
	{
		m := world("n1:4 n2:4!", "a:3@n1 b:3@-")
		m.Nodes[1].Durations = map[cluster.ActionKind]int64{cluster.BootNode: 4}
		p := &plan.Problem{Model: m, Constraints: []cluster.Constraint{
			cluster.StateConstraint{State: cluster.Running, Tasks: []int{1}},
		}}
		gs = append(gs, golden{"node-boot", p, plan.Options{}, func(t *testing.T, pl *plan.Plan) {
			if pl.MTTR() != 4+5 {
				t.Errorf("MTTR %d, want 9 (bootNode [0,4), boot [4,5))", pl.MTTR())
			}
		}})
	}
	// Every task state change at once: boot, shutdown, suspend, resume here,
	// resume elsewhere, kill of each state.
	{
		m := world("n1:6 n2:6", "boot:1@- stop:1@n1 sleep:1@n1 wake:1@n1~ away:5@n2~ killr:1@n2 kills:1@n2~ killq:1@- big:5@n1")
		p := &plan.Problem{Model: m, Constraints: []cluster.Constraint{
			cluster.StateConstraint{State: cluster.Running, Tasks: []int{0, 3, 4}},
			cluster.StateConstraint{State: cluster.Ready, Tasks: []int{1}},
			cluster.StateConstraint{State: cluster.Sleeping, Tasks: []int{2}},
			cluster.StateConstraint{State: cluster.Killed, Tasks: []int{5, 6, 7}},
		}}
		gs = append(gs, golden{"state-changes", p, plan.Options{}, nil})
	}
	// An arrival waits for room: b can only come to n1 once a has left it.
	{
		m := world("n1:4 n2:4", "a:3@n1 b:3@-")
		m.Tasks[0].Durations[cluster.Shutdown] = 3
		p := &plan.Problem{Model: m, Constraints: []cluster.Constraint{
			cluster.StateConstraint{State: cluster.Ready, Tasks: []int{0}},
			cluster.StateConstraint{State: cluster.Running, Tasks: []int{1}},
			cluster.Fence{Tasks: []int{1}, Nodes: []int{0}},
		}}
		gs = append(gs, golden{"wait-for-room", p, plan.Options{}, func(t *testing.T, pl *plan.Plan) {
			for _, a := range pl.Actions {
				if a.Kind == cluster.Boot && a.Start != 3 {
					t.Errorf("boot starts at %d, want 3", a.Start)
				}
			}
		}})
	}
	// A continuous spread: b may not arrive on n2 while a is still there.
	{
		m := world("n1:8 n2:8 n3:8", "a:1@n2 b:1@n1")
		m.Tasks[0].Durations[cluster.Migrate] = 4
		p := &plan.Problem{Model: m, Constraints: []cluster.Constraint{
			cluster.Spread{Tasks: []int{0, 1}, Continuous: true},
			cluster.Fence{Tasks: []int{0}, Nodes: []int{2}},
			cluster.Fence{Tasks: []int{1}, Nodes: []int{1}},
		}}
		gs = append(gs, golden{"continuous-spread", p, plan.Options{LiveOnly: true}, nil})
	}
	// Under MinMTTR a relocation goes by suspend and resume when the
	// durations make that cheaper (here 1+2 against a migration of 6).
	{
		m := world("n1:4 n2:4", "a:2@n1")
		m.Tasks[0].Durations[cluster.Migrate] = 6
		p := &plan.Problem{Model: m, Constraints: []cluster.Constraint{
			cluster.Ban{Tasks: []int{0}, Nodes: []int{0}},
		}}
		gs = append(gs, golden{"relocate-by-suspend", p, plan.Options{}, func(t *testing.T, pl *plan.Plan) {
			if pl.Migrations() != 0 || pl.MTTR() != 3 {
				t.Errorf("want suspend [0,1) and resume [1,2), MTTR 3; got %d migrations, MTTR %d", pl.Migrations(), pl.MTTR())
			}
		}})
	}
	// seq orders actions; noDelay starts one at 0.
	{
		m := world("n1:8 n2:8", "a:1@n1 b:1@n1 c:1@-")
		m.Tasks[0].Durations[cluster.Migrate] = 2
		p := &plan.Problem{Model: m, Constraints: []cluster.Constraint{
			cluster.Ban{Tasks: []int{0, 1}, Nodes: []int{0}},
			cluster.StateConstraint{State: cluster.Running, Tasks: []int{2}},
			cluster.Seq{Tasks: []int{0, 2, 1}},
			cluster.NoDelay{Task: 0},
		}}
		gs = append(gs, golden{"seq-nodelay", p, plan.Options{}, nil})
	}
	return gs
}

// TestGoldenPlans solves hand-made scenarios (cycles, pivots, node
// shutdowns and boots, state changes, waits) and compares the plans with
// testdata/golden/<name>.golden; -update rewrites them. Every plan also
// passes the verifier.
func TestGoldenPlans(t *testing.T) {
	for _, g := range goldens() {
		t.Run(g.name, func(t *testing.T) {
			pl, err := plan.Solve(context.Background(), g.p, g.opts)
			if err != nil {
				t.Fatal(err)
			}
			if err := verify.Check(g.p, pl); err != nil {
				t.Fatalf("plan fails verification: %v\n%s", err, render(g.p.Model, pl))
			}
			got := render(g.p.Model, pl)
			path := filepath.Join("testdata", "golden", g.name+".golden")
			if *update {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("plan differs from %s:\ngot:\n%swant:\n%s", path, got, want)
			}
			if g.check != nil {
				g.check(t, pl)
			}
		})
	}
}
