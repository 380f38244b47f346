package controller

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/controller/executor"
	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/store"
)

// poll gathers heartbeats from the agents that do not push them: every
// node each Period, at most 32 new requests at once. A node is asked
// again only once it has answered (or its request has failed), and a
// request may take up to HeartbeatTimeout: an agent slow to answer under
// load (its List asks QEMU for each guest's status) is late, not silent.
// Its report counts as of when it was asked (pollNode: reconcile's
// order), its answer as of when it arrived (observation.heard: liveness),
// so an agent that always takes X to answer was last heard at most X +
// Period ago and stays online while X is below HeartbeatTimeout - Period.
func (c *Controller) poll(ctx context.Context) {
	defer c.wg.Done()
	if c.cfg.NoPoll {
		return
	}
	t := time.NewTicker(c.cfg.Period)
	defer t.Stop()
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	defer wg.Wait()
	var mu sync.Mutex
	asking := map[string]bool{} // nodes with a request in flight
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !c.st.IsLeader() {
			continue
		}
		type target struct{ name, addr string }
		var targets []target
		c.st.View(func(s *store.State) {
			for _, n := range s.Nodes {
				if n.Addr != "" {
					targets = append(targets, target{n.Name, n.Addr})
				}
			}
		})
		now := c.cfg.Now()
		for _, tg := range targets {
			c.mu.Lock()
			o := c.obs[tg.name]
			pushed := o != nil && o.pushed && now.Sub(o.at) < 3*c.cfg.Period
			c.mu.Unlock()
			mu.Lock()
			busy := pushed || asking[tg.name]
			if !busy {
				asking[tg.name] = true
			}
			mu.Unlock()
			if busy {
				continue
			}
			wg.Add(1)
			go func(tg target) {
				defer wg.Done()
				defer func() {
					mu.Lock()
					delete(asking, tg.name)
					mu.Unlock()
				}()
				select {
				case sem <- struct{}{}:
				case <-ctx.Done():
					return
				}
				// A request still unanswered after two periods gives its
				// place to the next (as the old cut-off did), so slow or
				// hung agents never hold up the polls of the others.
				release := sync.OnceFunc(func() { <-sem })
				slow := time.AfterFunc(2*c.cfg.Period, release)
				c.pollNode(ctx, tg.name, tg.addr)
				slow.Stop()
				release()
			}(tg)
		}
	}
}

// pollNode asks one agent for its heartbeat (GET /v1/node, GET /v1/tasks)
// and records it as of the time it was asked: what the agent reports was
// read at or after that, so a slow answer is never taken for a report made
// after a change the store committed meanwhile (reconcile counts only
// reports taken after a task's last change).
func (c *Controller) pollNode(ctx context.Context, name, addr string) {
	pctx, cancel := context.WithTimeout(ctx, c.cfg.HeartbeatTimeout)
	defer cancel()
	asked := c.cfg.Now()
	cl := c.client(addr)
	info, err := cl.Node(pctx)
	if err != nil {
		return
	}
	tasks, err := cl.List(pctx)
	if err != nil {
		return
	}
	if info.Name != name {
		c.log.Warn("agent answers with another name", "node", name, "addr", addr, "name", info.Name)
		return
	}
	if err := checkAgentName(cl, addr, name); err != nil {
		c.log.Warn("agent's certificate is not its node's", "node", name, "err", err)
		return
	}
	_ = c.observe(ctx, Heartbeat{Node: name, Info: info, Tasks: tasks}, nil, false, asked)
}

