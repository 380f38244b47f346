package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/controller/executor"
	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/store"
)

// execution is the plan being carried out: the pure executor plus the I/O
// state around it (cancel functions of calls in flight, orphans inherited
// from a previous leader).
type execution struct {
	id      uint64
	ex      *executor.Executor
	acts    []store.Action
	started time.Time
	cancels map[int]context.CancelFunc
	// orphans are actions journaled as running by a previous controller:
	// their outcome is read from the agents' reports.
	orphans map[int]bool
}

func newExecution(id uint64, ex *executor.Executor, acts []store.Action, now time.Time) *execution {
	return &execution{id: id, ex: ex, acts: acts, started: now, cancels: map[int]context.CancelFunc{}, orphans: map[int]bool{}}
}

// eventsPerRound: above this many starts or ends in one round, the event
// stream gets one summary instead of an event per action (failures are
// always reported one by one).
const eventsPerRound = 64

// ackMsg is what a dispatch goroutine reports.
type ackMsg struct {
	plan   uint64
	action int
	kind   executor.AckKind
	err    error
	image  string
	epoch  uint64
	bytes  int64
	// ramTail: the shape of a VM's new guest (boot)
	ramTail store.RAMTail
	// migration results
	took, downtime time.Duration
}

// resumePlan rebuilds the execution of a plan journaled by a previous
// leader (or before a restart): terminal actions stay terminal, running
// ones become orphans whose outcome the agents' reports settle.
func (c *Controller) resumePlan(ctx context.Context, p *store.Plan) {
	acts := make([]executor.Action, len(p.Actions))
	for i, a := range p.Actions {
		acts[i] = executor.Action{Kind: kindOf(a.Kind), Task: a.Task, From: a.From, To: a.To, Deps: a.Deps, Bytes: a.Bytes}
	}
	ex, err := executor.New(acts, c.cfg.Limits)
	if err != nil {
		c.log.Error("journaled plan is not executable; cancelling its pending actions", "plan", p.ID, "err", err)
		for i, a := range p.Actions {
			if a.State == store.ActionPending {
				_, _ = c.apply(ctx, store.Command{CancelAction: &store.CancelAction{Plan: p.ID, Index: i, Error: err.Error()}})
			}
		}
		return
	}
	run := newExecution(p.ID, ex, p.Actions, c.cfg.Now())
	for i, a := range p.Actions {
		switch a.State {
		case store.ActionDone:
			ex.Restore(i, executor.Done, run.started)
		case store.ActionFailed:
			ex.Restore(i, executor.Failed, run.started)
		case store.ActionCancelled:
			ex.Restore(i, executor.Cancelled, run.started)
		case store.ActionRunning:
			ex.Restore(i, executor.Running, time.Unix(0, a.Started))
			run.orphans[i] = true
		}
	}
	c.run = run
	if len(run.orphans) == 0 && p.Reason != "" {
		c.event("plan", fmt.Sprint(p.ID), "taken up", "reason", p.Reason, "actions", len(p.Actions))
	} else {
		c.event("plan", fmt.Sprint(p.ID), "resumed from the journal", "orphans", len(run.orphans))
	}
}

