// Package executor is the pure core that carries out a plan: given the plan's
// actions with their dependencies and the parallel limits, it says which
// actions to start, cancel or abort now (Ready), and takes back what became of
// them (Advance). It does no I/O, starts no goroutines and reads no clock:
// time enters as an argument. The controller wraps it with a thin layer that
// journals and calls agents; the simulator drives it with a virtual clock and
// modelled durations.
//
// Usage:
//
//	ex, _ := executor.New(executor.FromPlan(p, names), executor.DefaultLimits())
//	for !ex.Done() {
//		for _, in := range ex.Ready(now) { perform(in) }   // start / abort / cancel
//		ex.Advance(<-acks)                                 // progress / done / failed
//	}
//
// Rules:
//
//  1. An action starts only when all its dependencies are done.
//  2. If a dependency failed or was cancelled, the action is cancelled
//     (never started); actions that do not depend on it go on: one failed
//     action does not fail the plan.
//  3. At most Limits.MaxMigrations migrations run in the cluster and at most
//     Limits.MaxOutboundPerNode leave any node (KubeVirt's defaults: 5 and 2).
//     A migration is a live migration or a resume on another node.
//  4. A running action is aborted when it has run longer than its
//     completion timeout (CompletionBase + CompletionPerGiB per GiB moved) or,
//     for a migration, when no progress was reported for ProgressTimeout.
//     An abort is asked once; the action ends when the ack comes.
package executor

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/plan"
)

// ErrInvalid marks a plan the executor cannot run (bad dependencies).
var ErrInvalid = errors.New("invalid executor input")

// State of one action.
type State uint8

// Action states.
const (
	Pending State = iota
	Running
	Done
	Failed
	Cancelled
)

func (s State) String() string {
	switch s {
	case Pending:
		return "pending"
	case Running:
		return "running"
	case Done:
		return "done"
	case Failed:
		return "failed"
	case Cancelled:
		return "cancelled"
	}
	return fmt.Sprintf("State(%d)", s)
}

// Terminal reports whether s is final.
func (s State) Terminal() bool { return s >= Done }

// Action is one step of a plan as the executor sees it.
type Action struct {
	Kind cluster.ActionKind
	Task string
	// From and To are node names ("" where they do not apply).
	From, To string
	// Deps are indices of actions that must be done first.
	Deps []int
	// Bytes to move (memory for migrations, image size for resumes).
	Bytes int64
}

// IsMigration reports whether a counts against the migration limits.
func (a Action) IsMigration() bool {
	return a.Kind == cluster.Migrate || a.Kind == cluster.Resume && a.From != "" && a.From != a.To
}

// Limits bound parallelism and duration.
type Limits struct {
	MaxMigrations      int
	MaxOutboundPerNode int
	// ProgressTimeout: a migration reporting no progress for this long is
	// aborted (0 disables).
	ProgressTimeout time.Duration
	// CompletionBase + CompletionPerGiB × GiB moved bounds every action
	// (0 disables).
	CompletionBase   time.Duration
	CompletionPerGiB time.Duration
}

// DefaultLimits are KubeVirt's: 5 parallel migrations, 2 outbound per node,
// 150 s progress timeout, 150 s completion timeout per GiB (plus 60 s for
// actions that move nothing).
func DefaultLimits() Limits {
	return Limits{MaxMigrations: 5, MaxOutboundPerNode: 2, ProgressTimeout: 150 * time.Second,
		CompletionBase: 60 * time.Second, CompletionPerGiB: 150 * time.Second}
}

// IntentKind is what the executor asks the caller to do.
type IntentKind uint8

// Intent kinds.
const (
	// Start the action (journal it, then dispatch it).
	Start IntentKind = iota
	// Abort the running action (cancel the call; the agent rolls back).
	Abort
	// Cancel the pending action (journal it; it will never run).
	Cancel
)

func (k IntentKind) String() string {
	return [...]string{"start", "abort", "cancel"}[k]
}

// Intent asks the caller to act on one action.
type Intent struct {
	Kind   IntentKind
	Action int
	Reason string
}

// AckKind is what the caller reports.
type AckKind uint8

// Ack kinds.
const (
	// Progress of a running action (Bytes moved so far).
	Progress AckKind = iota
	// Succeeded: the action committed.
	Succeeded
	// Failed: the action ended without committing (rolled back).
	FailedAck
)

