package controller

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/plan"
	"github.com/ferrycluster/ferry/policy"
	"github.com/ferrycluster/ferry/store"
)

// Resource names in the models the controller builds.
const (
	ResCPU    = "cpu"    // millicores
	ResMemory = "memory" // bytes
)

// Durations is the controller's cost model, in seconds: 1 GiB/s over the
// network, 512 MiB/s to disk, one second to boot, stop or kill.
var Durations = cluster.BandwidthDurations{
	Memory: ResMemory, NetBandwidth: 1 << 30, DiskBandwidth: 512 << 20,
	BootTask: 1, ShutdownTask: 1, KillTask: 1, Latency: 1, BootNodeTime: 60, ShutdownNodeTime: 30,
}

// Snapshot is a configuration built from the store, with the indices that
// map it back to names.
type Snapshot struct {
	View *policy.View
	// Specs of the jobs by name (decoded once).
	Specs map[string]*JobSpec
	// Stopped and Sleeping jobs the operator asked for (by name).
	Want map[string]store.JobWant
	// jobConstraints from the specs.
	jobConstraints []cluster.Constraint
	// DrainGrace marks draining nodes (indices) whose drain has a deadline
	// not yet passed: what cannot move off keeps running there until then.
	DrainGrace map[int]bool
	// DrainDue names the draining nodes whose deadline has passed: what
	// cannot move off is suspended to disk now.
	DrainDue []string
	// Stranded names the tasks of jobs the operator wants running that no
	// usable node can take (the capability filter, see capability.go),
	// with why: they are not planned to run until one can.
	Stranded map[string]string
	// Unheard names the online nodes not heard from yet when the model
	// holds VMs (the capability filter takes no VM there). The loop plans
	// around them (see silence): nothing new lands there and nothing of
	// theirs is decided until they report.
	Unheard []string
	// silent are the Unheard nodes (indices) and frozen the tasks of the
	// jobs with a task running or sleeping on one of them.
	silent, frozen map[int]bool
	// eligible is the capability filter (nil: none).
	eligible *eligibility
	// Recheck is the policy's Decision.Recheck (seconds) once Problem has
	// run, when after View.Now: the time its decision may change by itself.
	Recheck int64
}

// BuildSnapshot turns the replicated state into the planner's vocabulary.
// It is pure: now is in seconds. Tasks that cannot be planned for now — a
// sleeping task whose image sits on a down node, a running task on a down
// node not yet reported lost, a terminated task — are left out. nodes is
// what the agents report (drivers, QEMU version): a VM is planned only
// onto nodes that can take it (capability.go); nil: no such filter.
func BuildSnapshot(st *store.State, now int64, nodes NodeReports) *Snapshot {
	m := &cluster.Model{Resources: []string{ResCPU, ResMemory}}
	nodeIdx := map[string]int{}
	draining := map[int]bool{}
	grace := map[int]bool{}
	var due []string
	for _, name := range st.SortedNodes() {
		n := st.Nodes[name]
		cn := cluster.Node{Name: name, Capacity: []int64{n.Capacity.CPUMilli, n.Capacity.MemoryBytes}, Labels: n.Labels}
		if n.Status == store.NodeDown {
			cn.State = cluster.NodeOffline
		}
		nodeIdx[name] = len(m.Nodes)
		if n.Status == store.NodeDraining {
			draining[len(m.Nodes)] = true
			switch {
			case n.DrainDeadline == 0:
			case n.DrainDeadline > now*1e9:
				grace[len(m.Nodes)] = true
			default:
				due = append(due, name)
			}
		}
		m.Nodes = append(m.Nodes, cn)
	}
	snap := &Snapshot{Specs: map[string]*JobSpec{}, Want: map[string]store.JobWant{}, DrainGrace: grace, DrainDue: due}
	var jobs []policy.Job
	vms := map[int]store.RAMTail{} // qemu tasks, for the capability filter
	for _, j := range st.SortedJobs() {
		pj := policy.Job{Name: j.Name, Priority: j.Priority, Submitted: j.Submitted / 1e9, Preemptible: j.Preemptible, Migratable: j.Migratable}
		for _, tn := range j.Tasks {
			t := st.Tasks[tn]
			if t == nil || t.Phase == store.TaskTerminated {
				continue
			}
			ct := cluster.Task{Name: t.Name, Job: j.Name, Node: cluster.NoNode, Demand: []int64{t.Demand.CPUMilli, t.Demand.MemoryBytes}}
			switch t.Phase {
			case store.TaskWaiting:
				ct.State = cluster.Ready
			case store.TaskRunning, store.TaskSleeping:
				ni, ok := nodeIdx[t.Node]
				if !ok || m.Nodes[ni].State != cluster.NodeOnline {
					continue
				}
				ct.State, ct.Node = cluster.Running, ni
				if t.Phase == store.TaskSleeping {
					ct.State = cluster.Sleeping
				}
			}
			if t.Driver == "qemu" {
				vms[len(m.Tasks)] = t.RAMTail
			}
			pj.Tasks = append(pj.Tasks, len(m.Tasks))
			m.Tasks = append(m.Tasks, ct)
		}
		if len(pj.Tasks) == 0 {
			continue
		}
		snap.Want[j.Name] = j.Want
		if len(j.Spec) > 0 {
			var s JobSpec
			if json.Unmarshal(j.Spec, &s) == nil {
				snap.Specs[j.Name] = &s
				snap.jobConstraints = append(snap.jobConstraints, specConstraints(&s, pj.Tasks, m)...)
			}
		}
		jobs = append(jobs, pj)
	}
	snap.View = &policy.View{Model: m, Jobs: jobs, Draining: draining, Now: now, Durations: Durations}
	if nodes != nil {
		e := newEligibility(m, vms, nodes)
		e.restrict(snap.jobConstraints, len(m.Nodes))
		snap.eligible, snap.View.Eligible = e, e.ok
		if len(vms) > 0 && len(e.unheard) > 0 {
			snap.Unheard = e.unheard
			snap.silence()
		}
		for ti, why := range e.stranded(m, draining) {
			t := m.Tasks[ti]
			if snap.Want[t.Job] == store.WantRun {
				if snap.Stranded == nil {
					snap.Stranded = map[string]string{}
				}
				snap.Stranded[t.Name] = why
			}
		}
	}
	return snap
}

