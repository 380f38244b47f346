package policy

import (
	"slices"
	"sort"

	"github.com/ferrycluster/ferry/cluster"
)

// Phase is where a job is in its life cycle, from its tasks' states.
type Phase uint8

const (
	// Queued: every task ready (never started, or stopped).
	Queued Phase = iota
	// Active: every task running.
	Active
	// Asleep: every task sleeping.
	Asleep
	// Mixed: tasks in different states (an interrupted switch).
	Mixed
)

// JobPhase classifies a job from its tasks' states.
func JobPhase(m *cluster.Model, j *Job) Phase {
	if len(j.Tasks) == 0 {
		return Queued
	}
	s := m.Tasks[j.Tasks[0]].State
	for _, t := range j.Tasks[1:] {
		if m.Tasks[t].State != s {
			return Mixed
		}
	}
	switch s {
	case cluster.Running:
		return Active
	case cluster.Sleeping:
		return Asleep
	}
	return Queued
}

// Packer tracks free capacity per node and places jobs first-fit
// decreasing. Draining nodes offer no capacity.
type Packer struct {
	m     *cluster.Model
	free  [][]int64
	drain map[int]bool
	// slots caches, per demand (up to maxSlotKeys of them), how many
	// tasks of that demand fit on each node and in all; put updates the
	// one node it changes.
	slots []slotCount
	// Placement: chosen node per task index of the model (-1 none).
	Placement []int
	order     []int
	// uniform's answer for the last tasks slice it was asked about.
	uniFirst *int
	uniLen   int
	uni      bool
	// SpreadIdle, a resource index or -1, places tasks that use none of it
	// now on the node with the most of it free (worst fit) instead of
	// first fit: a waiting VM then finds CPU when it wakes up.
	SpreadIdle int
	// PackIdle, with SpreadIdle, puts idle tasks where resource SpreadIdle
	// is least free instead (best fit): their other resources are taken
	// where no task could use resource SpreadIdle anyway.
	PackIdle bool
	// Unknown marks tasks (indices) whose use of resource UnknownRes is
	// not known yet: they are placed without checking it (charged at
	// their demand all the same) and spread where it is most free.
	Unknown    []bool
	UnknownRes int
}

// NewPacker starts with every online, non-draining node's whole capacity.
func NewPacker(v *View) *Packer {
	p := &Packer{m: v.Model, drain: v.Draining, SpreadIdle: -1}
	nr := len(v.Model.Resources)
	p.free = make([][]int64, len(v.Model.Nodes))
	flat := make([]int64, len(v.Model.Nodes)*nr)
	for i, n := range v.Model.Nodes {
		p.free[i] = flat[i*nr : (i+1)*nr : (i+1)*nr]
		if n.State == cluster.NodeOnline && !v.Draining[i] {
			copy(p.free[i], n.Capacity)
		}
	}
	p.Placement = make([]int, len(v.Model.Tasks))
	for i := range p.Placement {
		p.Placement[i] = cluster.NoNode
	}
	return p
}

// Free is the remaining capacity of node n.
func (p *Packer) Free(n int) []int64 { return p.free[n] }

func (p *Packer) fits(t, n int) bool {
	f := p.free[n]
	for r, d := range p.m.Tasks[t].Demand {
		if d > f[r] && (p.Unknown == nil || r != p.UnknownRes || !p.Unknown[t]) {
			return false
		}
	}
	return true
}

func (p *Packer) put(t, n int, sign int64) {
	f := p.free[n]
	for r, d := range p.m.Tasks[t].Demand {
		f[r] -= sign * d
	}
	p.recount(n)
}

// lend adds x of resource r to node n's free capacity (x < 0 takes it
// back) without a task: a policy counting a running task's share as free
// ahead of its end. The Slots cache follows.
func (p *Packer) lend(n, r int, x int64) {
	p.free[n][r] += x
	p.recount(n)
}

// recount updates the Slots cache after node n's free capacity changed.
func (p *Packer) recount(n int) {
	for i := range p.slots {
		c := &p.slots[i]
		k := nodeSlots(p.free[n], c.demand[:c.n])
		c.total += k - c.per[n]
		c.per[n] = k
	}
}