// Ack reports what became of an action.
type Ack struct {
	Kind   AckKind
	Action int
	At     time.Time
	Bytes  int64
	Err    string
}

type slot struct {
	state        State
	started      time.Time
	lastProgress time.Time
	bytes        int64
	aborting     bool
	err          string
}

// Executor is the pure core. Not safe for concurrent use.
type Executor struct {
	acts   []Action
	slots  []slot
	limits Limits
	// dependents[i] lists actions that depend on i.
	dependents [][]int
	migrations int
	outbound   map[string]int
	terminal   int
	// remaining[i] counts i's dependencies not yet done; cands holds
	// pending actions whose dependencies are all done (sorted when
	// candsDirty), doomed pending actions with a failed dependency, running
	// the actions in flight. dirty asks Ready to rebuild them (Restore).
	remaining  []int
	cands      []int
	candsDirty bool
	doomed     []int
	running    map[int]bool
	dirty      bool
}

// New checks the actions (dependencies point to existing, distinct actions
// and form no cycle) and returns an executor with every action pending.
func New(acts []Action, l Limits) (*Executor, error) {
	e := &Executor{acts: acts, slots: make([]slot, len(acts)), limits: l,
		dependents: make([][]int, len(acts)), outbound: map[string]int{}, running: map[int]bool{}, dirty: true}
	indeg := make([]int, len(acts))
	for i, a := range acts {
		for _, d := range a.Deps {
			if d < 0 || d >= len(acts) || d == i {
				return nil, fmt.Errorf("%w: action %d depends on %d", ErrInvalid, i, d)
			}
			e.dependents[d] = append(e.dependents[d], i)
			indeg[i]++
		}
	}
	// Kahn's algorithm: every action must be reachable.
	queue := []int{}
	for i, n := range indeg {
		if n == 0 {
			queue = append(queue, i)
		}
	}
	seen := 0
	for len(queue) > 0 {
		i := queue[0]
		queue = queue[1:]
		seen++
		for _, j := range e.dependents[i] {
			if indeg[j]--; indeg[j] == 0 {
				queue = append(queue, j)
			}
		}
	}
	if seen != len(acts) {
		return nil, fmt.Errorf("%w: dependencies form a cycle", ErrInvalid)
	}
	return e, nil
}

// Append adds pending actions after the existing ones (a drain deadline
// acted on while the plan executes). Their dependencies must point to
// earlier actions.
func (e *Executor) Append(acts []Action) error {
	n := len(e.acts)
	for k, a := range acts {
		for _, d := range a.Deps {
			if d < 0 || d >= n+k {
				return fmt.Errorf("%w: appended action %d depends on %d", ErrInvalid, n+k, d)
			}
		}
	}
	for k, a := range acts {
		e.acts = append(e.acts, a)
		e.slots = append(e.slots, slot{})
		e.dependents = append(e.dependents, nil)
		for _, d := range a.Deps {
			e.dependents[d] = append(e.dependents[d], n+k)
		}
	}
	e.dirty = true
	return nil
}

// Cancel cancels a pending action from outside (its dependents are
// cancelled by the next Ready, as after a failure). It reports whether the
// action was pending.
func (e *Executor) Cancel(i int, reason string) bool {
	if i < 0 || i >= len(e.slots) || e.slots[i].state != Pending {
		return false
	}
	e.finish(i, Cancelled, reason)
	return true
}

// Restore sets an action's state from a journal (a restarted controller).
// Running actions restored count against the limits from start.
func (e *Executor) Restore(i int, st State, start time.Time) {
	s := &e.slots[i]
	if s.state == Running {
		e.release(i)
	}
	if s.state.Terminal() {
		e.terminal--
	}
	s.state, s.started, s.lastProgress = st, start, start
	if st == Running {
		e.hold(i)
	}
	if st.Terminal() {
		e.terminal++
	}
	e.dirty = true
}

