package controller

import (
	"sort"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/policy"
)

// Priority is the controller's default policy: FIFO within a priority,
// higher priorities first, first-fit decreasing, preemption by suspend.
//
// Jobs are taken by priority (higher first), then submission. A job runs
// only whole (Entropy's vjob): its tasks, largest first, are fitted
// first-fit onto the room the jobs before it left — a running task tries
// its own node first, so jobs that fit stay where they are. A job that
// fits runs; a running or sleeping job that does not fit sleeps (it is
// suspended for the higher-priority work, and resumed when room returns); a
// waiting job waits. Draining and down nodes offer no room, so their tasks
// are moved off (live or by checkpoint) when they fit elsewhere. A task
// goes only to nodes View.Eligible allows (a VM to a node whose QEMU takes
// its guest).
//
// The policy package's policies (FCFS, EASY, Entropy, selective
// suspension...) order by submission; this one is the operator's
// "important work first" and is what `ferry server` uses unless --policy
// says otherwise.
type Priority struct{}

// Name implements policy.Policy.
func (Priority) Name() string { return "priority" }

// Decide implements policy.Policy. It is pure.
func (Priority) Decide(v *policy.View) (policy.Decision, error) {
	m := v.Model
	want := make([]cluster.TaskState, len(m.Tasks))
	for i, t := range m.Tasks {
		want[i] = t.State
	}
	free := make([][]int64, len(m.Nodes))
	for i, n := range m.Nodes {
		free[i] = append([]int64(nil), n.Capacity...)
		if n.State != cluster.NodeOnline || v.Draining[i] {
			free[i] = make([]int64, len(n.Capacity))
		}
	}
	jobs := append([]policy.Job(nil), v.Jobs...)
	sort.SliceStable(jobs, func(a, b int) bool {
		if jobs[a].Priority != jobs[b].Priority {
			return jobs[a].Priority > jobs[b].Priority
		}
		if jobs[a].Submitted != jobs[b].Submitted {
			return jobs[a].Submitted < jobs[b].Submitted
		}
		return jobs[a].Name < jobs[b].Name
	})
	fits := func(d, f []int64) bool {
		for r := range d {
			if d[r] > f[r] {
				return false
			}
		}
		return true
	}
	take := func(d, f []int64) {
		for r := range d {
			f[r] -= d[r]
		}
	}
	var total []int64
	for _, n := range m.Nodes {
		for r, c := range n.Capacity {
			if len(total) <= r {
				total = append(total, 0)
			}
			if c > total[r] {
				total[r] = c
			}
		}
	}
	size := func(t int) float64 { // largest share of any resource
		var s float64
		for r, d := range m.Tasks[t].Demand {
			if r < len(total) && total[r] > 0 {
				if x := float64(d) / float64(total[r]); x > s {
					s = x
				}
			}
		}
		return s
	}
	for _, j := range jobs {
		trial := make([][]int64, len(free))
		for i := range free {
			trial[i] = append([]int64(nil), free[i]...)
		}
		tasks := append([]int(nil), j.Tasks...)
		sort.SliceStable(tasks, func(a, b int) bool { return size(tasks[a]) > size(tasks[b]) })
		ok := true
		for _, ti := range tasks {
			t := m.Tasks[ti]
			placed := false
			if t.State == cluster.Running && t.Node >= 0 && fits(t.Demand, trial[t.Node]) {
				take(t.Demand, trial[t.Node])
				placed = true
			}
			for n := 0; !placed && n < len(trial); n++ {
				if fits(t.Demand, trial[n]) && (v.Eligible == nil || v.Eligible(ti, n)) {
					take(t.Demand, trial[n])
					placed = true
				}
			}
			if !placed {
				ok = false
				break
			}
		}
		for _, ti := range j.Tasks {
			switch {
			case ok:
				want[ti] = cluster.Running
			case m.Tasks[ti].State == cluster.Running || m.Tasks[ti].State == cluster.Sleeping:
				want[ti] = cluster.Sleeping
			default:
				want[ti] = cluster.Ready
			}
		}
		if ok {
			free = trial
		}
	}
	return policy.Decision{Want: want}, nil
}