// ErrWaitingForReports: the policy would stop a running task while some
// online node has not been heard from since the loop started leading; that
// node might have had the room, so the loop waits for its report (or for
// it to be marked down) rather than decide it.
var ErrWaitingForReports = errors.New("waiting for the first reports of nodes")

// silence makes the plan go around the Unheard nodes, whose state (what
// they run, what they can run) is not known since the loop started
// leading: nothing new lands on them (the policy sees them as taking
// nothing, the planner bans every other task from them, continuously), and
// the jobs with a task running or sleeping on one of them are frozen — the
// policy's and the operator's wants for them are set aside, each of their
// tasks kept where and as it is — so nothing about a silent node's tasks
// is decided. Problem refuses (ErrWaitingForReports) a decision that
// stops a running task the operator wants running: the silent node's room
// might have kept it running.
func (s *Snapshot) silence() {
	m := s.View.Model
	s.silent, s.frozen = map[int]bool{}, map[int]bool{}
	for _, name := range s.Unheard {
		s.silent[m.NodeIndex(name)] = true
	}
	for _, j := range s.View.Jobs {
		touches := false
		for _, ti := range j.Tasks {
			t := m.Tasks[ti]
			touches = touches || (t.State == cluster.Running || t.State == cluster.Sleeping) && s.silent[t.Node]
		}
		if touches {
			for _, ti := range j.Tasks {
				s.frozen[ti] = true
			}
		}
	}
	eligible := s.View.Eligible
	s.View.Eligible = func(t, n int) bool {
		if s.frozen[t] {
			return n == m.Tasks[t].Node
		}
		return !s.silent[n] && eligible(t, n)
	}
}

// silentConstraints hold each frozen task running or sleeping where it is,
// and every other task off the silent nodes, at every instant (no pivot
// through a silent node either).
func (s *Snapshot) silentConstraints() []cluster.Constraint {
	m := s.View.Model
	var out []cluster.Constraint
	var others []int
	for ti, t := range m.Tasks {
		switch {
		case !s.frozen[ti]:
			others = append(others, ti)
		case t.Node >= 0:
			out = append(out, cluster.Fence{Tasks: []int{ti}, Nodes: []int{t.Node}, Continuous: true})
		}
	}
	var nodes []int
	for n := range s.silent {
		nodes = append(nodes, n)
	}
	sort.Ints(nodes)
	if len(others) > 0 {
		out = append(out, cluster.Ban{Tasks: others, Nodes: nodes, Continuous: true})
	}
	return out
}

// checkSilent refuses a plan with an action on a frozen task or from or to
// a silent node (the constraints forbid it; this holds the loop to it).
func (s *Snapshot) checkSilent(p *plan.Plan) error {
	m := s.View.Model
	for _, a := range p.Actions {
		if a.Task >= 0 && s.frozen[a.Task] || s.silent[a.Node] || s.silent[a.From] || s.silent[a.To] {
			what := fmt.Sprintf("node %d", a.Node)
			switch {
			case a.Task >= 0:
				what = m.Tasks[a.Task].Name
			case a.Node >= 0:
				what = "node " + m.Nodes[a.Node].Name
			}
			return fmt.Errorf("%s of %s touches a task or node not heard from (%s)", a.Kind, what, strings.Join(s.Unheard, ", "))
		}
	}
	return nil
}

