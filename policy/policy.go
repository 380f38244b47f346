// Package policy decides which jobs should run: given the configuration and
// the queue, a Policy returns the wanted state of each task (and placement
// preferences as constraints). It knows nothing about how to get there; the
// planner does. Policies are pure: time is an input (View.Now) and they do no
// I/O, so the controller and the simulator run the same code.
package policy

import (
	"github.com/ferrycluster/ferry/cluster"
)

// Job is a group of tasks that change state together (Entropy's vjob), as a
// policy sees it.
type Job struct {
	Name     string
	Priority int
	// Submitted is when the job entered the queue (time unit of View.Now).
	Submitted int64
	// Tasks are indices into View.Model.Tasks.
	Tasks []int
	// Walltime is the user's estimate of the remaining run time (0 unknown);
	// used by backfilling.
	Walltime int64
	// Work done so far and total work, where known (0 unknown), for
	// slowdown-aware policies.
	Done, Total int64
	// Preemptible jobs may be suspended for others.
	Preemptible bool
	// Migratable jobs may be live-migrated.
	Migratable bool
	// Ran: the job has run before (all its tasks at once). A job stopped
	// after it ran is queued again with the demand its tasks were last
	// seen using; one that never ran shows its peak.
	Ran bool
}

// View is what a policy sees: the configuration, the jobs (queued, running
// or sleeping; finished jobs are not shown), the node states the operator
// asked for (draining nodes must be emptied), and the current time.
type View struct {
	Model *cluster.Model
	Jobs  []Job
	// Draining marks nodes (indices) that must be emptied without killing.
	Draining map[int]bool
	Now      int64
	// Soft marks resources (indices) the nodes time-share: demand may
	// exceed capacity and slows the tasks down instead of failing (CPU
	// under a hypervisor). Nil: every resource is hard.
	Soft map[int]bool
	// Durations is the cost model the planner will use.
	Durations cluster.DurationModel
	// ProgressKnown: each job's Done is the work it has done (the
	// simulator measures it). A view without it (the controller's, which
	// does not, Done 0) never has a job stopped (Selective.Restart): a
	// stop loses the work done, and unknown work is not known to be none.
	ProgressKnown bool
	// Eligible, when set, says whether node n can take task t at all (the
	// controller's capability filter: the node's drivers and QEMU version);
	// the planner is given the same filter as constraints. Nil: any node.
	Eligible func(t, n int) bool
}

// Decision is a policy's output: a wanted state per task (every task of the
// model, indexed like View.Model.Tasks) and extra constraints (fences for
// preferred nodes, bans for draining nodes, spreads from job specs...).
type Decision struct {
	Want        []cluster.TaskState
	Constraints []cluster.Constraint
	// Recheck, when after View.Now, is a time at which the decision may
	// change with nothing else happening (a running job's predicted end,
	// from its walltime estimate): a loop that decides only on events
	// should decide again then. Zero or not after View.Now: none. The
	// simulator decides then (the earliest pending one; one not after the
	// current instant is ignored, so time advances between rechecks). The
	// controller's loop wakes then and decides again (besides when its
	// store changes and at least every ten periods); Selective asks for
	// one only where View.Soft marks the CPU time-shared, which the
	// controller never sets.
	Recheck int64
}

// Policy decides the wanted states.
type Policy interface {
	// Name identifies the policy in flags and reports.
	Name() string
	// Decide is pure: the same view gives the same decision.
	Decide(v *View) (Decision, error)
}
