package controller

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/controller/executor"
	"github.com/ferrycluster/ferry/plan"
	"github.com/ferrycluster/ferry/policy"
	"github.com/ferrycluster/ferry/store"
)

// AgentAPI is how the controller reaches one agent: agent/client.Client in
// production (and the benchmark's fake agents serve the same HTTP API).
type AgentAPI interface {
	Node(ctx context.Context) (api.NodeInfo, error)
	List(ctx context.Context) ([]api.Task, error)
	Run(ctx context.Context, req api.RunRequest) (api.Task, error)
	Stop(ctx context.Context, id string, epoch uint64) error
	Suspend(ctx context.Context, id string, epoch uint64) (api.Task, error)
	Resume(ctx context.Context, id string, req api.ResumeRequest) (api.Task, error)
	// Grant names at the holder of a suspended image the only agent that
	// may fetch it (before that agent's Resume from the holder).
	Grant(ctx context.Context, id string, req api.GrantRequest) error
	Migrate(ctx context.Context, id string, req api.MigrateRequest, progress func(api.MigrateEvent)) (api.MigrateEvent, error)
	Cancel(ctx context.Context, id string, epoch uint64) error
	Logs(ctx context.Context, id string, tail int, follow bool) (io.ReadCloser, error)
	// Replicas lists the replicas of other nodes' periodic checkpoints the
	// agent keeps.
	Replicas(ctx context.Context) ([]api.Replica, error)
}

// Config configures a controller.
type Config struct {
	Store  *store.Store
	Policy policy.Policy
	// Dial returns the client of the agent at addr.
	Dial   func(addr string) AgentAPI
	Limits executor.Limits
	// Period of the loop (default 1s); the loop also runs on events.
	Period time.Duration
	// HeartbeatTimeout: a node silent this long is down (default 10s).
	HeartbeatTimeout time.Duration
	// SolveTimeout bounds the planner (default 2s).
	SolveTimeout time.Duration
	// Poll agents for heartbeats (default on); agents that push heartbeats
	// to the API are not polled.
	NoPoll  bool
	Logger  *slog.Logger
	Metrics *Metrics
	// Now is the clock (default time.Now).
	Now func() time.Time
	// After is the timer the loop waits on to decide again when the policy
	// asked for it (Decision.Recheck); durations are measured on Now
	// (default time.After).
	After func(time.Duration) <-chan time.Time
}

// Controller runs the loop on the leader.
type Controller struct {
	cfg     Config
	log     *slog.Logger
	st      *store.Store
	events  *Events
	metrics *Metrics
	// started is when the loop last started leading (written under mu).
	started time.Time

	mu      sync.Mutex
	obs     map[string]*observation // by node name
	clients map[string]AgentAPI     // by address
	killed  map[string]time.Time    // "node/task/epoch" → last stop sent

	trigger chan struct{}
	acks    chan ackMsg
	done    chan struct{} // closed when Run returns
	run     *execution
	idle    idleRound // the last round that planned nothing
	// capsGen counts changes of what nodes report they can run (a node
	// heard from for the first time, new drivers or QEMU version): the
	// capability filter's input, which is not in the store.
	capsGen uint64
	// stranded: the tasks last reported as having nowhere to go, and why.
	stranded map[string]string
	// recheck is when the policy asked to decide again (zero: no request).
	recheck time.Time
	wg      sync.WaitGroup
}

// replanEvery bounds, in periods, how long an unchanged store skips the
// policy and the planner.
const replanEvery = 10

// idleRound remembers a round whose policy and planner found nothing to
// carry out: the store's version then, and until when that answer holds.
type idleRound struct {
	set     bool
	version uint64
	capsGen uint64
	until   time.Time
}

// observation is the latest heartbeat of a node. tasks is never modified
// in place: a new report replaces the slice (readers copy the header under
// c.mu and read it after).
type observation struct {
	// at is when the report was taken (asked for, or received when
	// pushed): reconcile counts only reports taken after a task's last
	// change. heard is when the node last answered: liveness judges by it,
	// so an agent slow to answer is late, not silent.
	at, heard time.Time
	pushed    bool
	info      api.NodeInfo
	tasks     []api.Task
	// index maps a reported task ID to its position in tasks.
	index map[string]int
	// raw is the encoded task list of the last pushed heartbeat: a report
	// whose list is the same byte for byte is not decoded again.
	raw []byte
}

