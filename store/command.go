package store

import (
	"fmt"
	"sort"
)

// Command is one typed change of the state. Exactly one of the pointer fields
// is set. At is the time the command was proposed (unix ns), set by the
// proposer, so applying it reads no clock.
type Command struct {
	At int64 `json:"at"`

	RegisterNode *RegisterNode `json:"register_node,omitempty"`
	SetNode      *SetNode      `json:"set_node,omitempty"`
	Drain        *Drain        `json:"drain,omitempty"`
	SubmitJob    *SubmitJob    `json:"submit_job,omitempty"`
	SetJobWant   *SetJobWant   `json:"set_job_want,omitempty"`
	CreatePlan   *CreatePlan   `json:"create_plan,omitempty"`
	StartAction  *StartAction  `json:"start_action,omitempty"`
	FinishAction *FinishAction `json:"finish_action,omitempty"`
	CancelAction *CancelAction `json:"cancel_action,omitempty"`
	ExtendPlan   *ExtendPlan   `json:"extend_plan,omitempty"`
	FinishPlan   *FinishPlan   `json:"finish_plan,omitempty"`
	TaskEvent    *TaskEvent    `json:"task_event,omitempty"`
	AddServer    *Server       `json:"add_server,omitempty"`
	RemoveServer *RemoveServer `json:"remove_server,omitempty"`
	// Batch applies several commands in order; each gets its own result.
	Batch []Command `json:"batch,omitempty"`
}

// RegisterNode adds a node or updates its address, capacity and labels; the
// node becomes online (draining if a drain is in force).
type RegisterNode struct {
	Name     string            `json:"name"`
	Addr     string            `json:"addr"`
	Capacity Resources         `json:"capacity"`
	Labels   map[string]string `json:"labels,omitempty"`
}

// SetNode changes a node's liveness: online or down.
type SetNode struct {
	Name   string     `json:"name"`
	Status NodeStatus `json:"status"`
}

// Drain starts (Drain true) or ends a drain of a node.
type Drain struct {
	Name     string `json:"name"`
	Drain    bool   `json:"drain"`
	Deadline int64  `json:"deadline,omitempty"`
}

// SubmitJob adds a job and its tasks (all waiting, epoch 0).
type SubmitJob struct {
	Job   Job    `json:"job"`
	Tasks []Task `json:"tasks"`
}

// SetJobWant changes what the operator wants of a job.
type SetJobWant struct {
	Job  string  `json:"job"`
	Want JobWant `json:"want"`
}

// CreatePlan journals a new plan; its actions start pending. Only one plan
// executes at a time.
type CreatePlan struct {
	Plan Plan `json:"plan"`
}

// StartAction journals that an action is being dispatched: its dependencies
// are done, the task's placement is recorded as Before and the action's
// NewEpoch fixed (for boot and resume the task's epoch moves to it now, so
// any older copy is stale from this point).
type StartAction struct {
	Plan  uint64 `json:"plan"`
	Index int    `json:"index"`
	// Peer is the checkpoint peer (a node) of the task's new placement
	// (boot, resume, migrate; "" none): the node that will keep replicas of
	// its periodic checkpoints.
	Peer string `json:"peer,omitempty"`
}

