// Package sim is ferry's discrete-event simulator: a virtual clock, a
// workload (sim/workload), the real policy (policy.Policy) and the real
// planner (plan.Solve) in a control loop, and the plans executed with the
// modelled action durations of the workload's duration model. No VM runs.
//
// The loop: events (arrivals, action ends, job completions, demand
// changes, drains, a period while work waits) mark the configuration
// dirty; when no plan is in flight, the policy decides the wanted states,
// the simulator builds the planner's problem (only the tasks whose state
// changes or that a constraint names; the others are folded into the
// nodes' capacities), solves it and schedules the plan's actions. A job's
// work progresses only while all its tasks run; suspended jobs keep their
// progress and pay suspend and resume time; a job with a task shut down
// loses it (it runs again from the start once booted again); a migration
// pays a short downtime at its end. The run is deterministic for a
// workload, policy and seed; Result.Events is its event log.
package sim

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/plan"
	"github.com/ferrycluster/ferry/policy"
	"github.com/ferrycluster/ferry/sim/workload"
)

// ErrStalled is returned when jobs remain but nothing can happen anymore.
var ErrStalled = errors.New("simulation stalled")

// Planner solves a reconfiguration problem; plan.Solve in production.
type Planner func(ctx context.Context, p *plan.Problem, o plan.Options) (*plan.Plan, error)

// Drain makes a node draining from time At on.
type Drain struct {
	At   int64
	Node string
}

// Config is one simulation run.
type Config struct {
	Workload *workload.Workload
	Policy   policy.Policy
	// Planner defaults to plan.Solve.
	Planner Planner
	Seed    int64
	// Period between decisions while jobs wait and nothing else happens
	// (seconds; default 300).
	Period int64
	// Downtime of a live migration, paid at its end (seconds; default 1).
	Downtime int64
	// PlannerBudget bounds each planner call in virtual planner time: the
	// planner's clock advances 1 ms per reading, so the cut is
	// deterministic (default 2 s, i.e. 2000 readings).
	PlannerBudget time.Duration
	// Window is how many never-started jobs (oldest first) the policy
	// sees besides the started ones, like Slurm's bf_max_job_test
	// (default 200).
	Window int
	// Full gives the planner the whole configuration instead of only the
	// tasks that change.
	Full   bool
	Drains []Drain
	// MaxTime stops the run (seconds of virtual time; 0: none).
	MaxTime int64
}

type jobRun struct {
	spec      *workload.Job
	firstTask int32
	arrived   bool
	done      bool
	progress  float64
	rate      float64
	since     int64
	seg       int // current segment (0 when no segments)
	gen       int
	pauseTo   int64 // migration downtime: no progress before
	started   int64
	end       int64
	running   bool // progressing (logged run/stop)
	runTime   int64
	suspends  int
	resumes   int
	migrates  int
	lostTime  int64
	// startedTasks: some task left the ready state.
	startedTasks bool
	// restarted: a task was shut down after the job ran; its work is lost
	// and it starts from its first segment once its tasks run again (until
	// a task is booted the policy sees the demand its tasks last used).
	restarted bool
}

type taskRun struct {
	job     int32
	k       int32
	state   cluster.TaskState
	node    int32
	leaving bool  // suspend/shutdown in progress: not counted as running
	action  int32 // index in the current plan's actions, or -1
	resTo   int32 // node reserved by an in-flight boot/resume/migrate, or -1
}

type evKind uint8

// Order of processing at one instant: frees before arrivals on nodes.
const (
	qEnd evKind = iota
	qBoundary
	qWake
	qArrival
	qDrain
	qStart
	qTick
)

type qev struct {
	t    int64
	kind evKind
	seq  int64
	a, b int // payload: job/gen, action index, drain index
}

type evq []qev

func (q evq) Len() int { return len(q) }
func (q evq) Less(i, j int) bool {
	if q[i].t != q[j].t {
		return q[i].t < q[j].t
	}
	if q[i].kind != q[j].kind {
		return q[i].kind < q[j].kind
	}
	return q[i].seq < q[j].seq
}
func (q evq) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *evq) Push(x any)   { *q = append(*q, x.(qev)) }
func (q *evq) Pop() any {
	old := *q
	x := old[len(old)-1]
	*q = old[:len(old)-1]
	return x
}

