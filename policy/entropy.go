package policy

import "sort"

// Entropy is the sample scheduler of the VTDC'10 paper (seeds/002): a FIFO
// queue gives the priorities (an earlier job always goes first, so no job
// starves); jobs are considered in that order and their VMs assigned to
// nodes first-fit decreasing by their observed demand, preferring the node
// they are on. A job that fits runs (booted, resumed or left in place; its
// tasks that must change node are fenced there and the planner migrates
// them); a running job that no longer fits, because earlier jobs grew, is
// suspended; a waiting job that does not fit waits. The planner turns this
// into suspends, resumes and migrations.
type Entropy struct {
	// SRPT orders the queue by shortest estimated remaining time instead of
	// submission (ties by submission).
	SRPT bool
	// SpreadIdle places idle VMs where CPU is most free (see Packer).
	SpreadIdle bool
}

// Name implements Policy.
func (e Entropy) Name() string {
	if e.SRPT {
		return "entropy-srpt"
	}
	if e.SpreadIdle {
		return "entropy-spread"
	}
	return "entropy"
}

// ObservesDemand implements Observing: Entropy packs by observed usage.
func (Entropy) ObservesDemand() bool { return true }

// Decide implements Policy.
func (e Entropy) Decide(v *View) (Decision, error) {
	d := Current(v.Model)
	p := NewPacker(v)
	if e.SpreadIdle {
		p.SpreadIdle = v.Model.Resource("cpu")
	}
	order := FIFO(v.Jobs)
	if e.SRPT {
		sort.SliceStable(order, func(a, b int) bool { return v.Jobs[order[a]].Walltime < v.Jobs[order[b]].Walltime })
	}
	for _, i := range order {
		j := &v.Jobs[i]
		ph := JobPhase(v.Model, j)
		if p.Place(j.Tasks, true) {
			start(&d, v, p, j, true)
			continue
		}
		if (ph == Active || ph == Mixed) && j.Preemptible {
			sleep(&d, v.Model, j)
		} else if ph == Active || ph == Mixed {
			// Not preemptible: keep it where it is.
			for _, t := range j.Tasks {
				p.Keep(t)
			}
		}
	}
	return d, nil
}

// Consolidate packs by observed demand without preempting: running jobs
// stay where they fit and move (live migration) when their node is
// overloaded or draining, waiting jobs start in submission order whenever
// they fit (no head-of-line blocking), and a running job is suspended only
// when it fits nowhere.
type Consolidate struct{}

// Name implements Policy.
func (Consolidate) Name() string { return "consolidate" }

// ObservesDemand implements Observing.
func (Consolidate) ObservesDemand() bool { return true }

// Decide implements Policy.
func (Consolidate) Decide(v *View) (Decision, error) {
	d := Current(v.Model)
	p := NewPacker(v)
	order := FIFO(v.Jobs)
	for _, i := range order {
		j := &v.Jobs[i]
		if ph := JobPhase(v.Model, j); (ph == Active || ph == Mixed) && !keep(v, p, &d, j) && j.Preemptible {
			sleep(&d, v.Model, j)
		}
	}
	for _, i := range order {
		j := &v.Jobs[i]
		if ph := JobPhase(v.Model, j); ph != Queued && ph != Asleep {
			continue
		}
		if p.Place(j.Tasks, true) {
			start(&d, v, p, j, true)
		}
	}
	return d, nil
}