// FinishAction journals the outcome of a running action. On success the task
// moves to the action's result under the new epoch (the commit point of a
// move); on failure the task keeps its placement.
type FinishAction struct {
	Plan  uint64 `json:"plan"`
	Index int    `json:"index"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// Image is the suspend image directory (suspend actions).
	Image string `json:"image,omitempty"`
	// Epoch the agent reports the task runs under after the action (0
	// unknown); the task's epoch becomes the highest of it and NewEpoch.
	Epoch uint64 `json:"epoch,omitempty"`
	// DropImage (failed resume): the image is unusable; the task waits to
	// start afresh.
	DropImage bool `json:"drop_image,omitempty"`
	// RAMTail (a qemu task's successful boot): whether the new guest has
	// the RAM tail, from its node's QEMU version (see Task.RAMTail).
	RAMTail RAMTail `json:"ram_tail,omitempty"`
}

// CancelAction marks a pending action cancelled (a dependency failed).
type CancelAction struct {
	Plan  uint64 `json:"plan"`
	Index int    `json:"index"`
	Error string `json:"error,omitempty"`
}

// ExtendPlan appends actions to the executing plan (pending, their
// dependencies among the plan's actions) and adds Reason to the plan's: a
// drain deadline that passes while a plan executes is acted on at once
// instead of after the plan.
type ExtendPlan struct {
	Plan    uint64   `json:"plan"`
	Reason  string   `json:"reason"`
	Actions []Action `json:"actions"`
}

// FinishPlan closes a plan whose actions are all terminal.
type FinishPlan struct {
	Plan uint64 `json:"plan"`
}

// TaskEventKind says what happened to a task outside of a plan.
type TaskEventKind string

// Task events.
const (
	// TaskExited: the task ended on its own (exit code 0: terminated;
	// otherwise it waits to be restarted).
	TaskExited TaskEventKind = "exited"
	// TaskLost: its node went down; the task restarts elsewhere, from its
	// last image when that image's node is online.
	TaskLost TaskEventKind = "lost"
	// TaskCheckpointed: a periodic checkpoint was committed at Image.
	TaskCheckpointed TaskEventKind = "checkpointed"
	// TaskShaped: the agent running a qemu task whose shape was not
	// recorded (RAMTailUnknown: booted before it was, or on a node whose
	// version was unknown) reported it (RAMTail); a known shape never
	// changes.
	TaskShaped TaskEventKind = "shaped"
)

// TaskEvent reports a change the agents observed. It applies only when Epoch
// is the task's current epoch (a stale copy's report changes nothing).
type TaskEvent struct {
	Task     string        `json:"task"`
	Epoch    uint64        `json:"epoch"`
	Kind     TaskEventKind `json:"kind"`
	ExitCode int           `json:"exit_code,omitempty"`
	Message  string        `json:"message,omitempty"`
	Image    string        `json:"image,omitempty"`
	Node     string        `json:"node,omitempty"`
	// Replica (lost): the node keeping a replica of the task's last
	// periodic checkpoint, as its agent listed it; the task restarts from
	// it when that node is online.
	Replica string `json:"replica,omitempty"`
	// RAMTail (shaped): the running guest's shape, as its agent reported.
	RAMTail RAMTail `json:"ram_tail,omitempty"`
}

// RemoveServer removes a raft member from the directory.
type RemoveServer struct {
	ID string `json:"id"`
}

// Result is what applying a command returns.
type Result struct {
	Err error
	// PlanID of a CreatePlan.
	PlanID uint64
	// Batch holds one result per batched command.
	Batch []Result
}

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, a...)...)
}

func notFound(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrNotFound}, a...)...)
}

func conflict(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrConflict}, a...)...)
}

// Apply applies c to s deterministically. An error leaves s unchanged.
func (s *State) Apply(c *Command) Result {
	if c.Batch != nil {
		r := Result{Batch: make([]Result, len(c.Batch))}
		for i := range c.Batch {
			sub := c.Batch[i]
			if sub.At == 0 {
				sub.At = c.At
			}
			r.Batch[i] = s.Apply(&sub)
		}
		return r
	}
	if err := s.Check(c); err != nil {
		return Result{Err: err}
	}
	at := c.At
	switch {
	case c.RegisterNode != nil:
		x := c.RegisterNode
		n := s.Nodes[x.Name]
		if n == nil {
			n = &Node{Name: x.Name, Registered: at}
			s.Nodes[x.Name] = n
		}
		n.Addr, n.Capacity, n.Labels = x.Addr, x.Capacity, cloneLabels(x.Labels)
		st := NodeOnline
		if n.Drained {
			st = NodeDraining
		}
		if n.Status != st {
			n.Status, n.Changed = st, at
		}
	case c.SetNode != nil:
		n := s.Nodes[c.SetNode.Name]
		st := c.SetNode.Status
		if st == NodeOnline && n.Drained {
			st = NodeDraining
		}
		if n.Status != st {
			n.Status, n.Changed = st, at
		}
	case c.Drain != nil:
		n := s.Nodes[c.Drain.Name]
		n.Drained = c.Drain.Drain
		n.DrainDeadline = 0
		if n.Drained {
			n.DrainDeadline = c.Drain.Deadline
		}
		if n.Status != NodeDown {
			st := NodeOnline
			if n.Drained {
				st = NodeDraining
			}
			n.Status, n.Changed = st, at
		}
	case c.SubmitJob != nil:
		j := c.SubmitJob.Job
		s.JobSeq++
		j.Seq = s.JobSeq
		j.Submitted = at
		if j.Want == "" {
			j.Want = WantRun
		}
		j.Tasks = nil
		for _, t := range c.SubmitJob.Tasks {
			t := t
			t.Job = j.Name
			t.Phase, t.Node, t.Epoch, t.Changed = TaskWaiting, "", 0, at
			s.Tasks[t.Name] = &t
			j.Tasks = append(j.Tasks, t.Name)
		}
		s.Jobs[j.Name] = &j
	case c.SetJobWant != nil:
		s.Jobs[c.SetJobWant.Job].Want = c.SetJobWant.Want
		if c.SetJobWant.Want == WantStop {
			// Tasks on no node end at once; the others by a kill action.
			for _, tn := range s.Jobs[c.SetJobWant.Job].Tasks {
				t := s.Tasks[tn]
				if t.Phase == TaskWaiting {
					t.Phase, t.Changed, t.Message = TaskTerminated, at, "stopped"
				}
			}
		}
	case c.CreatePlan != nil:
		p := c.CreatePlan.Plan
		p.ID = s.NextPlan
		s.NextPlan++
		p.Created, p.State = at, PlanExecuting
		p.Actions = append([]Action(nil), p.Actions...)
		for i := range p.Actions {
			p.Actions[i].State = ActionPending
			p.Actions[i].Deps = append([]int(nil), p.Actions[i].Deps...)
		}
		s.Plans[p.ID] = &p
		return Result{PlanID: p.ID}
	case c.StartAction != nil:
		a := &s.Plans[c.StartAction.Plan].Actions[c.StartAction.Index]
		t := s.Tasks[a.Task]
		b := t.Placement()
		a.Before = &b
		a.NewEpoch = t.Epoch
		a.Peer = c.StartAction.Peer
		switch {
		case a.Kind == "boot":
			// A fresh copy runs under a new epoch from the start, so any
			// older copy anywhere is stale from this point.
			a.NewEpoch = t.Epoch + 1
			t.Epoch, t.Changed = a.NewEpoch, at
		case a.Kind == "migrate", a.Kind == "resume" && (a.From != a.To || t.Replica):
			// A move (or a start from a replica, even on the node that
			// keeps it) commits a new epoch at its end.
			a.NewEpoch = t.Epoch + 1
		}
		a.State, a.Started = ActionRunning, at
	case c.FinishAction != nil:
		x := c.FinishAction
		a := &s.Plans[x.Plan].Actions[x.Index]
		a.Ended = at
		t := s.Tasks[a.Task]
		if !x.OK {
			a.State, a.Error = ActionFailed, x.Error
			switch {
			case x.DropImage && t.Phase == TaskSleeping && t.Replica:
				// The replica cannot be resumed: fall back to the
				// suspend image, or start afresh.
				t.Replica, t.Changed = false, at
				s.sleepOnImageOrWait(t)
			case x.DropImage && t.Phase == TaskSleeping:
				// The image cannot be resumed: start afresh.
				t.Phase, t.Node, t.Image, t.ImageNode, t.Changed = TaskWaiting, "", "", "", at
			}
			after := t.Placement()
			a.After = &after
			return Result{}
		}
		a.State = ActionDone
		if a.Kind == "boot" {
			// A new guest: its shape is the booting node's.
			t.RAMTail = x.RAMTail
		}
		switch a.Kind {
		case "boot", "resume", "migrate":
			t.Phase, t.Node, t.CheckpointPeer = TaskRunning, a.To, a.Peer
			t.Replica = false
		case "suspend":
			t.Phase, t.Node, t.CheckpointPeer = TaskSleeping, a.From, ""
			if x.Image != "" {
				t.Image, t.ImageNode = x.Image, a.From
			}
		case "shutdown":
			t.Phase, t.Node, t.CheckpointPeer = TaskWaiting, "", ""
		case "kill":
			t.Phase, t.Node, t.CheckpointPeer = TaskTerminated, "", ""
			t.Message = "killed"
		}
		t.Epoch = max(t.Epoch, a.NewEpoch, x.Epoch)
		t.Changed = at
		if a.Kind == "suspend" {
			t.ImageEpoch = t.Epoch
		}
		after := t.Placement()
		a.After = &after
	case c.CancelAction != nil:
		a := &s.Plans[c.CancelAction.Plan].Actions[c.CancelAction.Index]
		a.State, a.Error, a.Ended = ActionCancelled, c.CancelAction.Error, at
	case c.ExtendPlan != nil:
		p := s.Plans[c.ExtendPlan.Plan]
		for _, a := range c.ExtendPlan.Actions {
			a.State = ActionPending
			a.Deps = append([]int(nil), a.Deps...)
			p.Actions = append(p.Actions, a)
		}
		if c.ExtendPlan.Reason != "" {
			p.Reason += "; " + c.ExtendPlan.Reason
		}
	case c.FinishPlan != nil:
		p := s.Plans[c.FinishPlan.Plan]
		p.State, p.Finished = PlanFinished, at
		s.prunePlans()
	case c.TaskEvent != nil:
		s.applyTaskEvent(c.TaskEvent, at)
	case c.AddServer != nil:
		sv := *c.AddServer
		s.Servers[sv.ID] = &sv
	case c.RemoveServer != nil:
		delete(s.Servers, c.RemoveServer.ID)
	}
	return Result{}
}

func (s *State) applyTaskEvent(e *TaskEvent, at int64) {
	t := s.Tasks[e.Task]
	switch e.Kind {
	case TaskShaped:
		// A fact about the guest, not a change of its placement: Changed
		// stays (reports taken since still count).
		t.RAMTail = e.RAMTail
		return
	case TaskCheckpointed:
		t.Image, t.ImageNode, t.ImageEpoch = e.Image, e.Node, e.Epoch
	case TaskExited:
		t.ExitCode, t.Message = e.ExitCode, e.Message
		if e.ExitCode == 0 {
			t.Phase, t.Node = TaskTerminated, ""
		} else {
			t.Phase, t.Node = TaskWaiting, ""
			t.Restarts++
		}
	case TaskLost:
		t.Message = e.Message
		t.Restarts++
		lost := t.Node
		t.CheckpointPeer = ""
		if n := s.Nodes[e.Replica]; n != nil && n.Status != NodeDown && e.Replica != lost {
			t.Phase, t.Node, t.Replica = TaskSleeping, e.Replica, true
			break
		}
		t.Replica = false
		s.sleepOnImageOrWait(t)
	}
	t.Changed = at
}

// sleepOnImageOrWait makes a task that cannot go on where it is (t.Node)
// sleep on its last image when that image is on another node that is
// online, else wait to start afresh (the image dropped if its node is gone).
func (s *State) sleepOnImageOrWait(t *Task) {
	if t.Image != "" && t.ImageNode != t.Node {
		if n := s.Nodes[t.ImageNode]; n != nil && n.Status != NodeDown {
			t.Phase, t.Node = TaskSleeping, t.ImageNode
			return
		}
	}
	t.Phase, t.Node = TaskWaiting, ""
	if s.Nodes[t.ImageNode] == nil || s.Nodes[t.ImageNode].Status == NodeDown {
		t.Image, t.ImageNode = "", ""
	}
}

// prunePlans drops the oldest finished plans beyond KeepPlans.
func (s *State) prunePlans() {
	var done []uint64
	for id, p := range s.Plans {
		if p.State == PlanFinished {
			done = append(done, id)
		}
	}
	if s.KeepPlans <= 0 || len(done) <= s.KeepPlans {
		return
	}
	sort.Slice(done, func(a, b int) bool { return done[a] < done[b] })
	for _, id := range done[:len(done)-s.KeepPlans] {
		delete(s.Plans, id)
	}
}

var validKinds = map[string]bool{"boot": true, "shutdown": true, "suspend": true, "resume": true, "migrate": true, "kill": true}

// Check validates c against s without changing anything.
func (s *State) Check(c *Command) error {
	set := 0
	for _, p := range []bool{c.RegisterNode != nil, c.SetNode != nil, c.Drain != nil, c.SubmitJob != nil,
		c.SetJobWant != nil, c.CreatePlan != nil, c.StartAction != nil, c.FinishAction != nil,
		c.CancelAction != nil, c.ExtendPlan != nil, c.FinishPlan != nil, c.TaskEvent != nil, c.AddServer != nil,
		c.RemoveServer != nil, c.Batch != nil} {
		if p {
			set++
		}
	}
	if set != 1 {
		return invalid("a command sets exactly one change, this one sets %d", set)
	}
	switch {
	case c.Batch != nil:
		return nil
	case c.RegisterNode != nil:
		x := c.RegisterNode
		if x.Name == "" {
			return invalid("register_node: empty name")
		}
		if x.Capacity.CPUMilli < 0 || x.Capacity.MemoryBytes < 0 {
			return invalid("register_node %q: negative capacity", x.Name)
		}
	case c.SetNode != nil:
		if s.Nodes[c.SetNode.Name] == nil {
			return notFound("node %q", c.SetNode.Name)
		}
		if st := c.SetNode.Status; st != NodeOnline && st != NodeDown {
			return invalid("set_node %q: status %q (want online or down)", c.SetNode.Name, st)
		}
	case c.Drain != nil:
		if s.Nodes[c.Drain.Name] == nil {
			return notFound("node %q", c.Drain.Name)
		}
	case c.SubmitJob != nil:
		return s.checkSubmit(c.SubmitJob)
	case c.SetJobWant != nil:
		j := s.Jobs[c.SetJobWant.Job]
		if j == nil {
			return notFound("job %q", c.SetJobWant.Job)
		}
		switch c.SetJobWant.Want {
		case WantRun, WantSleep, WantStop:
		default:
			return invalid("job %q: unknown want %q", j.Name, c.SetJobWant.Want)
		}
		if j.Want == WantStop && c.SetJobWant.Want != WantStop {
			return conflict("job %q is stopped", j.Name)
		}
	case c.CreatePlan != nil:
		if p := s.ActivePlan(); p != nil {
			return conflict("plan %d is still executing", p.ID)
		}
		return s.checkActions(c.CreatePlan.Plan.Actions, 0)
	case c.ExtendPlan != nil:
		p := s.Plans[c.ExtendPlan.Plan]
		if p == nil {
			return notFound("plan %d", c.ExtendPlan.Plan)
		}
		if p.State != PlanExecuting {
			return conflict("plan %d is %s, not executing", p.ID, p.State)
		}
		if len(c.ExtendPlan.Actions) == 0 {
			return invalid("extend_plan %d: no actions", p.ID)
		}
		return s.checkActions(c.ExtendPlan.Actions, len(p.Actions))
	case c.StartAction != nil:
		a, err := s.action(c.StartAction.Plan, c.StartAction.Index)
		if err != nil {
			return err
		}
		if a.State != ActionPending {
			return conflict("action %d of plan %d is %s, not pending", c.StartAction.Index, c.StartAction.Plan, a.State)
		}
		t := s.Tasks[a.Task]
		var ok bool
		switch a.Kind {
		case "boot":
			ok = t.Phase == TaskWaiting
		case "resume":
			ok = t.Phase == TaskSleeping
		case "migrate", "suspend", "shutdown":
			ok = t.Phase == TaskRunning && t.Node == a.From
		case "kill":
			ok = t.Phase != TaskTerminated
		}
		if !ok {
			return conflict("action %d of plan %d: cannot %s task %q that is %s on %q", c.StartAction.Index, c.StartAction.Plan, a.Kind, t.Name, t.Phase, t.Node)
		}
		p := s.Plans[c.StartAction.Plan]
		for _, d := range a.Deps {
			if p.Actions[d].State != ActionDone {
				return conflict("action %d of plan %d waits for action %d (%s)", c.StartAction.Index, p.ID, d, p.Actions[d].State)
			}
		}
		if peer := c.StartAction.Peer; peer != "" {
			switch {
			case a.Kind != "boot" && a.Kind != "resume" && a.Kind != "migrate":
				return invalid("action %d of plan %d: a %s places nothing, so it takes no checkpoint peer", c.StartAction.Index, p.ID, a.Kind)
			case s.Nodes[peer] == nil:
				return notFound("action %d of plan %d: checkpoint peer node %q", c.StartAction.Index, p.ID, peer)
			case peer == a.To:
				return invalid("action %d of plan %d: checkpoint peer %q is the task's own node", c.StartAction.Index, p.ID, peer)
			}
		}
	case c.FinishAction != nil:
		a, err := s.action(c.FinishAction.Plan, c.FinishAction.Index)
		if err != nil {
			return err
		}
		if a.State != ActionRunning {
			return conflict("action %d of plan %d is %s, not running", c.FinishAction.Index, c.FinishAction.Plan, a.State)
		}
		switch x := c.FinishAction; {
		case x.RAMTail != RAMTailUnknown && x.RAMTail != RAMTailWith && x.RAMTail != RAMTailWithout:
			return invalid("action %d of plan %d: ram_tail %q: want %q, %q or empty", x.Index, x.Plan, x.RAMTail, RAMTailWith, RAMTailWithout)
		case x.RAMTail != RAMTailUnknown && (!x.OK || a.Kind != "boot" || s.Tasks[a.Task] == nil || s.Tasks[a.Task].Driver != "qemu"):
			return invalid("action %d of plan %d: ram_tail is set only when a qemu task's boot succeeds", x.Index, x.Plan)
		}
	case c.CancelAction != nil:
		a, err := s.action(c.CancelAction.Plan, c.CancelAction.Index)
		if err != nil {
			return err
		}
		if a.State != ActionPending {
			return conflict("action %d of plan %d is %s, not pending", c.CancelAction.Index, c.CancelAction.Plan, a.State)
		}
	case c.FinishPlan != nil:
		p := s.Plans[c.FinishPlan.Plan]
		if p == nil {
			return notFound("plan %d", c.FinishPlan.Plan)
		}
		if p.State != PlanExecuting {
			return conflict("plan %d is %s", p.ID, p.State)
		}
		for i, a := range p.Actions {
			if !a.State.Terminal() {
				return conflict("plan %d: action %d is %s", p.ID, i, a.State)
			}
		}
	case c.TaskEvent != nil:
		e := c.TaskEvent
		t := s.Tasks[e.Task]
		if t == nil {
			return notFound("task %q", e.Task)
		}
		if e.Epoch != t.Epoch {
			return conflict("task %q: event for epoch %d, current is %d", e.Task, e.Epoch, t.Epoch)
		}
		if e.RAMTail != RAMTailUnknown && e.Kind != TaskShaped {
			return invalid("task %q: %s event carries ram_tail %q (only a shaped event does)", e.Task, e.Kind, e.RAMTail)
		}
		switch e.Kind {
		case TaskExited, TaskLost:
			if t.Phase != TaskRunning {
				return conflict("task %q is %s, not running", e.Task, t.Phase)
			}
			if e.Replica != "" && (e.Kind != TaskLost || s.Nodes[e.Replica] == nil) {
				return invalid("task %q: %s event names replica node %q (only a lost task restarts from a replica, on a known node)", e.Task, e.Kind, e.Replica)
			}
		case TaskCheckpointed:
			if e.Image == "" || s.Nodes[e.Node] == nil {
				return invalid("task %q: checkpoint needs an image and a known node", e.Task)
			}
		case TaskShaped:
			switch {
			case e.RAMTail != RAMTailWith && e.RAMTail != RAMTailWithout:
				return invalid("task %q: shaped event: ram_tail %q: want %q or %q", e.Task, e.RAMTail, RAMTailWith, RAMTailWithout)
			case t.Driver != "qemu":
				return invalid("task %q: shaped event for a %s task (only a qemu guest has a shape)", e.Task, t.Driver)
			case t.Phase != TaskRunning:
				return conflict("task %q is %s, not running (a shape is learned from a running guest)", e.Task, t.Phase)
			case t.RAMTail != RAMTailUnknown && t.RAMTail != e.RAMTail:
				return conflict("task %q: ram_tail is %q, a report says %q (a guest's shape never changes)", e.Task, t.RAMTail, e.RAMTail)
			}
		default:
			return invalid("task %q: unknown event %q", e.Task, e.Kind)
		}
	case c.AddServer != nil:
		if c.AddServer.ID == "" || c.AddServer.RaftAddr == "" {
			return invalid("add_server: id and raft_addr are required")
		}
	case c.RemoveServer != nil:
		if s.Servers[c.RemoveServer.ID] == nil {
			return notFound("server %q", c.RemoveServer.ID)
		}
	}
	return nil
}

func (s *State) checkSubmit(x *SubmitJob) error {
	j := x.Job
	if j.Name == "" {
		return invalid("submit_job: empty job name")
	}
	if old := s.Jobs[j.Name]; old != nil {
		return conflict("job %q exists", j.Name)
	}
	if len(x.Tasks) == 0 {
		return invalid("job %q has no tasks", j.Name)
	}
	seen := map[string]bool{}
	for _, t := range x.Tasks {
		if t.Name == "" {
			return invalid("job %q: task with empty name", j.Name)
		}
		if seen[t.Name] || s.Tasks[t.Name] != nil {
			return conflict("job %q: task %q exists", j.Name, t.Name)
		}
		seen[t.Name] = true
		if t.Driver != "qemu" && t.Driver != "process" {
			return invalid("job %q: task %q: driver %q", j.Name, t.Name, t.Driver)
		}
		if t.Demand.CPUMilli < 0 || t.Demand.MemoryBytes < 0 {
			return invalid("job %q: task %q: negative demand", j.Name, t.Name)
		}
	}
	return nil
}

func (s *State) action(plan uint64, i int) (*Action, error) {
	p := s.Plans[plan]
	if p == nil {
		return nil, notFound("plan %d", plan)
	}
	if p.State != PlanExecuting {
		return nil, conflict("plan %d is %s", plan, p.State)
	}
	if i < 0 || i >= len(p.Actions) {
		return nil, notFound("action %d of plan %d", i, plan)
	}
	return &p.Actions[i], nil
}

func cloneLabels(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// checkActions validates plan actions numbered from base (the actions
// already in the plan): known kinds, tasks and nodes, the nodes each kind
// needs, and dependencies on earlier actions only.
func (s *State) checkActions(acts []Action, base int) error {
	for k, a := range acts {
		i := base + k
		if !validKinds[a.Kind] {
			return invalid("plan action %d: unknown kind %q", i, a.Kind)
		}
		if s.Tasks[a.Task] == nil {
			return notFound("plan action %d: task %q", i, a.Task)
		}
		for _, nn := range []string{a.From, a.To} {
			if nn != "" && s.Nodes[nn] == nil {
				return notFound("plan action %d: node %q", i, nn)
			}
		}
		switch a.Kind {
		case "boot", "resume", "migrate":
			if a.To == "" {
				return invalid("plan action %d: %s needs a destination node", i, a.Kind)
			}
		}
		switch a.Kind {
		case "suspend", "migrate", "shutdown", "resume":
			if a.From == "" {
				return invalid("plan action %d: %s needs a source node", i, a.Kind)
			}
		}
		for _, d := range a.Deps {
			if d < 0 || d >= i {
				return invalid("plan action %d: dependency %d must be an earlier action", i, d)
			}
		}
	}
	return nil
}