type engine struct {
	cfg      Config
	w        *workload.Workload
	observed bool
	soft     []bool
	cpu      int
	nr       int
	now      int64
	q        evq
	seq      int64
	jobs     []jobRun
	tasks    []taskRun
	active   []int32
	draining map[int]bool
	// nodes
	used [][]int64 // reserved demand per node (hard accounting)
	// current plan
	acts     []plan.Action // global task ids
	actsLeft int
	inFlight bool
	dirty    bool
	tickAt   int64
	// recheckAt: the pending decision a policy asked for (Decision.Recheck)
	recheckAt int64
	res       *Result
	names     []string
	// utilisation
	busy     float64
	lastUtil int64
	utilArea float64
	totalCPU float64
	err      error
	// reusable buffers
	sub2glob  []int32
	tnames    []string
	idle      int
	completed bool // a job completed since the active list was compacted
	// the policy's view, reused between decisions (policies keep nothing)
	view     policy.View
	idx      []int
	glob2sub []int32
}

// Run simulates the workload under the policy. It returns the result even
// on ErrStalled (with the jobs that finished).
func Run(ctx context.Context, cfg Config) (*Result, error) {
	w := cfg.Workload
	if w == nil || cfg.Policy == nil {
		return nil, fmt.Errorf("sim: workload and policy are required")
	}
	if err := w.Validate(); err != nil {
		return nil, err
	}
	if cfg.Planner == nil {
		cfg.Planner = plan.Solve
	}
	if cfg.Period <= 0 {
		cfg.Period = 300
	}
	if cfg.Downtime <= 0 {
		cfg.Downtime = 1
	}
	if cfg.PlannerBudget <= 0 {
		cfg.PlannerBudget = 2 * time.Second
	}
	e := &engine{cfg: cfg, w: w, observed: policy.ObservesDemand(cfg.Policy), cpu: w.CPU(), nr: len(w.Resources), draining: map[int]bool{}}
	e.soft = make([]bool, e.nr)
	for _, s := range w.Soft {
		for r, n := range w.Resources {
			if n == s {
				e.soft[r] = true
			}
		}
	}
	e.used = make([][]int64, len(w.Nodes))
	for i := range e.used {
		e.used[i] = make([]int64, e.nr)
		if e.cpu >= 0 {
			e.totalCPU += float64(w.Nodes[i].Capacity[e.cpu])
		}
	}
	for _, n := range w.Nodes {
		e.names = append(e.names, n.Name)
	}
	e.jobs = make([]jobRun, len(w.Jobs))
	var nt int32
	for i := range w.Jobs {
		e.jobs[i] = jobRun{spec: &w.Jobs[i], firstTask: nt, started: -1, end: -1}
		for k := range w.Jobs[i].Tasks {
			e.tasks = append(e.tasks, taskRun{job: int32(i), k: int32(k), state: cluster.Ready, node: -1, action: -1, resTo: -1})
		}
		nt += int32(w.Jobs[i].Tasks)
	}
	e.res = &Result{Workload: w.Name, Policy: cfg.Policy.Name(), Seed: cfg.Seed, nodeNames: e.names, Observed: e.observed}
	for i := range w.Jobs {
		e.res.Jobs = append(e.res.Jobs, JobResult{Name: w.Jobs[i].Name, Kind: w.Jobs[i].Kind, Submit: w.Jobs[i].Submit, Tasks: w.Jobs[i].Tasks, Work: w.Jobs[i].Work, Start: -1, End: -1, firstTask: e.jobs[i].firstTask})
	}
	for i, d := range cfg.Drains {
		n := -1
		for k, name := range e.names {
			if name == d.Node {
				n = k
			}
		}
		if n < 0 {
			return nil, fmt.Errorf("%w: drain of unknown node %q", workload.ErrInvalid, d.Node)
		}
		e.push(d.At, qDrain, i, n)
	}
	if len(w.Jobs) > 0 {
		e.push(w.Jobs[0].Submit, qArrival, 0, 0)
	}
	wall := time.Now()
	err := e.loop(ctx)
	e.finish()
	e.res.Wall = time.Since(wall)
	if err == nil {
		err = e.err
	}
	return e.res, err
}

func (e *engine) push(t int64, k evKind, a, b int) {
	e.seq++
	heap.Push(&e.q, qev{t: t, kind: k, seq: e.seq, a: a, b: b})
}

func (e *engine) log(ev Event) { e.res.Events = append(e.res.Events, ev) }

