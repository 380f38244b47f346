// Package check verifies a simulation run from its event log alone,
// independently of the simulator's core: it replays the log against the
// workload and checks that no node is over capacity on a hard resource at
// any instant, that every job completes exactly once and only while all
// its tasks run, that no task is in two actions at once, and that work is
// conserved across suspends and migrations (a job's gang-running time
// equals its work, plus at most the migration downtimes; more when CPU
// contention slowed it down; a restart, a task of the job shut down,
// loses the work done, and only the gang time after it counts).
package check

import (
	"errors"
	"fmt"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/sim"
	"github.com/ferrycluster/ferry/sim/workload"
)

// ErrViolation marks a broken invariant.
var ErrViolation = errors.New("invariant violated")

type task struct {
	job      int
	state    cluster.TaskState
	node     int
	leaving  bool
	inAction bool
	to       int
}

// Run checks r against w. Downtime is the simulator's migration downtime
// (sim.Config.Downtime; 0 means the default of 1 s).
func Run(w *workload.Workload, r *sim.Result) error {
	return RunDowntime(w, r, 1)
}

// RunDowntime is Run with an explicit migration downtime.
func RunDowntime(w *workload.Workload, r *sim.Result, downtime int64) error {
	fail := func(t int64, format string, a ...any) error {
		return fmt.Errorf("%w at t=%d: %s", ErrViolation, t, fmt.Sprintf(format, a...))
	}
	nr := len(w.Resources)
	hard := make([]bool, nr)
	for i, name := range w.Resources {
		hard[i] = true
		for _, s := range w.Soft {
			if s == name && r.Observed {
				hard[i] = false
			}
		}
	}
	var tasks []task
	first := make([]int, len(w.Jobs)+1)
	for j, job := range w.Jobs {
		first[j] = len(tasks)
		for range job.Tasks {
			tasks = append(tasks, task{job: j, state: cluster.Ready, node: -1, to: -1})
		}
	}
	first[len(w.Jobs)] = len(tasks)
	used := make([][]int64, len(w.Nodes))
	for i := range used {
		used[i] = make([]int64, nr)
	}
	add := func(n, t int, sign int64, at int64) error {
		if n < 0 || n >= len(w.Nodes) {
			return fail(at, "task %d on unknown node %d", t, n)
		}
		d := w.Jobs[tasks[t].job].Demand
		for k := range nr {
			used[n][k] += sign * d[k]
			if sign > 0 && hard[k] && used[n][k] > w.Nodes[n].Capacity[k] {
				return fail(at, "node %s over capacity on %s: %d > %d", w.Nodes[n].Name, w.Resources[k], used[n][k], w.Nodes[n].Capacity[k])
			}
		}
		return nil
	}
	gangSince := make([]int64, len(w.Jobs))
	gangTime := make([]int64, len(w.Jobs))
	migr := make([]int64, len(w.Jobs))
	completed := make([]int, len(w.Jobs))
	arrived := make([]bool, len(w.Jobs))
	for j := range gangSince {
		gangSince[j] = -1
	}
	gang := func(j int) bool {
		for t := first[j]; t < first[j+1]; t++ {
			if tasks[t].state != cluster.Running || tasks[t].leaving {
				return false
			}
		}
		return true
	}
	settle := func(j int, at int64) {
		g := gang(j) && completed[j] == 0
		if g && gangSince[j] < 0 {
			gangSince[j] = at
		} else if !g && gangSince[j] >= 0 {
			gangTime[j] += at - gangSince[j]
			gangSince[j] = -1
		}
	}
	var last int64
	for _, e := range r.Events {
		if e.T < last {
			return fail(e.T, "log goes back in time from %d", last)
		}
		last = e.T
		switch e.Kind {
		case sim.EvArrive:
			if arrived[e.Job] {
				return fail(e.T, "job %s arrives twice", w.Jobs[e.Job].Name)
			}
			if e.T != w.Jobs[e.Job].Submit {
				return fail(e.T, "job %s arrives at %d, submitted at %d", w.Jobs[e.Job].Name, e.T, w.Jobs[e.Job].Submit)
			}
			arrived[e.Job] = true
		case sim.EvStart:
			t := int(e.Task)
			tk := &tasks[t]
			if !arrived[tk.job] || completed[tk.job] > 0 {
				return fail(e.T, "action on task %d of a job not present", t)
			}
			if tk.inAction {
				return fail(e.T, "task %d in two actions at once", t)
			}
			tk.inAction = true
			switch e.Action {
			case cluster.Boot, cluster.Resume, cluster.Migrate:
				if e.Action == cluster.Boot && tk.state != cluster.Ready ||
					e.Action == cluster.Resume && tk.state != cluster.Sleeping ||
					e.Action == cluster.Migrate && (tk.state != cluster.Running || int(e.From) != tk.node) {
					return fail(e.T, "%s of task %d in state %s", e.Action, t, tk.state)
				}
				tk.to = int(e.To)
				if err := add(int(e.To), t, 1, e.T); err != nil {
					return err
				}
			case cluster.Suspend, cluster.Shutdown:
				if tk.state != cluster.Running {
					return fail(e.T, "%s of task %d in state %s", e.Action, t, tk.state)
				}
				tk.leaving = true
				settle(tk.job, e.T)
			default:
				return fail(e.T, "unexpected action %s", e.Action)
			}
		case sim.EvEnd:
			t := int(e.Task)
			tk := &tasks[t]
			if !tk.inAction {
				return fail(e.T, "task %d ends an action it did not start", t)
			}
			tk.inAction = false
			switch e.Action {
			case cluster.Boot, cluster.Resume:
				tk.state, tk.node = cluster.Running, int(e.To)
			case cluster.Migrate:
				if err := add(tk.node, t, -1, e.T); err != nil {
					return err
				}
				tk.node = int(e.To)
				migr[tk.job]++
			case cluster.Suspend:
				if err := add(tk.node, t, -1, e.T); err != nil {
					return err
				}
				tk.state, tk.leaving = cluster.Sleeping, false
			case cluster.Shutdown:
				if err := add(tk.node, t, -1, e.T); err != nil {
					return err
				}
				tk.state, tk.leaving, tk.node = cluster.Ready, false, -1
			}
			settle(tk.job, e.T)
			if e.Action == cluster.Shutdown {
				// A restart: the work done is lost (the job's other tasks
				// cannot go on without this one's), the job's whole work
				// must be run again from here.
				gangTime[tk.job], migr[tk.job] = 0, 0
			}
		case sim.EvCancel:
			t := int(e.Task)
			tk := &tasks[t]
			if !tk.inAction || e.Action != cluster.Migrate {
				return fail(e.T, "cancel of task %d: not migrating", t)
			}
			tk.inAction = false
			if err := add(tk.to, t, -1, e.T); err != nil {
				return err
			}
		case sim.EvComplete:
			j := int(e.Job)
			if !gang(j) {
				return fail(e.T, "job %s completes while not all its tasks run", w.Jobs[j].Name)
			}
			settle(j, e.T)
			completed[j]++
			if completed[j] > 1 {
				return fail(e.T, "job %s completes twice", w.Jobs[j].Name)
			}
			gangTime[j] += e.T - gangSince[j]
			gangSince[j] = -1
			for t := first[j]; t < first[j+1]; t++ {
				if tasks[t].inAction {
					return fail(e.T, "job %s completes with task %d in an action not cancelled", w.Jobs[j].Name, t)
				}
				if err := add(tasks[t].node, t, -1, e.T); err != nil {
					return err
				}
				tasks[t].state, tasks[t].node = cluster.Killed, -1
			}
			work := w.Jobs[j].Work
			g := gangTime[j]
			if g < work {
				return fail(e.T, "job %s ran %d s for %d s of work: work created", w.Jobs[j].Name, g, work)
			}
			if !r.Observed && g-downtime*migr[j] > work {
				return fail(e.T, "job %s ran %d s for %d s of work with %d migrations: work lost", w.Jobs[j].Name, g, work, migr[j])
			}
		}
	}
	for j := range w.Jobs {
		if completed[j] != 1 {
			return fmt.Errorf("%w: job %s completed %d times", ErrViolation, w.Jobs[j].Name, completed[j])
		}
	}
	return nil
}