// liveness marks silent nodes down (their running tasks are lost and will
// restart elsewhere) and returning nodes online. A lost task whose
// checkpoint peer is online and lists a replica of its periodic checkpoint
// restarts from that replica; otherwise from its last suspend image on an
// online node, otherwise from scratch (the event says which).
func (c *Controller) liveness(ctx context.Context) {
	now := c.cfg.Now()
	var batch []store.Command
	var downs, ups []string
	var lost []lostTask
	busy := c.inFlight()
	c.st.View(func(s *store.State) {
		down := map[string]bool{}
		for _, name := range s.SortedNodes() {
			n := s.Nodes[name]
			c.mu.Lock()
			o := c.obs[name]
			// A node registered since the loop started gets a full
			// timeout before its first report (it may be added between
			// two polls).
			last := c.started
			if reg := time.Unix(0, n.Registered); reg.After(last) {
				last = reg
			}
			if o != nil && o.heard.After(last) {
				last = o.heard
			}
			c.mu.Unlock()
			silent := now.Sub(last) > c.cfg.HeartbeatTimeout
			switch {
			case n.Status != store.NodeDown && silent:
				downs = append(downs, name)
				down[name] = true
			case n.Status == store.NodeDown && !silent && o != nil && o.at.UnixNano() > n.Changed:
				ups = append(ups, name)
				batch = append(batch, store.Command{SetNode: &store.SetNode{Name: name, Status: store.NodeOnline}})
			}
		}
		for _, t := range s.Tasks {
			if t.Phase != store.TaskRunning || !down[t.Node] || busy[t.Name] {
				continue
			}
			lt := lostTask{task: t.Name, epoch: t.Epoch, node: t.Node}
			if p := s.Nodes[t.CheckpointPeer]; p != nil && p.Status != store.NodeDown && !down[p.Name] && p.Name != t.Node {
				lt.peer, lt.peerAddr = p.Name, p.Addr
			}
			lost = append(lost, lt)
		}
	})
	if len(batch) == 0 && len(downs) == 0 {
		return
	}
	sort.Slice(lost, func(a, b int) bool { return lost[a].task < lost[b].task })
	c.findReplicas(ctx, lost)
	// Asking the peers took time (up to 5 s): a node that reported
	// meanwhile is not down, and its tasks are not lost.
	downs, lost = c.stillSilent(downs, lost, now)
	if len(batch) == 0 && len(downs) == 0 {
		return
	}
	for _, n := range downs {
		batch = append(batch, store.Command{SetNode: &store.SetNode{Name: n, Status: store.NodeDown}})
	}
	for _, lt := range lost {
		batch = append(batch, store.Command{TaskEvent: &store.TaskEvent{Task: lt.task, Epoch: lt.epoch, Kind: store.TaskLost,
			Message: fmt.Sprintf("node %s missed heartbeats", lt.node), Replica: lt.replica}})
	}
	if _, err := c.apply(ctx, store.Command{Batch: batch}); err != nil {
		c.log.Warn("cannot record node liveness", "err", err)
		return
	}
	for _, n := range downs {
		c.event("node", n, "down", "after", c.cfg.HeartbeatTimeout.String())
	}
	for _, n := range ups {
		c.event("node", n, "online")
	}
	c.st.View(func(s *store.State) {
		for _, lt := range lost {
			t := s.Tasks[lt.task]
			var from, kind string
			switch {
			case t == nil || t.Phase == store.TaskRunning:
				continue
			case t.Replica:
				from, kind = fmt.Sprintf("the replica of its periodic checkpoint on %s (epoch %d, seq %d)", t.Node, lt.replicaEpoch, lt.replicaSeq), "replica"
			case t.Phase == store.TaskSleeping:
				from, kind = "its last suspend image on "+t.Node, "image"
			default:
				from, kind = "scratch", "scratch"
			}
			c.metrics.LostRestarts.WithLabelValues(kind).Inc()
			if lt.peer != "" && !t.Replica {
				from += fmt.Sprintf(" (checkpoint peer %s: %s)", lt.peer, lt.why)
			}
			c.event("task", lt.task, "lost", "node", lt.node, "restart_from", from)
		}
	})
}

