package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"pgregory.net/rapid"
)

func mustApply(t *testing.T, s *State, c Command) Result {
	t.Helper()
	r := s.Apply(&c)
	if r.Err != nil {
		t.Fatalf("apply %+v: %v", c, r.Err)
	}
	return r
}

func seeded(t *testing.T) *State {
	s := NewState()
	for _, n := range []string{"n1", "n2"} {
		mustApply(t, s, Command{At: 1, RegisterNode: &RegisterNode{Name: n, Addr: n + ":1", Capacity: Resources{4000, 8 << 30}}})
	}
	mustApply(t, s, Command{At: 2, SubmitJob: &SubmitJob{
		Job:   Job{Name: "j", Priority: 5},
		Tasks: []Task{{Name: "j.a.0", Driver: "process", Demand: Resources{1000, 1 << 30}}, {Name: "j.a.1", Driver: "qemu", Demand: Resources{1000, 1 << 30}}},
	}})
	return s
}

func TestPlanLifecycleBumpsEpochs(t *testing.T) {
	s := seeded(t)
	r := mustApply(t, s, Command{At: 3, CreatePlan: &CreatePlan{Plan: Plan{Actions: []Action{
		{Kind: "boot", Task: "j.a.0", To: "n1"},
		{Kind: "migrate", Task: "j.a.0", From: "n1", To: "n2", Deps: []int{0}},
	}}}})
	id := r.PlanID
	// The migrate may not start before the boot is done.
	if r := s.Apply(&Command{StartAction: &StartAction{Plan: id, Index: 1}}); !errors.Is(r.Err, ErrConflict) {
		t.Fatalf("start before dependency: %v", r.Err)
	}
	mustApply(t, s, Command{At: 4, StartAction: &StartAction{Plan: id, Index: 0}})
	if e := s.Tasks["j.a.0"].Epoch; e != 1 {
		t.Fatalf("boot start: epoch %d, want 1", e)
	}
	mustApply(t, s, Command{At: 5, FinishAction: &FinishAction{Plan: id, Index: 0, OK: true}})
	tk := s.Tasks["j.a.0"]
	if tk.Phase != TaskRunning || tk.Node != "n1" || tk.Epoch != 1 {
		t.Fatalf("after boot: %+v", tk)
	}
	mustApply(t, s, Command{At: 6, StartAction: &StartAction{Plan: id, Index: 1}})
	if tk.Epoch != 1 || tk.Node != "n1" {
		t.Fatalf("a migration changes nothing before it commits: %+v", tk)
	}
	mustApply(t, s, Command{At: 7, FinishAction: &FinishAction{Plan: id, Index: 1, OK: true}})
	if tk.Phase != TaskRunning || tk.Node != "n2" || tk.Epoch != 2 {
		t.Fatalf("after migrate: %+v", tk)
	}
	a := s.Plans[id].Actions[1]
	if a.Before.Node != "n1" || a.After.Node != "n2" || a.After.Epoch != 2 || a.Started != 6 || a.Ended != 7 {
		t.Fatalf("journal: %+v before %+v after %+v", a, a.Before, a.After)
	}
	mustApply(t, s, Command{At: 8, FinishPlan: &FinishPlan{Plan: id}})
	if s.ActivePlan() != nil {
		t.Fatal("plan still active")
	}
}