// slotCount is a cached Slots answer for one demand.
type slotCount struct {
	demand [4]int64
	n      int
	total  int
	per    []int
}

// maxSlotKeys bounds the Slots cache: each entry costs every put a
// recount of one node.
const maxSlotKeys = 4

// nodeSlots is how many tasks of demand d fit in free capacity f.
func nodeSlots(f, d []int64) int {
	k := -1
	for r, x := range d {
		if x <= 0 {
			continue
		}
		c := int(max(f[r], 0) / x)
		if k < 0 || c < k {
			k = c
		}
	}
	if k < 0 {
		k = 1 << 20
	}
	return k
}

// Keep charges a task where it runs now, even on a draining node or over
// capacity (it is already there); it returns false when the node lacks
// room, in which case nothing is charged.
func (p *Packer) Keep(t int) bool {
	n := p.m.Tasks[t].Node
	if n < 0 || p.drain[n] || !p.fits(t, n) {
		return false
	}
	p.put(t, n, 1)
	p.Placement[t] = n
	return true
}

// KeepOver charges a task where it runs now like Keep, but lets resource
// soft go over capacity (contention instead of a move): only the other
// resources must fit. It returns false on a draining node or when a
// hard resource lacks room.
func (p *Packer) KeepOver(t, soft int) bool {
	n := p.m.Tasks[t].Node
	if n < 0 || p.drain[n] {
		return false
	}
	f := p.free[n]
	for r, d := range p.m.Tasks[t].Demand {
		if r != soft && d > f[r] {
			return false
		}
	}
	p.put(t, n, 1)
	p.Placement[t] = n
	return true
}

// Release undoes the placement of a task.
func (p *Packer) Release(t int) {
	if n := p.Placement[t]; n >= 0 {
		p.put(t, n, -1)
		p.Placement[t] = cluster.NoNode
	}
}

// Slots is how many tasks of demand d fit on the free capacity now (an
// upper bound on what Place can do for a job of identical tasks).
func (p *Packer) Slots(d []int64) int {
	if len(d) > len(slotCount{}.demand) {
		total := 0
		for _, f := range p.free {
			total += nodeSlots(f, d)
		}
		return total
	}
	for i := range p.slots {
		if c := &p.slots[i]; c.n == len(d) && c.demand == demandKey(d) {
			return c.total
		}
	}
	c := slotCount{demand: demandKey(d), n: len(d), per: make([]int, len(p.free))}
	for n, f := range p.free {
		c.per[n] = nodeSlots(f, d)
		c.total += c.per[n]
	}
	if len(p.slots) == maxSlotKeys {
		p.slots = p.slots[1:]
	}
	p.slots = append(p.slots, c)
	return c.total
}

func demandKey(d []int64) (k [4]int64) {
	copy(k[:], d)
	return k
}

// Place puts every task of the job first-fit decreasing (by demand); with
// preferCurrent the tasks that fit where they are stay there first. On
// failure nothing is charged and it returns false. The tasks must not be
// placed already.
func (p *Packer) Place(tasks []int, preferCurrent bool) bool {
	if len(tasks) == 0 {
		return true
	}
	uni := p.uniform(tasks)
	same := uni && (p.Unknown == nil || !p.Unknown[tasks[0]])
	if same && p.Slots(p.m.Tasks[tasks[0]].Demand) < len(tasks) {
		return false
	}
	p.order = append(p.order[:0], tasks...)
	if !uni {
		sort.SliceStable(p.order, func(a, b int) bool {
			da, db := p.m.Tasks[p.order[a]].Demand, p.m.Tasks[p.order[b]].Demand
			for r := range da {
				if da[r] != db[r] {
					return da[r] > db[r]
				}
			}
			return false
		})
	}
	placed := 0
	cursor := 0
	if preferCurrent {
		// First keep every task that can stay where it is, then place the
		// others: fewer moves than a plain first fit.
		for _, t := range p.order {
			if cur := p.m.Tasks[t].Node; cur >= 0 && !p.drain[cur] && p.fits(t, cur) {
				p.put(t, cur, 1)
				p.Placement[t] = cur
				placed++
			}
		}
	}
	for _, t := range p.order {
		if p.Placement[t] >= 0 {
			continue
		}
		n := cluster.NoNode
		if p.Unknown != nil && p.Unknown[t] {
			n = p.where(t, p.UnknownRes, true)
		} else if r := p.SpreadIdle; r >= 0 && p.m.Tasks[t].Demand[r] == 0 {
			// An idle task goes where resource r is most free (room for
			// when it wakes up), or least free with PackIdle.
			n = p.where(t, r, !p.PackIdle)
		} else {
			// Identical tasks: a node that did not fit the previous one
			// will not fit this one (free capacity only shrinks here).
			k := 0
			if same {
				k = cursor
			}
			for ; k < len(p.free); k++ {
				if p.fits(t, k) {
					n = k
					break
				}
			}
			if same {
				cursor = max(k, 0)
			}
		}
		if n < 0 {
			break
		}
		p.put(t, n, 1)
		p.Placement[t] = n
		placed++
	}
	if placed < len(p.order) {
		for _, t := range p.order {
			p.Release(t)
		}
		return false
	}
	return true
}