// stillSilent drops from downs the nodes that, counting the reports
// recorded since, were not silent when liveness judged them at judged (the
// same rule: a report within HeartbeatTimeout; what else made them silent,
// the loop's start and their registration, has not changed), and from lost
// their tasks.
func (c *Controller) stillSilent(downs []string, lost []lostTask, judged time.Time) ([]string, []lostTask) {
	spoke := map[string]bool{}
	c.mu.Lock()
	for _, n := range downs {
		if o := c.obs[n]; o != nil && judged.Sub(o.heard) <= c.cfg.HeartbeatTimeout {
			spoke[n] = true
		}
	}
	c.mu.Unlock()
	if len(spoke) == 0 {
		return downs, lost
	}
	var keptDowns []string
	for _, n := range downs {
		if spoke[n] {
			c.log.Info("node reported while its tasks' peers were asked; not marked down", "node", n)
			continue
		}
		keptDowns = append(keptDowns, n)
	}
	var keptLost []lostTask
	for _, lt := range lost {
		if !spoke[lt.node] {
			keptLost = append(keptLost, lt)
		}
	}
	return keptDowns, keptLost
}

// lostTask is a running task of a node being marked down, with its
// checkpoint peer and what the peer keeps of it.
type lostTask struct {
	task, node               string
	epoch                    uint64
	peer, peerAddr           string
	replica                  string // the peer, when it lists a usable replica
	replicaEpoch, replicaSeq uint64
	why                      string // why the peer's replica is not used
}

// findReplicas asks each checkpoint peer of the lost tasks (in parallel,
// 5 s each) which replicas it keeps: only a replica of the task taken under
// the task's current epoch makes the task restart from it.
func (c *Controller) findReplicas(ctx context.Context, lost []lostTask) {
	byPeer := map[string][]int{}
	for i, lt := range lost {
		if lt.peer != "" {
			byPeer[lt.peer] = append(byPeer[lt.peer], i)
		}
	}
	var wg sync.WaitGroup
	for peer, idx := range byPeer {
		wg.Add(1)
		go func(peer string, idx []int) {
			defer wg.Done()
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			rs, err := c.client(lost[idx[0]].peerAddr).Replicas(rctx)
			have := map[string]api.Replica{}
			for _, r := range rs {
				have[r.Task] = r
			}
			for _, i := range idx {
				lt := &lost[i]
				r, ok := have[lt.task]
				switch {
				case err != nil:
					lt.why = "cannot list its replicas: " + err.Error()
				case !ok:
					lt.why = "keeps no replica of it"
				case r.Epoch > lt.epoch:
					lt.why = fmt.Sprintf("its replica's epoch %d is ahead of the task's %d", r.Epoch, lt.epoch)
				case r.Epoch < lt.epoch:
					// Left from an earlier placement (a move, an earlier
					// restart): older than the task's last suspend image,
					// and its holder may be stale.
					lt.why = fmt.Sprintf("its replica's epoch %d is older than the task's %d (left from an earlier placement)", r.Epoch, lt.epoch)
				default:
					lt.replica, lt.replicaEpoch, lt.replicaSeq = peer, r.Epoch, r.Seq
				}
			}
		}(peer, idx)
	}
	wg.Wait()
}

// inFlight returns the tasks an action of the running plan is running on.
func (c *Controller) inFlight() map[string]bool {
	busy := map[string]bool{}
	if c.run == nil {
		return busy
	}
	for i, a := range c.run.acts {
		if c.run.ex.State(i) == executor.Running {
			busy[a.Task] = true
		}
	}
	return busy
}

// report is one node's latest heartbeat, as reconcile reads it.
type report struct {
	node  string
	at    time.Time
	tasks []api.Task
	index map[string]int
}

