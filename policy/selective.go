package policy

import (
	"math"
	"sort"

	"github.com/ferrycluster/ferry/cluster"
)

// Selective is selective suspension by expansion factor (Kettimuthu et
// al., 2005) with the cost sense of seeds/004. A job's expansion factor
// is (time it has waited + estimated run time) / estimated run time; it
// grows while the job waits or sleeps. Idle jobs are considered by
// decreasing expansion factor and start whenever they fit (no
// reservation). One that does not fit may suspend running jobs whose
// expansion factor is at most its own divided by Factor, lowest first,
// until it fits. With CostAware, a running job is only suspended when its
// estimated remaining time exceeds Repay times its modelled suspend +
// resume cost (moving it must pay), and never within MinRun seconds of a
// start (no thrashing).
type Selective struct {
	// Label is the policy's name (default "ss").
	Label string
	// Factor is the suspension factor (default 2).
	Factor float64
	// CostAware enables the cost rules above.
	CostAware bool
	// Repay (default 4) and MinRun (seconds, default 60) for CostAware.
	Repay  float64
	MinRun int64
	// Observe packs by observed demand instead of peak.
	Observe bool
	// Pinned fences started tasks to their first-fit node.
	Pinned bool
	// SpreadIdle places tasks that use no CPU now on the node with the
	// most CPU free (see Packer.SpreadIdle).
	SpreadIdle bool
}

// Ferry is ferry's own policy: cost-aware selective suspension, packing by
// observed demand with idle VMs spread where CPU is free.
func Ferry() Selective {
	return Selective{Label: "ferry", Factor: 2, CostAware: true, Observe: true, Pinned: true, SpreadIdle: true}
}

// Name implements Policy.
func (s Selective) Name() string {
	if s.Label == "" {
		return "ss"
	}
	return s.Label
}

// ObservesDemand implements Observing.
func (s Selective) ObservesDemand() bool { return s.Observe }

// ExpansionFactor is (wait + estimate) / estimate, the estimate bounded
// below by 10 s; wait counts the time the job was not progressing.
func ExpansionFactor(now int64, j *Job) float64 {
	est := j.Total
	if est <= 0 {
		est = j.Done + j.Walltime
	}
	e := math.Max(float64(est), 10)
	wait := math.Max(float64(now-j.Submitted-j.Done), 0)
	return (wait + e) / e
}

// Decide implements Policy.
func (s Selective) Decide(v *View) (Decision, error) {
	factor := s.Factor
	if factor <= 0 {
		factor = 2
	}
	repay := s.Repay
	if repay <= 0 {
		repay = 4
	}
	minRun := s.MinRun
	if minRun <= 0 {
		minRun = 60
	}
	m := v.Model
	d := Current(m)
	p := NewPacker(v)
	if s.SpreadIdle {
		p.SpreadIdle = m.Resource("cpu")
	}
	xf := make([]float64, len(v.Jobs))
	var running, idle []int
	justSlept := make([]bool, len(v.Jobs))
	for i := range v.Jobs {
		j := &v.Jobs[i]
		xf[i] = ExpansionFactor(v.Now, j)
		switch JobPhase(m, j) {
		case Active, Mixed:
			if !keep(v, p, &d, j) && j.Preemptible {
				sleep(&d, m, j)
				justSlept[i] = true
				continue
			}
			running = append(running, i)
		default:
			idle = append(idle, i)
		}
	}
	fifo := FIFO(v.Jobs)
	rank := make([]int, len(v.Jobs))
	for r, i := range fifo {
		rank[i] = r
	}
	sort.SliceStable(idle, func(a, b int) bool {
		if xf[idle[a]] != xf[idle[b]] {
			return xf[idle[a]] > xf[idle[b]]
		}
		return rank[idle[a]] < rank[idle[b]]
	})
	sort.SliceStable(running, func(a, b int) bool {
		if xf[running[a]] != xf[running[b]] {
			return xf[running[a]] < xf[running[b]]
		}
		return rank[running[a]] > rank[running[b]]
	})
	victim := make([]bool, len(v.Jobs))
	for _, i := range idle {
		j := &v.Jobs[i]
		if p.Place(j.Tasks, true) {
			start(&d, v, p, j, s.Pinned)
			continue
		}
		var released []int
		ok := false
		for _, r := range running {
			rj := &v.Jobs[r]
			if victim[r] || !rj.Preemptible || xf[i] < factor*xf[r] {
				continue
			}
			if s.CostAware && !s.worthSuspending(v, rj, repay, minRun) {
				continue
			}
			for _, t := range rj.Tasks {
				p.Release(t)
			}
			released = append(released, r)
			if p.Place(j.Tasks, true) {
				ok = true
				break
			}
		}
		if ok {
			for _, r := range released {
				victim[r] = true
				sleep(&d, m, &v.Jobs[r])
			}
			start(&d, v, p, j, s.Pinned)
			continue
		}
		for _, r := range released {
			for _, t := range v.Jobs[r].Tasks {
				p.Keep(t)
			}
		}
	}
	return d, nil
}

// worthSuspending: the job's remaining estimate repays its switch cost
// Repay times over, and it has run at least MinRun since it last started.
func (s Selective) worthSuspending(v *View, j *Job, repay float64, minRun int64) bool {
	var cost int64
	if v.Durations != nil {
		for _, t := range j.Tasks {
			n := v.Model.Tasks[t].Node
			c := v.Durations.Duration(v.Model, cluster.Suspend, t, n, n) + v.Durations.Duration(v.Model, cluster.Resume, t, n, n)
			cost = max(cost, c)
		}
	}
	if float64(j.Walltime) < repay*float64(cost) {
		return false
	}
	return j.Done >= minRun || j.Done == 0 && j.Total == 0
}
