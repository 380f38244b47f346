package verify

import (
	"errors"
	"strings"
	"testing"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/plan"
	"pgregory.net/rapid"
)

// world: three online nodes n0..n2 (cpu 4), one offline node n3 (cpu 4);
// a runs on n0 (cpu 2), b on n1 (cpu 2), c sleeps on n2 (cpu 1), d is
// ready (cpu 1), e runs on n0 (cpu 2): n0 is full.
func world() *cluster.Model {
	node := func(name string, st cluster.NodeState) cluster.Node {
		return cluster.Node{Name: name, State: st, Capacity: []int64{4}}
	}
	return &cluster.Model{
		Resources: []string{"cpu"},
		Nodes:     []cluster.Node{node("n0", cluster.NodeOnline), node("n1", cluster.NodeOnline), node("n2", cluster.NodeOnline), node("n3", cluster.NodeOffline)},
		Tasks: []cluster.Task{
			{Name: "a", State: cluster.Running, Node: 0, Demand: []int64{2}},
			{Name: "b", State: cluster.Running, Node: 1, Demand: []int64{2}},
			{Name: "c", State: cluster.Sleeping, Node: 2, Demand: []int64{1}},
			{Name: "d", State: cluster.Ready, Node: cluster.NoNode, Demand: []int64{1}},
			{Name: "e", State: cluster.Running, Node: 0, Demand: []int64{2}},
		},
	}
}

const (
	n0, n1, n2, n3     = 0, 1, 2, 3
	ta, tb, tc, td, te = 0, 1, 2, 3, 4
)

func mig(t, from, to int, s int64) plan.Action {
	return plan.Action{Kind: cluster.Migrate, Task: t, From: from, To: to, Start: s, End: s + 1, Node: -1}
}
func boot(t, to int, s int64) plan.Action {
	return plan.Action{Kind: cluster.Boot, Task: t, From: cluster.NoNode, To: to, Start: s, End: s + 1, Node: -1}
}
func resume(t, from, to int, s int64) plan.Action {
	return plan.Action{Kind: cluster.Resume, Task: t, From: from, To: to, Start: s, End: s + 1, Node: -1}
}
func suspend(t, on int, s int64) plan.Action {
	return plan.Action{Kind: cluster.Suspend, Task: t, From: on, To: on, Start: s, End: s + 1, Node: -1}
}
func shutdown(t, on int, s int64) plan.Action {
	return plan.Action{Kind: cluster.Shutdown, Task: t, From: on, To: cluster.NoNode, Start: s, End: s + 1, Node: -1}
}
func kill(t, on int, s int64) plan.Action {
	return plan.Action{Kind: cluster.Kill, Task: t, From: on, To: cluster.NoNode, Start: s, End: s + 1, Node: -1}
}
func bootNode(n int, s int64) plan.Action {
	return plan.Action{Kind: cluster.BootNode, Task: -1, Node: n, From: cluster.NoNode, To: n, Start: s, End: s + 1}
}
func haltNode(n int, s int64) plan.Action {
	return plan.Action{Kind: cluster.ShutdownNode, Task: -1, Node: n, From: cluster.NoNode, To: n, Start: s, End: s + 1}
}

type verifyCase struct {
	name    string
	cons    []cluster.Constraint
	actions []plan.Action
	edit    func(m *cluster.Model)
	// want: "" for a valid plan, else the rule and a substring of the error.
	rule, want string
}