func TestFailedActionKeepsPlacementAndCancelsNothingElse(t *testing.T) {
	s := seeded(t)
	id := mustApply(t, s, Command{CreatePlan: &CreatePlan{Plan: Plan{Actions: []Action{
		{Kind: "boot", Task: "j.a.0", To: "n1"},
		{Kind: "boot", Task: "j.a.1", To: "n2"},
	}}}}).PlanID
	// A second plan cannot start while one executes.
	if r := s.Apply(&Command{CreatePlan: &CreatePlan{}}); !errors.Is(r.Err, ErrConflict) {
		t.Fatalf("second plan: %v", r.Err)
	}
	mustApply(t, s, Command{StartAction: &StartAction{Plan: id, Index: 0}})
	mustApply(t, s, Command{StartAction: &StartAction{Plan: id, Index: 1}})
	mustApply(t, s, Command{FinishAction: &FinishAction{Plan: id, Index: 0, Error: "boom"}})
	mustApply(t, s, Command{FinishAction: &FinishAction{Plan: id, Index: 1, OK: true}})
	if tk := s.Tasks["j.a.0"]; tk.Phase != TaskWaiting || tk.Epoch != 1 {
		t.Fatalf("failed boot: %+v (the epoch stays bumped so a half-started copy is stale)", tk)
	}
	if tk := s.Tasks["j.a.1"]; tk.Phase != TaskRunning {
		t.Fatalf("independent action: %+v", tk)
	}
	mustApply(t, s, Command{FinishPlan: &FinishPlan{Plan: id}})
}

func TestSuspendThenLostRestartsFromImage(t *testing.T) {
	s := seeded(t)
	id := mustApply(t, s, Command{CreatePlan: &CreatePlan{Plan: Plan{Actions: []Action{
		{Kind: "boot", Task: "j.a.1", To: "n1"},
		{Kind: "suspend", Task: "j.a.1", From: "n1", To: "n1", Deps: []int{0}},
		{Kind: "resume", Task: "j.a.1", From: "n1", To: "n2", Deps: []int{1}},
	}}}}).PlanID
	for i := 0; i < 3; i++ {
		mustApply(t, s, Command{StartAction: &StartAction{Plan: id, Index: i}})
		mustApply(t, s, Command{FinishAction: &FinishAction{Plan: id, Index: i, OK: true, Image: "/img"}})
	}
	tk := s.Tasks["j.a.1"]
	if tk.Node != "n2" || tk.Image != "/img" || tk.ImageNode != "n1" || tk.Epoch != 2 || tk.ImageEpoch != 1 {
		t.Fatalf("after resume elsewhere: %+v", tk)
	}
	mustApply(t, s, Command{SetNode: &SetNode{Name: "n2", Status: NodeDown}})
	// A stale report changes nothing.
	if r := s.Apply(&Command{TaskEvent: &TaskEvent{Task: "j.a.1", Epoch: 1, Kind: TaskLost}}); !errors.Is(r.Err, ErrConflict) {
		t.Fatalf("stale event: %v", r.Err)
	}
	mustApply(t, s, Command{TaskEvent: &TaskEvent{Task: "j.a.1", Epoch: 2, Kind: TaskLost}})
	if tk.Phase != TaskSleeping || tk.Node != "n1" || tk.Epoch != 2 || tk.Restarts != 1 {
		t.Fatalf("lost with an image on a live node: %+v", tk)
	}
}

func TestDrainSurvivesDownAndUp(t *testing.T) {
	s := seeded(t)
	mustApply(t, s, Command{Drain: &Drain{Name: "n1", Drain: true, Deadline: 99}})
	mustApply(t, s, Command{SetNode: &SetNode{Name: "n1", Status: NodeDown}})
	mustApply(t, s, Command{SetNode: &SetNode{Name: "n1", Status: NodeOnline}})
	if n := s.Nodes["n1"]; n.Status != NodeDraining || n.DrainDeadline != 99 {
		t.Fatalf("%+v", n)
	}
	mustApply(t, s, Command{Drain: &Drain{Name: "n1"}})
	if n := s.Nodes["n1"]; n.Status != NodeOnline {
		t.Fatalf("%+v", n)
	}
}

