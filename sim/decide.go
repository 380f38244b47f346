package sim

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/plan"
	"github.com/ferrycluster/ferry/policy"
)

// decide runs one turn of the control loop: view, policy, problem, plan.
func (e *engine) decide(ctx context.Context) error {
	if len(e.active) == 0 {
		return nil
	}
	w := e.w
	if e.view.Model == nil {
		e.view.Model = &cluster.Model{Resources: w.Resources, Nodes: e.nodes()}
	}
	m := e.view.Model
	// The previous decision's tasks: a task at the same position as then
	// keeps its entry, only its state, node and demand are rewritten (the
	// view's build was a fifth of a trace run's CPU, most of it copying
	// names).
	prevGlob, prevTasks := e.sub2glob, m.Tasks
	glob := e.sub2glob[:0]
	jobs := e.view.Jobs[:0]
	window := e.cfg.Window
	if window <= 0 {
		window = 200
	}
	tasks := m.Tasks[:0] // m.Tasks is set once at the end: fewer write barriers
	e.idx = e.idx[:0]
	queued := 0
	for _, ji := range e.active {
		j := &e.jobs[ji]
		if !j.touched() {
			if queued >= window {
				continue
			}
			queued++
		}
		e.fold(int(ji))
		start := len(tasks)
		for k := int32(0); k < int32(j.spec.Tasks); k++ {
			g := j.firstTask + k
			tk := &e.tasks[g]
			d := j.spec.Demand
			// Observed demand: what the task used when last seen running
			// (its current segment; a sleeping task keeps the one it was
			// suspended in). A job that never ran has nothing observed
			// yet: its peak reservation stands, not its future profile.
			if e.observed && e.cpu >= 0 && len(j.spec.Segments) > 0 && j.started >= 0 {
				d = append([]int64(nil), d...)
				d[e.cpu] = e.taskCPU(j, k)
			}
			if pos := len(tasks); pos < len(prevGlob) && prevGlob[pos] == g {
				tasks = prevTasks[:pos+1]
				t := &tasks[pos]
				t.State, t.Node = tk.state, int(tk.node)
				if !sameSlice(t.Demand, d) {
					t.Demand = d
				}
			} else {
				tasks = append(tasks, cluster.Task{Name: e.taskName(g), Job: j.spec.Name, State: tk.state, Node: int(tk.node), Demand: d})
			}
			glob = append(glob, g)
			e.idx = append(e.idx, len(tasks)-1)
		}
		done := int64(j.progress)
		est := j.spec.Walltime
		jobs = append(jobs, policy.Job{
			Name: j.spec.Name, Priority: j.spec.Priority, Submitted: j.spec.Submit,
			Tasks: e.idx[start:len(tasks):len(tasks)], Walltime: max(est-done, 1), Done: done, Total: est,
			Preemptible: j.spec.Preemptible, Migratable: j.spec.Migratable, Ran: j.started >= 0,
		})
	}
	// e.idx may have grown: re-slice every job's tasks onto the final array.
	for i := range jobs {
		n := len(jobs[i].Tasks)
		if n > 0 {
			s := jobs[i].Tasks[0]
			jobs[i].Tasks = e.idx[s : s+n : s+n]
		}
	}
	m.Tasks = tasks
	e.view.Jobs = jobs
	e.sub2glob = glob
	view := &e.view
	view.Draining, view.Now, view.Durations = e.draining, e.now, w.Durations
	view.ProgressKnown = true // Job.Done is the engine's own progress
	if e.observed && view.Soft == nil {
		view.Soft = map[int]bool{}
		for r, s := range e.soft {
			if s {
				view.Soft[r] = true
			}
		}
	}
	d, err := e.cfg.Policy.Decide(view)
	if err != nil {
		return fmt.Errorf("sim: policy %s at t=%d: %w", e.cfg.Policy.Name(), e.now, err)
	}
	if len(d.Want) != len(m.Tasks) {
		return fmt.Errorf("sim: policy %s returned %d wanted states for %d tasks", e.cfg.Policy.Name(), len(d.Want), len(m.Tasks))
	}
	if d.Recheck > e.now && (e.recheckAt <= e.now || d.Recheck < e.recheckAt) {
		e.recheckAt = d.Recheck
		e.push(d.Recheck, qTick, 0, 0)
	}
	prob, sub, err := e.problem(m, d)
	if err != nil {
		return err
	}
	if prob == nil {
		return nil
	}
	var tick time.Time
	clock := func() time.Time { tick = tick.Add(time.Millisecond); return tick }
	pl, err := e.cfg.Planner(ctx, prob, plan.Options{Timeout: e.cfg.PlannerBudget, Seed: e.cfg.Seed, Now: clock})
	e.res.PlannerCalls++
	if err != nil {
		if errors.Is(err, plan.ErrNoSolution) {
			e.res.NoPlans++
			e.log(Event{T: e.now, Kind: EvNoPlan, Job: -1, Task: -1, From: -1, To: -1})
			return nil
		}
		return fmt.Errorf("sim: planner at t=%d: %w", e.now, err)
	}
	e.acts = e.acts[:0]
	for _, a := range pl.Actions {
		if a.Kind.IsNodeAction() {
			continue
		}
		a.Task = int(sub[a.Task])
		e.acts = append(e.acts, a)
	}
	e.log(Event{T: e.now, Kind: EvPlan, Job: -1, Task: -1, From: -1, To: -1, N: int32(len(e.acts))})
	if len(e.acts) == 0 {
		return nil
	}
	e.inFlight = true
	e.actsLeft = len(e.acts)
	for i, a := range e.acts {
		e.push(e.now+a.Start, qStart, i, 0)
		if a.End > a.Start {
			e.push(e.now+a.End, qEnd, i, 0)
		}
		e.account(a)
	}
	return nil
}

