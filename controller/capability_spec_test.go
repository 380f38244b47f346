package controller

import (
	"strings"
	"testing"

	"github.com/ferrycluster/ferry/store"
)

// A guest without the RAM tail pinned to the QEMU 7.2 node has nowhere to
// go though a QEMU 10 node has room: its job's constraint and the
// capability filter leave it no node. It is stranded (with the reason) and
// the other jobs get their plan, rather than the policy wanting it running
// where the planner may not put it and the whole plan failing.
func TestGuestPinnedToANodeThatRefusesItIsStranded(t *testing.T) {
	s, reports := capState(map[string]capTask{
		"vm":   {"qemu", store.TaskSleeping, "n1", store.RAMTailWithout},
		"proc": {"process", store.TaskWaiting, "", store.RAMTailUnknown},
	})
	s.Jobs["vm"].Spec = []byte(`{"constraints":{"pinned":"n2"}}`)
	snap := BuildSnapshot(s, 1000, reports)
	if why := snap.Stranded["vm.t.0"]; !strings.Contains(why, "constraints") {
		t.Fatalf("stranded %v, want vm.t.0 with its job's constraints named", snap.Stranded)
	}
	m := snap.View.Model
	for n := range m.Nodes {
		if snap.View.Eligible(m.TaskIndex("vm.t.0"), n) {
			t.Errorf("vm.t.0 eligible on %s", m.Nodes[n].Name)
		}
	}
	prob, p := solveChecked(t, snap) // one pinned guest must not fail the whole plan
	if got := where(prob, p, "vm.t.0"); got != "" {
		t.Errorf("vm.t.0 ends running on %s", got)
	}
	if got := where(prob, p, "proc.t.0"); got == "" {
		t.Errorf("the process job was not started: %v", p.Actions)
	}

	// Pinned to the QEMU 10 node instead: not stranded, resumed there.
	s.Jobs["vm"].Spec = []byte(`{"constraints":{"pinned":"n1"}}`)
	snap = BuildSnapshot(s, 1000, reports)
	if len(snap.Stranded) != 0 {
		t.Fatalf("stranded %v pinned to n1", snap.Stranded)
	}
	prob, p = solveChecked(t, snap)
	if got := where(prob, p, "vm.t.0"); got != "n1" {
		t.Fatalf("vm.t.0 ends on %q, want n1: %v", got, p.Actions)
	}
}
