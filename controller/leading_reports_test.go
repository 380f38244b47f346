package controller

import (
	"slices"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/store"
)

// A node's report from before the loop (again) started leading does not
// count: the node may have been downgraded or lost under another leader.
// Until it reports again it is not heard from (so the loop waits for it
// before planning VMs, and no VM goes to it on its old QEMU version).
func TestReportsFromBeforeLeadingAreNotHeard(t *testing.T) {
	st, cx := leaderStore(t)
	if r, err := st.Apply(cx, store.Command{RegisterNode: &store.RegisterNode{Name: "n1", Capacity: store.Resources{CPUMilli: 4000, MemoryBytes: 8 << 30}}}); err != nil || r.Err != nil {
		t.Fatal(err, r.Err)
	}
	clock := &fakeClock{now: time.Unix(1_000_000, 0), timers: make(chan fakeTimer, 8)}
	c := New(Config{Store: st, Period: time.Hour, HeartbeatTimeout: 2 * time.Hour, NoPoll: true,
		Now: clock.Now, After: clock.After, Logger: quietLog()})
	hb := Heartbeat{Node: "n1", Info: api.NodeInfo{Name: "n1", Drivers: []string{"process", "qemu"}, QEMUVersion: "10.0.2"}}

	// Heard while leading: counted.
	c.mu.Lock()
	c.started = clock.Now() // what Run does when it starts leading
	c.mu.Unlock()
	clock.advance(time.Second)
	if err := c.Observe(cx, hb, false); err != nil {
		t.Fatal(err)
	}
	if r, ok := c.nodeReports()["n1"]; !ok || r.QEMUVersion != "10.0.2" {
		t.Fatalf("reports %v, want n1's QEMU 10.0.2", c.nodeReports())
	}

	// Leadership lost and regained: n1's report is from before.
	clock.advance(time.Minute)
	c.mu.Lock()
	c.started = clock.Now()
	c.mu.Unlock()
	if r, ok := c.nodeReports()["n1"]; ok {
		t.Fatalf("n1's report from the earlier leadership counts (%+v): a VM could be planned onto its old QEMU version", r)
	}
	s, _ := capState(map[string]capTask{"vm": {"qemu", store.TaskSleeping, "n1", store.RAMTailWithout}})
	if u := BuildSnapshot(s, clock.Now().Unix(), c.nodeReports()).Unheard; !slices.Contains(u, "n1") {
		t.Fatalf("unheard %v, want n1 (the loop must wait for its new report)", u)
	}

	// Its next report counts again.
	clock.advance(time.Second)
	if err := c.Observe(cx, hb, false); err != nil {
		t.Fatal(err)
	}
	if r, ok := c.nodeReports()["n1"]; !ok || r.QEMUVersion != "10.0.2" {
		t.Fatalf("reports %v after n1 reported again, want n1's QEMU 10.0.2", c.nodeReports())
	}
}