func (e *engine) loop(ctx context.Context) error {
	steps := 0
	for len(e.q) > 0 {
		t := e.q[0].t
		if e.cfg.MaxTime > 0 && t > e.cfg.MaxTime {
			return fmt.Errorf("sim: reached max time %d", e.cfg.MaxTime)
		}
		e.advanceUtil(t)
		e.now = t
		for len(e.q) > 0 && e.q[0].t == t {
			ev := heap.Pop(&e.q).(qev)
			e.handle(ev)
			if e.err != nil {
				return e.err
			}
		}
		e.updateRates()
		if e.dirty && !e.inFlight {
			e.dirty = false
			if err := e.decide(ctx); err != nil {
				return err
			}
			e.updateRates()
			if e.stalled() {
				return fmt.Errorf("%w at t=%d: %d jobs wait, none runs, and the policy starts none", ErrStalled, e.now, len(e.active))
			}
		}
		e.scheduleTick()
		steps++
		if steps&1023 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
	}
	for i := range e.jobs {
		if !e.jobs[i].done {
			return fmt.Errorf("%w at t=%d: job %s never completed", ErrStalled, e.now, e.jobs[i].spec.Name)
		}
	}
	return nil
}

// stalled: nothing runs or moves, no arrival or drain is pending, and
// the last decisions changed nothing.
func (e *engine) stalled() bool {
	if e.inFlight || len(e.active) == 0 {
		e.idle = 0
		return false
	}
	for _, j := range e.active {
		if e.jobs[j].running {
			e.idle = 0
			return false
		}
	}
	for _, q := range e.q {
		if q.kind == qArrival || q.kind == qDrain || q.kind == qWake {
			e.idle = 0
			return false
		}
	}
	e.idle++
	return e.idle > 3
}

// scheduleTick keeps a periodic decision pending while jobs wait.
func (e *engine) scheduleTick() {
	if e.tickAt > e.now {
		return
	}
	waiting := false
	for _, j := range e.active {
		if !e.jobs[j].running {
			waiting = true
			break
		}
	}
	if waiting {
		e.tickAt = e.now + e.cfg.Period
		e.push(e.tickAt, qTick, 0, 0)
	}
}

func (e *engine) handle(ev qev) {
	switch ev.kind {
	case qArrival:
		j := ev.a
		e.jobs[j].arrived = true
		e.active = append(e.active, int32(j))
		e.log(Event{T: e.now, Kind: EvArrive, Job: int32(j), Task: -1, From: -1, To: -1})
		e.dirty = true
		if j+1 < len(e.jobs) {
			e.push(e.w.Jobs[j+1].Submit, qArrival, j+1, 0)
		}
	case qTick:
		e.dirty = true
	case qDrain:
		e.draining[ev.b] = true
		e.log(Event{T: e.now, Kind: EvDrain, Job: -1, Task: -1, From: -1, To: int32(ev.b)})
		e.dirty = true
	case qBoundary:
		j := &e.jobs[ev.a]
		if j.gen != ev.b || j.done {
			return
		}
		e.fold(ev.a)
		segEnd := e.segEnd(j)
		j.progress = float64(segEnd)
		if segEnd >= j.spec.Work {
			e.complete(ev.a)
			return
		}
		j.seg++
		if e.observed {
			e.dirty = true // demand changed: the policy sees it
		}
		j.rate = -1 // force reschedule
	case qWake:
		j := &e.jobs[ev.a]
		j.rate = -1
	case qStart:
		e.startAction(ev.a)
	case qEnd:
		e.endAction(ev.a)
	}
}

// touched: the job has started at least once (it is running, sleeping or
// switching), so the policy always sees it.
func (j *jobRun) touched() bool { return j.started >= 0 || j.suspends > 0 || j.startedTasks }

func (e *engine) segEnd(j *jobRun) int64 {
	if len(j.spec.Segments) == 0 {
		return j.spec.Work
	}
	return j.spec.Segments[j.seg].End
}

// taskCPU is the observed CPU demand of a job's task now.
func (e *engine) taskCPU(j *jobRun, k int32) int64 {
	if len(j.spec.Segments) == 0 || e.cpu < 0 {
		if e.cpu < 0 {
			return 0
		}
		return j.spec.Demand[e.cpu]
	}
	return j.spec.Segments[j.seg].CPU[k]
}

// fold brings a job's progress up to now at its current rate.
func (e *engine) fold(ji int) {
	j := &e.jobs[ji]
	if j.rate > 0 && e.now > j.since {
		j.progress += j.rate * float64(e.now-j.since)
	}
	if j.running && e.now > j.since {
		j.runTime += e.now - j.since
	}
	j.since = e.now
}

