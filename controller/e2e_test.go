package controller

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/store"
)

func TestE2ESubmitRunStop(t *testing.T) {
	c := newTestCluster(t, 2, 2)
	if _, err := c.cli.Submit(ctx(t), []byte(counterJob("web", 5, 3, 1, ""))); err != nil {
		t.Fatal(err)
	}
	for _, tn := range []string{"web.c.0", "web.c.1", "web.c.2"} {
		tn := tn
		c.waitFor(tn+" running", 30*time.Second, func() bool {
			n, _ := c.liveCopies(tn)
			return c.phase(tn) == store.TaskRunning && n == 1
		})
	}
	jv, err := c.cli.Job(ctx(t), "web")
	if err != nil || jv.Status != "running" {
		t.Fatalf("job %+v %v", jv.Status, err)
	}
	if _, err := c.cli.JobAction(ctx(t), "web", "stop"); err != nil {
		t.Fatal(err)
	}
	c.waitFor("job stopped", 30*time.Second, func() bool {
		jv, _ := c.cli.Job(ctx(t), "web")
		return jv.Status == "stopped"
	})
	c.waitFor("no copies left", 30*time.Second, func() bool {
		for _, tn := range []string{"web.c.0", "web.c.1", "web.c.2"} {
			if n, _ := c.liveCopies(tn); n != 0 {
				return false
			}
		}
		return true
	})
}

func TestE2EBadSpecNamesLineAndField(t *testing.T) {
	c := newTestCluster(t, 1, 1)
	_, err := c.cli.Submit(ctx(t), []byte("name: j\ntasks:\n  - name: t\n    driver: process\n    command: x\n    cpus: 1\n    memory: lots\n"))
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || ae.Line != 7 || ae.Field != "tasks[0].memory" {
		t.Fatalf("%#v", err)
	}
	if !errors.Is(err, store.ErrInvalid) {
		t.Fatal("kind lost")
	}
	// Nothing was submitted.
	jobs, err := c.cli.Jobs(ctx(t))
	if err != nil || len(jobs) != 0 {
		t.Fatalf("%v %v", jobs, err)
	}
	// A wrong token is refused.
	bad := *c.cli
	bad.token = "fry_wrong"
	if _, err := bad.Submit(ctx(t), []byte(counterJob("x", 1, 1, 1, ""))); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("wrong token: %v", err)
	}
}