// reconcile compares the agents' reports with the store: stale copies are
// stopped (never two live copies), tasks that ended on their own or vanished
// are recorded. Only reports taken after the task's last change count.
// It walks the reports node by node (no per-round index of every copy: at
// 5,000 nodes and 50,000 tasks it runs every second).
func (c *Controller) reconcile(ctx context.Context) {
	c.mu.Lock()
	reports := make(map[string]report, len(c.obs))
	for node, o := range c.obs {
		reports[node] = report{node: node, at: o.at, tasks: o.tasks, index: o.index}
	}
	c.mu.Unlock()
	var events []store.Command
	type stop struct {
		node, addr, id string
		epoch          uint64
		why            string
	}
	var stops []stop
	busy := c.inFlight()
	c.st.View(func(s *store.State) {
		for _, r := range reports {
			n := s.Nodes[r.node]
			if n == nil {
				continue
			}
			at := r.at.UnixNano()
			for k := range r.tasks {
				cp := &r.tasks[k]
				id := cp.ID
				t := s.Tasks[id]
				if t != nil && (busy[id] || at <= t.Changed) {
					continue
				}
				switch cp.Phase {
				case api.PhaseMigratingOut, api.PhaseIncoming, api.PhaseMoved:
					continue
				}
				why := ""
				switch {
				case t == nil:
					why = "unknown task"
				case cp.Stale:
					why = "agent flags it stale: " + cp.StaleReason
				case t.Phase == store.TaskTerminated:
					why = "task terminated"
				case cp.Phase == api.PhaseSuspended:
					keep := (t.Phase == store.TaskSleeping && r.node == t.Node && cp.Epoch <= t.Epoch) ||
						(r.node == t.ImageNode && cp.Epoch == t.ImageEpoch)
					if !keep {
						why = "image no longer needed"
					}
				case t.Phase == store.TaskRunning && r.node == t.Node && cp.Epoch == t.Epoch:
					if cp.Phase == api.PhaseLost {
						events = append(events, store.Command{TaskEvent: &store.TaskEvent{Task: id, Epoch: t.Epoch, Kind: store.TaskLost, Message: "the agent lost the process"}})
					} else if st := cp.Status; st != nil && (st.State == driver.StateExited || st.State == driver.StateFailed) {
						code := st.ExitCode
						if st.State == driver.StateFailed && code == 0 {
							code = -1
						}
						events = append(events, store.Command{TaskEvent: &store.TaskEvent{Task: id, Epoch: t.Epoch, Kind: store.TaskExited, ExitCode: code, Message: st.Message}})
					} else if tail := reportedTail(t, cp); tail != store.RAMTailUnknown {
						events = append(events, store.Command{TaskEvent: &store.TaskEvent{Task: id, Epoch: t.Epoch, Kind: store.TaskShaped, RAMTail: tail,
							Message: "reported by " + r.node}})
					}
				default:
					why = fmt.Sprintf("stale copy: store has %s on %q at epoch %d", t.Phase, t.Node, t.Epoch)
				}
				if why != "" {
					stops = append(stops, stop{r.node, n.Addr, id, cp.Epoch, why})
				}
			}
		}
		// A running task its node no longer reports has vanished.
		for _, t := range s.Tasks {
			if t.Phase != store.TaskRunning || busy[t.Name] {
				continue
			}
			r, ok := reports[t.Node]
			if !ok || r.at.UnixNano() <= t.Changed+int64(2*c.cfg.Period) {
				continue
			}
			if _, found := r.index[t.Name]; !found && s.Nodes[t.Node] != nil && s.Nodes[t.Node].Status != store.NodeDown {
				events = append(events, store.Command{TaskEvent: &store.TaskEvent{Task: t.Name, Epoch: t.Epoch, Kind: store.TaskLost, Message: "not reported by its node"}})
			}
		}
	})
	if len(events) > 0 {
		if r, err := c.apply(ctx, store.Command{Batch: events}); err == nil {
			for k, e := range events {
				switch te := e.TaskEvent; {
				case r.Batch[k].Err != nil:
					c.log.Debug("cannot record a task event", "task", te.Task, "kind", te.Kind, "err", r.Batch[k].Err)
				case te.Kind == store.TaskShaped:
					c.event("task", te.Task, "shape learned", "ram_tail", string(te.RAMTail), "from", te.Message)
				default:
					c.event("task", te.Task, string(te.Kind), "exit_code", te.ExitCode, "message", te.Message)
				}
			}
			c.Trigger()
		}
	}
	now := c.cfg.Now()
	for _, s := range stops {
		key := fmt.Sprintf("%s/%s/%d", s.node, s.id, s.epoch)
		c.mu.Lock()
		last, seen := c.killed[key]
		if seen && now.Sub(last) < 10*time.Second {
			c.mu.Unlock()
			continue
		}
		c.killed[key] = now
		c.mu.Unlock()
		c.event("task", s.id, "stopping stale copy", "node", s.node, "epoch", s.epoch, "why", s.why)
		c.metrics.StaleKills.Inc()
		c.wg.Add(1)
		go func(s stop) {
			defer c.wg.Done()
			sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			if err := c.client(s.addr).Stop(sctx, s.id, s.epoch); err != nil {
				c.log.Warn("cannot stop a stale copy", "node", s.node, "task", s.id, "epoch", s.epoch, "err", err)
			}
		}(s)
	}
}