// Property: any command either applies or fails and changes nothing; the
// state never panics and epochs never go down.
func TestInvalidCommandsChangeNothing(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		s := NewState()
		names := []string{"n1", "n2", "x"}
		tasks := []string{"j.t.0", "j.t.1", "k.t.0", "nope"}
		kinds := []string{"boot", "suspend", "resume", "migrate", "kill", "shutdown", "fly"}
		epochs := map[string]uint64{}
		for step := 0; step < 40; step++ {
			var c Command
			switch rapid.IntRange(0, 9).Draw(rt, "cmd") {
			case 0:
				c.RegisterNode = &RegisterNode{Name: rapid.SampledFrom(names).Draw(rt, "n"), Capacity: Resources{rapid.Int64Range(-1, 4000).Draw(rt, "cpu"), 1 << 30}}
			case 1:
				c.SetNode = &SetNode{Name: rapid.SampledFrom(names).Draw(rt, "n"), Status: rapid.SampledFrom([]NodeStatus{NodeOnline, NodeDown, "bogus"}).Draw(rt, "st")}
			case 2:
				jn := rapid.SampledFrom([]string{"j", "k", ""}).Draw(rt, "job")
				c.SubmitJob = &SubmitJob{Job: Job{Name: jn}, Tasks: []Task{{Name: jn + ".t.0", Driver: "process"}, {Name: jn + ".t.1", Driver: rapid.SampledFrom([]string{"qemu", "docker"}).Draw(rt, "drv")}}}
			case 3:
				var acts []Action
				for i := rapid.IntRange(0, 3).Draw(rt, "na"); i > 0; i-- {
					acts = append(acts, Action{Kind: rapid.SampledFrom(kinds).Draw(rt, "k"), Task: rapid.SampledFrom(tasks).Draw(rt, "t"),
						From: rapid.SampledFrom(names).Draw(rt, "f"), To: rapid.SampledFrom(names).Draw(rt, "to"),
						Deps: []int{rapid.IntRange(-1, 2).Draw(rt, "d")}})
				}
				c.CreatePlan = &CreatePlan{Plan: Plan{Actions: acts}}
			case 4:
				c.StartAction = &StartAction{Plan: uint64(rapid.IntRange(0, 3).Draw(rt, "p")), Index: rapid.IntRange(-1, 3).Draw(rt, "i")}
			case 5:
				c.FinishAction = &FinishAction{Plan: uint64(rapid.IntRange(0, 3).Draw(rt, "p")), Index: rapid.IntRange(-1, 3).Draw(rt, "i"), OK: rapid.Bool().Draw(rt, "ok")}
			case 6:
				c.FinishPlan = &FinishPlan{Plan: uint64(rapid.IntRange(0, 3).Draw(rt, "p"))}
			case 7:
				c.TaskEvent = &TaskEvent{Task: rapid.SampledFrom(tasks).Draw(rt, "t"), Epoch: uint64(rapid.IntRange(0, 3).Draw(rt, "e")),
					Kind: rapid.SampledFrom([]TaskEventKind{TaskExited, TaskLost, TaskCheckpointed, "x"}).Draw(rt, "k"), Image: "/i", Node: "n1"}
			case 8:
				c.SetJobWant = &SetJobWant{Job: rapid.SampledFrom([]string{"j", "k"}).Draw(rt, "j"), Want: rapid.SampledFrom([]JobWant{WantRun, WantSleep, WantStop, "x"}).Draw(rt, "w")}
			case 9:
				c.Drain = &Drain{Name: rapid.SampledFrom(names).Draw(rt, "n"), Drain: rapid.Bool().Draw(rt, "d")}
			}
			before, _ := json.Marshal(s)
			r := s.Apply(&c)
			if r.Err != nil {
				after, _ := json.Marshal(s)
				if string(before) != string(after) {
					rt.Fatalf("failed command %+v changed the state: %v", c, r.Err)
				}
				if !errors.Is(r.Err, ErrInvalid) && !errors.Is(r.Err, ErrNotFound) && !errors.Is(r.Err, ErrConflict) {
					rt.Fatalf("error without a kind: %v", r.Err)
				}
			}
			for n, tk := range s.Tasks {
				if tk.Epoch < epochs[n] {
					rt.Fatalf("task %s epoch went down %d -> %d", n, epochs[n], tk.Epoch)
				}
				epochs[n] = tk.Epoch
				if (tk.Phase == TaskRunning || tk.Phase == TaskSleeping) && tk.Node == "" {
					rt.Fatalf("task %s %s on no node", n, tk.Phase)
				}
			}
		}
	})
}