// drive performs what the executor says and settles orphans. Starts and
// cancels of one round are journaled in one batch (one raft commit).
func (c *Controller) drive(ctx context.Context) {
	run := c.run
	now := c.cfg.Now()
	c.settleOrphans(ctx, now)
	intents := run.ex.Ready(now)
	var starts, cancels []executor.Intent
	for _, in := range intents {
		a := run.acts[in.Action]
		switch in.Kind {
		case executor.Start:
			starts = append(starts, in)
		case executor.Cancel:
			cancels = append(cancels, in)
			c.event("action", a.Task, "cancelled", "kind", a.Kind, "reason", in.Reason)
		case executor.Abort:
			c.event("action", a.Task, "aborting", "kind", a.Kind, "reason", in.Reason)
			if cancel := run.cancels[in.Action]; cancel != nil {
				cancel()
			}
			if run.orphans[in.Action] {
				c.finishActions(ctx, []ackMsg{{plan: run.id, action: in.Action, kind: executor.FailedAck, err: errors.New(in.Reason)}})
			}
		}
	}
	if len(starts) > 0 {
		// Each job's spec is decoded once per round; placements of tasks
		// with periodic checkpoints get a checkpoint peer.
		specs := map[string]*JobSpec{}
		specOf := func(s *store.State, job string) *JobSpec {
			spec, seen := specs[job]
			if !seen {
				if j := s.Jobs[job]; j != nil && len(j.Spec) > 0 {
					spec = &JobSpec{}
					if json.Unmarshal(j.Spec, spec) != nil {
						spec = nil
					}
				}
				specs[job] = spec
			}
			return spec
		}
		batch := make([]store.Command, len(starts))
		c.st.View(func(s *store.State) {
			var peers *peerChooser
			for k, in := range starts {
				a := run.acts[in.Action]
				sa := &store.StartAction{Plan: run.id, Index: in.Action}
				if t := s.Tasks[a.Task]; t != nil && wantsPeer(t, specOf(s, t.Job), a.Kind) {
					if peers == nil {
						peers = newPeerChooser(s)
					}
					sa.Peer = peers.choose(a.To)
				}
				batch[k] = store.Command{StartAction: sa}
			}
		})
		r, err := c.apply(ctx, store.Command{Batch: batch})
		var ok []work
		c.st.View(func(s *store.State) {
			addr := func(n string) string {
				if nd := s.Nodes[n]; nd != nil {
					return nd.Addr
				}
				return ""
			}
			for k, in := range starts {
				if err == nil && r.Batch[k].Err == nil {
					t := s.Tasks[run.acts[in.Action].Task]
					a := s.Plans[run.id].Actions[in.Action]
					ok = append(ok, work{i: in.Action, a: a, task: *t, spec: specOf(s, t.Job), fromAddr: addr(a.From), toAddr: addr(a.To), peerAddr: addr(a.Peer)})
				}
			}
		})
		for k, in := range starts {
			if err == nil && r.Batch[k].Err == nil {
				continue
			}
			// The journal refused (the task changed under us): the
			// action never ran.
			e := err
			if e == nil {
				e = r.Batch[k].Err
			}
			if !errors.Is(e, store.ErrNotLeader) {
				cancels = append(cancels, executor.Intent{Kind: executor.Cancel, Action: in.Action, Reason: e.Error()})
			}
			run.ex.Advance(executor.Ack{Kind: executor.FailedAck, Action: in.Action, Err: e.Error()})
			c.event("action", run.acts[in.Action].Task, "refused", "kind", run.acts[in.Action].Kind, "err", e.Error())
		}
		quiet := len(ok) > eventsPerRound
		if quiet {
			c.event("plan", fmt.Sprint(run.id), fmt.Sprintf("started %d actions", len(ok)))
		}
		for _, w := range ok {
			run.acts[w.i] = w.a
			actx, cancel := context.WithCancel(ctx)
			run.cancels[w.i] = cancel
			if !quiet {
				c.event("action", w.a.Task, "started", "kind", w.a.Kind, "from", w.a.From, "to", w.a.To, "plan", run.id)
			}
			c.wg.Add(1)
			go func(w work) {
				defer c.wg.Done()
				c.dispatch(actx, run.id, w)
			}(w)
		}
	}
	if len(cancels) > 0 {
		batch := make([]store.Command, len(cancels))
		for k, in := range cancels {
			batch[k] = store.Command{CancelAction: &store.CancelAction{Plan: run.id, Index: in.Action, Error: in.Reason}}
		}
		_, _ = c.apply(ctx, store.Command{Batch: batch})
	}
	if run.ex.Done() {
		if _, err := c.apply(ctx, store.Command{FinishPlan: &store.FinishPlan{Plan: run.id}}); err != nil && !errors.Is(err, store.ErrConflict) {
			c.log.Warn("cannot close the plan", "plan", run.id, "err", err)
			return
		}
		failed := 0
		for i := range run.acts {
			if run.ex.State(i) != executor.Done {
				failed++
			}
		}
		took := c.cfg.Now().Sub(run.started)
		c.metrics.PlanExecution.Observe(took.Seconds())
		c.event("plan", fmt.Sprint(run.id), "finished", "actions", len(run.acts), "not_done", failed, "took_ms", took.Milliseconds())
		c.run = nil
		c.Trigger()
	}
}

// handleAcks journals the outcomes of a batch of acks (one raft commit),
// then advances the executor and drives on.
func (c *Controller) handleAcks(ctx context.Context, acks []ackMsg) {
	if c.run == nil {
		return
	}
	var finals []ackMsg
	for _, a := range acks {
		if a.plan != c.run.id {
			continue
		}
		if a.kind == executor.Progress {
			c.run.ex.Advance(executor.Ack{Kind: executor.Progress, Action: a.action, At: c.cfg.Now(), Bytes: a.bytes})
			continue
		}
		finals = append(finals, a)
	}
	if len(finals) == 0 {
		return
	}
	c.finishActions(ctx, finals)
	c.drive(ctx)
}

