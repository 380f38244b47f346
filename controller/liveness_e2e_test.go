package controller

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/store"
)

// gatedReplicas is a real agent client whose Replicas call waits for the
// test (closed release) the first time, before it asks the agent: it holds liveness between
// deciding a node is silent and recording it down.
type gatedReplicas struct {
	*certBoundAgent
	asked, release, answered chan struct{}
	once                     sync.Once
}

func (g *gatedReplicas) Replicas(ctx context.Context) ([]api.Replica, error) {
	gated := false
	g.once.Do(func() { gated = true; close(g.asked) })
	if !gated {
		return g.certBoundAgent.Replicas(ctx)
	}
	select {
	case <-g.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer close(g.answered)
	return g.certBoundAgent.Replicas(ctx)
}

// A node that reports while liveness asks its tasks' checkpoint peers for
// replicas (after it was found silent, before it is recorded down) is not
// marked down and its task is not restarted: one copy, same epoch.
func TestE2ENodeHeardWhileAskingPeersIsNotMarkedDown(t *testing.T) {
	c, _, first := startSegWithReplica(t)
	peerAddr := c.agents[first.CheckpointPeer].addr
	ctl := c.srv.Controller
	g := &gatedReplicas{asked: make(chan struct{}), release: make(chan struct{}), answered: make(chan struct{})}
	ctl.mu.Lock()
	cb, ok := ctl.clients[peerAddr].(*certBoundAgent)
	if ok {
		g.certBoundAgent = cb
		ctl.clients[peerAddr] = g
	}
	ctl.mu.Unlock()
	if !ok {
		t.Fatalf("no agent client for the peer %s yet", first.CheckpointPeer)
	}
	releaseOnce := sync.OnceFunc(func() { close(g.release) })
	t.Cleanup(releaseOnce)

	// The node's agent dies (its job keeps running) until liveness, having
	// found it silent, asks the peer for replicas; then it comes back and
	// reports before the peer answers.
	addr := c.agents[first.Node].addr
	c.stopAgent(first.Node, false)
	select {
	case <-g.asked:
	case <-time.After(60 * time.Second):
		t.Fatalf("liveness never asked the peer for replicas\n%s", c.dump())
	}
	back := time.Now()
	c.startAgent(first.Node, addr, 1)
	c.waitFor("a report from the returned node", 30*time.Second, func() bool {
		ctl.mu.Lock()
		defer ctl.mu.Unlock()
		o := ctl.obs[first.Node]
		return o != nil && o.at.After(back)
	})
	releaseOnce()
	// liveness records its batch right after the peer answers; a few more
	// rounds of the loop follow.
	select {
	case <-g.answered:
	case <-time.After(30 * time.Second):
		t.Fatal("the peer never answered")
	}
	time.Sleep(10 * ctl.cfg.Period)
	var st store.NodeStatus
	c.srv.Store.View(func(s *store.State) { st = s.Nodes[first.Node].Status })
	if st == store.NodeDown || c.lastEvent(first.Node, "down") != "" {
		t.Fatalf("%s marked down though it reported before the batch was applied\n%s", first.Node, c.dump())
	}
	if e := c.lastEvent("seg.c.0", "lost"); e != "" {
		t.Fatalf("seg.c.0 lost: %s\n%s", e, c.dump())
	}
	if tk := c.task("seg.c.0"); tk.Node != first.Node || tk.Epoch != first.Epoch {
		t.Fatalf("seg.c.0 now on %s at epoch %d, was on %s at epoch %d\n%s", tk.Node, tk.Epoch, first.Node, first.Epoch, c.dump())
	}
	if n, where := c.liveCopies("seg.c.0"); n > 1 {
		t.Fatalf("two live copies of seg.c.0: %v", where)
	}
}
