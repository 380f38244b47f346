package controller

import (
	"testing"

	"github.com/ferrycluster/ferry/store"
)

// Checkpoint peers: never the task's node, never a node that is not online,
// outside the task's failure domain when one is available, then the least
// loaded.
func TestPeerChooser(t *testing.T) {
	s := store.NewState()
	add := func(name, zone string, status store.NodeStatus) {
		s.Nodes[name] = &store.Node{Name: name, Addr: name + ":1", Status: status, Labels: map[string]string{"zone": zone}}
	}
	add("a1", "a", store.NodeOnline)
	add("a2", "a", store.NodeOnline)
	add("b1", "b", store.NodeOnline)
	add("b2", "b", store.NodeOnline)
	add("c1", "c", store.NodeDown)
	add("c2", "c", store.NodeDraining)
	pc := newPeerChooser(s)
	var got []string
	for i := 0; i < 4; i++ {
		got = append(got, pc.choose("a1"))
	}
	// Zone b first, spread between b1 and b2.
	if got[0] != "b1" || got[1] != "b2" || got[2] != "b1" || got[3] != "b2" {
		t.Fatalf("peers for tasks on a1: %v", got)
	}
	if p := pc.choose("b1"); p != "a1" && p != "a2" {
		t.Fatalf("peer for a task on b1: %q, want a node of zone a", p)
	}
	// Alone in its domain with nothing else online: a node of the same one.
	s.Nodes["b1"].Status, s.Nodes["b2"].Status = store.NodeDown, store.NodeDown
	if p := newPeerChooser(s).choose("a1"); p != "a2" {
		t.Fatalf("peer with only zone a online: %q", p)
	}
	s.Nodes["a2"].Status = store.NodeDown
	if p := newPeerChooser(s).choose("a1"); p != "" {
		t.Fatalf("peer with no other online node: %q", p)
	}
	spec := &JobSpec{}
	tk := &store.Task{Driver: "process"}
	if wantsPeer(tk, spec, "boot") {
		t.Fatal("a job without periodic checkpoints got a peer")
	}
	spec.Checkpoint.Interval = 1e9
	if !wantsPeer(tk, spec, "migrate") || wantsPeer(tk, spec, "suspend") || wantsPeer(&store.Task{Driver: "qemu"}, spec, "boot") {
		t.Fatal("wantsPeer: a process task with periodic checkpoints, on placements only")
	}
}
