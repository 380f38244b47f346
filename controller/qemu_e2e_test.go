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

// addVMNode starts an agent with 4 CPUs (and the qemu driver when c.guest
// is set) and registers it, labelled name=NAME.
func (c *testCluster) addVMNode(name string) {
	c.t.Helper()
	c.startAgent(name, "127.0.0.1:0", 4)
	if _, err := c.cli.AddNode(ctx(c.t), c.agents[name].addr, map[string]string{"name": name}); err != nil {
		c.t.Fatal(err)
	}
}

// counterVMs is a job of count 128 MiB guests printing "counter N", moved
// live.
func counterVMs(name string, count int) string {
	return fmt.Sprintf(`name: %s
priority: 5
tasks:
  - name: g
    driver: qemu
    image: default
    workload: counter
    cpus: 1
    memory: 128MiB
    count: %d
migration:
  live: true
  max_downtime: 300ms
`, name, count)
}

// The operator's maintenance story with real VMs: a node runs three QEMU
// guests; `ferry node drain` moves all three elsewhere by live migration
// and each guest's counter carries on (no reboot), with exactly one live
// copy of each and nothing left on the drained node.
func TestE2EDrainThreeVMsLive(t *testing.T) {
	guest := imagetest.Counter(t)
	c := newTestCluster(t, 0, 4)
	c.guest = &guest
	// Only n1 exists when the job lands, so all three guests boot there.
	c.addVMNode("n1")
	if _, err := c.cli.Submit(ctx(t), []byte(counterVMs("vms", 3))); err != nil {
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

	c.addVMNode("n2")
	c.addVMNode("n3")
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

// The controller never plans a move of a guest onto a node that would
// refuse it: a guest first booted on QEMU 10 (no RAM tail) on n1, n1
// drained while the only other node, n2, reports QEMU 7.2.22. The guest has
// nowhere to go: an event says why, it is suspended on n1 and nothing is
// ever planned onto n2. n3 (QEMU 10) joins and the guest resumes there, its
// counter going on. (n2's driver is the installed QEMU 10 reporting 7.2.22:
// no old QEMU exists here; it would accept the guest, so a move there is
// the controller's doing alone.)
func TestE2ETaillessGuestIsNeverPlannedOntoOldQEMU(t *testing.T) {
	guest := imagetest.Counter(t)
	c := newTestCluster(t, 0, 4)
	c.guest = &guest
	c.reportQEMU = map[string]string{"n2": "7.2.22"}
	c.addVMNode("n1")
	if _, err := c.cli.Submit(ctx(t), []byte(counterVMs("vm", 1))); err != nil {
		t.Fatal(err)
	}
	const tn = "vm.g.0"
	c.waitFor("the guest running on n1", 3*time.Minute, func() bool {
		tk := c.task(tn)
		return tk.Phase == store.TaskRunning && tk.Node == "n1"
	})
	if tail := c.task(tn).RAMTail; tail != store.RAMTailWithout {
		t.Fatalf("guest booted on QEMU 10 recorded with ram tail %q, want %q", tail, store.RAMTailWithout)
	}
	// Its agent reports how it launched the guest (no tail): what the
	// loop learns a guest's shape from when none was recorded.
	reportedTail := func(node string) string {
		for _, cp := range c.agentTasks(node) {
			if cp.ID == tn && cp.RAMTailKiB != nil {
				return strconv.FormatInt(*cp.RAMTailKiB, 10)
			}
		}
		return "none"
	}
	if got := reportedTail("n1"); got != "0" {
		t.Fatalf("n1 reports the guest's ram_tail_kib as %s, want 0", got)
	}
	var before int64
	c.waitFor("the guest counting", 2*time.Minute, func() bool {
		cs := c.vmCounters(tn)
		if len(cs) < 3 {
			return false
		}
		before = cs[len(cs)-1]
		return true
	})

	c.addVMNode("n2")
	if err := c.cli.Drain(ctx(t), "n1", true, 0); err != nil {
		t.Fatal(err)
	}
	c.waitFor("the guest suspended on n1", 2*time.Minute, func() bool {
		tk := c.task(tn)
		return tk.Phase == store.TaskSleeping && tk.Node == "n1"
	})
	var why string
	c.waitFor("an event saying the guest has nowhere to go", time.Minute, func() bool {
		for _, e := range c.srv.Controller.Events().Recent(0) {
			if e.Object == tn && e.What == "nowhere to go" {
				why = e.Fields["why"]
				return true
			}
		}
		return false
	})
	if !strings.Contains(why, "no RAM tail") || !strings.Contains(why, "n2 has QEMU 7.2.22") {
		t.Fatalf("nowhere-to-go event says %q; want the missing tail and n2's QEMU named", why)
	}

	c.addVMNode("n3")
	c.waitFor("the guest running on n3", 3*time.Minute, func() bool {
		tk := c.task(tn)
		return tk.Phase == store.TaskRunning && tk.Node == "n3"
	})
	var cs []int64
	c.waitFor("counters from n3", time.Minute, func() bool { cs = c.vmCounters(tn); return len(cs) >= 2 })
	if cs[0] <= before {
		t.Fatalf("the guest restarted on n3: counters %v, %d before the suspend", cs, before)
	}
	if got := reportedTail("n3"); got != "0" {
		t.Fatalf("n3 reports the resumed guest's ram_tail_kib as %s, want 0 (a guest keeps its shape)", got)
	}
	c.srv.Store.View(func(s *store.State) {
		for _, p := range s.Plans {
			for _, a := range p.Actions {
				if a.To == "n2" {
					t.Errorf("plan %d: %s of %s to n2, whose QEMU 7.2.22 refuses the guest", p.ID, a.Kind, a.Task)
				}
			}
		}
	})
	t.Logf("nowhere to go: %s; resumed on n3 at counter %d (%d before the suspend)", why, cs[0], before)
}