// rebuild recomputes the scheduling sets from the slots.
func (e *Executor) rebuild() {
	e.remaining = make([]int, len(e.acts))
	e.cands, e.doomed = e.cands[:0], e.doomed[:0]
	e.running = map[int]bool{}
	for i, a := range e.acts {
		doomed := false
		for _, d := range a.Deps {
			switch e.slots[d].state {
			case Done:
			case Failed, Cancelled:
				doomed = true
				e.remaining[i]++
			default:
				e.remaining[i]++
			}
		}
		switch e.slots[i].state {
		case Running:
			e.running[i] = true
		case Pending:
			if doomed {
				e.doomed = append(e.doomed, i)
			} else if e.remaining[i] == 0 {
				e.cands = append(e.cands, i)
			}
		}
	}
	e.candsDirty = true
	e.dirty = false
}

// Actions returns the actions (read-only).
func (e *Executor) Actions() []Action { return e.acts }

// State of action i.
func (e *Executor) State(i int) State { return e.slots[i].state }

// Err of a failed or cancelled action.
func (e *Executor) Err(i int) string { return e.slots[i].err }

// Done reports whether every action is terminal.
func (e *Executor) Done() bool { return e.terminal == len(e.acts) }

// Running counts running actions.
func (e *Executor) Running() int {
	n := 0
	for _, s := range e.slots {
		if s.state == Running {
			n++
		}
	}
	return n
}

func (e *Executor) addCand(i int) {
	e.cands = append(e.cands, i)
	e.candsDirty = true
}

func (e *Executor) hold(i int) {
	if a := e.acts[i]; a.IsMigration() {
		e.migrations++
		e.outbound[a.From]++
	}
}

func (e *Executor) release(i int) {
	if a := e.acts[i]; a.IsMigration() {
		e.migrations--
		e.outbound[a.From]--
	}
}

func (e *Executor) fits(i int) bool {
	a := e.acts[i]
	if !a.IsMigration() {
		return true
	}
	if e.limits.MaxMigrations > 0 && e.migrations >= e.limits.MaxMigrations {
		return false
	}
	if e.limits.MaxOutboundPerNode > 0 && e.outbound[a.From] >= e.limits.MaxOutboundPerNode {
		return false
	}
	return true
}

// Timeout is the completion timeout of action i (0: none).
func (e *Executor) Timeout(i int) time.Duration {
	if e.limits.CompletionBase == 0 && e.limits.CompletionPerGiB == 0 {
		return 0
	}
	gib := (e.acts[i].Bytes + (1<<30 - 1)) >> 30
	return e.limits.CompletionBase + time.Duration(gib)*e.limits.CompletionPerGiB
}

// Ready returns what to do now, in action order: cancels for pending actions
// whose dependency failed, aborts for running actions past a timeout, starts
// for pending actions whose dependencies are done and that fit the limits.
// The returned starts and cancels are taken as performed (the actions are
// running or cancelled when Ready returns); an abort is returned once.
func (e *Executor) Ready(now time.Time) []Intent {
	if e.dirty {
		e.rebuild()
	}
	var out []Intent
	// Cancels, transitively: a cancelled action dooms its dependents.
	for len(e.doomed) > 0 {
		sort.Ints(e.doomed)
		batch := e.doomed
		e.doomed = nil
		for _, i := range batch {
			if e.slots[i].state != Pending {
				continue
			}
			reason := ""
			for _, d := range e.acts[i].Deps {
				if st := e.slots[d].state; st == Failed || st == Cancelled {
					reason = fmt.Sprintf("action %d %s", d, st)
					break
				}
			}
			e.finish(i, Cancelled, reason)
			out = append(out, Intent{Kind: Cancel, Action: i, Reason: reason})
		}
	}
	// Aborts of running actions past a timeout.
	var aborts []Intent
	for i := range e.running {
		s := &e.slots[i]
		if s.aborting {
			continue
		}
		if to := e.Timeout(i); to > 0 && now.Sub(s.started) > to {
			s.aborting = true
			aborts = append(aborts, Intent{Kind: Abort, Action: i, Reason: fmt.Sprintf("completion timeout %s", to)})
		} else if e.acts[i].IsMigration() && e.limits.ProgressTimeout > 0 && now.Sub(s.lastProgress) > e.limits.ProgressTimeout {
			s.aborting = true
			aborts = append(aborts, Intent{Kind: Abort, Action: i, Reason: fmt.Sprintf("no progress for %s", e.limits.ProgressTimeout)})
		}
	}
	sort.Slice(aborts, func(a, b int) bool { return aborts[a].Action < aborts[b].Action })
	out = append(out, aborts...)
	// Starts, in action order, within the limits.
	if e.candsDirty {
		sort.Ints(e.cands)
		e.candsDirty = false
	}
	keep := e.cands[:0]
	for _, i := range e.cands {
		if e.slots[i].state != Pending {
			continue
		}
		if !e.fits(i) {
			keep = append(keep, i)
			continue
		}
		s := &e.slots[i]
		s.state, s.started, s.lastProgress = Running, now, now
		e.hold(i)
		e.running[i] = true
		out = append(out, Intent{Kind: Start, Action: i})
	}
	e.cands = keep
	return out
}