// Heartbeat is what an agent reports (pushed to POST /v1/heartbeat, or
// gathered by polling the agent's API).
type Heartbeat struct {
	Node  string       `json:"node"`
	Addr  string       `json:"addr"`
	Info  api.NodeInfo `json:"info"`
	Tasks []api.Task   `json:"tasks"`
}

// New returns a controller; call Run.
func New(cfg Config) *Controller {
	if cfg.Period <= 0 {
		cfg.Period = time.Second
	}
	if cfg.HeartbeatTimeout <= 0 {
		cfg.HeartbeatTimeout = 10 * time.Second
	}
	if cfg.SolveTimeout <= 0 {
		cfg.SolveTimeout = 2 * time.Second
	}
	if cfg.Limits == (executor.Limits{}) {
		cfg.Limits = executor.DefaultLimits()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.After == nil {
		cfg.After = time.After
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics()
	}
	return &Controller{
		cfg: cfg, log: cfg.Logger.With("component", "controller"), st: cfg.Store,
		events: NewEvents(1024), metrics: cfg.Metrics, started: cfg.Now(),
		obs: map[string]*observation{}, clients: map[string]AgentAPI{}, killed: map[string]time.Time{},
		trigger: make(chan struct{}, 1), acks: make(chan ackMsg, 1024), done: make(chan struct{}),
	}
}

// Events is the controller's event stream.
func (c *Controller) Events() *Events { return c.events }

// Metrics returns the controller's metrics.
func (c *Controller) Metrics() *Metrics { return c.metrics }

// Trigger asks the loop to run now.
func (c *Controller) Trigger() {
	select {
	case c.trigger <- struct{}{}:
	default:
	}
}

func (c *Controller) client(addr string) AgentAPI {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl := c.clients[addr]
	if cl == nil {
		cl = c.cfg.Dial(addr)
		c.clients[addr] = cl
	}
	return cl
}

// apply proposes a command on the leader.
func (c *Controller) apply(ctx context.Context, cmd store.Command) (store.Result, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	r, err := c.st.Apply(ctx, cmd)
	if err != nil {
		return r, err
	}
	return r, r.Err
}

// Observe records a heartbeat (pushed or polled). A node the store does not
// know is registered.
func (c *Controller) Observe(ctx context.Context, hb Heartbeat, pushed bool) error {
	if hb.Node == "" {
		return fmt.Errorf("%w: heartbeat without a node name", store.ErrInvalid)
	}
	return c.observe(ctx, hb, nil, pushed, c.cfg.Now())
}

// observe records a heartbeat as of at (when it was asked for, or
// received); raw, when set, is the encoding of hb.Tasks (kept to recognise
// the next report's unchanged list). A report older than the node's last
// one is dropped.
func (c *Controller) observe(ctx context.Context, hb Heartbeat, raw []byte, pushed bool, at time.Time) error {
	index := make(map[string]int, len(hb.Tasks))
	for i := range hb.Tasks {
		index[hb.Tasks[i].ID] = i
	}
	c.mu.Lock()
	o := c.obs[hb.Node]
	if o == nil {
		o = &observation{}
		c.obs[hb.Node] = o
	}
	// The node answered: it is alive, even when its report is older than
	// the one recorded (and is dropped).
	o.heard = c.cfg.Now()
	if at.Before(o.at) {
		c.mu.Unlock()
		return nil
	}
	c.setInfo(o, hb.Info)
	o.at, o.pushed, o.tasks, o.index, o.raw = at, pushed, hb.Tasks, index, raw
	c.mu.Unlock()
	return c.observed(ctx, hb)
}

// ObserveEncoded records a pushed heartbeat whose task list is still
// encoded (the API's path): when the list is byte for byte the one the
// node reported last, the decoded tasks of that report are reused and only
// the time and the node's usage are updated; otherwise it is decoded
// (unknown fields refused).
func (c *Controller) ObserveEncoded(ctx context.Context, hb Heartbeat, rawTasks []byte) error {
	if hb.Node == "" {
		return fmt.Errorf("%w: heartbeat without a node name", store.ErrInvalid)
	}
	if len(rawTasks) == 0 || bytes.Equal(rawTasks, []byte("null")) {
		return c.observe(ctx, hb, nil, true, c.cfg.Now())
	}
	c.mu.Lock()
	if o := c.obs[hb.Node]; o != nil && o.raw != nil && bytes.Equal(o.raw, rawTasks) {
		c.setInfo(o, hb.Info)
		o.at, o.pushed = c.cfg.Now(), true
		o.heard = o.at
		c.mu.Unlock()
		return c.observed(ctx, hb)
	}
	c.mu.Unlock()
	ts, err := decodeTasks(rawTasks)
	if err != nil {
		return fmt.Errorf("%w: heartbeat of node %q: tasks: %v", store.ErrInvalid, hb.Node, err)
	}
	hb.Tasks = ts
	return c.observe(ctx, hb, rawTasks, true, c.cfg.Now())
}

// setInfo records a node's report in its observation (c.mu held), noting
// when what it can run changed (or is heard for the first time).
func (c *Controller) setInfo(o *observation, info api.NodeInfo) {
	if o.at.Before(c.started) || o.info.QEMUVersion != info.QEMUVersion || !slices.Equal(o.info.Drivers, info.Drivers) {
		c.capsGen++
	}
	o.info = info
}

// nodeReports returns what each node heard from since the loop started
// leading reported last. A report from before (an earlier leadership, or
// pushed to this server while it followed) does not count: the node may
// have been upgraded, downgraded or lost meanwhile.
func (c *Controller) nodeReports() NodeReports {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := make(NodeReports, len(c.obs))
	for n, o := range c.obs {
		if !o.at.Before(c.started) {
			r[n] = o.info
		}
	}
	return r
}

// observed counts a recorded heartbeat and registers its node (or its new
// address) when the store does not know it.
func (c *Controller) observed(ctx context.Context, hb Heartbeat) error {
	c.metrics.Heartbeats.Inc()
	var known bool
	var addr string
	c.st.View(func(s *store.State) {
		if n := s.Nodes[hb.Node]; n != nil {
			known, addr = true, n.Addr
		}
	})
	if !known || (hb.Addr != "" && addr != hb.Addr) {
		_, err := c.apply(ctx, store.Command{RegisterNode: &store.RegisterNode{
			Name: hb.Node, Addr: hb.Addr,
			Capacity: store.Resources{CPUMilli: int64(hb.Info.CPUs * 1000), MemoryBytes: hb.Info.MemoryBytes},
		}})
		if err != nil {
			return err
		}
		c.event("node", hb.Node, "registered", "addr", hb.Addr)
		c.Trigger()
	}
	return nil
}

// AddNode registers the agent at addr: the controller asks it for its name
// and capacities and then polls it.
func (c *Controller) AddNode(ctx context.Context, addr string, labels map[string]string) (string, error) {
	cl := c.client(addr)
	info, err := cl.Node(ctx)
	if err != nil {
		return "", fmt.Errorf("agent %s: %w", addr, err)
	}
	if err := checkAgentName(cl, addr, info.Name); err != nil {
		return "", err
	}
	_, err = c.apply(ctx, store.Command{RegisterNode: &store.RegisterNode{
		Name: info.Name, Addr: addr, Labels: labels,
		Capacity: store.Resources{CPUMilli: int64(info.CPUs * 1000), MemoryBytes: info.MemoryBytes},
	}})
	if err != nil {
		return "", err
	}
	c.event("node", info.Name, "registered", "addr", addr)
	// Its first heartbeat now, not at the next poll: until the controller
	// has heard what a node can run, it plans no VM (capability.go).
	asked := c.cfg.Now()
	if tasks, err := cl.List(ctx); err == nil {
		_ = c.observe(ctx, Heartbeat{Node: info.Name, Info: info, Tasks: tasks}, nil, false, asked)
	}
	c.Trigger()
	return info.Name, nil
}

// Run runs the loop until ctx ends. Only the leader acts; a follower waits.
func (c *Controller) Run(ctx context.Context) error {
	c.wg.Add(1)
	go c.poll(ctx)
	defer c.wg.Wait()
	defer close(c.done)
	tick := time.NewTicker(c.cfg.Period)
	defer tick.Stop()
	leading := false
	var wake <-chan time.Time // fires at armed, the policy's recheck
	var armed time.Time
	for {
		if !c.recheck.Equal(armed) {
			armed, wake = c.recheck, nil
			if !armed.IsZero() {
				wake = c.cfg.After(armed.Sub(c.cfg.Now()))
			}
		}
		select {
		case <-ctx.Done():
			c.abandon()
			return ctx.Err()
		case <-tick.C:
		case <-c.trigger:
		case <-wake:
			// The next round decides again (the idle round ends at the
			// recheck; see makePlan).
			c.recheck, armed, wake = time.Time{}, time.Time{}, nil
		case a := <-c.acks:
			// Take every ack waiting, to journal them in one commit.
			acks := []ackMsg{a}
			for more := true; more && len(acks) < 4096; {
				select {
				case x := <-c.acks:
					acks = append(acks, x)
				default:
					more = false
				}
			}
			if leading {
				c.handleAcks(ctx, acks)
			}
			continue
		}
		if !c.st.IsLeader() {
			if leading {
				c.log.Info("lost leadership; the loop waits")
				c.abandon()
			}
			leading = false
			continue
		}
		if !leading {
			c.log.Info("leading: the loop runs")
			leading = true
			c.mu.Lock()
			c.started = c.cfg.Now()
			// Reports from before count no longer (nodeReports): an idle
			// round decided on them is over.
			c.capsGen++
			c.mu.Unlock()
		}
		c.step(ctx)
	}
}

// step runs one round of the loop.
func (c *Controller) step(ctx context.Context) {
	c.liveness(ctx)
	c.reconcile(ctx)
	if c.run == nil {
		var active *store.Plan
		c.st.View(func(s *store.State) {
			if p := s.ActivePlan(); p != nil {
				cp := *p
				cp.Actions = append([]store.Action(nil), p.Actions...)
				active = &cp
			}
		})
		if active != nil {
			c.resumePlan(ctx, active)
		} else {
			c.makePlan(ctx)
		}
	}
	if c.run != nil {
		c.deadlinesDuringPlan(ctx)
		c.drive(ctx)
	}
	c.gauges()
}

// deadlinesDuringPlan honours drain deadlines that pass while a plan
// executes, without waiting for the plan to end: on a node whose deadline
// has passed, every running task that no running action is moving off is
// suspended at once — its pending actions in the plan are cancelled and a
// suspend is appended to the plan (journaled with the reason). Actions
// already running finish (or time out) as usual. The next plan resumes the
// suspended tasks where there is room.
func (c *Controller) deadlinesDuringPlan(ctx context.Context) {
	run := c.run
	now := c.cfg.Now()
	type victim struct {
		task, node string
		bytes      int64
	}
	var victims []victim
	var due []string
	c.st.View(func(s *store.State) {
		for _, name := range s.SortedNodes() {
			n := s.Nodes[name]
			if n.Status != store.NodeDraining || n.DrainDeadline == 0 || n.DrainDeadline > now.UnixNano() {
				continue
			}
			found := false
			for _, t := range s.Tasks {
				if t.Phase == store.TaskRunning && t.Node == name {
					victims = append(victims, victim{t.Name, name, t.Demand.MemoryBytes})
					found = true
				}
			}
			if found {
				due = append(due, name)
			}
		}
	})
	if len(victims) == 0 {
		return
	}
	// Tasks the plan is working on now, is about to suspend (a pending
	// suspend free to start), will stop anyway (a pending kill or
	// shutdown: the operator's stop is not turned into a suspend), or has
	// already tried to suspend.
	busy, tried := map[string]bool{}, map[string]bool{}
	for i, a := range run.acts {
		st := run.ex.State(i)
		if st == executor.Running || st == executor.Pending && (a.Kind == "kill" || a.Kind == "shutdown") {
			busy[a.Task] = true
		}
		if a.Kind != "suspend" {
			continue
		}
		if st != executor.Pending {
			tried[a.Task] = true
			continue
		}
		free := true
		for _, d := range a.Deps {
			free = free && run.ex.State(d) == executor.Done
		}
		if free {
			busy[a.Task] = true
		}
	}
	reason := "drain deadline passed on " + strings.Join(due, ", ") + " while the plan executed"
	var cancel []int
	var acts []store.Action
	for _, v := range victims {
		if busy[v.task] || tried[v.task] {
			continue
		}
		for i, a := range run.acts {
			if a.Task == v.task && run.ex.State(i) == executor.Pending {
				cancel = append(cancel, i)
			}
		}
		acts = append(acts, store.Action{Kind: "suspend", Task: v.task, From: v.node, Bytes: v.bytes})
	}
	if len(acts) == 0 {
		return
	}
	// Journal first; the executor follows what the journal took.
	batch := make([]store.Command, 0, len(cancel)+1)
	for _, i := range cancel {
		batch = append(batch, store.Command{CancelAction: &store.CancelAction{Plan: run.id, Index: i, Error: reason}})
	}
	batch = append(batch, store.Command{ExtendPlan: &store.ExtendPlan{Plan: run.id, Reason: reason, Actions: acts}})
	r, err := c.apply(ctx, store.Command{Batch: batch})
	if err != nil {
		c.log.Warn("cannot journal the drain deadline's suspends", "plan", run.id, "err", err)
		return
	}
	for k, i := range cancel {
		if r.Batch[k].Err == nil && run.ex.Cancel(i, reason) {
			c.event("action", run.acts[i].Task, "cancelled", "kind", run.acts[i].Kind, "reason", reason)
		}
	}
	if err := r.Batch[len(batch)-1].Err; err != nil {
		c.log.Warn("cannot append the drain deadline's suspends to the plan", "plan", run.id, "err", err)
		return
	}
	first := len(run.acts)
	exActs := make([]executor.Action, len(acts))
	for k, a := range acts {
		exActs[k] = executor.Action{Kind: kindOf(a.Kind), Task: a.Task, From: a.From, Bytes: a.Bytes}
	}
	if err := run.ex.Append(exActs); err != nil {
		c.log.Error("executor refused the appended suspends", "plan", run.id, "err", err)
		return
	}
	run.acts = append(run.acts, acts...)
	c.event("plan", fmt.Sprint(run.id), "drain deadline: suspending what is still on the node", "node", strings.Join(due, ","), "suspends", len(acts), "from_action", first)
}

// makePlan runs policy and planner; a plan with actions is journaled and
// becomes the execution.
//
// A round that found nothing to do is not repeated while the store is
// unchanged (same version), no drain deadline has come, and less than
// replanEvery periods have passed: the policy and planner would answer the
// same, and at 50,000 tasks they are the loop's largest cost. The periodic
// retry keeps time-dependent policies and a planner timeout honest.
func (c *Controller) makePlan(ctx context.Context) {
	now := c.cfg.Now()
	_, version := c.st.Changed()
	c.mu.Lock()
	caps := c.capsGen
	c.mu.Unlock()
	if c.idle.set && c.idle.version == version && c.idle.capsGen == caps && now.Before(c.idle.until) {
		return
	}
	var snap *Snapshot
	until := now.Add(replanEvery * c.cfg.Period)
	nodes := c.nodeReports()
	c.st.View(func(s *store.State) {
		snap = BuildSnapshot(s, now.Unix(), nodes)
		for _, n := range s.Nodes {
			if d := time.Unix(0, n.DrainDeadline); n.Status == store.NodeDraining && n.DrainDeadline > 0 && d.After(now) && d.Before(until) {
				until = d
			}
		}
	})
	// Nodes not heard from since the loop started leading (Unheard) are
	// planned around, not waited for (Snapshot.silence); their first
	// report changes capsGen, which ends an idle round.
	c.idle = idleRound{set: true, version: version, capsGen: caps, until: until}
	if len(snap.Unheard) == 0 {
		// With a node not heard from, a VM may look stranded only for
		// want of its report: say so once the picture is whole.
		c.reportStranded(snap)
	}
	if len(snap.View.Model.Tasks) == 0 {
		return
	}
	t0 := time.Now()
	prob, err := snap.Problem(c.cfg.Policy)
	if errors.Is(err, ErrWaitingForReports) {
		// Decide again next round (a node that never reports is marked
		// down after HeartbeatTimeout).
		c.idle = idleRound{}
		c.log.Debug("waiting for the first reports of nodes", "nodes", snap.Unheard, "why", err)
		return
	}
	if err != nil {
		c.log.Warn("policy failed", "err", err)
		return
	}
	// The policy's answer may change by itself at its recheck: decide
	// again then, the loop waking for it (a decision without one drops
	// an earlier request).
	c.recheck = time.Time{}
	if snap.Recheck != 0 {
		c.recheck = time.Unix(snap.Recheck, 0)
		if c.recheck.Before(c.idle.until) {
			c.idle.until = c.recheck
		}
	}
	p, err := plan.Solve(ctx, prob, plan.Options{Timeout: c.cfg.SolveTimeout, Seed: 1})
	if err != nil {
		c.metrics.PlanErrors.Inc()
		if errors.Is(err, plan.ErrNoSolution) {
			c.eventOnce("plan", "", "no viable plan", "err", err.Error())
		} else {
			c.log.Warn("planner failed", "err", err)
		}
		return
	}
	took := time.Since(t0)
	if len(p.Actions) == 0 {
		return
	}
	if err := snap.checkSilent(p); err != nil {
		c.idle = idleRound{}
		c.log.Error("planner's plan touches a node not heard from; not carried out", "err", err)
		return
	}
	acts := executor.FromPlan(p, p.Origin.Resource(ResMemory))
	sp := store.Plan{Reason: "policy " + c.cfg.Policy.Name()}
	if len(snap.DrainDue) > 0 {
		sp.Reason += "; drain deadline passed on " + strings.Join(snap.DrainDue, ", ")
	}
	for _, a := range acts {
		sp.Actions = append(sp.Actions, store.Action{Kind: a.Kind.String(), Task: a.Task, From: a.From, To: a.To, Deps: a.Deps, Bytes: a.Bytes})
	}
	r, err := c.apply(ctx, store.Command{CreatePlan: &store.CreatePlan{Plan: sp}})
	if err != nil {
		c.log.Warn("cannot journal the plan", "err", err)
		return
	}
	c.metrics.Plans.Inc()
	c.metrics.PlanDuration.Observe(took.Seconds())
	c.metrics.PlanActions.Observe(float64(len(acts)))
	c.event("plan", fmt.Sprint(r.PlanID), "planned", "actions", len(acts), "migrations", p.Migrations(), "solve_ms", took.Milliseconds(), "reason", sp.Reason)
	c.idle = idleRound{}
	ex, err := executor.New(acts, c.cfg.Limits)
	if err != nil {
		c.log.Error("executor refused the plan", "err", err)
		return
	}
	sp.ID = r.PlanID
	c.run = newExecution(r.PlanID, ex, sp.Actions, c.cfg.Now())
}

// DryRun returns the plan the loop would carry out now, without journaling
// or executing it.
func (c *Controller) DryRun(ctx context.Context) (*PlanView, error) {
	var snap *Snapshot
	nodes := c.nodeReports()
	c.st.View(func(s *store.State) { snap = BuildSnapshot(s, c.cfg.Now().Unix(), nodes) })
	pv := &PlanView{}
	if len(snap.View.Model.Tasks) == 0 {
		return pv, nil
	}
	prob, err := snap.Problem(c.cfg.Policy)
	if errors.Is(err, ErrWaitingForReports) {
		return pv, nil // the loop would wait
	}
	if err != nil {
		return nil, err
	}
	p, err := plan.Solve(ctx, prob, plan.Options{Timeout: c.cfg.SolveTimeout, Seed: 1})
	if err != nil {
		return nil, err
	}
	for _, a := range executor.FromPlan(p, p.Origin.Resource(ResMemory)) {
		pv.Actions = append(pv.Actions, store.Action{Kind: a.Kind.String(), Task: a.Task, From: a.From, To: a.To, Deps: a.Deps, Bytes: a.Bytes, State: store.ActionPending})
	}
	pv.Makespan, pv.MTTR, pv.Migrations = p.Makespan(), p.MTTR(), p.Migrations()
	return pv, nil
}

// reportStranded says once, for each task of a job wanted running, that no
// usable node can take it and why (and again if the reason changes).
func (c *Controller) reportStranded(snap *Snapshot) {
	if snap.eligible == nil {
		return
	}
	names := make([]string, 0, len(snap.Stranded))
	for n, why := range snap.Stranded {
		if c.stranded[n] != why {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		c.event("task", n, "nowhere to go", "why", snap.Stranded[n])
	}
	c.stranded = snap.Stranded
}

// PlanView is a plan as the API shows it.
type PlanView struct {
	ID         uint64         `json:"id,omitempty"`
	State      string         `json:"state,omitempty"`
	Reason     string         `json:"reason,omitempty"`
	Actions    []store.Action `json:"actions"`
	Makespan   int64          `json:"makespan_s,omitempty"`
	MTTR       int64          `json:"mttr_s,omitempty"`
	Migrations int            `json:"migrations,omitempty"`
}

// kindOf parses a journaled action kind.
func kindOf(s string) cluster.ActionKind {
	k, err := cluster.ParseActionKind(s)
	if err != nil {
		return cluster.Kill
	}
	return k
}

// checkAgentName binds a polled agent to its certificate: the node name it
// reports must be the name its verified certificate carries. Clients that
// do not know their peer's certificate (the benchmark's in-process fakes)
// pass.
func checkAgentName(cl AgentAPI, addr, name string) error {
	cb, ok := cl.(interface{ CertName() string })
	if !ok {
		return nil
	}
	if cn := cb.CertName(); cn != name {
		return fmt.Errorf("%w: agent at %s reports node %q but its certificate is %q's", ErrForbidden, addr, name, cn)
	}
	return nil
}