func (e *engine) gang(ji int) bool {
	j := &e.jobs[ji]
	if j.done || !j.arrived || e.now < j.pauseTo {
		return false
	}
	for t := j.firstTask; t < j.firstTask+int32(j.spec.Tasks); t++ {
		tk := &e.tasks[t]
		if tk.state != cluster.Running || tk.leaving {
			return false
		}
	}
	return true
}

// updateRates recomputes every active job's progress rate and reschedules
// its next boundary when the rate changed.
func (e *engine) updateRates() {
	var load []float64
	softCPU := e.cpu >= 0 && e.soft[e.cpu]
	if softCPU {
		load = make([]float64, len(e.w.Nodes))
		for _, ji := range e.active {
			j := &e.jobs[ji]
			if !j.touched() {
				continue
			}
			for k := int32(0); k < int32(j.spec.Tasks); k++ {
				tk := &e.tasks[j.firstTask+k]
				if tk.state == cluster.Running && !tk.leaving {
					load[tk.node] += float64(e.taskCPU(j, k))
				}
			}
		}
	}
	busy := 0.0
	for _, ji := range e.active {
		j := &e.jobs[ji]
		if !j.touched() {
			continue // never started: no task runs, rate stays 0
		}
		rate := 0.0
		if e.gang(int(ji)) {
			rate = 1
			if softCPU {
				for k := int32(0); k < int32(j.spec.Tasks); k++ {
					tk := &e.tasks[j.firstTask+k]
					c := float64(e.taskCPU(j, k))
					if c > 0 && load[tk.node] > 0 {
						share := float64(e.w.Nodes[tk.node].Capacity[e.cpu]) / load[tk.node]
						rate = math.Min(rate, share)
					}
				}
			}
			for k := int32(0); k < int32(j.spec.Tasks); k++ {
				c := float64(e.taskCPU(j, k))
				if softCPU {
					c *= rate
				}
				busy += c
			}
		}
		if rate == j.rate {
			continue
		}
		e.fold(int(ji))
		j.rate = rate
		j.gen++
		run := rate > 0
		if run != j.running {
			j.running = run
			kind := EvStop
			if run {
				kind = EvRun
				if j.started < 0 {
					j.started = e.now
				}
			}
			e.log(Event{T: e.now, Kind: kind, Job: ji, Task: -1, From: -1, To: -1})
		}
		if rate > 0 {
			left := float64(e.segEnd(j)) - j.progress
			dt := int64(math.Ceil(left/rate - 1e-9))
			if dt < 0 {
				dt = 0
			}
			e.push(e.now+dt, qBoundary, int(ji), j.gen)
		}
	}
	e.busy = busy
	e.recordUtil()
	if e.completed {
		e.completed = false
		e.compactActive()
	}
}

func (e *engine) advanceUtil(t int64) {
	if t > e.lastUtil {
		e.utilArea += e.busy * float64(t-e.lastUtil)
	}
	e.lastUtil = t
}

func (e *engine) recordUtil() {
	n := len(e.res.Util)
	if n > 0 && e.res.Util[n-1].Busy == e.busy {
		return
	}
	frac := 0.0
	if e.totalCPU > 0 {
		frac = e.busy / e.totalCPU
	}
	p := UtilPoint{T: e.now, Busy: e.busy, Frac: frac}
	if n > 0 && e.res.Util[n-1].T == e.now {
		e.res.Util[n-1] = p
		if n > 1 && e.res.Util[n-2].Busy == e.busy {
			e.res.Util = e.res.Util[:n-1]
		}
		return
	}
	e.res.Util = append(e.res.Util, p)
}

func (e *engine) compactActive() {
	k := 0
	for _, j := range e.active {
		if !e.jobs[j].done {
			e.active[k] = j
			k++
		}
	}
	e.active = e.active[:k]
}

func (e *engine) reserve(n int32, t int32, sign int64) {
	d := e.w.Jobs[e.tasks[t].job].Demand
	for r := range d {
		e.used[n][r] += sign * d[r]
	}
}

func (e *engine) complete(ji int) {
	j := &e.jobs[ji]
	e.fold(ji)
	j.done = true
	j.running = false
	j.end = e.now
	for t := j.firstTask; t < j.firstTask+int32(j.spec.Tasks); t++ {
		tk := &e.tasks[t]
		if tk.resTo >= 0 {
			e.reserve(tk.resTo, t, -1)
			a := e.acts[tk.action]
			e.log(Event{T: e.now, Kind: EvCancel, Action: a.Kind, Job: int32(ji), Task: t, From: int32(a.From), To: int32(a.To)})
			tk.resTo = -1
		}
		if tk.state == cluster.Running {
			e.reserve(tk.node, t, -1)
		}
		tk.state = cluster.Killed
		tk.node = -1
	}
	e.log(Event{T: e.now, Kind: EvComplete, Job: int32(ji), Task: -1, From: -1, To: -1})
	e.dirty = true
	e.completed = true
}