func (c *Controller) finishActions(ctx context.Context, acks []ackMsg) {
	run := c.run
	batch := make([]store.Command, len(acks))
	for k, a := range acks {
		if cancel := run.cancels[a.action]; cancel != nil {
			cancel()
			delete(run.cancels, a.action)
		}
		delete(run.orphans, a.action)
		fa := &store.FinishAction{Plan: a.plan, Index: a.action, OK: a.kind == executor.Succeeded, Image: a.image, Epoch: a.epoch}
		if fa.OK {
			fa.RAMTail = a.ramTail
		}
		if a.err != nil {
			fa.Error = a.err.Error()
			if run.acts[a.action].Kind == "resume" && (errors.Is(a.err, driver.ErrNotFound) || errors.Is(a.err, api.ErrStaleEpoch)) {
				fa.DropImage = true
			}
		}
		batch[k] = store.Command{FinishAction: fa}
	}
	if _, err := c.apply(ctx, store.Command{Batch: batch}); err != nil {
		c.log.Warn("cannot journal the end of actions", "plan", run.id, "actions", len(acks), "err", err)
		if errors.Is(err, store.ErrNotLeader) {
			return
		}
	}
	now := c.cfg.Now()
	quiet := len(acks) > eventsPerRound
	if quiet {
		c.event("plan", fmt.Sprint(run.id), fmt.Sprintf("%d actions ended", len(acks)))
	}
	for _, a := range acks {
		act := run.acts[a.action]
		ack := executor.Ack{Kind: a.kind, Action: a.action, At: now}
		if a.err != nil {
			ack.Err = a.err.Error()
		}
		run.ex.Advance(ack)
		took := now.Sub(time.Unix(0, act.Started))
		if a.kind == executor.Succeeded {
			if !quiet {
				c.event("action", act.Task, "done", "kind", act.Kind, "from", act.From, "to", act.To, "took_ms", took.Milliseconds())
			}
			if act.Kind == "migrate" || (act.Kind == "resume" && act.From != act.To) {
				c.metrics.Migrations.WithLabelValues("ok").Inc()
				c.metrics.MigrationDuration.Observe(took.Seconds())
				if a.downtime > 0 {
					c.metrics.MigrationDowntime.Observe(a.downtime.Seconds())
				}
				c.metrics.MigrationBytes.Add(float64(act.Bytes))
			}
			c.metrics.Actions.WithLabelValues(act.Kind, "done").Inc()
		} else {
			c.event("action", act.Task, "failed", "kind", act.Kind, "from", act.From, "to", act.To, "err", ack.Err)
			if act.Kind == "migrate" {
				c.metrics.Migrations.WithLabelValues("failed").Inc()
			}
			c.metrics.Actions.WithLabelValues(act.Kind, "failed").Inc()
		}
	}
}

// abandon stops driving (lost leadership or shutdown): calls in flight are
// cancelled; the journal keeps them running for the next leader to settle.
func (c *Controller) abandon() {
	if c.run == nil {
		return
	}
	for _, cancel := range c.run.cancels {
		cancel()
	}
	c.run = nil
}

// work is one action to dispatch, with what it needs resolved up front.
type work struct {
	i                int
	a                store.Action
	task             store.Task
	spec             *JobSpec
	fromAddr, toAddr string
	// peerAddr is the checkpoint peer's address ("" none).
	peerAddr string
}

