package controller

import (
	"strings"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/store"
)

// A drain with a deadline: a task that cannot fit anywhere else keeps
// running on the draining node until the deadline, then is suspended to
// disk (journaled, in a plan that says why) so the node holds nothing live;
// after the undrain it resumes from its checkpoint, its counter intact.
func TestE2EDrainDeadlineSuspendsWhatCannotMove(t *testing.T) {
	c := newTestCluster(t, 2, 1)
	for _, j := range []string{"a", "b"} {
		if _, err := c.cli.Submit(ctx(t), []byte(counterJob(j, 5, 1, 1, ""))); err != nil {
			t.Fatal(err)
		}
	}
	c.waitFor("a and b running", 30*time.Second, func() bool {
		return c.phase("a.c.0") == store.TaskRunning && c.phase("b.c.0") == store.TaskRunning
	})
	victim := c.task("b.c.0").Node
	const grace = 4 * time.Second
	asked := time.Now()
	if err := c.cli.Drain(ctx(t), victim, true, grace); err != nil {
		t.Fatal(err)
	}
	var deadline int64
	c.srv.Store.View(func(s *store.State) { deadline = s.Nodes[victim].DrainDeadline })
	if deadline == 0 {
		t.Fatal("drain did not record its deadline")
	}
	suspends := func() []store.Action {
		plans, err := c.cli.Plans(ctx(t), 0)
		if err != nil {
			t.Fatal(err)
		}
		var out []store.Action
		for _, p := range plans {
			for _, a := range p.Actions {
				if a.Task == "b.c.0" && a.Kind == "suspend" {
					if !strings.Contains(p.Reason, "drain deadline passed on "+victim) {
						t.Errorf("plan %d suspends b.c.0 with reason %q, want the drain deadline named", p.ID, p.Reason)
					}
					out = append(out, a)
				}
			}
		}
		return out
	}
	// Before the deadline (as seen from here: the server's deadline is
	// later than asked+grace) b stays where it is, running.
	for time.Since(asked) < grace-time.Second {
		if tk := c.task("b.c.0"); tk.Phase != store.TaskRunning || tk.Node != victim {
			t.Fatalf("%s before the drain deadline: b.c.0 %s on %s, want running on %s\n%s", time.Since(asked), tk.Phase, tk.Node, victim, c.dump())
		}
		if s := suspends(); len(s) > 0 {
			t.Fatalf("b.c.0 suspended %s after a drain with a %s deadline: %+v", time.Since(asked), grace, s)
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.waitFor("b suspended at the deadline", 60*time.Second, func() bool { return c.phase("b.c.0") == store.TaskSleeping })
	ss := suspends()
	if len(ss) != 1 || ss[0].State != store.ActionDone || ss[0].Started < deadline {
		t.Fatalf("want one suspend of b.c.0, done, started at or after the deadline %d: %+v", deadline, ss)
	}
	if n, where := c.liveCopies("b.c.0"); n != 0 {
		t.Fatalf("b.c.0 still live after the drain deadline on %v", where)
	}
	if c.phase("a.c.0") != store.TaskRunning {
		t.Fatalf("a.c.0 disturbed by the drain: %s", c.phase("a.c.0"))
	}
	if err := c.cli.Drain(ctx(t), victim, false, 0); err != nil {
		t.Fatal(err)
	}
	c.waitFor("b resumed after the undrain", 30*time.Second, func() bool {
		n, _ := c.liveCopies("b.c.0")
		return c.phase("b.c.0") == store.TaskRunning && n == 1
	})
	time.Sleep(300 * time.Millisecond)
	if over, log := c.counterStartedOver("b.c.0"); over {
		t.Fatalf("b.c.0 restarted from scratch instead of its checkpoint:\n%s", log)
	}
}
