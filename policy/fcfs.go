package policy

import (
	"github.com/ferrycluster/ferry/cluster"
)

// keep charges a running job where it is; when some of its tasks cannot
// stay (a draining node, or no room after demands grew) it re-places the
// job preferring current nodes and fences the moved tasks (the planner
// migrates them). It returns false when the job fits nowhere: the caller
// suspends it.
func keep(v *View, p *Packer, d *Decision, j *Job) bool {
	var moved []int
	for _, t := range j.Tasks {
		if !p.Keep(t) {
			moved = append(moved, t)
		}
	}
	if len(moved) == 0 {
		return true
	}
	if (j.Migratable || drainRunning(v, j)) && p.Place(moved, false) {
		pin(d, v.Model, p, moved)
		return true
	}
	for _, t := range j.Tasks {
		p.Release(t)
	}
	return false
}

// sleep wants a job suspended (ready tasks stay ready).
func sleep(d *Decision, m *cluster.Model, j *Job) {
	for _, t := range j.Tasks {
		if m.Tasks[t].State == cluster.Running {
			d.Want[t] = cluster.Sleeping
		}
	}
}

// start wants a placed job running and fences it when pinning.
func start(d *Decision, v *View, p *Packer, j *Job, pinned bool) {
	setJob(d, j, cluster.Running)
	if pinned {
		pin(d, v.Model, p, j.Tasks)
	}
}

// FCFS is static first-come first-served: jobs start in submission order
// when the head of the queue fits, and run to completion on the nodes they
// started on. It reserves peak demands. Pinned fences each started task to
// its first-fit node (otherwise the planner chooses).
type FCFS struct{ Pinned bool }

// Name implements Policy.
func (FCFS) Name() string { return "fcfs" }

// Decide implements Policy.
func (f FCFS) Decide(v *View) (Decision, error) {
	d := Current(v.Model)
	p := NewPacker(v)
	for i := range v.Jobs {
		j := &v.Jobs[i]
		if ph := JobPhase(v.Model, j); ph == Active || ph == Mixed {
			if !keep(v, p, &d, j) && drainRunning(v, j) && j.Preemptible {
				sleep(&d, v.Model, j)
			}
		}
	}
	for _, i := range FIFO(v.Jobs) {
		j := &v.Jobs[i]
		if ph := JobPhase(v.Model, j); ph != Queued && ph != Asleep {
			continue
		}
		if !p.Place(j.Tasks, true) {
			break // the head blocks the queue
		}
		start(&d, v, p, j, f.Pinned)
	}
	return d, nil
}
