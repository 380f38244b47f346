package controller

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/store"
)

// slowAgent answers its task list only after delay, as an agent under load
// does when it asks QEMU for each guest's status; the poll calls nothing
// else (the embedded nil AgentAPI would panic).
type slowAgent struct {
	AgentAPI
	name  string
	delay time.Duration
	tasks []api.Task

	mu       sync.Mutex
	answered time.Time // when the last list was answered
	stopped  []string  // tasks the loop stopped here (a copy it took for stale)
}

func (a *slowAgent) Stop(_ context.Context, id string, _ uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stopped = append(a.stopped, id)
	return nil
}

func (a *slowAgent) Node(context.Context) (api.NodeInfo, error) {
	return api.NodeInfo{Name: a.name, CPUs: 4, MemoryBytes: 8 << 30, Drivers: []string{"process"}}, nil
}

func (a *slowAgent) List(ctx context.Context) ([]api.Task, error) {
	select {
	case <-time.After(a.delay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	a.mu.Lock()
	a.answered = time.Now()
	a.mu.Unlock()
	return a.tasks, nil
}

// A live agent that always takes longer than two loop periods to answer
// (here five) is late, not silent: the loop never marks its node down and
// its running task is not restarted elsewhere (the guest "restarted" in a
// drain under load, counter 2 after the move and 3 before: each poll was
// cut off after two periods, so a slow agent was never heard from). Its
// reports count as of when they were asked for.
func TestSlowAgentIsNotMarkedDown(t *testing.T) {
	st, cx := leaderStore(t)
	apply := applier(t, st, cx)
	apply(store.Command{RegisterNode: &store.RegisterNode{Name: "n1", Addr: "slow:n1", Capacity: store.Resources{CPUMilli: 4000, MemoryBytes: 8 << 30}}})
	apply(store.Command{SubmitJob: &store.SubmitJob{Job: store.Job{Name: "p", Priority: 5, Want: store.WantRun, Preemptible: true},
		Tasks: []store.Task{{Name: "p.t.0", Driver: "process", Demand: store.Resources{CPUMilli: 1000, MemoryBytes: 128 << 20}}}}})
	id := apply(store.Command{CreatePlan: &store.CreatePlan{Plan: store.Plan{Actions: []store.Action{{Kind: "boot", Task: "p.t.0", To: "n1"}}}}}).PlanID
	apply(store.Command{StartAction: &store.StartAction{Plan: id, Index: 0}})
	apply(store.Command{FinishAction: &store.FinishAction{Plan: id, Index: 0, OK: true}})
	apply(store.Command{FinishPlan: &store.FinishPlan{Plan: id}})

	const period, timeout = 100 * time.Millisecond, 3 * time.Second
	// Answering in 1.8 s, n1 is asked again every 1.9 s or so: last heard
	// at most 1.9 s ago, online. Judged by when it was asked (the report's
	// time), it was last heard up to 2·1.8 + 0.1 s ago and went down.
	agent := &slowAgent{name: "n1", delay: 18 * period, tasks: []api.Task{{ID: "p.t.0", Driver: "process", Epoch: 1, Phase: api.PhaseRunning,
		Status: &driver.Status{ID: "p.t.0", Epoch: 1, Kind: "process", State: driver.StateRunning}}}}
	c := New(Config{Store: st, Policy: Priority{}, Dial: func(string) AgentAPI { return agent }, Period: period, HeartbeatTimeout: timeout, Logger: quietLog()})
	runFor(cx, c, 2*timeout+timeout/2)

	if markedDown(c, "n1") {
		t.Errorf("n1 was marked down: a live agent answering in %v was taken for silent", agent.delay)
	}
	st.View(func(s *store.State) {
		if tk := s.Tasks["p.t.0"]; tk.Phase != store.TaskRunning || tk.Node != "n1" || tk.Epoch != 1 {
			t.Errorf("p.t.0 is %s on %q at epoch %d, want still running on n1 at epoch 1 (%s)", tk.Phase, tk.Node, tk.Epoch, tk.Message)
		}
	})
	var at time.Time
	c.mu.Lock()
	if o := c.obs["n1"]; o != nil {
		at = o.at
	}
	c.mu.Unlock()
	agent.mu.Lock()
	last, stopped := agent.answered, agent.stopped
	agent.mu.Unlock()
	if len(stopped) > 0 {
		t.Errorf("the loop stopped %v on n1, a live agent answering in %v", stopped, agent.delay)
	}
	if at.IsZero() || at.After(last.Add(-agent.delay)) {
		t.Errorf("n1's report counts as of %v; its last list was answered at %v after %v: want it counted as of the ask", at, last, agent.delay)
	}
}

// runFor runs the controller's loop for d, then stops it and waits for it
// to return.
func runFor(ctx context.Context, c *Controller, d time.Duration) {
	run, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(run) }()
	time.Sleep(d)
	stop()
	<-done
}

// markedDown reports whether the loop ever marked the node down.
func markedDown(c *Controller, node string) bool {
	for _, e := range c.events.Recent(0) {
		if e.Kind == "node" && e.Object == node && e.What == "down" {
			return true
		}
	}
	return false
}

// hungAgent never answers (a node whose agent accepts connections and then
// stalls): each request ends only when its context does.
type hungAgent struct{ AgentAPI }

func (hungAgent) Node(ctx context.Context) (api.NodeInfo, error) {
	<-ctx.Done()
	return api.NodeInfo{}, ctx.Err()
}

// Three times more hung agents than the poll has places for do not starve
// the others: a request unanswered after two periods gives its place up
// (it goes on, up to HeartbeatTimeout), so the live node is heard every
// period and stays online while the hung ones are marked down.
func TestHungAgentsDoNotStarveTheOthers(t *testing.T) {
	st, cx := leaderStore(t)
	apply := applier(t, st, cx)
	var batch []store.Command
	for i := range 100 {
		name := fmt.Sprintf("h%d", i)
		batch = append(batch, store.Command{RegisterNode: &store.RegisterNode{Name: name, Addr: "hung:" + name, Capacity: store.Resources{CPUMilli: 1000, MemoryBytes: 1 << 30}}})
	}
	batch = append(batch, store.Command{RegisterNode: &store.RegisterNode{Name: "n0", Addr: "live:n0", Capacity: store.Resources{CPUMilli: 1000, MemoryBytes: 1 << 30}}})
	apply(store.Command{Batch: batch})

	const period, timeout = 100 * time.Millisecond, 2 * time.Second
	live := &slowAgent{name: "n0"}
	dial := func(addr string) AgentAPI {
		if addr == "live:n0" {
			return live
		}
		return hungAgent{}
	}
	c := New(Config{Store: st, Policy: Priority{}, Dial: dial, Period: period, HeartbeatTimeout: timeout, Logger: quietLog()})
	runFor(cx, c, timeout+timeout/2)

	if markedDown(c, "n0") {
		t.Errorf("n0 was marked down: 100 hung agents kept the poll from asking it")
	}
	st.View(func(s *store.State) {
		if n := s.Nodes["h0"]; n.Status != store.NodeDown {
			t.Errorf("h0 is %s after %v without an answer, want down", n.Status, timeout+timeout/2)
		}
	})
}