// reportedTail is the shape of t's guest as cp, a report of its running
// copy (its node, its epoch), gives it when the store does not know it
// yet (booted before shapes were recorded, or on a node whose version was
// unknown): the agent reports how its driver launched the guest.
// RAMTailUnknown when there is nothing to learn.
func reportedTail(t *store.Task, cp *api.Task) store.RAMTail {
	if t.Driver != "qemu" || t.RAMTail != store.RAMTailUnknown || cp.RAMTailKiB == nil || cp.Phase != api.PhaseRunning || cp.Stale {
		return store.RAMTailUnknown
	}
	if *cp.RAMTailKiB == 0 {
		return store.RAMTailWithout
	}
	return store.RAMTailWith
}

// settleOrphans decides the outcome of actions a previous controller left
// running, from the agents' reports: the expected result observed → done;
// the task still as it was before, and not moving → failed (the next plan
// redoes what is still wanted); otherwise wait (the executor's timeouts
// bound the wait).
func (c *Controller) settleOrphans(ctx context.Context, now time.Time) {
	run := c.run
	for i := range run.orphans {
		a := run.acts[i]
		var started int64 = a.Started
		c.mu.Lock()
		var from, to *api.Task
		var fromSeen, toSeen bool
		var toInfo api.NodeInfo
		for node, o := range c.obs {
			if o.at.UnixNano() <= started || now.Sub(o.heard) > 3*c.cfg.Period {
				continue
			}
			if node == a.From {
				fromSeen = true
			}
			if node == a.To {
				toSeen, toInfo = true, o.info
			}
			for k := range o.tasks {
				if o.tasks[k].ID != a.Task {
					continue
				}
				if node == a.From {
					from = &o.tasks[k]
				}
				if node == a.To {
					to = &o.tasks[k]
				}
			}
		}
		c.mu.Unlock()
		ok, failed := false, false
		var epoch uint64
		var image string
		var tail store.RAMTail
		switch a.Kind {
		case "boot", "resume", "migrate":
			settled := toSeen && (to == nil || to.Phase != api.PhaseIncoming) && now.Sub(run.started) > 3*c.cfg.Period
			if toSeen && to != nil && to.Phase == api.PhaseRunning && to.Epoch >= a.NewEpoch && !to.Stale {
				ok, epoch = true, to.Epoch
				if a.Kind == "boot" && to.Driver == "qemu" {
					tail = bootTail(toInfo)
				}
			} else if settled && (a.Kind == "boot" || fromSeen && (from == nil || from.Phase != api.PhaseMigratingOut)) {
				// Not at the destination and not moving: the action did
				// not happen (or lost the task, which reconcile then
				// reports lost and the next plan restarts).
				failed = true
			}
		case "suspend":
			if fromSeen && from != nil && from.Phase == api.PhaseSuspended {
				ok = true
				if from.Image != nil {
					image = from.Image.Dir
				}
			} else if fromSeen && from != nil && from.Phase == api.PhaseRunning && now.Sub(run.started) > 3*c.cfg.Period {
				failed = true
			}
		case "shutdown", "kill":
			if a.From == "" || fromSeen && (from == nil || from.Phase == api.PhaseMoved || from.Stale) {
				ok = true
			} else if fromSeen && now.Sub(run.started) > 3*c.cfg.Period {
				failed = true
			}
		}
		switch {
		case ok:
			c.finishActions(ctx, []ackMsg{{plan: run.id, action: i, kind: executor.Succeeded, epoch: epoch, image: image, ramTail: tail}})
		case failed:
			c.finishActions(ctx, []ackMsg{{plan: run.id, action: i, kind: executor.FailedAck, err: fmt.Errorf("controller restarted before the %s completed; not carried out", a.Kind)}})
		}
	}
}