func run(t *testing.T, tc verifyCase) {
	t.Helper()
	m := world()
	if tc.edit != nil {
		tc.edit(m)
	}
	p := &plan.Problem{Model: m, Constraints: tc.cons}
	pl := &plan.Plan{Origin: m, Actions: tc.actions}
	err := Check(p, pl)
	if tc.rule == "" {
		if err != nil {
			t.Fatalf("%s: want a valid plan, got %v", tc.name, err)
		}
		return
	}
	if err == nil {
		t.Fatalf("%s: want a %s violation, the plan passed", tc.name, tc.rule)
	}
	if !errors.Is(err, ErrViolation) {
		t.Fatalf("%s: error %v does not wrap ErrViolation", tc.name, err)
	}
	vs, _ := Violations(p, pl)
	found := false
	for _, v := range vs {
		if v.Rule == tc.rule && strings.Contains(v.Error(), tc.want) {
			found = true
		}
	}
	if !found {
		t.Fatalf("%s: want rule %s containing %q, got %v", tc.name, tc.rule, tc.want, err)
	}
}

func TestValidPlans(t *testing.T) {
	for _, tc := range []verifyCase{
		{name: "empty plan"},
		{name: "migrate to free node", actions: []plan.Action{mig(ta, n0, n2, 0)}},
		{name: "swap through a pivot: e to n2, a to n1 after b left",
			edit:    func(m *cluster.Model) { m.Nodes[1].Capacity[0] = 2 },
			actions: []plan.Action{mig(tb, n1, n2, 0), mig(ta, n0, n1, 1)}},
		{name: "sequence migrate then migrate", actions: []plan.Action{mig(ta, n0, n2, 0), mig(ta, n2, n1, 1)}},
		{name: "suspend then resume elsewhere", actions: []plan.Action{suspend(ta, n0, 0), resume(ta, n0, n2, 1)},
			cons: []cluster.Constraint{}},
		{name: "boot on a booted node", actions: []plan.Action{bootNode(n3, 0), boot(td, n3, 1)},
			cons: []cluster.Constraint{cluster.StateConstraint{State: cluster.Running, Tasks: []int{td}}}},
		{name: "drain and shut down n1", actions: []plan.Action{mig(tb, n1, n2, 0), haltNode(n1, 1)},
			cons: []cluster.Constraint{cluster.NodeStateConstraint{State: cluster.NodeOffline, Nodes: []int{n1}}}},
		{name: "kill ready task", actions: []plan.Action{{Kind: cluster.Kill, Task: td, From: cluster.NoNode, To: cluster.NoNode, Start: 0, End: 1}},
			cons: []cluster.Constraint{cluster.StateConstraint{State: cluster.Killed, Tasks: []int{td}}}},
		{name: "overloaded at origin may shed", edit: func(m *cluster.Model) { m.Nodes[0].Capacity[0] = 3 },
			actions: []plan.Action{mig(ta, n0, n2, 0)}},
		{name: "overbook doubles capacity", cons: []cluster.Constraint{cluster.Overbook{Nodes: []int{n0}, Resource: "cpu", Ratio: 2}},
			actions: []plan.Action{mig(tb, n1, n0, 0)}},
		{name: "continuous spread after the other left", cons: []cluster.Constraint{cluster.Spread{Tasks: []int{ta, tb}, Continuous: true}},
			actions: []plan.Action{mig(tb, n1, n2, 0), mig(ta, n0, n1, 1)}},
		{name: "shut a task down", actions: []plan.Action{shutdown(ta, n0, 0)},
			cons: []cluster.Constraint{cluster.StateConstraint{State: cluster.Ready, Tasks: []int{ta}}}},
		{name: "seq in order", cons: []cluster.Constraint{cluster.Seq{Tasks: []int{ta, tb}}},
			actions: []plan.Action{mig(ta, n0, n2, 0), mig(tb, n1, n2, 1)}},
		{name: "zero-duration migrate", edit: func(m *cluster.Model) { m.Tasks[ta].Durations = map[cluster.ActionKind]int64{cluster.Migrate: 0} },
			actions: []plan.Action{{Kind: cluster.Migrate, Task: ta, From: n0, To: n2, Start: 3, End: 3}}},
	} {
		t.Run(tc.name, func(t *testing.T) { run(t, tc) })
	}
}