func TestEmptyCommandIsInvalid(t *testing.T) {
	s := NewState()
	r := s.Apply(&Command{})
	if !errors.Is(r.Err, ErrInvalid) {
		t.Fatal(r.Err)
	}
	two := Command{SetNode: &SetNode{}, Drain: &Drain{}}
	if r := s.Apply(&two); !errors.Is(r.Err, ErrInvalid) {
		t.Fatal(r.Err)
	}
	_ = fmt.Sprint(r)
}

// A drain deadline that passes mid-plan appends actions to the executing
// plan: they start pending, may depend only on earlier actions, and a
// finished plan cannot be extended.
func TestExtendPlan(t *testing.T) {
	s := seeded(t)
	r := mustApply(t, s, Command{At: 3, CreatePlan: &CreatePlan{Plan: Plan{Reason: "policy", Actions: []Action{{Kind: "boot", Task: "j.a.0", To: "n1"}}}}})
	id := r.PlanID
	bad := []Command{
		{ExtendPlan: &ExtendPlan{Plan: id + 1, Actions: []Action{{Kind: "suspend", Task: "j.a.0", From: "n1"}}}},
		{ExtendPlan: &ExtendPlan{Plan: id}},
		{ExtendPlan: &ExtendPlan{Plan: id, Actions: []Action{{Kind: "suspend", Task: "j.a.0"}}}},
		{ExtendPlan: &ExtendPlan{Plan: id, Actions: []Action{{Kind: "suspend", Task: "j.a.0", From: "n1", Deps: []int{1}}}}},
		{ExtendPlan: &ExtendPlan{Plan: id, Actions: []Action{{Kind: "suspend", Task: "nope", From: "n1"}}}},
	}
	for _, c := range bad {
		if r := s.Apply(&c); r.Err == nil {
			t.Fatalf("extend %+v accepted", c.ExtendPlan)
		}
	}
	if n := len(s.Plans[id].Actions); n != 1 {
		t.Fatalf("refused extensions changed the plan: %d actions", n)
	}
	mustApply(t, s, Command{At: 4, ExtendPlan: &ExtendPlan{Plan: id, Reason: "drain deadline passed on n1", Actions: []Action{{Kind: "suspend", Task: "j.a.0", From: "n1", Deps: []int{0}, State: ActionDone}}}})
	p := s.Plans[id]
	if len(p.Actions) != 2 || p.Actions[1].State != ActionPending || p.Reason != "policy; drain deadline passed on n1" {
		t.Fatalf("extended plan: %+v", p)
	}
	for i, at := range []int64{5, 6} {
		mustApply(t, s, Command{At: at, StartAction: &StartAction{Plan: id, Index: i}})
		mustApply(t, s, Command{At: at, FinishAction: &FinishAction{Plan: id, Index: i, OK: true, Image: "/img"}})
	}
	if tk := s.Tasks["j.a.0"]; tk.Phase != TaskSleeping || tk.ImageNode != "n1" {
		t.Fatalf("after the appended suspend: %+v", tk)
	}
	mustApply(t, s, Command{At: 7, FinishPlan: &FinishPlan{Plan: id}})
	if r := s.Apply(&Command{ExtendPlan: &ExtendPlan{Plan: id, Actions: []Action{{Kind: "kill", Task: "j.a.0"}}}}); !errors.Is(r.Err, ErrConflict) {
		t.Fatalf("extend a finished plan: %v", r.Err)
	}
}