// counterRestarted reports whether a task's log on its node shows its
// counter starting over after the first line (a restart from scratch).
func (c *testCluster) counterStartedOver(task string) (bool, string) {
	rc, err := c.cli.Logs(ctx(c.t), task, -1, false)
	if err != nil {
		c.t.Fatalf("logs of %s: %v", task, err)
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	for i, l := range lines {
		if i > 0 && l == "counter 1" {
			return true, string(b)
		}
	}
	return false, string(b)
}

func TestE2EPreemptAndResume(t *testing.T) {
	c := newTestCluster(t, 2, 1)
	if _, err := c.cli.Submit(ctx(t), []byte(counterJob("low", 1, 2, 1, ""))); err != nil {
		t.Fatal(err)
	}
	c.waitFor("low running", 30*time.Second, func() bool {
		return c.phase("low.c.0") == store.TaskRunning && c.phase("low.c.1") == store.TaskRunning
	})
	time.Sleep(500 * time.Millisecond) // let the counters count
	if _, err := c.cli.Submit(ctx(t), []byte(counterJob("high", 10, 1, 1, ""))); err != nil {
		t.Fatal(err)
	}
	c.waitFor("high running, low suspended", 30*time.Second, func() bool {
		return c.phase("high.c.0") == store.TaskRunning && c.phase("low.c.0") == store.TaskSleeping && c.phase("low.c.1") == store.TaskSleeping
	})
	if _, err := c.cli.JobAction(ctx(t), "high", "stop"); err != nil {
		t.Fatal(err)
	}
	c.waitFor("low resumed", 30*time.Second, func() bool {
		return c.phase("low.c.0") == store.TaskRunning && c.phase("low.c.1") == store.TaskRunning
	})
	for _, tn := range []string{"low.c.0", "low.c.1"} {
		tn := tn
		c.waitFor("one live copy of "+tn, 30*time.Second, func() bool { n, _ := c.liveCopies(tn); return n == 1 })
		time.Sleep(300 * time.Millisecond)
		if over, log := c.counterStartedOver(tn); over {
			t.Fatalf("%s restarted from scratch instead of its checkpoint:\n%s", tn, log)
		}
	}
}

func TestE2EDrainMovesTasksWithTheirState(t *testing.T) {
	c := newTestCluster(t, 3, 2)
	if _, err := c.cli.Submit(ctx(t), []byte(counterJob("svc", 5, 2, 1, "constraints:\n  spread: true\n"))); err != nil {
		t.Fatal(err)
	}
	c.waitFor("svc running", 30*time.Second, func() bool {
		return c.phase("svc.c.0") == store.TaskRunning && c.phase("svc.c.1") == store.TaskRunning
	})
	time.Sleep(500 * time.Millisecond)
	victim := c.task("svc.c.0").Node
	if err := c.cli.Drain(ctx(t), victim, true, 0); err != nil {
		t.Fatal(err)
	}
	c.waitFor("drained", 60*time.Second, func() bool {
		for _, tn := range []string{"svc.c.0", "svc.c.1"} {
			tk := c.task(tn)
			if tk.Phase != store.TaskRunning || tk.Node == victim {
				return false
			}
		}
		return c.task("svc.c.0").Node != c.task("svc.c.1").Node
	})
	for _, tn := range []string{"svc.c.0", "svc.c.1"} {
		tn := tn
		c.waitFor("one live copy of "+tn, 30*time.Second, func() bool { n, _ := c.liveCopies(tn); return n == 1 })
	}
	time.Sleep(300 * time.Millisecond)
	if over, log := c.counterStartedOver("svc.c.0"); over {
		t.Fatalf("moved task restarted from scratch:\n%s", log)
	}
	nodes, err := c.cli.Nodes(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Name == victim && (n.Status != store.NodeDraining || n.Tasks != 0) {
			t.Fatalf("drained node %+v", n)
		}
	}
	if err := c.cli.Drain(ctx(t), victim, false, 0); err != nil {
		t.Fatal(err)
	}
}

func TestE2EControllerRestartMidPlanFinishesThePlan(t *testing.T) {
	c := newTestCluster(t, 2, 4)
	if _, err := c.cli.Submit(ctx(t), []byte(counterJob("batch", 5, 6, 1, ""))); err != nil {
		t.Fatal(err)
	}
	var planID uint64
	c.waitFor("a plan journaled", 30*time.Second, func() bool {
		c.srv.Store.View(func(s *store.State) {
			if p := s.ActivePlan(); p != nil {
				planID = p.ID
			}
		})
		return planID != 0
	})
	addr := c.srv.Addr()
	old := c.srv
	if err := c.srv.Close(); err != nil {
		t.Fatal(err)
	}
	var states []string
	old.Store.View(func(s *store.State) {
		for _, a := range s.Plans[planID].Actions {
			states = append(states, string(a.State))
		}
	})
	t.Logf("plan %d at the kill: %v", planID, states)
	c.startServer(addr)
	c.waitFor("the plan finished after the restart", 60*time.Second, func() bool {
		var done bool
		c.srv.Store.View(func(s *store.State) { done = s.Plans[planID] != nil && s.Plans[planID].State == store.PlanFinished })
		return done
	})
	for i := 0; i < 6; i++ {
		tn := fmt.Sprintf("batch.c.%d", i)
		c.waitFor(tn+" running with one live copy", 60*time.Second, func() bool {
			n, _ := c.liveCopies(tn)
			return c.phase(tn) == store.TaskRunning && n == 1
		})
	}
}

func TestE2EAgentLossRestartsTasksElsewhereWithoutDuplicates(t *testing.T) {
	c := newTestCluster(t, 3, 2)
	if _, err := c.cli.Submit(ctx(t), []byte(counterJob("svc", 5, 2, 1, "constraints:\n  spread: true\n"))); err != nil {
		t.Fatal(err)
	}
	c.waitFor("svc running", 30*time.Second, func() bool {
		return c.phase("svc.c.0") == store.TaskRunning && c.phase("svc.c.1") == store.TaskRunning
	})
	lost := c.task("svc.c.0")
	addr := c.agents[lost.Node].addr
	// The agent dies; its processes keep running (as after a crash of the
	// daemon or a network partition).
	c.stopAgent(lost.Node, false)
	c.waitFor("node down and the task running elsewhere", 60*time.Second, func() bool {
		tk := c.task("svc.c.0")
		n, _ := c.liveCopies("svc.c.0")
		return tk.Phase == store.TaskRunning && tk.Node != lost.Node && tk.Epoch > lost.Epoch && n == 1
	})
	// The agent comes back: its copy is stale and gets stopped.
	c.startAgent(lost.Node, addr, 2)
	c.waitFor("node online", 30*time.Second, func() bool {
		nodes, _ := c.cli.Nodes(ctx(t))
		for _, n := range nodes {
			if n.Name == lost.Node {
				return n.Status == store.NodeOnline
			}
		}
		return false
	})
	c.waitFor("the stale copy stopped", 60*time.Second, func() bool {
		n, where := c.liveCopies("svc.c.0")
		return n == 1 && where[0] != lost.Node
	})
}

// A drain of four gathered tasks is four migrations from one node, two at a
// time (the outbound limit); the controller dies after the first ones
// committed and a restarted controller finishes the rest.
func TestE2EControllerRestartMidDrainFinishesTheMoves(t *testing.T) {
	c := newTestCluster(t, 2, 4)
	if _, err := c.cli.Submit(ctx(t), []byte(counterJob("g", 5, 4, 1, "constraints:\n  gather: true\n"))); err != nil {
		t.Fatal(err)
	}
	names := []string{"g.c.0", "g.c.1", "g.c.2", "g.c.3"}
	c.waitFor("g running", 30*time.Second, func() bool {
		for _, n := range names {
			if c.phase(n) != store.TaskRunning {
				return false
			}
		}
		return true
	})
	from := c.task("g.c.0").Node
	if err := c.cli.Drain(ctx(t), from, true, 0); err != nil {
		t.Fatal(err)
	}
	var planID uint64
	c.waitFor("some moves committed, not all", 30*time.Second, func() bool {
		done, total := 0, 0
		c.srv.Store.View(func(s *store.State) {
			for _, p := range s.Plans {
				if p.Reason != "" && p.State == store.PlanExecuting {
					planID = p.ID
					total = len(p.Actions)
					for _, a := range p.Actions {
						if a.State == store.ActionDone {
							done++
						}
					}
				}
			}
		})
		return done > 0 && done < total
	})
	addr, old := c.srv.Addr(), c.srv
	if err := c.srv.Close(); err != nil {
		t.Fatal(err)
	}
	var states []string
	old.Store.View(func(s *store.State) {
		for _, a := range s.Plans[planID].Actions {
			states = append(states, a.Kind+":"+string(a.State))
		}
	})
	t.Logf("plan %d at the kill: %v", planID, states)
	c.startServer(addr)
	c.waitFor("every task moved off the drained node, one live copy each", 45*time.Second, func() bool {
		for _, n := range names {
			tk := c.task(n)
			if tk.Phase != store.TaskRunning || tk.Node == from {
				return false
			}
			if k, _ := c.liveCopies(n); k != 1 {
				return false
			}
		}
		return true
	})
	var finished bool
	c.srv.Store.View(func(s *store.State) { finished = s.Plans[planID] != nil && s.Plans[planID].State == store.PlanFinished })
	if !finished {
		t.Fatalf("plan %d not finished\n%s", planID, c.dump())
	}
}