func (e *engine) startAction(i int) {
	a := e.acts[i]
	tk := &e.tasks[a.Task]
	if e.jobs[tk.job].done {
		if a.End <= a.Start {
			e.endAction(i)
		}
		return
	}
	tk.action = int32(i)
	switch a.Kind {
	case cluster.Boot, cluster.Resume, cluster.Migrate:
		if j := &e.jobs[tk.job]; j.restarted {
			j.restarted, j.seg = false, 0
		}
		e.jobs[tk.job].startedTasks = true
		tk.resTo = int32(a.To)
		e.reserve(int32(a.To), int32(a.Task), 1)
	case cluster.Suspend, cluster.Shutdown, cluster.Kill:
		tk.leaving = true
	}
	e.log(Event{T: e.now, Kind: EvStart, Action: a.Kind, Job: tk.job, Task: int32(a.Task), From: int32(a.From), To: int32(a.To)})
	e.checkCapacity(int32(a.To))
	if a.End <= a.Start {
		e.endAction(i)
	}
}

func (e *engine) endAction(i int) {
	a := e.acts[i]
	e.actsLeft--
	if e.actsLeft == 0 {
		e.inFlight = false
		e.dirty = true
	}
	tk := &e.tasks[a.Task]
	if e.jobs[tk.job].done || tk.action != int32(i) {
		return
	}
	tk.action = -1
	tk.resTo = -1
	j := &e.jobs[tk.job]
	switch a.Kind {
	case cluster.Boot, cluster.Resume:
		tk.state, tk.node = cluster.Running, int32(a.To)
		if a.Kind == cluster.Resume {
			j.resumes++
		}
	case cluster.Migrate:
		e.reserve(int32(a.From), int32(a.Task), -1)
		tk.node = int32(a.To)
		j.migrates++
		e.fold(int(tk.job))
		j.pauseTo = e.now + e.cfg.Downtime
		j.lostTime += e.cfg.Downtime
		j.rate = -1
		e.push(j.pauseTo, qWake, int(tk.job), 0)
	case cluster.Suspend:
		e.reserve(int32(a.From), int32(a.Task), -1)
		tk.state, tk.leaving = cluster.Sleeping, false
		j.suspends++
	case cluster.Shutdown:
		e.reserve(int32(a.From), int32(a.Task), -1)
		tk.state, tk.node, tk.leaving = cluster.Ready, -1, false
		e.restart(int(tk.job))
	case cluster.Kill:
		e.err = fmt.Errorf("sim: policy %s killed task %d of job %s: the simulator never kills", e.cfg.Policy.Name(), tk.k, j.spec.Name)
	}
	e.log(Event{T: e.now, Kind: EvEnd, Action: a.Kind, Job: tk.job, Task: int32(a.Task), From: int32(a.From), To: int32(a.To)})
}

// restart: a task of a job that ran was shut down; the job's work is lost
// (a stopped VM keeps nothing of its computation, and the job's other VMs
// cannot go on without it, whether they run, sleep or stop too). The job
// starts again from no progress once its tasks run again.
func (e *engine) restart(ji int) {
	j := &e.jobs[ji]
	if j.started < 0 {
		return
	}
	e.fold(ji)
	j.progress, j.restarted = 0, true
	j.gen++ // no pending boundary of the lost run applies
}

// checkCapacity is the engine's own guard on hard resources (the
// independent checker in sim/check re-derives it from the log).
func (e *engine) checkCapacity(n int32) {
	if n < 0 {
		return
	}
	for r := range e.nr {
		if e.soft[r] && e.observed {
			continue
		}
		if e.used[n][r] > e.w.Nodes[n].Capacity[r] {
			e.err = fmt.Errorf("sim: t=%d node %s over capacity on %s: %d > %d", e.now, e.names[n], e.w.Resources[r], e.used[n][r], e.w.Nodes[n].Capacity[r])
		}
	}
}

func (e *engine) finish() {
	for i := range e.jobs {
		j := &e.jobs[i]
		r := &e.res.Jobs[i]
		r.Start, r.End = j.started, j.end
		r.Suspends, r.Resumes, r.Migrations = j.suspends, j.resumes, j.migrates
	}
	e.res.summarize(e.w, e.utilArea, e.totalCPU)
}
