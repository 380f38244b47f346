package policy

import (
	"math"
	"sort"
)

// EASY is EASY backfilling (Lifka 1995): jobs start in submission order;
// when the head does not fit, it gets a reservation at the earliest time
// enough running jobs will have ended by their walltime estimates (the
// shadow time), and later jobs may jump ahead if they fit now and either
// end before the shadow time or use only processors the head will not
// need. Jobs run to completion; peak demands are reserved. Slots are
// counted in tasks of the head's demand.
type EASY struct{ Pinned bool }

// Name implements Policy.
func (EASY) Name() string { return "easy" }

// Decide implements Policy.
func (e EASY) Decide(v *View) (Decision, error) {
	d := Current(v.Model)
	p := NewPacker(v)
	var running []int
	for i := range v.Jobs {
		j := &v.Jobs[i]
		if ph := JobPhase(v.Model, j); ph == Active || ph == Mixed {
			if !keep(v, p, &d, j) && drainRunning(v, j) && j.Preemptible {
				sleep(&d, v.Model, j)
				continue
			}
			running = append(running, i)
		}
	}
	order := FIFO(v.Jobs)
	k := 0
	for ; k < len(order); k++ {
		j := &v.Jobs[order[k]]
		if ph := JobPhase(v.Model, j); ph != Queued && ph != Asleep {
			continue
		}
		if !p.Place(j.Tasks, true) {
			break
		}
		start(&d, v, p, j, e.Pinned)
		running = append(running, order[k])
	}
	if k >= len(order) {
		return d, nil
	}
	head := &v.Jobs[order[k]]
	need := len(head.Tasks)
	demand := v.Model.Tasks[head.Tasks[0]].Demand
	avail := p.Slots(demand)
	sort.SliceStable(running, func(a, b int) bool { return v.Jobs[running[a]].Walltime < v.Jobs[running[b]].Walltime })
	shadow, extra := int64(math.MaxInt64), 0
	for _, r := range running {
		avail += len(v.Jobs[r].Tasks)
		if avail >= need {
			shadow = v.Now + v.Jobs[r].Walltime
			extra = avail - need
			break
		}
	}
	for _, i := range order[k+1:] {
		j := &v.Jobs[i]
		if ph := JobPhase(v.Model, j); ph != Queued && ph != Asleep {
			continue
		}
		short := v.Now+j.Walltime <= shadow
		if !short && len(j.Tasks) > extra {
			continue
		}
		if !p.Place(j.Tasks, true) {
			continue
		}
		if !short {
			extra -= len(j.Tasks)
		}
		start(&d, v, p, j, e.Pinned)
	}
	return d, nil
}