// dispatch performs one action on the agents and reports its outcome.
func (c *Controller) dispatch(ctx context.Context, planID uint64, w work) {
	i, a, t, spec := w.i, w.a, w.task, w.spec
	res := ackMsg{plan: planID, action: i, kind: executor.Succeeded}
	addr := func(node string) string {
		switch node {
		case a.From:
			return w.fromAddr
		case a.To:
			return w.toAddr
		}
		return ""
	}
	var err error
	switch a.Kind {
	case "boot":
		ds := driverSpec(spec, &t, a.NewEpoch)
		c.resolveGuestImage(&ds)
		cl := c.client(addr(a.To))
		_, err = cl.Run(ctx, api.RunRequest{Driver: t.Driver, Spec: ds, CheckpointPeer: w.peerAddr})
		res.epoch = a.NewEpoch
		if err == nil && t.Driver == "qemu" {
			res.ramTail = c.bootedTail(ctx, cl, a.To)
		}
	case "shutdown", "kill":
		if a.From != "" {
			err = c.client(addr(a.From)).Stop(ctx, t.Name, t.Epoch)
			if errors.Is(err, driver.ErrNotFound) {
				err = nil
			}
		}
	case "suspend":
		var at api.Task
		at, err = c.client(addr(a.From)).Suspend(ctx, t.Name, t.Epoch)
		if err == nil && at.Image != nil {
			res.image = at.Image.Dir
		}
	case "resume":
		ep := t.Epoch
		if t.ImageEpoch != 0 && t.ImageNode == a.From {
			ep = t.ImageEpoch
		}
		if t.Replica {
			// From the replica of its last periodic checkpoint kept by
			// a.From; the agent starts it under the current epoch + 1.
			ep = t.Epoch
		}
		req := api.ResumeRequest{Epoch: ep, Replica: t.Replica, CheckpointPeer: w.peerAddr}
		if a.From != a.To {
			req.From = addr(a.From)
			if !t.Replica {
				// The holder lets only the agent it is told of fetch its
				// image (and then release it): name a.To there first. A
				// retried action grants again (answered as done).
				err = c.client(addr(a.From)).Grant(ctx, t.Name, api.GrantRequest{Epoch: ep, To: addr(a.To)})
			}
		}
		if err == nil {
			var at api.Task
			at, err = c.client(addr(a.To)).Resume(ctx, t.Name, req)
			if err == nil {
				res.epoch = at.Epoch
			}
		}
	case "migrate":
		req := api.MigrateRequest{Epoch: t.Epoch, To: addr(a.To), CheckpointPeer: w.peerAddr}
		if spec != nil {
			if !spec.Migration.Live {
				req.Mode = "checkpoint"
			}
			req.Options = driver.MigrationOptions{MaxDowntime: spec.Migration.MaxDowntime, Bandwidth: spec.Migration.Bandwidth}
		}
		var ev api.MigrateEvent
		ev, err = c.client(addr(a.From)).Migrate(ctx, t.Name, req, func(e api.MigrateEvent) {
			if e.Progress != nil {
				select {
				case c.acks <- ackMsg{plan: planID, action: i, kind: executor.Progress, bytes: e.Progress.TransferredBytes}:
				default:
				}
			}
		})
		if err == nil {
			res.epoch, res.took, res.downtime = ev.Epoch, ev.Took, ev.Downtime
		}
		if ctx.Err() != nil {
			// Aborted: make sure the source keeps running.
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_ = c.client(addr(a.From)).Cancel(cctx, t.Name, t.Epoch)
			cancel()
		}
	default:
		err = fmt.Errorf("unknown action kind %q", a.Kind)
	}
	if err != nil {
		res.kind, res.err = executor.FailedAck, err
	}
	select {
	case c.acks <- res:
	case <-c.done:
	}
}

// bootedTail is the RAM tail of the guest a node has just booted: the
// node's QEMU version decides it, asked for now (it changes only when the
// agent restarts), or else as last reported; unknown when neither answers.
func (c *Controller) bootedTail(ctx context.Context, cl AgentAPI, node string) store.RAMTail {
	nctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	info, err := cl.Node(nctx)
	if err != nil {
		info = c.nodeReports()[node]
	}
	return bootTail(info)
}

// driverSpec builds what the agent's driver needs from the job's spec.
func driverSpec(spec *JobSpec, t *store.Task, epoch uint64) driver.Spec {
	ds := driver.Spec{ID: t.Name, Epoch: epoch, CPUs: float64(t.Demand.CPUMilli) / 1000, MemoryBytes: t.Demand.MemoryBytes}
	var ts *TaskSpec
	if spec != nil {
		for k := range spec.Tasks {
			if spec.Tasks[k].Name == t.Group {
				ts = &spec.Tasks[k]
			}
		}
	}
	if t.Driver == "qemu" {
		ds.VM = &driver.VMSpec{}
		if ts != nil {
			if ts.Image != "default" {
				ds.VM.Kernel = ts.Image
			}
			ds.VM.Initrd, ds.VM.Workload = ts.Initrd, ts.Workload
		}
		return ds
	}
	ds.Process = &driver.ProcessSpec{}
	if ts != nil {
		ds.Process.Command = ts.Command
		ds.Process.Env = map[string]string{"FERRY_TASK": t.Name, "FERRY_JOB": t.Job}
		for k, v := range ts.Env {
			ds.Process.Env[k] = v
		}
		ds.Process.CheckpointSignal = spec.Checkpoint.Signal
		ds.Process.CheckpointExitCode = spec.Checkpoint.ExitCode
		ds.Process.CheckpointInterval = spec.Checkpoint.Interval
		ds.Process.CheckpointTimeout = spec.Checkpoint.Timeout
	}
	return ds
}
