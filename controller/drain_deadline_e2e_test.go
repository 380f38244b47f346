package controller

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

// slowCheckpointJob is counterJob whose checkpoint waits until the file
// release exists (the trap polls for it first), so a move of it keeps its
// plan executing until the test creates that file. Its checkpoint timeout
// is long (5 min) so that only the release ends the wait; the executor's
// completion timeout (60 s and more) is the remaining bound.
func slowCheckpointJob(name, release string) string {
	return strings.Replace(counterJob(name, 5, 1, 1, "checkpoint:\n  timeout: 5m\n"), `trap 'echo`,
		fmt.Sprintf(`trap 'while [ ! -e %q ]; do sleep 0.1; done; echo`, release), 1)
}

// A drain deadline that passes while a long plan executes is honoured at
// once, not after the plan: the task still on the drained node is
// suspended (its suspend appended to the executing plan, with the reason)
// while the plan's slow move is still running.
func TestE2EDrainDeadlineHonouredDuringALongPlan(t *testing.T) {
	c := newTestCluster(t, 4, 1)
	// slow's checkpoint ends when this file exists: the test creates it
	// once b's suspend has been checked (and at cleanup, before the
	// cluster stops).
	release := filepath.Join(t.TempDir(), "release-checkpoint")
	releaseCheckpoint := func() {
		if err := os.WriteFile(release, nil, 0o644); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(releaseCheckpoint)
	for _, spec := range []string{slowCheckpointJob("slow", release), counterJob("b", 5, 1, 1, ""), counterJob("a", 5, 1, 1, "")} {
		if _, err := c.cli.Submit(ctx(t), []byte(spec)); err != nil {
			t.Fatal(err)
		}
	}
	c.waitFor("slow, a and b running", 30*time.Second, func() bool {
		return c.phase("slow.c.0") == store.TaskRunning && c.phase("a.c.0") == store.TaskRunning && c.phase("b.c.0") == store.TaskRunning
	})
	used := map[string]bool{}
	for _, tn := range []string{"slow.c.0", "a.c.0", "b.c.0"} {
		used[c.task(tn).Node] = true
	}
	free := ""
	for n := range c.agents {
		if !used[n] {
			free = n
		}
	}
	// A plan that lasts until the test releases slow's checkpoint: move
	// slow (checkpoint mode) to the free node.
	// (Retried while the plan that started the jobs is still closing.)
	var planID uint64
	c.waitFor("the move accepted", 30*time.Second, func() bool {
		id, err := c.cli.Migrate(ctx(t), "slow.c.0", free)
		if err != nil && !errors.Is(err, store.ErrConflict) {
			t.Fatal(err)
		}
		planID = id
		return err == nil
	})
	c.waitFor("the slow move running", 30*time.Second, func() bool {
		var st store.ActionState
		c.srv.Store.View(func(s *store.State) {
			if p := s.Plans[planID]; p != nil {
				st = p.Actions[0].State
			}
		})
		return st == store.ActionRunning
	})
	victim := c.task("b.c.0").Node
	if err := c.cli.Drain(ctx(t), victim, true, time.Second); err != nil {
		t.Fatal(err)
	}
	var deadline int64
	c.srv.Store.View(func(s *store.State) { deadline = s.Nodes[victim].DrainDeadline })
	c.waitFor("b suspended at the deadline", 30*time.Second, func() bool { return c.phase("b.c.0") == store.TaskSleeping })
	var p store.Plan
	c.srv.Store.View(func(s *store.State) { p = *s.Plans[planID]; p.Actions = append([]store.Action(nil), p.Actions...) })
	if p.Actions[0].State != store.ActionRunning || c.phase("slow.c.0") != store.TaskRunning || c.task("slow.c.0").Node == free {
		t.Fatalf("the slow move, whose checkpoint is held, is not running while b was suspended: %+v\n%s", p.Actions[0], c.dump())
	}
	if !strings.Contains(p.Reason, "drain deadline passed on "+victim) {
		t.Fatalf("plan reason %q does not name the deadline", p.Reason)
	}
	var sus []store.Action
	for _, a := range p.Actions {
		if a.Task == "b.c.0" {
			sus = append(sus, a)
		}
	}
	if len(sus) != 1 || sus[0].Kind != "suspend" || sus[0].State != store.ActionDone || sus[0].Started < deadline {
		t.Fatalf("want one suspend of b.c.0 in plan %d, done, started at or after the deadline %d: %+v", planID, deadline, sus)
	}
	if n, where := c.liveCopies("b.c.0"); n != 0 {
		t.Fatalf("b.c.0 still live after the drain deadline on %v", where)
	}
	// Released, the slow move completes and the plan closes.
	releaseCheckpoint()
	c.waitFor("the slow move done", 60*time.Second, func() bool {
		return c.task("slow.c.0").Node == free && c.phase("slow.c.0") == store.TaskRunning
	})
	if c.phase("a.c.0") != store.TaskRunning {
		t.Fatalf("a.c.0 disturbed: %s", c.phase("a.c.0"))
	}
}