// specConstraints turns a job's placement rules into the catalog's.
func specConstraints(s *JobSpec, tasks []int, m *cluster.Model) []cluster.Constraint {
	c := s.Constraints
	var out []cluster.Constraint
	ts := append([]int(nil), tasks...)
	if c.Spread && len(ts) > 1 {
		out = append(out, cluster.Spread{Tasks: ts})
	}
	if c.Gather && len(ts) > 1 {
		out = append(out, cluster.Gather{Tasks: ts})
	}
	if c.Lonely {
		out = append(out, cluster.Lonely{Tasks: ts})
	}
	matching := func(labels map[string]string) []int {
		var ns []int
		for i, n := range m.Nodes {
			ok := true
			for k, v := range labels {
				if n.Labels[k] != v {
					ok = false
					break
				}
			}
			if ok {
				ns = append(ns, i)
			}
		}
		return ns
	}
	if c.Pinned != "" {
		var ns []int
		if i := m.NodeIndex(c.Pinned); i >= 0 {
			ns = []int{i}
		}
		out = append(out, cluster.Fence{Tasks: ts, Nodes: ns})
	}
	if len(c.Fence) > 0 {
		out = append(out, cluster.Fence{Tasks: ts, Nodes: matching(c.Fence)})
	}
	if len(c.Ban) > 0 {
		if ns := matching(c.Ban); len(ns) > 0 {
			out = append(out, cluster.Ban{Tasks: ts, Nodes: ns})
		}
	}
	return out
}

// Problem runs the policy on the snapshot and returns the planner's problem:
// the policy's wanted states (overridden by the operator: stopped jobs are
// killed, suspended jobs sleep), its constraints, the jobs' constraints, and
// bans keeping tasks off draining nodes.
//
// Drain deadlines: a drain moves off what fits elsewhere at once. What does
// not fit — a job the policy would suspend, all of whose running tasks sit
// on draining nodes whose deadline has not passed — keeps running in place
// (fenced to its node, exempt from the drain's ban) until the deadline, in
// case room appears. Once the deadline has passed (DrainDue) the exemption
// ends and the policy's suspend stands: the tasks are suspended to disk
// (processes: checkpoint-stopped), journaled like every action, so the node
// can be taken down without losing their work. A drain without a deadline
// suspends what does not fit at once. Nothing is ever killed by a drain.
func (s *Snapshot) Problem(p policy.Policy) (*plan.Problem, error) {
	m := s.View.Model
	d, err := s.decide(p)
	if err != nil {
		return nil, err
	}
	want := append([]cluster.TaskState(nil), d.Want...)
	s.operatorWants(want)
	s.sleepStranded(want)
	kept := s.keepUntilDeadline(want)
	if err := s.holdSilent(want, p); err != nil {
		return nil, err
	}
	cons := append([]cluster.Constraint(nil), d.Constraints...)
	cons = append(cons, stateConstraints(m, want)...)
	cons = append(cons, s.jobConstraints...)
	if s.eligible != nil {
		cons = append(cons, s.eligible.constraints()...)
	}
	keep := map[int]bool{}
	for _, ti := range kept {
		keep[ti] = true
		cons = append(cons, cluster.Fence{Tasks: []int{ti}, Nodes: []int{m.Tasks[ti].Node}})
	}
	if len(s.silent) > 0 {
		cons = append(cons, s.silentConstraints()...)
		for ti := range s.frozen {
			keep[ti] = true // not moved off a draining node either
		}
	}
	cons = append(cons, s.drainBan(want, keep)...)
	return &plan.Problem{Model: m, Constraints: cons, Objective: plan.MinMTTR, Durations: Durations}, nil
}

// decide runs the policy and notes its recheck.
func (s *Snapshot) decide(p policy.Policy) (policy.Decision, error) {
	d, err := p.Decide(s.View)
	if err != nil {
		return d, fmt.Errorf("policy %s: %w", p.Name(), err)
	}
	if n := len(s.View.Model.Tasks); len(d.Want) != n {
		return d, fmt.Errorf("policy %s: %d wanted states for %d tasks", p.Name(), len(d.Want), n)
	}
	s.Recheck = 0
	if d.Recheck > s.View.Now {
		s.Recheck = d.Recheck
	}
	return d, nil
}

// operatorWants overrides want with the operator's: a stopped job's tasks
// are killed, a suspended job's sleep (or wait, if never placed).
func (s *Snapshot) operatorWants(want []cluster.TaskState) {
	for _, j := range s.View.Jobs {
		switch s.Want[j.Name] {
		case store.WantStop:
			for _, ti := range j.Tasks {
				want[ti] = cluster.Killed
			}
		case store.WantSleep:
			s.sleepJob(j, want)
		}
	}
}