// where is the node where task t fits with the most (most) or the least
// of resource r free, the first on ties, skipping the nodes in skip; -1
// when it fits nowhere.
func (p *Packer) where(t, r int, most bool, skip ...int) int {
	n := cluster.NoNode
	for k := range p.free {
		if slices.Contains(skip, k) || !p.fits(t, k) {
			continue
		}
		if n < 0 || most && p.free[k][r] > p.free[n][r] || !most && p.free[k][r] < p.free[n][r] {
			n = k
		}
	}
	return n
}

// uniform: every task has the same demand. The answer for the last slice
// asked about is kept (a policy places the same job again after each
// suspension it tries): neither the model nor a job's task list changes
// while a Packer lives.
func (p *Packer) uniform(tasks []int) bool {
	if len(tasks) == p.uniLen && &tasks[0] == p.uniFirst {
		return p.uni
	}
	d0 := p.m.Tasks[tasks[0]].Demand
	p.uniFirst, p.uniLen, p.uni = &tasks[0], len(tasks), true
	for _, t := range tasks[1:] {
		if d := p.m.Tasks[t].Demand; !slices.Equal(d, d0) {
			p.uni = false
			break
		}
	}
	return p.uni
}

// Current returns the decision that keeps every task in its state.
func Current(m *cluster.Model) Decision {
	want := make([]cluster.TaskState, len(m.Tasks))
	for i, t := range m.Tasks {
		want[i] = t.State
	}
	return Decision{Want: want}
}

// FIFO sorts jobs by submission time, then priority (higher first), then name.
func FIFO(jobs []Job) []int {
	idx := make([]int, len(jobs))
	for i := range idx {
		idx[i] = i
	}
	less := func(a, b int) bool {
		x, y := &jobs[idx[a]], &jobs[idx[b]]
		if x.Submitted != y.Submitted {
			return x.Submitted < y.Submitted
		}
		if x.Priority != y.Priority {
			return x.Priority > y.Priority
		}
		return x.Name < y.Name
	}
	for i := 1; i < len(idx); i++ {
		if less(i, i-1) {
			sort.SliceStable(idx, less)
			break
		}
	}
	return idx
}

// setJob sets the wanted state of every task of a job.
func setJob(d *Decision, j *Job, s cluster.TaskState) {
	for _, t := range j.Tasks {
		d.Want[t] = s
	}
}

// pin fences the tasks whose placement differs from where they are (or
// that are not running) to their chosen node.
func pin(d *Decision, m *cluster.Model, p *Packer, tasks []int) {
	for _, t := range tasks {
		n := p.Placement[t]
		if n < 0 {
			continue
		}
		if m.Tasks[t].State == cluster.Running && m.Tasks[t].Node == n {
			continue
		}
		d.Constraints = append(d.Constraints, cluster.Fence{Tasks: []int{t}, Nodes: []int{n}})
	}
}

// drainRunning handles a running job with tasks on draining nodes that
// must keep running: migratable tasks are banned from the draining nodes
// (the planner moves them); it returns false when the job cannot move
// and must be suspended instead.
func drainRunning(v *View, j *Job) (onDrain bool) {
	for _, t := range j.Tasks {
		if n := v.Model.Tasks[t].Node; n >= 0 && v.Draining[n] {
			return true
		}
	}
	return false
}