// sameSlice: a and b are the same slice (same array, same length).
func sameSlice(a, b []int64) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// account adds an action's modelled cost to the totals.
func (e *engine) account(a plan.Action) {
	c := &e.res.Summary
	d := a.End - a.Start
	switch a.Kind {
	case cluster.Suspend:
		c.Suspends++
		c.SuspendTime += d
	case cluster.Resume:
		c.Resumes++
		c.ResumeTime += d
		if a.From != a.To {
			c.RemoteResumes++
		}
	case cluster.Migrate:
		c.Migrations++
		c.MigrationTime += d
	case cluster.Shutdown:
		// Only a restart shuts a task down (Selective.Restart): its
		// shutdown and its boot again are the restart's cost.
		c.Restarts++
		c.RestartTime += d
	case cluster.Boot:
		if e.jobs[e.tasks[a.Task].job].started >= 0 {
			c.RestartTime += d
		}
	}
	if a.Kind == cluster.Suspend || a.Kind == cluster.Resume || a.Kind == cluster.Migrate {
		if r := e.w.Durations.Memory; r != "" {
			for i, n := range e.w.Resources {
				if n == r {
					c.BytesMoved += e.w.Jobs[e.tasks[a.Task].job].Demand[i]
				}
			}
		}
	}
}

func (e *engine) taskName(g int32) string {
	if e.tnames == nil {
		e.tnames = make([]string, len(e.tasks))
	}
	if e.tnames[g] == "" {
		tk := &e.tasks[g]
		e.tnames[g] = fmt.Sprintf("%s/%d", e.w.Jobs[tk.job].Name, tk.k)
	}
	return e.tnames[g]
}

func (e *engine) nodes() []cluster.Node {
	ns := make([]cluster.Node, len(e.w.Nodes))
	for i, n := range e.w.Nodes {
		ns[i] = cluster.Node{Name: n.Name, Capacity: n.Capacity}
	}
	return ns
}