func TestEachRuleViolated(t *testing.T) {
	for _, tc := range []verifyCase{
		// malformed actions
		{name: "unknown task", actions: []plan.Action{{Kind: cluster.Migrate, Task: 9, From: n0, To: n1, Start: 0, End: 1}}, rule: RuleAction, want: "unknown task index 9"},
		{name: "negative start", actions: []plan.Action{{Kind: cluster.Migrate, Task: ta, From: n0, To: n2, Start: -1, End: 0}}, rule: RuleAction, want: "bad window"},
		{name: "suspend elsewhere", actions: []plan.Action{{Kind: cluster.Suspend, Task: ta, From: n0, To: n1, Start: 0, End: 1}}, rule: RuleAction, want: "image must stay"},
		{name: "migrate to itself", actions: []plan.Action{mig(ta, n0, n0, 0)}, rule: RuleAction, want: "to itself"},
		// durations
		{name: "wrong default duration", actions: []plan.Action{{Kind: cluster.Migrate, Task: ta, From: n0, To: n2, Start: 0, End: 5}}, rule: RuleDuration, want: "lasts 5, the duration model says 1"},
		{name: "attribute duration", edit: func(m *cluster.Model) { m.Tasks[ta].Durations = map[cluster.ActionKind]int64{cluster.Migrate: 7} },
			actions: []plan.Action{mig(ta, n0, n2, 0)}, rule: RuleDuration, want: "duration model says 7"},
		{name: "node duration", edit: func(m *cluster.Model) { m.Nodes[n3].Durations = map[cluster.ActionKind]int64{cluster.BootNode: 4} },
			actions: []plan.Action{bootNode(n3, 0)}, rule: RuleDuration, want: `node "n3"`},
		// life cycle
		{name: "migrate a sleeping task", actions: []plan.Action{mig(tc, n2, n1, 0)}, rule: RuleLifecycle, want: "only a running task"},
		{name: "migrate from the wrong node", actions: []plan.Action{mig(ta, n1, n2, 0)}, rule: RuleLifecycle, want: "runs on n0, not n1"},
		{name: "boot a running task", actions: []plan.Action{boot(ta, n2, 0)}, rule: RuleLifecycle, want: "only a ready task boots"},
		{name: "resume a running task", actions: []plan.Action{resume(ta, n0, n2, 0)}, rule: RuleLifecycle, want: "only a sleeping task"},
		{name: "resume from the wrong node", actions: []plan.Action{resume(tc, n1, n2, 0)}, rule: RuleLifecycle, want: "image is on n2"},
		{name: "two overlapping actions", actions: []plan.Action{mig(ta, n0, n2, 0), {Kind: cluster.Migrate, Task: ta, From: n2, To: n1, Start: 0, End: 1}}, rule: RuleLifecycle, want: "before the task's previous action"},
		{name: "two migrations from the origin", actions: []plan.Action{mig(ta, n0, n2, 0), mig(ta, n0, n1, 1)}, rule: RuleLifecycle, want: "runs on n2, not n0"},
		{name: "reboot as a pivot", actions: []plan.Action{shutdown(ta, n0, 0), boot(ta, n2, 1)}, rule: RuleLifecycle, want: "a reboot loses its state"},
		{name: "kill twice", actions: []plan.Action{kill(ta, n0, 0), kill(ta, n0, 1)}, rule: RuleLifecycle, want: "already killed"},
		{name: "kill ready with a node", actions: []plan.Action{kill(td, n0, 0)}, rule: RuleLifecycle, want: "ready task is on no node"},
		{name: "boot an online node", actions: []plan.Action{bootNode(n0, 0)}, rule: RuleLifecycle, want: "bootNode of an online node"},
		{name: "halt an offline node", actions: []plan.Action{haltNode(n3, 0)}, rule: RuleLifecycle, want: "shutdownNode of an offline node"},
		// online windows
		{name: "boot on an offline node", actions: []plan.Action{boot(td, n3, 0)}, cons: []cluster.Constraint{cluster.StateConstraint{State: cluster.Running, Tasks: []int{td}}},
			rule: RuleOnline, want: "no window"},
		{name: "boot during bootNode", actions: []plan.Action{bootNode(n3, 0), boot(td, n3, 0)}, cons: []cluster.Constraint{cluster.StateConstraint{State: cluster.Running, Tasks: []int{td}}},
			rule: RuleOnline, want: "[1, end)"},
		{name: "shutdown a node before it is empty", actions: []plan.Action{mig(tb, n1, n2, 0), haltNode(n1, 0)}, rule: RuleOnline, want: `task "b" node "n1"`},
		{name: "shutdown a node with a sleeping image", actions: []plan.Action{haltNode(n2, 0)}, rule: RuleOnline, want: "sleeps there"},
		// capacity
		{name: "arrive on a full node", actions: []plan.Action{mig(tb, n1, n0, 0)}, rule: RuleCapacity, want: `node "n0" resource "cpu" at t=0: load 6 exceeds capacity 4`},
		{name: "arrive before the other left", edit: func(m *cluster.Model) { m.Nodes[1].Capacity[0] = 2 },
			actions: []plan.Action{mig(tb, n1, n2, 1), mig(ta, n0, n1, 1)}, rule: RuleCapacity, want: "at t=1: load 4"},
		{name: "overloaded origin gets an arrival", edit: func(m *cluster.Model) { m.Nodes[0].Capacity[0] = 3 },
			actions: []plan.Action{mig(ta, n0, n2, 0), mig(tb, n1, n0, 1)}, rule: RuleCapacity, want: `node "n0"`},
		{name: "preserve raises demand", cons: []cluster.Constraint{cluster.Preserve{Tasks: []int{ta}, Resource: "cpu", Amount: 3}},
			actions: []plan.Action{mig(ta, n0, n1, 0)}, rule: RuleCapacity, want: "load 5 exceeds capacity 4"},
		{name: "resume onto a full node", actions: []plan.Action{resume(tc, n2, n0, 0)}, rule: RuleCapacity, want: `node "n0"`},
		// final state
		{name: "state constraint unmet", cons: []cluster.Constraint{cluster.StateConstraint{State: cluster.Running, Tasks: []int{td}}}, rule: RuleConstraint, want: "ends ready, not running"},
		{name: "unconstrained task changes state", actions: []plan.Action{suspend(ta, n0, 0)}, rule: RuleFinal, want: "must stay running"},
		{name: "node state unmet", cons: []cluster.Constraint{cluster.NodeStateConstraint{State: cluster.NodeOnline, Nodes: []int{n3}}}, rule: RuleConstraint, want: "ends offline, not online"},
		// constraints
		{name: "spread final", cons: []cluster.Constraint{cluster.Spread{Tasks: []int{ta, tb}}}, actions: []plan.Action{mig(tb, n1, n2, 0), mig(ta, n0, n2, 0)},
			rule: RuleConstraint, want: "both run on n2"},
		{name: "spread continuous", cons: []cluster.Constraint{cluster.Spread{Tasks: []int{ta, tb}, Continuous: true}}, actions: []plan.Action{mig(tb, n1, n2, 1), mig(ta, n0, n1, 0)},
			rule: RuleConstraint, want: "b already runs there"},
		{name: "ban final", cons: []cluster.Constraint{cluster.Ban{Tasks: []int{ta}, Nodes: []int{n0}}}, rule: RuleConstraint, want: "runs on banned n0"},
		{name: "ban continuous", cons: []cluster.Constraint{cluster.Ban{Tasks: []int{ta}, Nodes: []int{n2}, Continuous: true}}, actions: []plan.Action{mig(ta, n0, n2, 0), mig(ta, n2, n1, 1)},
			rule: RuleConstraint, want: "the node is banned"},
		{name: "fence final", cons: []cluster.Constraint{cluster.Fence{Tasks: []int{ta}, Nodes: []int{n1}}}, rule: RuleConstraint, want: "outside the fence"},
		{name: "fence continuous", cons: []cluster.Constraint{cluster.Fence{Tasks: []int{ta}, Nodes: []int{n0, n1}, Continuous: true}}, actions: []plan.Action{mig(ta, n0, n2, 0), mig(ta, n2, n1, 1)},
			rule: RuleConstraint, want: "node is outside the fence"},
		{name: "gather final", cons: []cluster.Constraint{cluster.Gather{Tasks: []int{ta, tb}}}, rule: RuleConstraint, want: "running tasks on n0 and n1"},
		{name: "gather continuous", edit: func(m *cluster.Model) { m.Tasks[tb].Node = n0; m.Tasks[te].Node = n1 },
			cons:    []cluster.Constraint{cluster.Gather{Tasks: []int{ta, tb}, Continuous: true}},
			actions: []plan.Action{mig(ta, n0, n2, 0), mig(tb, n0, n2, 0)}, rule: RuleConstraint, want: "arrival breaks the continuous constraint"},
		{name: "among final", cons: []cluster.Constraint{cluster.Among{Tasks: []int{ta, tb}, Groups: [][]int{{n0}, {n1, n2}}}}, rule: RuleConstraint, want: "in no single group"},
		{name: "among continuous", cons: []cluster.Constraint{cluster.Among{Tasks: []int{ta, tb}, Groups: [][]int{{n0, n1}, {n2}}, Continuous: true}},
			actions: []plan.Action{mig(ta, n0, n2, 0), mig(ta, n2, n1, 1)}, rule: RuleConstraint, want: "arrival breaks"},
		{name: "split final", cons: []cluster.Constraint{cluster.Split{Groups: [][]int{{ta}, {te}}}}, rule: RuleConstraint, want: "different groups both run on n0"},
		{name: "split continuous", cons: []cluster.Constraint{cluster.Split{Groups: [][]int{{ta}, {tb}}, Continuous: true}},
			actions: []plan.Action{mig(ta, n0, n1, 0), mig(ta, n1, n2, 1)}, rule: RuleConstraint, want: "another group runs there"},
		{name: "splitAmong final", cons: []cluster.Constraint{cluster.SplitAmong{TaskGroups: [][]int{{ta}, {te}}, NodeGroups: [][]int{{n0}, {n1, n2}}}},
			rule: RuleConstraint, want: "share node group 0"},
		{name: "splitAmong continuous", cons: []cluster.Constraint{cluster.SplitAmong{TaskGroups: [][]int{{ta}, {tb}}, NodeGroups: [][]int{{n0}, {n1, n2}}, Continuous: true}},
			actions: []plan.Action{mig(ta, n0, n2, 0), mig(ta, n2, n0, 1)}, rule: RuleConstraint, want: "arrival breaks"},
		{name: "lonely final", cons: []cluster.Constraint{cluster.Lonely{Tasks: []int{ta}}}, rule: RuleConstraint, want: "lonely a shares the node with e"},
		{name: "lonely continuous", cons: []cluster.Constraint{cluster.Lonely{Tasks: []int{tb}, Continuous: true}},
			actions: []plan.Action{mig(ta, n0, n1, 0), mig(ta, n1, n2, 1)}, rule: RuleConstraint, want: "only one of them is lonely"},
		{name: "root", cons: []cluster.Constraint{cluster.Root{Tasks: []int{ta}}}, actions: []plan.Action{mig(ta, n0, n2, 0)}, rule: RuleConstraint, want: "root task may not move"},
		{name: "quarantine in", cons: []cluster.Constraint{cluster.Quarantine{Nodes: []int{n2}}}, actions: []plan.Action{mig(ta, n0, n2, 0)}, rule: RuleConstraint, want: "onto a quarantined node"},
		{name: "quarantine out", cons: []cluster.Constraint{cluster.Quarantine{Nodes: []int{n0}}}, actions: []plan.Action{mig(ta, n0, n2, 0)}, rule: RuleConstraint, want: "out of a quarantined node"},
		{name: "resourceCapacity final", cons: []cluster.Constraint{cluster.ResourceCapacity{Nodes: []int{n0, n1}, Resource: "cpu", Amount: 5}}, rule: RuleConstraint, want: "demand 6 exceed 5"},
		{name: "resourceCapacity continuous", cons: []cluster.Constraint{cluster.ResourceCapacity{Nodes: []int{n1, n2}, Resource: "cpu", Amount: 2, Continuous: true}},
			actions: []plan.Action{mig(tb, n1, n0, 1), mig(ta, n0, n2, 0)}, rule: RuleConstraint, want: "at t=0: demand 4 exceed 2"},
		{name: "runningCapacity final", cons: []cluster.Constraint{cluster.RunningCapacity{Nodes: []int{n0}, Amount: 1}}, rule: RuleConstraint, want: "running tasks 2 exceed 1"},
		{name: "runningCapacity continuous", cons: []cluster.Constraint{cluster.RunningCapacity{Nodes: []int{n2}, Amount: 0, Continuous: true}},
			actions: []plan.Action{mig(ta, n0, n2, 0), mig(ta, n2, n1, 1)}, rule: RuleConstraint, want: "running tasks 1 exceed 0"},
		{name: "maxOnline final", cons: []cluster.Constraint{cluster.MaxOnline{Nodes: []int{n0, n1}, Amount: 1}}, rule: RuleConstraint, want: "2 nodes online, at most 1"},
		{name: "maxOnline continuous", cons: []cluster.Constraint{cluster.MaxOnline{Nodes: []int{n2, n3}, Amount: 1, Continuous: true},
			cluster.StateConstraint{State: cluster.Killed, Tasks: []int{tc}}},
			actions: []plan.Action{kill(tc, n2, 0), haltNode(n2, 1), bootNode(n3, 1)}, rule: RuleConstraint, want: "at t=1: 2 nodes online"},
		{name: "overbook too small", cons: []cluster.Constraint{cluster.Overbook{Nodes: []int{n0}, Resource: "cpu", Ratio: 1.2}},
			actions: []plan.Action{mig(tb, n1, n0, 0)}, rule: RuleCapacity, want: "load 6 exceeds capacity 4"},
		{name: "seq out of order", cons: []cluster.Constraint{cluster.Seq{Tasks: []int{ta, tb}}}, actions: []plan.Action{mig(ta, n0, n2, 1), mig(tb, n1, n2, 0)},
			rule: RuleConstraint, want: "starts before a's action ends at 2"},
		{name: "noDelay", cons: []cluster.Constraint{cluster.NoDelay{Task: ta}}, actions: []plan.Action{mig(ta, n0, n2, 1)}, rule: RuleConstraint, want: "must start at 0"},
	} {
		t.Run(tc.name, func(t *testing.T) { run(t, tc) })
	}
}