// A lost process whose checkpoint peer keeps a replica sleeps on the peer
// and restarts from the replica under a new epoch, even on the peer itself;
// the peer is recorded at each placement; a replica that cannot be resumed
// falls back to the suspend image; without a usable peer the image (or
// scratch) is used as before.
func TestLostTaskRestartsFromReplica(t *testing.T) {
	s := seeded(t)
	mustApply(t, s, Command{RegisterNode: &RegisterNode{Name: "n3", Addr: "n3:1", Capacity: Resources{4000, 8 << 30}}})
	id := mustApply(t, s, Command{CreatePlan: &CreatePlan{Plan: Plan{Actions: []Action{
		{Kind: "boot", Task: "j.a.0", To: "n1"},
		{Kind: "suspend", Task: "j.a.0", From: "n1", Deps: []int{0}},
		{Kind: "resume", Task: "j.a.0", From: "n1", To: "n1", Deps: []int{1}},
	}}}}).PlanID
	for _, bad := range []*StartAction{{Plan: id, Index: 0, Peer: "n1"}, {Plan: id, Index: 0, Peer: "nope"}} {
		if r := s.Apply(&Command{StartAction: bad}); r.Err == nil {
			t.Fatalf("start with checkpoint peer %q accepted", bad.Peer)
		}
	}
	for i, peer := range []string{"n2", "", "n2"} {
		if i == 1 {
			if r := s.Apply(&Command{StartAction: &StartAction{Plan: id, Index: i, Peer: "n2"}}); !errors.Is(r.Err, ErrInvalid) {
				t.Fatalf("a suspend with a checkpoint peer: %v", r.Err)
			}
		}
		mustApply(t, s, Command{StartAction: &StartAction{Plan: id, Index: i, Peer: peer}})
		mustApply(t, s, Command{FinishAction: &FinishAction{Plan: id, Index: i, OK: true, Image: "/img"}})
	}
	mustApply(t, s, Command{FinishPlan: &FinishPlan{Plan: id}})
	tk := s.Tasks["j.a.0"]
	if tk.Phase != TaskRunning || tk.Node != "n1" || tk.CheckpointPeer != "n2" || tk.ImageNode != "n1" || tk.Epoch != 1 {
		t.Fatalf("running with a peer: %+v", tk)
	}
	// n1 is lost; n2 lists a replica.
	mustApply(t, s, Command{SetNode: &SetNode{Name: "n1", Status: NodeDown}})
	if r := s.Apply(&Command{TaskEvent: &TaskEvent{Task: "j.a.0", Epoch: 1, Kind: TaskExited, Replica: "n2"}}); !errors.Is(r.Err, ErrInvalid) {
		t.Fatalf("an exit naming a replica: %v", r.Err)
	}
	mustApply(t, s, Command{TaskEvent: &TaskEvent{Task: "j.a.0", Epoch: 1, Kind: TaskLost, Replica: "n2"}})
	if tk.Phase != TaskSleeping || tk.Node != "n2" || !tk.Replica || tk.CheckpointPeer != "" || tk.Image != "/img" {
		t.Fatalf("lost with a replica on n2: %+v", tk)
	}
	// A resume from the replica on n2 itself still takes a new epoch.
	id = mustApply(t, s, Command{CreatePlan: &CreatePlan{Plan: Plan{Actions: []Action{{Kind: "resume", Task: "j.a.0", From: "n2", To: "n2"}}}}}).PlanID
	mustApply(t, s, Command{StartAction: &StartAction{Plan: id, Index: 0, Peer: "n3"}})
	if a := s.Plans[id].Actions[0]; a.NewEpoch != 2 || a.Peer != "n3" {
		t.Fatalf("resume from a replica: %+v", a)
	}
	// The replica is gone after all: fall back to the suspend image, whose
	// node is down, so start afresh.
	mustApply(t, s, Command{FinishAction: &FinishAction{Plan: id, Index: 0, Error: "no replica", DropImage: true}})
	if tk.Phase != TaskWaiting || tk.Replica || tk.Node != "" {
		t.Fatalf("failed replica resume: %+v", tk)
	}

	// Another task: its peer is down too, so its image on a live node is used.
	s2 := seeded(t)
	id = mustApply(t, s2, Command{CreatePlan: &CreatePlan{Plan: Plan{Actions: []Action{
		{Kind: "boot", Task: "j.a.0", To: "n1"},
		{Kind: "suspend", Task: "j.a.0", From: "n1", Deps: []int{0}},
		{Kind: "resume", Task: "j.a.0", From: "n1", To: "n2", Deps: []int{1}},
	}}}}).PlanID
	for i, peer := range []string{"n2", "", "n1"} {
		mustApply(t, s2, Command{StartAction: &StartAction{Plan: id, Index: i, Peer: peer}})
		mustApply(t, s2, Command{FinishAction: &FinishAction{Plan: id, Index: i, OK: true, Image: "/img"}})
	}
	tk = s2.Tasks["j.a.0"]
	mustApply(t, s2, Command{SetNode: &SetNode{Name: "n2", Status: NodeDown}})
	mustApply(t, s2, Command{TaskEvent: &TaskEvent{Task: "j.a.0", Epoch: tk.Epoch, Kind: TaskLost}})
	if tk.Phase != TaskSleeping || tk.Node != "n1" || tk.Replica {
		t.Fatalf("lost without a replica, image on n1: %+v", tk)
	}
}