// problem builds the planner's problem from a decision. Unless Config.Full,
// only the tasks whose state changes or that a constraint names enter it;
// the others stay where they are and their running demand is taken off the
// nodes' capacities. It returns the problem (nil when nothing changes) and
// the global task id of each problem task.
func (e *engine) problem(m *cluster.Model, d policy.Decision) (*plan.Problem, []int32, error) {
	n := len(m.Tasks)
	incl := make([]bool, n)
	any := false
	for i, want := range d.Want {
		if want == cluster.Killed {
			return nil, nil, fmt.Errorf("sim: policy %s wants task %s killed; the simulator never kills", e.cfg.Policy.Name(), m.Tasks[i].Name)
		}
		if want != m.Tasks[i].State {
			incl[i], any = true, true
		}
	}
	full := e.cfg.Full
	for _, c := range d.Constraints {
		if !cluster.ConstrainsOnlyNamedTasks(c) {
			full = true // its meaning depends on tasks it does not name
			continue
		}
		for _, t := range cluster.TaskRefs(c) {
			if t < 0 || t >= n {
				return nil, nil, fmt.Errorf("sim: policy %s: constraint %s names task %d of %d", e.cfg.Policy.Name(), c.Kind(), t, n)
			}
			incl[t] = true
			any = true
		}
	}
	if !any {
		return nil, nil, nil
	}
	if full {
		for i := range incl {
			incl[i] = true
		}
	}
	sm := &cluster.Model{Resources: m.Resources, Nodes: m.Nodes}
	if !full {
		sm.Nodes = make([]cluster.Node, len(m.Nodes))
		for i, nd := range m.Nodes {
			nd.Capacity = append([]int64(nil), nd.Capacity...)
			sm.Nodes[i] = nd
		}
	}
	if cap(e.glob2sub) < n {
		e.glob2sub = make([]int32, n)
	}
	toSub := e.glob2sub[:n]
	var sub []int32
	byState := map[cluster.TaskState][]int{}
	for i := range m.Tasks {
		t := &m.Tasks[i]
		if !incl[i] {
			toSub[i] = -1
			if t.State == cluster.Running {
				c := sm.Nodes[t.Node].Capacity
				for r, v := range t.Demand {
					c[r] = max(c[r]-v, 0)
				}
			}
			continue
		}
		toSub[i] = int32(len(sm.Tasks))
		if d.Want[i] != t.State {
			byState[d.Want[i]] = append(byState[d.Want[i]], len(sm.Tasks))
		}
		sm.Tasks = append(sm.Tasks, *t)
		sub = append(sub, e.sub2glob[i])
		starting := t.State != cluster.Running && d.Want[i] == cluster.Running // resumed or booted
		leaving := t.State == cluster.Running && d.Want[i] != cluster.Running  // suspended or shut down
		if e.observed && (e.jobs[e.tasks[e.sub2glob[i]].job].started < 0 || starting || leaving) {
			// A job that never ran: its use of a time-shared resource is
			// not known, the planner reserves none of it (the policy
			// placed it; the nodes share what it turns out to use). A
			// task being resumed (or booted again after its job was
			// stopped, see Selective.Restart) uses none until its action
			// ends, and the policy placed it by what it used: the planner
			// reserves none either, so a resume may overlap the end of
			// the job whose cores it takes (Selective.Anticipate). A task
			// being suspended or shut down uses none from its action's
			// start (the engine counts no load for it then, see
			// updateRates): the planner reserves none, so a move onto its
			// cores need not wait for its memory to be written out or
			// freed, only for the memory it needs.
			// One copy for all of them: a copy per resource would undo
			// the zeroing of the ones before it.
			st := &sm.Tasks[len(sm.Tasks)-1]
			copied := false
			for r, soft := range e.soft {
				if soft && st.Demand[r] != 0 {
					if !copied {
						st.Demand, copied = append([]int64(nil), st.Demand...), true
					}
					st.Demand[r] = 0
				}
			}
		}
	}
	p := &plan.Problem{Model: sm, Durations: e.w.Durations}
	for _, s := range []cluster.TaskState{cluster.Running, cluster.Sleeping, cluster.Ready} {
		if ts := byState[s]; len(ts) > 0 {
			p.Constraints = append(p.Constraints, cluster.StateConstraint{State: s, Tasks: ts})
		}
	}
	for _, c := range d.Constraints {
		p.Constraints = append(p.Constraints, cluster.RemapTasks(c, func(t int) int { return int(toSub[t]) }))
	}
	return p, sub, nil
}