func (e *Executor) finish(i int, st State, err string) {
	s := &e.slots[i]
	if s.state == Running {
		e.release(i)
		delete(e.running, i)
	}
	s.state, s.err = st, err
	e.terminal++
	if e.dirty {
		return
	}
	for _, j := range e.dependents[i] {
		if e.slots[j].state != Pending {
			continue
		}
		if st == Done {
			if e.remaining[j]--; e.remaining[j] == 0 {
				e.addCand(j)
			}
		} else {
			e.doomed = append(e.doomed, j)
		}
	}
}

// Advance takes an ack. Acks for actions that are not running are ignored
// (a late ack after a restart), and so are unknown indices.
func (e *Executor) Advance(a Ack) {
	if a.Action < 0 || a.Action >= len(e.slots) {
		return
	}
	s := &e.slots[a.Action]
	if s.state != Running {
		return
	}
	switch a.Kind {
	case Progress:
		if a.Bytes > s.bytes || s.bytes == 0 {
			s.lastProgress = a.At
		}
		s.bytes = a.Bytes
	case Succeeded:
		e.finish(a.Action, Done, "")
	case FailedAck:
		e.finish(a.Action, Failed, a.Err)
	}
}

// FromPlan turns a planner's plan into executor actions with dependencies:
// action b depends on action a when a ends no later than b starts and they
// touch the same task or a common node (so a node's room is freed before a
// task arrives, and one task's actions run in order). memory is the index
// of the memory resource in the plan's model (-1: none), for Bytes.
func FromPlan(p *plan.Plan, memory int) []Action {
	m := p.Origin
	order := make([]int, len(p.Actions))
	for i := range order {
		order[i] = i
	}
	// Executor actions are in start order so a dependency always precedes.
	sort.SliceStable(order, func(x, y int) bool { return p.Actions[order[x]].Start < p.Actions[order[y]].Start })
	node := func(i int) string {
		if i < 0 || i >= len(m.Nodes) {
			return ""
		}
		return m.Nodes[i].Name
	}
	out := make([]Action, 0, len(p.Actions))
	byNode := map[int][]int{} // node index → executor indices touching it
	byTask := map[int][]int{}
	for _, pi := range order {
		pa := p.Actions[pi]
		a := Action{Kind: pa.Kind, From: node(pa.From), To: node(pa.To)}
		if pa.Kind == cluster.Boot {
			a.From = ""
		}
		if pa.Task >= 0 && pa.Task < len(m.Tasks) {
			a.Task = m.Tasks[pa.Task].Name
			if memory >= 0 && memory < len(m.Tasks[pa.Task].Demand) {
				a.Bytes = m.Tasks[pa.Task].Demand[memory]
			}
		}
		idx := len(out)
		deps := map[int]bool{}
		touch := []int{}
		for _, n := range []int{pa.From, pa.To, pa.Node} {
			if n >= 0 {
				touch = append(touch, n)
			}
		}
		for _, n := range touch {
			for _, j := range byNode[n] {
				if p.Actions[order[j]].End <= pa.Start {
					deps[j] = true
				}
			}
		}
		if pa.Task >= 0 {
			for _, j := range byTask[pa.Task] {
				deps[j] = true
			}
			byTask[pa.Task] = append(byTask[pa.Task], idx)
		}
		seen := map[int]bool{}
		for _, n := range touch {
			if !seen[n] {
				byNode[n] = append(byNode[n], idx)
				seen[n] = true
			}
		}
		for j := range deps {
			a.Deps = append(a.Deps, j)
		}
		sort.Ints(a.Deps)
		out = append(out, a)
	}
	return out
}