// sleepJob wants the job's placed tasks sleeping and the others waiting.
func (s *Snapshot) sleepJob(j policy.Job, want []cluster.TaskState) {
	for _, ti := range j.Tasks {
		if st := s.View.Model.Tasks[ti].State; st == cluster.Running || st == cluster.Sleeping {
			want[ti] = cluster.Sleeping
		} else {
			want[ti] = cluster.Ready
		}
	}
}

// sleepStranded: a job with a task no usable node can take does not run
// (Priority knows through View.Eligible; other policies may not): it
// sleeps, or waits, as a job that does not fit — and on a draining node
// with a deadline keeps running until then (keepUntilDeadline).
func (s *Snapshot) sleepStranded(want []cluster.TaskState) {
	m := s.View.Model
	for _, j := range s.View.Jobs {
		stranded := false
		for _, ti := range j.Tasks {
			stranded = stranded || want[ti] == cluster.Running && s.Stranded[m.Tasks[ti].Name] != ""
		}
		if stranded {
			s.sleepJob(j, want)
		}
	}
}

// keepUntilDeadline keeps running, in place, the jobs the operator wants
// running that would be evicted and all of whose running tasks sit on
// draining nodes whose deadline has not passed; it returns those tasks.
func (s *Snapshot) keepUntilDeadline(want []cluster.TaskState) []int {
	if len(s.DrainGrace) == 0 {
		return nil
	}
	m := s.View.Model
	var kept []int
	for _, j := range s.View.Jobs {
		if s.Want[j.Name] != store.WantRun {
			continue
		}
		evicted, elsewhere := false, false
		var running []int
		for _, ti := range j.Tasks {
			t := m.Tasks[ti]
			if t.State != cluster.Running {
				continue
			}
			running = append(running, ti)
			if !s.DrainGrace[t.Node] {
				elsewhere = true
			}
			if want[ti] != cluster.Running {
				evicted = true
			}
		}
		if !evicted || elsewhere {
			continue
		}
		for _, ti := range running {
			want[ti] = cluster.Running
			kept = append(kept, ti)
		}
	}
	return kept
}

// holdSilent, while some node is silent (see silence), refuses a decision
// that stops a running task the operator wants running (the silent node's
// room is unknown: ErrWaitingForReports), and keeps the frozen tasks as
// they are.
func (s *Snapshot) holdSilent(want []cluster.TaskState, p policy.Policy) error {
	if len(s.silent) == 0 {
		return nil
	}
	m := s.View.Model
	for _, j := range s.View.Jobs {
		for _, ti := range j.Tasks {
			if s.frozen[ti] {
				continue // kept as it is below: the decision is not taken
			}
			if t := m.Tasks[ti]; t.State == cluster.Running && want[ti] != cluster.Running && s.Want[j.Name] == store.WantRun {
				return fmt.Errorf("%w: %s would stop %s on %s, and %s not heard from since the loop started leading may have room",
					ErrWaitingForReports, p.Name(), t.Name, m.Nodes[t.Node].Name, strings.Join(s.Unheard, ", "))
			}
		}
	}
	for ti := range s.frozen {
		want[ti] = m.Tasks[ti].State
	}
	return nil
}

// stateConstraints fix each task's wanted state: one constraint per state,
// in state order, over the tasks that change state and every task that
// runs (a task with no state constraint keeps its state).
func stateConstraints(m *cluster.Model, want []cluster.TaskState) []cluster.Constraint {
	byState := map[cluster.TaskState][]int{}
	for i, w := range want {
		if w != m.Tasks[i].State || w == cluster.Running {
			byState[w] = append(byState[w], i)
		}
	}
	states := make([]cluster.TaskState, 0, len(byState))
	for st := range byState {
		states = append(states, st)
	}
	sort.Slice(states, func(a, b int) bool { return states[a] < states[b] })
	out := make([]cluster.Constraint, 0, len(states))
	for _, st := range states {
		out = append(out, cluster.StateConstraint{State: st, Tasks: byState[st]})
	}
	return out
}

// drainBan keeps every task that runs or is wanted running, except those
// in keep, off the draining nodes.
func (s *Snapshot) drainBan(want []cluster.TaskState, keep map[int]bool) []cluster.Constraint {
	if len(s.View.Draining) == 0 {
		return nil
	}
	var nodes []int
	for n := range s.View.Draining {
		nodes = append(nodes, n)
	}
	sort.Ints(nodes)
	var tasks []int
	for i, t := range s.View.Model.Tasks {
		if (want[i] == cluster.Running || t.State == cluster.Running) && !keep[i] {
			tasks = append(tasks, i)
		}
	}
	if len(tasks) == 0 {
		return nil
	}
	return []cluster.Constraint{cluster.Ban{Tasks: tasks, Nodes: nodes}}
}
