package controller

import (
	"strings"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/store"
)

// A guest whose shape was not recorded at its boot (booted before shapes
// were, or on a node whose version was unknown) is judged by its node's
// QEMU version: on a node now reporting QEMU 7.2 it is taken to have the
// RAM tail. If that node was downgraded under a running tailless guest,
// the guest's agent still reports how it launched it (no tail): the loop
// records that through the journal, and the next plan uses it — the
// drained guest is no longer sent to the other 7.2 node (which would
// refuse it) but suspended, with the reason.
func TestGuestOfUnknownShapeLearnsItFromItsReport(t *testing.T) {
	st, cx := leaderStore(t)
	apply := applier(t, st, cx)
	for _, n := range []string{"n1", "n2"} {
		apply(store.Command{RegisterNode: &store.RegisterNode{Name: n, Addr: n + ":1", Capacity: store.Resources{CPUMilli: 4000, MemoryBytes: 8 << 30}}})
	}
	apply(store.Command{SubmitJob: &store.SubmitJob{Job: store.Job{Name: "vm", Priority: 5, Want: store.WantRun, Preemptible: true},
		Tasks: []store.Task{{Name: "vm.t.0", Driver: "qemu", Demand: store.Resources{CPUMilli: 1000, MemoryBytes: 128 << 20}}}}})
	id := apply(store.Command{CreatePlan: &store.CreatePlan{Plan: store.Plan{Actions: []store.Action{{Kind: "boot", Task: "vm.t.0", To: "n1"}}}}}).PlanID
	apply(store.Command{StartAction: &store.StartAction{Plan: id, Index: 0}})
	apply(store.Command{FinishAction: &store.FinishAction{Plan: id, Index: 0, OK: true}}) // no shape recorded
	apply(store.Command{FinishPlan: &store.FinishPlan{Plan: id}})
	apply(store.Command{Drain: &store.Drain{Name: "n1", Drain: true}})

	c := New(Config{Store: st, Period: time.Hour, HeartbeatTimeout: 2 * time.Hour, NoPoll: true, Logger: quietLog()})
	old := []string{"process", "qemu"}
	none := int64(0)
	guest := api.Task{ID: "vm.t.0", Driver: "qemu", Epoch: 1, Phase: api.PhaseRunning, RAMTailKiB: &none,
		Status: &driver.Status{ID: "vm.t.0", Epoch: 1, Kind: "qemu", State: driver.StateRunning}}
	for _, hb := range []Heartbeat{
		{Node: "n1", Info: api.NodeInfo{Name: "n1", Drivers: old, QEMUVersion: "7.2.22"}, Tasks: []api.Task{guest}},
		{Node: "n2", Info: api.NodeInfo{Name: "n2", Drivers: old, QEMUVersion: "7.2.22"}},
	} {
		if err := c.Observe(cx, hb, false); err != nil {
			t.Fatal(err)
		}
	}
	snapshot := func() *Snapshot {
		var snap *Snapshot
		st.View(func(s *store.State) { snap = BuildSnapshot(s, time.Now().Unix(), c.nodeReports()) })
		return snap
	}
	tail := func() store.RAMTail {
		var r store.RAMTail
		st.View(func(s *store.State) { r = s.Tasks["vm.t.0"].RAMTail })
		return r
	}

	// Unknown shape on a 7.2 node: taken to have the tail, so the drain
	// migrates it to n2 (which would refuse it).
	if prob, p := solveChecked(t, snapshot()); where(prob, p, "vm.t.0") != "n2" {
		t.Fatalf("before the report counts: plan %v, want the guest moved to n2 (the scenario no longer tests the learning)", p.Actions)
	}

	c.reconcile(cx)
	if got := tail(); got != store.RAMTailWithout {
		t.Fatalf("after reconcile: ram_tail %q, want %q (from n1's report)", got, store.RAMTailWithout)
	}
	snap := snapshot()
	if why := snap.Stranded["vm.t.0"]; !strings.Contains(why, "no RAM tail") || !strings.Contains(why, "n2 has QEMU 7.2.22") {
		t.Fatalf("stranded reason %q, want the missing tail and n2's QEMU", why)
	}
	if _, p := solveChecked(t, snap); len(p.Actions) != 1 || p.Actions[0].Kind != cluster.Suspend {
		t.Fatalf("after learning the shape: plan %v, want one suspend", p.Actions)
	}
	var learned bool
	for _, e := range c.events.Recent(0) {
		learned = learned || e.Object == "vm.t.0" && e.What == "shape learned" && e.Fields["ram_tail"] == "without"
	}
	if !learned {
		t.Errorf("no 'shape learned' event for vm.t.0")
	}

	// A known shape is not learned again: reconcile proposes nothing.
	_, idx := st.Changed()
	c.reconcile(cx)
	if _, now := st.Changed(); now != idx {
		t.Errorf("a second reconcile wrote to the journal (version %d → %d)", idx, now)
	}
}