// A qemu task's boot records its guest's RAM tail; the guest keeps it
// through a suspend and a move, and a bad or misplaced record is refused.
func TestBootRecordsTheGuestsRAMTail(t *testing.T) {
	s := seeded(t)
	id := mustApply(t, s, Command{CreatePlan: &CreatePlan{Plan: Plan{Actions: []Action{
		{Kind: "boot", Task: "j.a.1", To: "n1"},
		{Kind: "boot", Task: "j.a.0", To: "n1"},
		{Kind: "suspend", Task: "j.a.1", From: "n1", Deps: []int{0}},
		{Kind: "resume", Task: "j.a.1", From: "n1", To: "n2", Deps: []int{2}},
	}}}}).PlanID
	mustApply(t, s, Command{StartAction: &StartAction{Plan: id, Index: 0}})
	mustApply(t, s, Command{StartAction: &StartAction{Plan: id, Index: 1}})
	for _, bad := range []*FinishAction{
		{Plan: id, Index: 0, OK: true, RAMTail: "some"},
		{Plan: id, Index: 0, RAMTail: RAMTailWithout, Error: "boom"},
		{Plan: id, Index: 1, OK: true, RAMTail: RAMTailWith}, // a process task
	} {
		if r := s.Apply(&Command{FinishAction: bad}); !errors.Is(r.Err, ErrInvalid) {
			t.Fatalf("%+v: %v, want ErrInvalid", bad, r.Err)
		}
	}
	if a := s.Plans[id].Actions[0]; a.State != ActionRunning || s.Tasks["j.a.1"].RAMTail != RAMTailUnknown {
		t.Fatalf("a refused finish changed something: %+v %+v", a, s.Tasks["j.a.1"])
	}
	mustApply(t, s, Command{FinishAction: &FinishAction{Plan: id, Index: 0, OK: true, RAMTail: RAMTailWithout}})
	for i := 2; i <= 3; i++ {
		mustApply(t, s, Command{StartAction: &StartAction{Plan: id, Index: i}})
		mustApply(t, s, Command{FinishAction: &FinishAction{Plan: id, Index: i, OK: true, Image: "/img"}})
	}
	if tk := s.Tasks["j.a.1"]; tk.Phase != TaskRunning || tk.Node != "n2" || tk.RAMTail != RAMTailWithout {
		t.Fatalf("after boot, suspend and resume elsewhere: %+v", tk)
	}
}

