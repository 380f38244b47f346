// Package store is ferry's replicated state machine: the nodes, the jobs and
// their tasks (Entropy's life cycle), the placements with their owner epochs,
// and the plans with the journal of their actions. It runs on hashicorp/raft
// with an on-disk log (raft-boltdb): one server by default, three or five for
// high availability.
//
// The state machine (State, Command, State.Apply) is pure: a command carries
// every input it needs, including the time it was proposed at, so every
// server applies it to the same result. Commands are validated before they are
// proposed (State.Check) and again when applied; an invalid command changes
// nothing and returns an error wrapping ErrInvalid or ErrConflict.
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
)

// Errors with kinds.
var (
	// ErrInvalid: the command is malformed.
	ErrInvalid = errors.New("invalid command")
	// ErrNotFound: the command names a node, job, task or plan that does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the command contradicts the current state (a job that
	// exists already, an action that is not pending...).
	ErrConflict = errors.New("conflict")
	// ErrNotLeader: this server cannot commit; forward to the leader.
	ErrNotLeader = errors.New("not the leader")
)

// NodeStatus is what the controller knows of a node.
type NodeStatus string

// Node statuses.
const (
	NodeOnline   NodeStatus = "online"
	NodeDraining NodeStatus = "draining"
	NodeDown     NodeStatus = "down"
)

// Resources are the amounts the controller places by.
type Resources struct {
	CPUMilli    int64 `json:"cpu_milli"`
	MemoryBytes int64 `json:"memory_bytes"`
}

// Node is a registered agent.
type Node struct {
	Name string `json:"name"`
	// Addr is the agent's API address (host:port).
	Addr     string            `json:"addr"`
	Capacity Resources         `json:"capacity"`
	Labels   map[string]string `json:"labels,omitempty"`
	Status   NodeStatus        `json:"status"`
	// Drained is set when the operator asked for a drain (status draining
	// until undrain, even across down/up).
	Drained bool `json:"drained,omitempty"`
	// DrainDeadline (unix ns, 0 none): until then, tasks that cannot move
	// off keep running here; from then on they are suspended (see
	// controller.Snapshot.Problem).
	DrainDeadline int64 `json:"drain_deadline,omitempty"`
	Registered    int64 `json:"registered"`
	Changed       int64 `json:"changed"`
}

// TaskPhase is Entropy's life cycle of a task.
type TaskPhase string

// Task phases.
const (
	TaskWaiting    TaskPhase = "waiting"
	TaskRunning    TaskPhase = "running"
	TaskSleeping   TaskPhase = "sleeping"
	TaskTerminated TaskPhase = "terminated"
)

// Task is one placed unit of a job.
type Task struct {
	Name   string    `json:"name"`
	Job    string    `json:"job"`
	Group  string    `json:"group"`
	Index  int       `json:"index"`
	Driver string    `json:"driver"`
	Demand Resources `json:"demand"`
	Phase  TaskPhase `json:"phase"`
	// Node hosts the task when running; holds its image when sleeping.
	Node string `json:"node,omitempty"`
	// Epoch is the ownership counter, as the agents hold it: a boot runs a
	// new copy under Epoch+1, a committed move (migration, resume on
	// another node) bumps it; suspend, shutdown and kill keep it. An agent
	// obeys only commands carrying the epoch it holds, and a copy whose
	// epoch is behind the store's is stale and gets killed.
	Epoch uint64 `json:"epoch"`
	// Image is the directory of the last committed suspend image or
	// checkpoint, on ImageNode ("" when none).
	Image     string `json:"image,omitempty"`
	ImageNode string `json:"image_node,omitempty"`
	// ImageEpoch is the epoch the image was taken under (a resume from it
	// presents this epoch to the agent holding it).
	ImageEpoch uint64 `json:"image_epoch,omitempty"`
	// CheckpointPeer is the node that keeps replicas of the running task's
	// periodic checkpoints (chosen at each placement; "" none).
	CheckpointPeer string `json:"checkpoint_peer,omitempty"`
	// Replica: the sleeping task restarts from the replica of its last
	// periodic checkpoint kept by Node (its own node was lost), not from
	// Image, which stays the fallback.
	Replica bool `json:"replica,omitempty"`
	// RAMTail says whether a qemu task's guest has the 8 KiB RAM tail
	// that nodes whose QEMU is older than 9.0 give new guests, and such
	// nodes refuse guests without it (docs/vm.md, "Which QEMU"). A guest
	// keeps its shape through suspends and moves; a boot (a new guest)
	// sets it from the booting node's QEMU version.
	RAMTail RAMTail `json:"ram_tail,omitempty"`
	// Restarts counts restarts after failures.
	Restarts int `json:"restarts,omitempty"`
	// ExitCode and Message of the last end.
	ExitCode int    `json:"exit_code,omitempty"`
	Message  string `json:"message,omitempty"`
	Changed  int64  `json:"changed"`
}

// RAMTail is whether a qemu guest has the RAM tail (Task.RAMTail).
type RAMTail string

const (
	// RAMTailUnknown: not recorded (not a qemu task, never booted, booted
	// before it was recorded, or its node's QEMU version was unknown).
	RAMTailUnknown RAMTail = ""
	// RAMTailWith: first booted on a QEMU older than 9.0; any node takes it.
	RAMTailWith RAMTail = "with"
	// RAMTailWithout: first booted on QEMU 9.0 or later; a node whose QEMU
	// is older refuses it.
	RAMTailWithout RAMTail = "without"
)

// Placement is a task's phase, node and epoch: what an action changes.
type Placement struct {
	Phase TaskPhase `json:"phase"`
	Node  string    `json:"node,omitempty"`
	Epoch uint64    `json:"epoch"`
}

