package controller

import (
	"testing"
	"time"

	"github.com/ferrycluster/ferry/store"
)

// A task suspended on one node and resumed by the controller on the other
// (its node drained meanwhile): the executor grants the image to the
// destination at the holder, then asks the destination to resume from it
// (the holder lets no other agent fetch it). The task continues from its
// checkpoint on the other node, one live copy. (Without the grant the
// holder refuses the destination's fetch and the resume fails.)
func TestE2EResumeFromPeerGrantsTheImage(t *testing.T) {
	c := newTestCluster(t, 2, 1)
	if _, err := c.cli.Submit(ctx(t), []byte(counterJob("j", 5, 1, 1, ""))); err != nil {
		t.Fatal(err)
	}
	c.waitFor("j running", 30*time.Second, func() bool { return c.phase("j.c.0") == store.TaskRunning })
	time.Sleep(500 * time.Millisecond) // let the counter count
	holder := c.task("j.c.0").Node
	if _, err := c.cli.JobAction(ctx(t), "j", "suspend"); err != nil {
		t.Fatal(err)
	}
	c.waitFor("j sleeping", 30*time.Second, func() bool { return c.phase("j.c.0") == store.TaskSleeping })
	if err := c.cli.Drain(ctx(t), holder, true, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.cli.JobAction(ctx(t), "j", "resume"); err != nil {
		t.Fatal(err)
	}
	c.waitFor("j running on the other node", 60*time.Second, func() bool {
		tk := c.task("j.c.0")
		n, _ := c.liveCopies("j.c.0")
		return tk.Phase == store.TaskRunning && tk.Node != holder && n == 1
	})
	plans, err := c.cli.Plans(ctx(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	resumed := false
	for _, p := range plans {
		for _, a := range p.Actions {
			if a.Task == "j.c.0" && a.Kind == "resume" && a.From == holder && a.To != holder && a.State == store.ActionDone {
				resumed = true
			}
		}
	}
	if !resumed {
		t.Fatalf("no resume of j.c.0 from %s to the other node done\n%s", holder, c.dump())
	}
	time.Sleep(300 * time.Millisecond)
	if over, log := c.counterStartedOver("j.c.0"); over {
		t.Fatalf("j.c.0 restarted from scratch instead of its checkpoint:\n%s", log)
	}
}