func TestResultAndOriginChecked(t *testing.T) {
	m := world()
	p := &plan.Problem{Model: m}
	res := m.Clone()
	res.Tasks[ta].Node = n1 // the actions lead to n2
	err := Check(p, &plan.Plan{Origin: m, Actions: []plan.Action{mig(ta, n0, n2, 0)}, Result: res})
	if err == nil || !strings.Contains(err.Error(), "Plan.Result says running on n1") {
		t.Fatalf("want a Result mismatch, got %v", err)
	}
	orig := m.Clone()
	orig.Tasks[tb].Node = n2
	err = Check(p, &plan.Plan{Origin: orig})
	if err == nil || !strings.Contains(err.Error(), "origin says running on n2") {
		t.Fatalf("want an origin mismatch, got %v", err)
	}
}

func TestMalformedProblem(t *testing.T) {
	m := world()
	for _, p := range []*plan.Problem{
		nil,
		{Model: m, Constraints: []cluster.Constraint{cluster.Ban{Tasks: []int{42}}}},
		{Model: m, Constraints: []cluster.Constraint{cluster.Preserve{Tasks: []int{0}, Resource: "gpu"}}},
		{Model: m, Constraints: []cluster.Constraint{cluster.Overbook{Nodes: []int{0}, Resource: "cpu", Ratio: 0.5}}},
	} {
		if err := Check(p, &plan.Plan{}); !errors.Is(err, cluster.ErrInvalid) {
			t.Fatalf("want ErrInvalid, got %v", err)
		}
	}
}

