package controller

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/image/imagetest"
	"github.com/ferrycluster/ferry/store"
)

// TestMain removes the guest image the QEMU tests built.
func TestMain(m *testing.M) {
	code := m.Run()
	imagetest.Cleanup()
	os.Exit(code)
}

// vmCounters returns the counters a task's console printed, as the
// controller serves its log (from the node the task is on now).
func (c *testCluster) vmCounters(task string) []int64 {
	c.t.Helper()
	rc, err := c.cli.Logs(ctx(c.t), task, -1, false)
	if err != nil {
		c.t.Fatalf("logs of %s: %v", task, err)
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	var cs []int64
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "counter "); ok {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				cs = append(cs, n)
			}
		}
	}
	return cs
}

// The operator's maintenance story with real VMs: a node runs three QEMU
// guests; `ferry node drain` moves all three elsewhere by live migration
// and each guest's counter carries on (no reboot), with exactly one live
// copy of each and nothing left on the drained node.
func TestE2EDrainThreeVMsLive(t *testing.T) {
	guest := imagetest.Counter(t)
	c := newTestCluster(t, 0, 4)
	c.guest = &guest
	addNode := func(name string) {
		c.startAgent(name, "127.0.0.1:0", 4)
		if _, err := c.cli.AddNode(ctx(t), c.agents[name].addr, map[string]string{"name": name}); err != nil {
			t.Fatal(err)
		}
	}
	// Only n1 exists when the job lands, so all three guests boot there.
	addNode("n1")
	spec := `name: vms
priority: 5
tasks:
  - name: g
    driver: qemu
    image: default
    workload: counter
    cpus: 1
    memory: 128MiB
    count: 3
migration:
  live: true
  max_downtime: 300ms
`
	if _, err := c.cli.Submit(ctx(t), []byte(spec)); err != nil {
		t.Fatal(err)
	}
	tasks := []string{"vms.g.0", "vms.g.1", "vms.g.2"}
	c.waitFor("three guests running on n1", 3*time.Minute, func() bool {
		for _, tn := range tasks {
			if tk := c.task(tn); tk.Phase != store.TaskRunning || tk.Node != "n1" {
				return false
			}
		}
		return true
	})
	before := map[string]int64{}
	c.waitFor("every guest counting", 2*time.Minute, func() bool {
		for _, tn := range tasks {
			cs := c.vmCounters(tn)
			if len(cs) < 3 {
				return false
			}
			before[tn] = cs[len(cs)-1]
		}
		return true
	})
	epochs := map[string]uint64{}
	for _, tn := range tasks {
		epochs[tn] = c.task(tn).Epoch
	}

	addNode("n2")
	addNode("n3")
	if err := c.cli.Drain(ctx(t), "n1", true, 0); err != nil {
		t.Fatal(err)
	}
	c.waitFor("all three guests off n1", 4*time.Minute, func() bool {
		for _, tn := range tasks {
			if tk := c.task(tn); tk.Phase != store.TaskRunning || tk.Node == "n1" {
				return false
			}
		}
		return true
	})
	for _, tn := range tasks {
		c.waitFor("one live copy of "+tn, time.Minute, func() bool { n, _ := c.liveCopies(tn); return n == 1 })
		tk := c.task(tn)
		if tk.Epoch <= epochs[tn] {
			t.Errorf("%s moved to %s without a new epoch (%d, was %d)", tn, tk.Node, tk.Epoch, epochs[tn])
		}
		// The guest on the new node goes on from where it was: its first
		// counter there is past the last one seen before the drain, and
		// the console never shows a fresh boot (counter 1).
		var cs []int64
		c.waitFor("new counters from "+tn, time.Minute, func() bool { cs = c.vmCounters(tn); return len(cs) >= 2 })
		for i, n := range cs {
			if n <= 1 && i > 0 || i > 0 && n <= cs[i-1] {
				t.Fatalf("%s restarted or went backwards after the drain: %v", tn, cs)
			}
		}
		if cs[len(cs)-1] <= before[tn] {
			t.Fatalf("%s: counter %d after the move, %d before", tn, cs[len(cs)-1], before[tn])
		}
		t.Logf("%s: epoch %d -> %d, node n1 -> %s, last counter before the drain %d, counters on the new node %d..%d",
			tn, epochs[tn], tk.Epoch, tk.Node, before[tn], cs[0], cs[len(cs)-1])
		if cs[0] == 1 {
			t.Fatalf("%s booted afresh on %s: %v", tn, tk.Node, cs)
		}
	}
	if tasksOnN1 := c.agentTasks("n1"); len(tasksOnN1) != 0 {
		t.Fatalf("the drained node still holds %s", fmt.Sprint(tasksOnN1))
	}
}