// Placement returns t's placement.
func (t *Task) Placement() Placement { return Placement{Phase: t.Phase, Node: t.Node, Epoch: t.Epoch} }

// JobWant is what the operator asked of a job.
type JobWant string

// Job wants.
const (
	// WantRun: the policy may run the job (queued until there is room).
	WantRun JobWant = "run"
	// WantSleep: the operator suspended the job.
	WantSleep JobWant = "sleep"
	// WantStop: the job is being stopped; tasks are killed.
	WantStop JobWant = "stop"
)

// Job is a group of tasks that change state together.
type Job struct {
	Name        string  `json:"name"`
	Priority    int     `json:"priority"`
	Submitted   int64   `json:"submitted"`
	Want        JobWant `json:"want"`
	Preemptible bool    `json:"preemptible"`
	Migratable  bool    `json:"migratable"`
	// Spec is the job's normalised spec (JSON), opaque to the store.
	Spec  json.RawMessage `json:"spec,omitempty"`
	Tasks []string        `json:"tasks"`
	// Seq orders jobs by submission (ties of Submitted).
	Seq uint64 `json:"seq"`
}

// ActionState is the journal state of one action.
type ActionState string

// Action states. pending → running → done | failed; pending → cancelled
// (a dependency failed or the plan was aborted).
const (
	ActionPending   ActionState = "pending"
	ActionRunning   ActionState = "running"
	ActionDone      ActionState = "done"
	ActionFailed    ActionState = "failed"
	ActionCancelled ActionState = "cancelled"
)

// Terminal reports whether s is final.
func (s ActionState) Terminal() bool {
	return s == ActionDone || s == ActionFailed || s == ActionCancelled
}

// Action is one journaled step of a plan.
type Action struct {
	Kind string `json:"kind"` // cluster.ActionKind names: boot, suspend, resume, migrate, shutdown, kill
	Task string `json:"task"`
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
	// Deps are indices of actions that must be done before this one starts.
	Deps []int `json:"deps,omitempty"`
	// Bytes expected to move (memory size for migrations and images).
	Bytes int64 `json:"bytes,omitempty"`
	// Peer is the checkpoint peer the controller chose for the task's new
	// placement (boot, resume, migrate), fixed when the action starts.
	Peer  string      `json:"peer,omitempty"`
	State ActionState `json:"state"`
	// Before is the task's placement when the action started; After when it
	// committed. NewEpoch is the epoch the action's result runs under.
	Before   *Placement `json:"before,omitempty"`
	After    *Placement `json:"after,omitempty"`
	NewEpoch uint64     `json:"new_epoch,omitempty"`
	Started  int64      `json:"started,omitempty"`
	Ended    int64      `json:"ended,omitempty"`
	Error    string     `json:"error,omitempty"`
}

// PlanState is a plan's life cycle.
type PlanState string

// Plan states.
const (
	PlanExecuting PlanState = "executing"
	PlanFinished  PlanState = "finished"
)

// Plan is a reconfiguration being carried out, with its journal.
type Plan struct {
	ID       uint64    `json:"id"`
	Created  int64     `json:"created"`
	Finished int64     `json:"finished,omitempty"`
	State    PlanState `json:"state"`
	Actions  []Action  `json:"actions"`
	// Reason says why the plan was made (policy name, operator command).
	Reason string `json:"reason,omitempty"`
}

// Server is a member of the raft cluster.
type Server struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	APIAddr  string `json:"api_addr"`
}

// State is the replicated state. Read it only through Store.View (or a
// private copy); mutate it only through Apply.
type State struct {
	Nodes    map[string]*Node   `json:"nodes"`
	Jobs     map[string]*Job    `json:"jobs"`
	Tasks    map[string]*Task   `json:"tasks"`
	Plans    map[uint64]*Plan   `json:"plans"`
	Servers  map[string]*Server `json:"servers"`
	NextPlan uint64             `json:"next_plan"`
	JobSeq   uint64             `json:"job_seq"`
	// KeepPlans bounds how many finished plans are kept.
	KeepPlans int `json:"keep_plans"`
}

// NewState returns an empty state.
func NewState() *State {
	return &State{
		Nodes:     map[string]*Node{},
		Jobs:      map[string]*Job{},
		Tasks:     map[string]*Task{},
		Plans:     map[uint64]*Plan{},
		Servers:   map[string]*Server{},
		NextPlan:  1,
		KeepPlans: 64,
	}
}

// ActivePlan returns the executing plan, or nil. At most one plan executes.
func (s *State) ActivePlan() *Plan {
	for _, p := range s.Plans {
		if p.State == PlanExecuting {
			return p
		}
	}
	return nil
}

// SortedNodes returns node names in order.
func (s *State) SortedNodes() []string {
	ns := make([]string, 0, len(s.Nodes))
	for n := range s.Nodes {
		ns = append(ns, n)
	}
	sort.Strings(ns)
	return ns
}

// SortedJobs returns jobs in submission order.
func (s *State) SortedJobs() []*Job {
	js := make([]*Job, 0, len(s.Jobs))
	for _, j := range s.Jobs {
		js = append(js, j)
	}
	sort.Slice(js, func(a, b int) bool { return js[a].Seq < js[b].Seq })
	return js
}

// Clone returns a deep copy (through JSON: simple and exact).
func (s *State) Clone() *State {
	b, err := json.Marshal(s)
	if err != nil {
		panic(fmt.Sprintf("store: marshal state: %v", err))
	}
	c := NewState()
	if err := json.Unmarshal(b, c); err != nil {
		panic(fmt.Sprintf("store: unmarshal state: %v", err))
	}
	return c
}