// TestShiftedValidPlanStaysValid: delaying every action of a valid plan by
// the same amount keeps it valid when no constraint pins times, and the
// verifier never panics on random actions.
func TestRandomActionsNeverPanic(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		m := world()
		n := rapid.IntRange(0, 6).Draw(rt, "n")
		var acts []plan.Action
		for i := 0; i < n; i++ {
			s := rapid.Int64Range(-1, 5).Draw(rt, "start")
			acts = append(acts, plan.Action{
				Kind:  cluster.ActionKind(rapid.IntRange(0, 8).Draw(rt, "kind")),
				Task:  rapid.IntRange(-1, 5).Draw(rt, "task"),
				Node:  rapid.IntRange(-1, 4).Draw(rt, "node"),
				From:  rapid.IntRange(-1, 4).Draw(rt, "from"),
				To:    rapid.IntRange(-1, 4).Draw(rt, "to"),
				Start: s,
				End:   s + rapid.Int64Range(-1, 2).Draw(rt, "d"),
			})
		}
		cons := []cluster.Constraint{
			cluster.Spread{Tasks: []int{ta, tb}, Continuous: true},
			cluster.Lonely{Tasks: []int{tb}, Continuous: true},
			cluster.SplitAmong{TaskGroups: [][]int{{ta}, {tb}}, NodeGroups: [][]int{{n0}, {n1, n2}}, Continuous: true},
			cluster.MaxOnline{Nodes: []int{n0, n3}, Amount: 1, Continuous: true},
			cluster.ResourceCapacity{Nodes: []int{n0, n1}, Resource: "cpu", Amount: 6, Continuous: true},
			cluster.Seq{Tasks: []int{ta, tb, tc}},
		}
		p := &plan.Problem{Model: m, Constraints: cons}
		vs, err := Violations(p, &plan.Plan{Actions: acts})
		if err != nil {
			rt.Fatal(err)
		}
		if len(acts) == 0 && len(vs) > 0 {
			rt.Fatalf("empty plan on a valid origin reported %v", vs[0])
		}
	})
}

func TestShiftKeepsValid(t *testing.T) {
	base := []plan.Action{mig(tb, n1, n2, 0), mig(ta, n0, n1, 1), bootNode(n3, 0), boot(td, n3, 1)}
	m := world()
	m.Nodes[1].Capacity[0] = 2
	p := &plan.Problem{Model: m, Constraints: []cluster.Constraint{cluster.StateConstraint{State: cluster.Running, Tasks: []int{td}}}}
	rapid.Check(t, func(rt *rapid.T) {
		d := rapid.Int64Range(0, 100).Draw(rt, "shift")
		acts := append([]plan.Action(nil), base...)
		for i := range acts {
			acts[i].Start += d
			acts[i].End += d
		}
		if err := Check(p, &plan.Plan{Actions: acts}); err != nil {
			rt.Fatal(err)
		}
		// Starting the arrival before the departure begins always breaks it.
		acts[1].Start, acts[1].End = acts[0].Start, acts[0].End
		if err := Check(p, &plan.Plan{Actions: acts}); !errors.Is(err, ErrViolation) {
			rt.Fatalf("overlapping swap passed")
		}
	})
}
