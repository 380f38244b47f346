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
// resume cost (moving it must pay), and never before it has done MinRun
// seconds of work in all (the view does not say when a job last started:
// one resumed after that may be suspended again at once).
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
	// PackIdle, with SpreadIdle, puts idle tasks where CPU is least free
	// instead: their memory goes where no waking VM could use a core, and
	// the nodes with free cores keep memory for the VMs that wake up.
	PackIdle bool
	// Contend treats CPU as a soft resource for running jobs: a job whose
	// VMs wake up where cores are short is not suspended for that alone;
	// its computing VMs move to nodes with a free core (idle VMs are moved
	// out of the way when their memory blocks the core) and, when no core
	// is left, share the node's cores.
	Contend bool
	// Shed, with Contend, bounds that sharing: while the cluster's CPU
	// overload that no migration removes exceeds Tolerance cores, the
	// running job with the most remaining work among those computing on
	// an overloaded node is suspended, or stopped (see Restart), if the
	// cost rules allow it.
	Shed      bool
	Tolerance int64
	// ShedWidest, with Shed, evicts the job using the most of the soft
	// resource on the cluster first (one eviction relieves the most),
	// ties to the one with the least work done, instead of the one with
	// the most remaining work; ShedMinRun (seconds; 0: none) replaces
	// MinRun for it: a job found too wide just after its start goes
	// before it slows the others down.
	ShedWidest bool
	ShedMinRun int64
	// AdmitByMemory, when the view marks the CPU soft, places a job that
	// never ran by its hard resources only: what it will use is not
	// known before it runs (a peak reservation would admit two NGB vjobs
	// where memory holds five). Its VMs are charged at their peak all the
	// same and spread where CPU is most free; an overload it brings once
	// it runs is met like any other (migration, sharing, shedding). Among
	// idle jobs of equal expansion factor, the smaller memory footprint
	// goes first.
	AdmitByMemory bool
	// ShortestFirst, with AdmitByMemory and only where the view marks the
	// CPU time-shared, orders idle jobs of equal expansion factor and
	// footprint by their remaining estimate, shortest first (SPT: the
	// order that minimises the sum of completion times when the jobs
	// compete for the same room). In the VTDC model it keeps the shorter
	// of two equally wide jobs running and sheds the longer, and starts
	// the shorter of the large vjobs in the first wave.
	ShortestFirst bool
	// Anticipate, with Contend and only where the view marks the CPU
	// time-shared, counts the CPU of a running job whose remaining
	// estimate is within a (local) resume of a sleeping job (or the boot
	// of a job stopped by Restart) as free already: the sleeping job's
	// resume then ends about when that job ends instead of starting then
	// (its VMs compute only once resumed). The decision asks to be
	// rechecked when the next running job enters that window
	// (Decision.Recheck).
	Anticipate bool
	// Prepare (seconds; 0: off), with Anticipate, makes the memory room
	// for an anticipated resume before it is due: while a running job's
	// remaining estimate is within Prepare and a job sleeps (or was
	// stopped by Restart), the sleeping job's tasks are placed (not
	// started) counting that job's CPU as free already, and where one
	// fits nowhere, idle tasks are moved off the
	// node with the most CPU free to nodes with none free. The resume that
	// Anticipate starts a resume before the other job's end then finds
	// the memory it needs; without the room the memory came free only at
	// that end (the nodes with CPU about to free hold the ending job's own
	// memory), so the resume started then. It acts at the decisions that
	// events bring within the window (it asks for no recheck).
	Prepare int64
	// Gather, with Contend and only where the view marks the CPU
	// time-shared, uses the moments a running migratable job of three
	// tasks or more computes on none of its tasks (between two steps,
	// every VM waiting for data) to move its tasks that sit on a node with
	// no core free, if the job's remaining estimate repays Repay times the
	// migration, to a node with a core free, the one holding most of its
	// job's tasks first, then the one with most CPU free. When they wake,
	// they compute without a move: the move of an idle task costs its job
	// a downtime (parallel moves share it), the move of a waking one also
	// costs every job computing on its node the sharing of a core while
	// its memory crosses.
	Gather bool
	// Restart evicts a job by stopping it (its tasks shut down, booted
	// again when it runs next, its work done lost) instead of suspending
	// it when, by the duration model, that costs less: shutdown + boot +
	// the work done < suspend + resume (each the longest of its tasks').
	// A job shed just after its boot has done no work: in the VTDC model
	// stopping its 512 MiB VMs takes 5 s and booting them again 15 s
	// anywhere, against a 13 s suspend and a 13 s resume at home (18 s
	// elsewhere). A stopped job waits like a sleeping one: placed by the
	// demand it was seen using (not admitted blind like a job that never
	// ran), and Anticipate and Prepare treat its boot as a resume. Only
	// where the view reports progress (View.ProgressKnown).
	Restart bool
}

