// Package plan is the planner: from a configuration, constraints and the
// wanted states it computes a target placement of least cost and a viable
// reconfiguration plan (Entropy's cluster-wide context switch). It is pure:
// no I/O, no global state; time and randomness are inputs (Options). The
// controller, `ferry plan` and the simulator share it.
package plan

import (
	"errors"
	"fmt"
	"time"

	"github.com/ferrycluster/ferry/cluster"
)

// Objective is what the planner minimises among viable plans.
type Objective uint8

const (
	// MinMTTR minimises the sum of all actions' end times (BtrPlace's
	// minimizeMTTR).
	MinMTTR Objective = iota
	// MinMigrations minimises the number of migrations, then MTTR.
	MinMigrations
)

func (o Objective) String() string {
	switch o {
	case MinMTTR:
		return "mttr"
	case MinMigrations:
		return "migrations"
	}
	return fmt.Sprintf("Objective(%d)", o)
}

// Problem is one reconfiguration problem: the current configuration, the
// constraints (state constraints carry the policy's wanted states; a task
// with none keeps its state), the objective and the duration model.
type Problem struct {
	Model       *cluster.Model
	Constraints []cluster.Constraint
	Objective   Objective
	// Durations gives action durations; nil means cluster.AttrDurations{}.
	Durations cluster.DurationModel
}

// Options control a Solve call. Time is an input: the same problem and
// options give the same plan unless the Timeout cut the search short (then
// the best plan found so far is returned).
type Options struct {
	// Timeout bounds the search; 0 means no bound.
	Timeout time.Duration
	// Seed is reserved for randomised choices; today's search makes none,
	// so it has no effect (kept so that callers and `ferry plan --seed`
	// need not change when one is added).
	Seed int64
	// Now reads the clock to enforce Timeout; nil means time.Now. Tests and
	// the simulator pass a virtual clock.
	Now func() time.Time
	// LiveOnly keeps running tasks running while they move: a relocation
	// is always a live migration. Without it, under MinMTTR, the planner
	// relocates by suspend and resume when the duration model makes that
	// cheaper (never with cluster.BandwidthDurations, often with BtrPlace
	// attributes). Pivots may still suspend when no third node has room.
	LiveOnly bool
}

// Action is one transition with its time window [Start, End).
//
// Task actions set Task and the nodes that apply: Boot: To; Shutdown, Kill:
// From (NoNode for a ready task killed); Suspend: From and To (the node that
// keeps the image, equal to From); Resume: From (where the image is) and To;
// Migrate: From and To. Node actions set Node (Task is -1).
type Action struct {
	Kind       cluster.ActionKind
	Task       int
	Node       int
	From, To   int
	Start, End int64
}

// Duration is End - Start.
func (a Action) Duration() int64 { return a.End - a.Start }

// Plan is a reconfiguration plan: the configuration it starts from, the
// actions with their times, and the configuration it reaches.
type Plan struct {
	Origin  *cluster.Model
	Actions []Action
	// Result is the configuration after every action; filled by Solve.
	Result *cluster.Model
	// Stats describe how the plan was found.
	Stats Stats
}

// Stats report the search.
type Stats struct {
	Elapsed time.Duration
	// Optimal is true when the search proved no better plan exists for the
	// objective (or the objective's lower bound was reached).
	Optimal bool
	// LowerBound on the objective's MTTR: the sum of durations of the
	// actions no plan can avoid.
	LowerBound int64
	// TimedOut is true when the Timeout cut the search short.
	TimedOut bool
}

// MTTR is the sum of all actions' end times.
func (p *Plan) MTTR() int64 {
	var s int64
	for _, a := range p.Actions {
		s += a.End
	}
	return s
}

// Makespan is the latest end time (0 for an empty plan).
func (p *Plan) Makespan() int64 {
	var m int64
	for _, a := range p.Actions {
		if a.End > m {
			m = a.End
		}
	}
	return m
}

// Migrations counts migrate actions.
func (p *Plan) Migrations() int {
	n := 0
	for _, a := range p.Actions {
		if a.Kind == cluster.Migrate {
			n++
		}
	}
	return n
}

// ErrNoSolution is returned (wrapped in a *ConflictError) when no viable plan
// exists.
var ErrNoSolution = errors.New("no viable plan")

// ConflictError names why no plan exists: the constraint, node or resource.
type ConflictError struct {
	// Constraint is the kind of the constraint at fault, if one is.
	Constraint string
	// Node and Resource name the element at fault, when known.
	Node, Resource string
	Reason         string
}

func (e *ConflictError) Error() string {
	s := "no viable plan: " + e.Reason
	if e.Constraint != "" {
		s += " (constraint " + e.Constraint + ")"
	}
	if e.Node != "" {
		s += " (node " + e.Node + ")"
	}
	if e.Resource != "" {
		s += " (resource " + e.Resource + ")"
	}
	return s
}

// Unwrap makes errors.Is(err, ErrNoSolution) true.
func (e *ConflictError) Unwrap() error { return ErrNoSolution }

// ErrTimeout is returned (wrapped in a *TimeoutError) when the deadline of
// Options.Timeout passes, or the context is cancelled, before the planner
// has a first plan. Once it has one, the deadline only cuts the search for
// a better one short (Stats.TimedOut).
var ErrTimeout = errors.New("planner deadline passed before a first plan")

// TimeoutError says where the deadline stopped the planner.
type TimeoutError struct {
	// Stage is the step that was stopped ("schedule").
	Stage string
	// Detail tells how far it got.
	Detail string
	// Cause is the context's error when the context ended it, else nil.
	Cause error
}

func (e *TimeoutError) Error() string {
	s := "plan: " + ErrTimeout.Error() + " (" + e.Stage + ": " + e.Detail + ")"
	if e.Cause != nil {
		s += ": " + e.Cause.Error()
	}
	return s
}

// Unwrap makes errors.Is(err, ErrTimeout) true, and errors.Is(err,
// context.Canceled) or context.DeadlineExceeded when the context ended it.
func (e *TimeoutError) Unwrap() []error {
	if e.Cause != nil {
		return []error{ErrTimeout, e.Cause}
	}
	return []error{ErrTimeout}
}