// A running guest of unknown shape learns it from its agent's report (a
// shaped event): a bad, misplaced or contradicting one is refused and
// changes nothing, and the event does not count as a change of the task
// (Changed stays).
func TestShapedEventRecordsAnUnknownShapeOnce(t *testing.T) {
	s := seeded(t)
	id := mustApply(t, s, Command{CreatePlan: &CreatePlan{Plan: Plan{Actions: []Action{
		{Kind: "boot", Task: "j.a.1", To: "n1"},
		{Kind: "boot", Task: "j.a.0", To: "n1"},
	}}}}).PlanID
	for i := range 2 {
		mustApply(t, s, Command{At: 5, StartAction: &StartAction{Plan: id, Index: i}})
		mustApply(t, s, Command{At: 6, FinishAction: &FinishAction{Plan: id, Index: i, OK: true}}) // shape not recorded
	}
	vm := s.Tasks["j.a.1"]
	if vm.RAMTail != RAMTailUnknown || vm.Phase != TaskRunning {
		t.Fatalf("booted without a shape: %+v", vm)
	}
	for _, bad := range []struct {
		e    TaskEvent
		kind error
	}{
		{TaskEvent{Task: "j.a.1", Epoch: 1, Kind: TaskShaped}, ErrInvalid},                        // no shape
		{TaskEvent{Task: "j.a.1", Epoch: 1, Kind: TaskShaped, RAMTail: "some"}, ErrInvalid},       // not a shape
		{TaskEvent{Task: "j.a.0", Epoch: 1, Kind: TaskShaped, RAMTail: RAMTailWith}, ErrInvalid},  // a process
		{TaskEvent{Task: "j.a.1", Epoch: 2, Kind: TaskShaped, RAMTail: RAMTailWith}, ErrConflict}, // another epoch's copy
		{TaskEvent{Task: "j.a.1", Epoch: 1, Kind: TaskLost, RAMTail: RAMTailWith}, ErrInvalid},    // on another kind
		{TaskEvent{Task: "j.a.9", Epoch: 1, Kind: TaskShaped, RAMTail: RAMTailWith}, ErrNotFound}, // no such task
	} {
		if r := s.Apply(&Command{At: 7, TaskEvent: &bad.e}); !errors.Is(r.Err, bad.kind) {
			t.Fatalf("%+v: %v, want %v", bad.e, r.Err, bad.kind)
		}
	}
	if vm.RAMTail != RAMTailUnknown || vm.Phase != TaskRunning || vm.Changed != 6 {
		t.Fatalf("a refused event changed the task: %+v", vm)
	}
	mustApply(t, s, Command{At: 8, TaskEvent: &TaskEvent{Task: "j.a.1", Epoch: 1, Kind: TaskShaped, RAMTail: RAMTailWithout}})
	if vm.RAMTail != RAMTailWithout || vm.Phase != TaskRunning || vm.Node != "n1" || vm.Changed != 6 {
		t.Fatalf("after the shaped event: %+v, want without, still running on n1, changed at 6", vm)
	}
	// The same shape again changes nothing; another is a contradiction.
	mustApply(t, s, Command{At: 9, TaskEvent: &TaskEvent{Task: "j.a.1", Epoch: 1, Kind: TaskShaped, RAMTail: RAMTailWithout}})
	if r := s.Apply(&Command{At: 9, TaskEvent: &TaskEvent{Task: "j.a.1", Epoch: 1, Kind: TaskShaped, RAMTail: RAMTailWith}}); !errors.Is(r.Err, ErrConflict) || vm.RAMTail != RAMTailWithout {
		t.Fatalf("a contradicting shape: %v, tail %q", r.Err, vm.RAMTail)
	}
	// A sleeping guest's shape is not learned (no running guest reported it).
	mustApply(t, s, Command{FinishPlan: &FinishPlan{Plan: id}})
	id = mustApply(t, s, Command{CreatePlan: &CreatePlan{Plan: Plan{Actions: []Action{{Kind: "suspend", Task: "j.a.1", From: "n1"}}}}}).PlanID
	mustApply(t, s, Command{At: 10, StartAction: &StartAction{Plan: id, Index: 0}})
	mustApply(t, s, Command{At: 11, FinishAction: &FinishAction{Plan: id, Index: 0, OK: true, Image: "/img"}})
	if r := s.Apply(&Command{At: 12, TaskEvent: &TaskEvent{Task: "j.a.1", Epoch: 1, Kind: TaskShaped, RAMTail: RAMTailWithout}}); !errors.Is(r.Err, ErrConflict) {
		t.Fatalf("a shaped event for a sleeping guest: %v, want ErrConflict", r.Err)
	}
}