// Ferry is ferry's own policy: cost-aware selective suspension, packing by
// observed demand with idle VMs packed where CPU is busy (the nodes with
// free cores keep memory for the VMs that wake up), and CPU shortages of
// running jobs met by migration, then by sharing up to one core of
// overload, and only beyond that by suspending the widest job (stopping
// it instead when a restart costs less, as for a job that has done no
// work yet). Where CPU
// is time-shared, a job that never ran is admitted by memory (its CPU use
// is not known before it runs), smaller footprint first, then shorter
// remaining estimate, among jobs of equal expansion factor.
func Ferry() Selective {
	return Selective{Label: "ferry", Factor: 2, CostAware: true, Observe: true, Pinned: true,
		SpreadIdle: true, PackIdle: true, Contend: true, Shed: true, Tolerance: 1,
		ShedWidest: true, AdmitByMemory: true, ShortestFirst: true, Anticipate: true, Prepare: 40, Gather: true, Restart: true}
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

// Decide implements Policy: running tasks are charged where they are,
// running jobs that no longer fit are evicted, CPU contention is met by
// gathering, relief and shedding, room is made ahead of a return, and idle
// jobs are admitted by decreasing expansion factor, suspending (or
// stopping) running jobs for them when allowed.
func (s Selective) Decide(v *View) (Decision, error) {
	c := s.begin(v)
	c.chargeRunning()
	var lead int64 // the anticipation's lead (0: none)
	if c.soft >= 0 && s.Anticipate && v.Soft[c.soft] {
		c.d.Recheck, lead = anticipate(v, c.p, c.phase, c.soft)
	}
	c.split()
	c.order()
	c.contend()
	if s.Prepare > 0 && lead > 0 {
		c.prepare(lead)
	}
	c.admit()
	if c.soft >= 0 {
		pinMoved(&c.d, c.p, v, c.running)
	}
	return c.d, nil
}

// turn is one decision's working state.
type turn struct {
	s       Selective
	v       *View
	m       *cluster.Model
	p       *Packer
	d       Decision
	phase   []Phase
	unknown []bool // tasks of jobs that never ran (nil: none, or not admitting by memory)
	xf      []float64
	// running: jobs kept running, by increasing expansion factor; idle:
	// jobs waiting (queued, asleep, stopped), in admission order.
	running, idle []int
	evicted       []bool // jobs evicted by this decision
	soft          int    // the CPU's index where Contend, else -1
	factor, repay float64
	minRun        int64
}

// begin fills in the defaults and sets up the packer.
func (s Selective) begin(v *View) *turn {
	c := &turn{s: s, v: v, m: v.Model, factor: s.Factor, repay: s.Repay, minRun: s.MinRun, soft: -1}
	if c.factor <= 0 {
		c.factor = 2
	}
	if c.repay <= 0 {
		c.repay = 4
	}
	if c.minRun <= 0 {
		c.minRun = 60
	}
	m := v.Model
	c.phase = make([]Phase, len(v.Jobs))
	for i := range v.Jobs {
		c.phase[i] = JobPhase(m, &v.Jobs[i])
	}
	if s.AdmitByMemory && s.Observe {
		c.unknown = unknownTasks(v, c.phase)
	}
	c.d = Current(m)
	c.p = NewPacker(v)
	if c.unknown != nil {
		c.p.Unknown, c.p.UnknownRes = c.unknown, m.Resource("cpu")
	}
	if s.SpreadIdle {
		c.p.SpreadIdle = m.Resource("cpu")
		c.p.PackIdle = s.PackIdle
	}
	c.xf = make([]float64, len(v.Jobs))
	c.evicted = make([]bool, len(v.Jobs))
	if s.Contend {
		c.soft = m.Resource("cpu")
	}
	return c
}

// chargeRunning charges every running task where it is, letting the soft
// resource go over (with Contend): a waking VM's memory is already there
// and no one else may take it.
func (c *turn) chargeRunning() {
	if c.soft < 0 {
		return
	}
	for i := range c.v.Jobs {
		if ph := c.phase[i]; ph != Active && ph != Mixed {
			continue
		}
		for _, t := range c.v.Jobs[i].Tasks {
			if c.m.Tasks[t].State == cluster.Running {
				c.p.KeepOver(t, c.soft)
			}
		}
	}
}

// split computes every job's expansion factor and sorts the jobs into
// running and idle; a running job that no longer fits where it is and
// cannot move is evicted if preemptible.
func (c *turn) split() {
	v := c.v
	for i := range v.Jobs {
		j := &v.Jobs[i]
		c.xf[i] = ExpansionFactor(v.Now, j)
		switch c.phase[i] {
		case Active, Mixed:
			if c.soft >= 0 && c.s.charged(c.p, j) {
				c.running = append(c.running, i)
				continue
			}
			if !keep(v, c.p, &c.d, j) && j.Preemptible {
				c.s.evict(&c.d, v, j)
				c.evicted[i] = true
				continue
			}
			c.running = append(c.running, i)
		default:
			c.idle = append(c.idle, i)
		}
	}
}

// order sorts idle jobs by decreasing expansion factor (admitting by
// memory: then smaller footprint, then, with ShortestFirst, shorter
// remaining estimate), then FIFO; running jobs by increasing expansion
// factor, then latest first (the first victims).
func (c *turn) order() {
	v, m, xf := c.v, c.m, c.xf
	rank := make([]int, len(v.Jobs)) // FIFO rank
	for r, i := range FIFO(v.Jobs) {
		rank[i] = r
	}
	idle, running := c.idle, c.running
	var footprint []int64
	if c.unknown != nil {
		// Admitting by memory: among equals, the smaller footprint first,
		// so memory holds as many jobs as it can (one found too wide once
		// it runs is shed, having cost a suspension of a job that did
		// nothing yet).
		footprint = make([]int64, len(v.Jobs))
		if mem := m.Resource("memory"); mem >= 0 {
			for _, i := range idle {
				for _, t := range v.Jobs[i].Tasks {
					footprint[i] += m.Tasks[t].Demand[mem]
				}
			}
		}
	}
	sort.SliceStable(idle, func(a, b int) bool {
		if xf[idle[a]] != xf[idle[b]] {
			return xf[idle[a]] > xf[idle[b]]
		}
		if footprint != nil && footprint[idle[a]] != footprint[idle[b]] {
			return footprint[idle[a]] < footprint[idle[b]]
		}
		if footprint != nil && c.s.ShortestFirst && v.Jobs[idle[a]].Walltime != v.Jobs[idle[b]].Walltime {
			return v.Jobs[idle[a]].Walltime < v.Jobs[idle[b]].Walltime
		}
		return rank[idle[a]] < rank[idle[b]]
	})
	sort.SliceStable(running, func(a, b int) bool {
		if xf[running[a]] != xf[running[b]] {
			return xf[running[a]] < xf[running[b]]
		}
		return rank[running[a]] > rank[running[b]]
	})
}

// contend meets the soft resource's overload of running jobs (with
// Contend): gathering, relief by migration, then shedding.
func (c *turn) contend() {
	if c.soft < 0 {
		return
	}
	if c.s.Gather && c.v.Soft[c.soft] {
		gather(c.v, c.p, c.running, c.soft, c.repay)
	}
	c.relieve()
	if c.s.Shed {
		c.shed()
	}
}

// admit starts idle jobs in order wherever they fit, evicting running
// jobs for one that does not when its expansion factor is Factor times
// theirs (and, with CostAware, the eviction repays).
func (c *turn) admit() {
	victim := make([]bool, len(c.v.Jobs))
	for _, i := range c.idle {
		j := &c.v.Jobs[i]
		if c.p.Place(j.Tasks, true) || c.preemptFor(i, victim) {
			start(&c.d, c.v, c.p, j, c.s.Pinned)
		}
	}
}

// preemptFor releases running jobs, lowest expansion factor first, until
// idle job i fits; if it does, they are evicted (marked in victim) and it
// reports true; if not, every released task is put back.
func (c *turn) preemptFor(i int, victim []bool) bool {
	s, v, p := c.s, c.v, c.p
	j := &v.Jobs[i]
	var released []int
	var was map[int]int // where the released tasks were
	for _, r := range c.running {
		rj := &v.Jobs[r]
		if victim[r] || !rj.Preemptible || c.xf[i] < c.factor*c.xf[r] {
			continue
		}
		if s.CostAware && !s.worthSuspending(v, rj, c.repay, c.minRun) {
			continue
		}
		if was == nil {
			was = map[int]int{}
		}
		for _, t := range rj.Tasks {
			was[t] = p.Placement[t]
			p.Release(t)
		}
		released = append(released, r)
		if p.Place(j.Tasks, true) {
			for _, r := range released {
				victim[r] = true
				s.evict(&c.d, v, &v.Jobs[r])
			}
			return true
		}
	}
	for _, r := range released {
		for _, t := range v.Jobs[r].Tasks {
			if n := was[t]; n >= 0 {
				p.put(t, n, 1)
				p.Placement[t] = n
			}
		}
	}
	return false
}

// anticipate gives back the soft resource (charged where the tasks run)
// of the running jobs whose remaining estimate is at most the longest
// return of a job waiting to run again (a sleeping task's local resume, a
// stopped one's boot: the lead), and returns when the next running job
// enters that window (0: none) and the lead (0: no job waits to return).
func anticipate(v *View, p *Packer, phase []Phase, soft int) (int64, int64) {
	var lead int64
	for i := range v.Jobs {
		j := &v.Jobs[i]
		if !returning(phase[i], j) || v.Durations == nil {
			continue
		}
		for _, t := range j.Tasks {
			lead = max(lead, returnTime(v, phase[i], t))
		}
	}
	if lead <= 0 {
		return 0, 0
	}
	var next int64
	for i := range v.Jobs {
		j := &v.Jobs[i]
		if phase[i] != Active || j.Walltime <= 0 {
			continue
		}
		if j.Walltime > lead {
			if at := v.Now + j.Walltime - lead; next == 0 || at < next {
				next = at
			}
			continue
		}
		lendJob(p, j, soft, 1)
	}
	return next, lead
}

// returning: the job ran and waits to run again, asleep or stopped (see
// Selective.Restart).
func returning(ph Phase, j *Job) bool {
	return ph == Asleep || ph == Queued && j.Ran
}

// returnTime is how long task t of a returning job takes to run again
// where it is: a local resume when it sleeps, a boot when it was stopped.
func returnTime(v *View, ph Phase, t int) int64 {
	n := v.Model.Tasks[t].Node
	if ph == Asleep {
		return v.Durations.Duration(v.Model, cluster.Resume, t, n, n)
	}
	return v.Durations.Duration(v.Model, cluster.Boot, t, cluster.NoNode, n)
}

// evict takes a running job off its nodes: suspended, or, with Restart,
// stopped when that costs less (see Selective.Restart). Only a job whose
// tasks all run is stopped: a stop loses the work of the whole job.
func (s Selective) evict(d *Decision, v *View, j *Job) {
	if !s.Restart || JobPhase(v.Model, j) != Active || !restartCheaper(v, j) {
		sleep(d, v.Model, j)
		return
	}
	for _, t := range j.Tasks {
		if v.Model.Tasks[t].State == cluster.Running {
			d.Want[t] = cluster.Ready
		}
	}
}

// restartCheaper: stopping job j and booting it again, redoing the work
// it has done, costs less than suspending and resuming it at home, by the
// view's duration model (each the longest of its tasks'). Only when the
// view reports the jobs' progress (View.ProgressKnown): a view that does
// not (the controller's: Done 0 means unknown there) never stops a job.
func restartCheaper(v *View, j *Job) bool {
	if v.Durations == nil || !v.ProgressKnown {
		return false
	}
	m := v.Model
	var sr, sb int64
	for _, t := range j.Tasks {
		n := m.Tasks[t].Node
		sr = max(sr, v.Durations.Duration(m, cluster.Suspend, t, n, n)+v.Durations.Duration(m, cluster.Resume, t, n, n))
		sb = max(sb, v.Durations.Duration(m, cluster.Shutdown, t, n, cluster.NoNode)+v.Durations.Duration(m, cluster.Boot, t, cluster.NoNode, n))
	}
	return sb+j.Done < sr
}

// lendJob lends (sign 1) the soft resource of job j's placed tasks to the
// nodes they are placed on, or takes it back (sign -1).
func lendJob(p *Packer, j *Job, soft int, sign int64) {
	for _, t := range j.Tasks {
		if n, d := p.Placement[t], p.m.Tasks[t].Demand[soft]; n >= 0 && d > 0 {
			p.lend(n, soft, sign*d)
		}
	}
}

// unknownTasks marks the tasks of the jobs that never ran (never started,
// no work done, not stopped after running) when the view marks the CPU
// time-shared, or returns nil: their CPU use is not known until they run.
func unknownTasks(v *View, phase []Phase) []bool {
	cpu := v.Model.Resource("cpu")
	if cpu < 0 || !v.Soft[cpu] {
		return nil
	}
	var u []bool
	for i := range v.Jobs {
		j := &v.Jobs[i]
		if j.Done > 0 || j.Ran || phase[i] != Queued {
			continue
		}
		if u == nil {
			u = make([]bool, len(v.Model.Tasks))
		}
		for _, t := range j.Tasks {
			u[t] = true
		}
	}
	return u
}

// worthSuspending: the job's remaining estimate repays its switch cost
// Repay times over, and it has done at least MinRun seconds of work in all
// (not since its last start, which the view does not give).
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

// charged: every task of the job was kept in place by the first pass.
func (s Selective) charged(p *Packer, j *Job) bool {
	for _, t := range j.Tasks {
		if p.Placement[t] < 0 {
			for _, u := range j.Tasks {
				p.Release(u)
			}
			return false
		}
	}
	return true
}

// relieve moves computing tasks of the running jobs off nodes whose soft
// resource is over capacity to nodes with room (the planner live-migrates
// them; pinMoved fences them), smallest first, making room by moving idle
// tasks when needed; what cannot move shares the node (contention).
func (c *turn) relieve() {
	v, p, m, soft := c.v, c.p, c.m, c.soft
	var cand []int
	for _, i := range c.running {
		j := &v.Jobs[i]
		if !j.Migratable {
			continue
		}
		for _, t := range j.Tasks {
			if n := p.Placement[t]; n >= 0 && p.free[n][soft] < 0 && m.Tasks[t].Demand[soft] > 0 {
				cand = append(cand, t)
			}
		}
	}
	sort.SliceStable(cand, func(a, b int) bool {
		return lessDemand(m.Tasks[cand[a]].Demand, m.Tasks[cand[b]].Demand, soft)
	})
	for _, t := range cand {
		n := p.Placement[t]
		if p.free[n][soft] >= 0 {
			continue
		}
		p.Release(t)
		k := p.where(t, soft, true, n)
		if k < 0 {
			k = makeRoom(p, t, n, soft)
		}
		if k < 0 {
			k = n
		}
		p.put(t, k, 1)
		p.Placement[t] = k
	}
}

// gather: see Selective.Gather.
func gather(v *View, p *Packer, running []int, soft int, repay float64) {
	m := v.Model
	for _, i := range running {
		j := &v.Jobs[i]
		if !j.Migratable || len(j.Tasks) < 3 {
			continue
		}
		var width int64
		for _, t := range j.Tasks {
			width += m.Tasks[t].Demand[soft]
		}
		if width > 0 {
			continue
		}
		here := map[int]int{} // the job's tasks per node
		for _, t := range j.Tasks {
			if n := p.Placement[t]; n >= 0 {
				here[n]++
			}
		}
		for _, t := range j.Tasks {
			n := p.Placement[t]
			if n < 0 || m.Tasks[t].Demand[soft] != 0 || p.free[n][soft] >= 1 {
				continue
			}
			p.Release(t)
			k := cluster.NoNode
			for c := range p.free {
				if c == n || p.drain[c] || p.free[c][soft] < 1 || !p.fits(t, c) {
					continue
				}
				if k < 0 || here[c] > here[k] || here[c] == here[k] && p.free[c][soft] > p.free[k][soft] {
					k = c
				}
			}
			if k >= 0 && v.Durations != nil && float64(j.Walltime) < repay*float64(v.Durations.Duration(m, cluster.Migrate, t, n, k)) {
				k = cluster.NoNode
			}
			if k < 0 {
				k = n
			}
			p.put(t, k, 1)
			p.Placement[t] = k
			here[n]--
			here[k]++
		}
	}
}

// lessDemand orders demands by every resource but skip, smallest first.
func lessDemand(a, b []int64, skip int) bool {
	for r := range a {
		if r != skip && a[r] != b[r] {
			return a[r] < b[r]
		}
	}
	return false
}

// move records a task's placement before makeRoom moved it.
type move struct{ task, from int }

// makeRoom finds a node other than from with the soft resource free for
// task t whose other resources are held by idle tasks (no soft demand now)
// and moves those idle tasks to nodes where the soft resource is least
// free, until t fits; it returns the node (the moves stay made), or -1
// with nothing changed. An idle task never goes to from: the room t leaves
// there appears only once t has moved, which waits for the idle task to
// leave; the planner could only break that cycle by suspending one of them
// (the whole job stops for a write and a read of its memory).
func makeRoom(p *Packer, t, from, soft int) int {
	need := p.m.Tasks[t].Demand[soft]
	for k := range p.free {
		if k == from || p.free[k][soft] < need || p.drain[k] {
			continue
		}
		var log []move
		if clearFor(p, t, k, soft, false, &log, k, from) {
			return k
		}
		undo(p, &log, 0)
	}
	return cluster.NoNode
}

// clearFor moves idle running tasks off node k, each to the node where the
// soft resource is least free (with busy, only to one where none of it is
// free), never to a node in skip, until t fits on k. It reports whether t
// fits; the moves are logged either way.
func clearFor(p *Packer, t, k, soft int, busy bool, log *[]move, skip ...int) bool {
	m := p.m
	for u := range m.Tasks {
		if p.fits(t, k) {
			break
		}
		// Only idle running tasks still on their own node: a task
		// moved already in this decision keeps its new place.
		if p.Placement[u] != k || m.Tasks[u].Node != k || m.Tasks[u].Demand[soft] != 0 || m.Tasks[u].State != cluster.Running || u == t {
			continue
		}
		p.Release(u)
		best := p.where(u, soft, false, skip...)
		if best >= 0 && busy && p.free[best][soft] > 0 {
			best = cluster.NoNode
		}
		if best < 0 {
			p.put(u, k, 1)
			p.Placement[u] = k
			break
		}
		p.put(u, best, 1)
		p.Placement[u] = best
		*log = append(*log, move{u, k})
	}
	return p.fits(t, k)
}

// prepare: see Selective.Prepare. It places the first sleeping (or
// stopped) job in idle order with the soft resource of the running jobs
// whose remaining estimate is within Prepare counted as free (those within
// lead are so already, by anticipate), keeps the moves of idle tasks that
// made it fit and releases the job's own tasks (they stay where they
// are); if it fits nowhere even so, nothing changes.
func (c *turn) prepare(lead int64) {
	v, p, m, phase, soft, window := c.v, c.p, c.m, c.phase, c.soft, c.s.Prepare
	var sj *Job
	for _, i := range c.idle {
		if returning(phase[i], &v.Jobs[i]) {
			sj = &v.Jobs[i]
			break
		}
	}
	if sj == nil {
		return
	}
	var back []*Job // the jobs whose soft demand is counted as free here
	soon := false   // a job ends within window
	for _, i := range c.running {
		j := &v.Jobs[i]
		if phase[i] != Active || j.Walltime <= 0 || j.Walltime > window {
			continue
		}
		soon = true
		if j.Walltime <= lead {
			continue
		}
		lendJob(p, j, soft, 1)
		back = append(back, j)
	}
	if !soon {
		return
	}
	var log []move
	var placed []int
	for _, t := range sj.Tasks {
		k := p.where(t, soft, true)
		if k < 0 {
			// make room on the node with the most of it free
			for n := range p.free {
				if !p.drain[n] && p.free[n][soft] >= m.Tasks[t].Demand[soft] && (k < 0 || p.free[n][soft] > p.free[k][soft]) {
					k = n
				}
			}
			if k >= 0 && !clearFor(p, t, k, soft, true, &log, k) {
				k = cluster.NoNode
			}
		}
		if k < 0 {
			undo(p, &log, 0)
			break
		}
		p.put(t, k, 1)
		p.Placement[t] = k
		placed = append(placed, t)
	}
	for _, t := range placed {
		p.Release(t)
	}
	for _, j := range back {
		lendJob(p, j, soft, -1)
	}
}

// undo reverts the moves logged after mark.
func undo(p *Packer, log *[]move, mark int) {
	for i := len(*log) - 1; i >= mark; i-- {
		mv := (*log)[i]
		p.Release(mv.task)
		p.put(mv.task, mv.from, 1)
		p.Placement[mv.task] = mv.from
	}
	*log = (*log)[:mark]
}

// pinMoved fences every task of the running jobs that the packer moved
// off its node (once: keep may have fenced some already).
func pinMoved(d *Decision, p *Packer, v *View, running []int) {
	fenced := map[int]bool{}
	for _, c := range d.Constraints {
		if f, ok := c.(cluster.Fence); ok && len(f.Tasks) == 1 {
			fenced[f.Tasks[0]] = true
		}
	}
	for _, i := range running {
		for _, t := range v.Jobs[i].Tasks {
			n := p.Placement[t]
			if n >= 0 && !fenced[t] && v.Model.Tasks[t].State == cluster.Running && v.Model.Tasks[t].Node != n {
				d.Constraints = append(d.Constraints, cluster.Fence{Tasks: []int{t}, Nodes: []int{n}})
			}
		}
	}
}

func overload(p *Packer, soft int) int64 {
	var o int64
	for n := range p.free {
		o += max(-p.free[n][soft], 0)
	}
	return o
}

// shed evicts running jobs (see evict) while the soft overload left after
// relieve exceeds Tolerance, among those with a computing task on an
// overloaded node: the one with the most remaining work first, or with
// ShedWidest the one using the most of the soft resource; c.running keeps
// the others.
func (c *turn) shed() {
	s, v, p, m, soft := c.s, c.v, c.p, c.m, c.soft
	minRun := c.minRun
	if s.ShedWidest {
		minRun = s.ShedMinRun
	}
	for overload(p, soft) > s.Tolerance {
		best := -1
		var bw int64
		for _, i := range c.running {
			j := &v.Jobs[i]
			if c.evicted[i] || !j.Preemptible || s.CostAware && !s.worthSuspending(v, j, c.repay, minRun) {
				continue
			}
			hot := false
			var width int64
			for _, t := range j.Tasks {
				width += m.Tasks[t].Demand[soft]
				if n := p.Placement[t]; n >= 0 && p.free[n][soft] < 0 && m.Tasks[t].Demand[soft] > 0 {
					hot = true
				}
			}
			switch {
			case !hot:
			case s.ShedWidest:
				if best < 0 || width > bw || width == bw && j.Done < v.Jobs[best].Done {
					best, bw = i, width
				}
			case best < 0 || j.Walltime > v.Jobs[best].Walltime:
				best = i
			}
		}
		if best < 0 {
			break
		}
		j := &v.Jobs[best]
		for _, t := range j.Tasks {
			p.Release(t)
		}
		s.evict(&c.d, v, j)
		c.evicted[best] = true
		c.relieve()
	}
	k := 0
	for _, i := range c.running {
		if !c.evicted[i] {
			c.running[k] = i
			k++
		}
	}
	c.running = c.running[:k]
}
