// Package reference computes the optimum MTTR of tiny reconfiguration
// problems by exhaustive best-first search. It exists for tests only: it is
// written independently of the planner, re-implements the semantics of
// plan/verify (not its code), and is exponential in the size of the problem.
//
// # Search space
//
// A plan is built instant by instant. Instants are 0 and the end times of
// actions: a valid plan can always be left-shifted so that every action
// starts at 0 or when another one ends, without raising any end time (every
// rule only gets easier when a departure ends sooner, and between two events
// the configuration does not change). At each instant the search decides, for
// each node in index order and then each task in index order, to wait or to
// start one action there; a task or node busy with an action waits. After
// the last decision of an instant, time jumps to the next end time; when no
// action is running and none started, the configuration is final and is a
// solution if it meets every final-state rule.
//
// Actions considered: a node boots if it is offline and not wanted offline
// (at most one power action per node) and shuts down only if a constraint
// wants it offline; a task does at most two actions: migrate (to any hosting
// node) if it is to end running, sleeping or ready; resume if wanted running
// (or as the first of resume+shutdown when wanted ready); boot if wanted
// running (or as the first of boot+suspend when wanted sleeping); suspend if
// wanted sleeping or, as a pivot, wanted running (then it must resume later);
// shutdown if wanted ready; kill if wanted killed.
//
// The cost of a partial plan is the sum of the end times of its actions
// (known when they start); the heuristic adds, for every idle task or node
// that must still act (wrong state, or running on a node it may not end on),
// the current instant plus its shortest possible action. It never
// overestimates, so the first complete plan popped is optimal within the
// space above. A budget bounds the number of expanded states.
//
// Limits: durations must be >= 1 (zero-length actions would need decisions
// after an event within the same instant); each task does at most two
// actions and each node at most one; a task never resumes and suspends again
// as a pivot (and a reboot is no pivot: plan/verify rejects it). Any plan
// outside that space is still judged by plan/verify, never by this package.
// brute_test.go confirms the optimum against plain enumeration of every
// plan of up to three actions on micro problems.
package reference

import (
	"container/heap"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sort"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/plan"
)

// ErrBudget is returned when the search expands more states than allowed
// before proving the optimum.
var ErrBudget = errors.New("reference search budget exhausted")

// ErrInfeasible is returned when no plan exists within the search space.
var ErrInfeasible = errors.New("no plan within the reference search space")

// Result is the optimum found.
type Result struct {
	Plan     *plan.Plan
	MTTR     int64
	Expanded int
}

// Limits of the instances this package accepts.
const (
	MaxNodes = 4
	MaxTasks = 8
)

type vm struct {
	st   cluster.TaskState // state once the current action (if any) ends
	node int               // node for running/sleeping (destination)
	// current action, meaningful while busy > t
	busy     int64
	kind     cluster.ActionKind
	from     int  // source node of the current action, or -1
	fromRun  bool // the task runs (rather than sleeps) on from until busy
	nActs    int8
	mustBack bool // suspended as a pivot: must resume
}

type node struct {
	st    cluster.NodeState // state once the current action ends
	busy  int64
	nActs int8
}

type state struct {
	t       int64
	d       int // next decision: nodes first, then tasks
	vms     []vm
	nodes   []node
	seqPos  []int // per seq constraint: highest position that acted
	g       int64
	h       int64
	actions []plan.Action
	idx     int // heap index
}

// search holds one run.
type search struct {
	p       *plan.Problem
	m       *cluster.Model
	dm      cluster.DurationModel
	nT, nN  int
	demand  [][]int64
	capa    [][]int64
	wantT   []cluster.TaskState
	wantN   []int // -1: free
	cons    []cluster.Constraint
	capCons []int // indices of ResourceCapacity / RunningCapacity
	seqs    []cluster.Seq
	noDelay []bool
	root    []bool
	quar    []bool
	// minDur[task][kind] and mustLeave[task][node], see precompute.
	minDur    [][]int64
	mustLeave [][]bool
}

// Solve returns the optimum MTTR plan of p within the search space described
// in the package comment, expanding at most budget states.
func Solve(p *plan.Problem, budget int) (*Result, error) {
	if p == nil || p.Model == nil {
		return nil, fmt.Errorf("%w: nil problem", cluster.ErrInvalid)
	}
	if err := p.Model.Validate(); err != nil {
		return nil, err
	}
	s := &search{p: p, m: p.Model, dm: p.Durations, nT: len(p.Model.Tasks), nN: len(p.Model.Nodes), cons: p.Constraints}
	if s.nN > MaxNodes || s.nT > MaxTasks {
		return nil, fmt.Errorf("%w: reference solves at most %d nodes and %d tasks", cluster.ErrInvalid, MaxNodes, MaxTasks)
	}
	if s.dm == nil {
		s.dm = cluster.AttrDurations{}
	}
	if err := s.prepare(); err != nil {
		return nil, err
	}
	s.precompute()
	return s.run(budget)
}

func (s *search) prepare() error {
	m := s.m
	s.demand = make([][]int64, s.nT)
	for t := range m.Tasks {
		s.demand[t] = append([]int64(nil), m.Tasks[t].Demand...)
	}
	s.capa = make([][]int64, s.nN)
	for n := range m.Nodes {
		s.capa[n] = append([]int64(nil), m.Nodes[n].Capacity...)
	}
	s.wantT = make([]cluster.TaskState, s.nT)
	for t := range m.Tasks {
		s.wantT[t] = m.Tasks[t].State
	}
	s.wantN = make([]int, s.nN)
	for n := range s.wantN {
		s.wantN[n] = -1
	}
	s.noDelay = make([]bool, s.nT)
	s.root = make([]bool, s.nT)
	s.quar = make([]bool, s.nN)
	ratio := map[[2]int]float64{}
	wantedT := make([]bool, s.nT)
	for i, k := range s.cons {
		switch k := k.(type) {
		case cluster.Preserve:
			r := m.Resource(k.Resource)
			if r < 0 {
				return fmt.Errorf("%w: preserve: unknown resource %q", cluster.ErrInvalid, k.Resource)
			}
			for _, t := range k.Tasks {
				if s.demand[t][r] < k.Amount {
					s.demand[t][r] = k.Amount
				}
			}
		case cluster.StateConstraint:
			for _, t := range k.Tasks {
				if wantedT[t] && s.wantT[t] != k.State {
					return ErrInfeasible // two different wanted states
				}
				wantedT[t] = true
				s.wantT[t] = k.State
			}
		case cluster.NodeStateConstraint:
			for _, n := range k.Nodes {
				if s.wantN[n] >= 0 && s.wantN[n] != int(k.State) {
					return ErrInfeasible
				}
				s.wantN[n] = int(k.State)
			}
		case cluster.Overbook:
			r := m.Resource(k.Resource)
			if r < 0 {
				return fmt.Errorf("%w: overbook: unknown resource %q", cluster.ErrInvalid, k.Resource)
			}
			for _, n := range k.Nodes {
				key := [2]int{n, r}
				if old, ok := ratio[key]; !ok || k.Ratio < old {
					ratio[key] = k.Ratio
				}
			}
		case cluster.ResourceCapacity, cluster.RunningCapacity:
			s.capCons = append(s.capCons, i)
		case cluster.Seq:
			s.seqs = append(s.seqs, k)
		case cluster.NoDelay:
			s.noDelay[k.Task] = true
		case cluster.Root:
			for _, t := range k.Tasks {
				s.root[t] = true
			}
		case cluster.Quarantine:
			for _, n := range k.Nodes {
				s.quar[n] = true
			}
		}
	}
	for key, r := range ratio {
		if r > 1 {
			s.capa[key[0]][key[1]] = int64(math.Floor(float64(s.capa[key[0]][key[1]]) * r))
		}
	}
	return nil
}

func (s *search) dur(kind cluster.ActionKind, task, from, to int) int64 {
	if kind.IsNodeAction() {
		return s.dm.Duration(s.m, kind, -1, cluster.NoNode, to)
	}
	return s.dm.Duration(s.m, kind, task, from, to)
}

func (s *search) initial() *state {
	st := &state{
		vms:    make([]vm, s.nT),
		nodes:  make([]node, s.nN),
		seqPos: make([]int, len(s.seqs)),
	}
	for t, tk := range s.m.Tasks {
		st.vms[t] = vm{st: tk.State, node: tk.Node, from: -1}
	}
	for n, nd := range s.m.Nodes {
		st.nodes[n] = node{st: nd.State}
	}
	for i := range st.seqPos {
		st.seqPos[i] = -1
	}
	st.h = s.heuristic(st)
	return st
}

func (st *state) clone() *state {
	c := *st
	c.vms = append([]vm(nil), st.vms...)
	c.nodes = append([]node(nil), st.nodes...)
	c.seqPos = append([]int(nil), st.seqPos...)
	c.actions = st.actions[:len(st.actions):len(st.actions)]
	return &c
}

func (st *state) key() string {
	b := make([]byte, 0, 16+len(st.vms)*24+len(st.nodes)*10+len(st.seqPos)*2)
	put := func(x int64) { b = binary.AppendVarint(b, x) }
	put(st.t)
	put(int64(st.d))
	for _, v := range st.vms {
		busy := v.busy
		if busy <= st.t {
			busy = 0
		}
		flags := int64(v.nActs) << 2
		if v.fromRun {
			flags |= 1
		}
		if v.mustBack {
			flags |= 2
		}
		put(int64(v.st))
		put(int64(v.node))
		put(busy)
		put(int64(v.kind))
		put(int64(v.from))
		put(flags)
	}
	for _, n := range st.nodes {
		busy := n.busy
		if busy <= st.t {
			busy = 0
		}
		put(int64(n.st))
		put(busy)
		put(int64(n.nActs))
	}
	for _, p := range st.seqPos {
		put(int64(p))
	}
	return string(b)
}

// presences of task v at the state's instant: (node, running) pairs.
func (s *search) presences(st *state, v int) (out [2]struct {
	node    int
	running bool
}, n int) {
	x := st.vms[v]
	add := func(node int, run bool) {
		out[n].node, out[n].running = node, run
		n++
	}
	if x.busy > st.t {
		if x.from >= 0 {
			add(x.from, x.fromRun)
		}
		switch x.kind {
		case cluster.Migrate, cluster.Boot, cluster.Resume:
			add(x.node, true)
		}
		return
	}
	switch x.st {
	case cluster.Running:
		add(x.node, true)
	case cluster.Sleeping:
		add(x.node, false)
	}
	return
}

// runningOn returns the nodes where u runs at the instant.
func (s *search) runningOn(st *state, u int) []int {
	ps, n := s.presences(st, u)
	var out []int
	for i := 0; i < n; i++ {
		if ps[i].running {
			out = append(out, ps[i].node)
		}
	}
	return out
}

func (s *search) hostable(st *state, n int) bool {
	x := st.nodes[n]
	return x.st == cluster.NodeOnline && x.busy <= st.t
}

func (s *search) occupied(st *state, n int) bool {
	for v := range st.vms {
		ps, k := s.presences(st, v)
		for i := 0; i < k; i++ {
			if ps[i].node == n {
				return true
			}
		}
	}
	return false
}

func (s *search) load(st *state, nodes func(int) bool) ([]int64, int64) {
	l := make([]int64, len(s.m.Resources))
	var cnt int64
	for v := range st.vms {
		for _, n := range s.runningOn(st, v) {
			if nodes(n) {
				cnt++
				for r := range l {
					l[r] += s.demand[v][r]
				}
			}
		}
	}
	return l, cnt
}

// arrivalOK checks the arrival of v (already applied to st) on n at st.t.
func (s *search) arrivalOK(st *state, v, n int) bool {
	if !s.hostable(st, n) {
		return false
	}
	l, _ := s.load(st, func(x int) bool { return x == n })
	for r := range l {
		if l[r] > s.capa[n][r] {
			return false
		}
	}
	for _, i := range s.capCons {
		var nodes []int
		var r int
		var amount int64
		switch k := s.cons[i].(type) {
		case cluster.ResourceCapacity:
			nodes, r, amount = k.Nodes, s.m.Resource(k.Resource), k.Amount
			if !k.Continuous {
				continue
			}
		case cluster.RunningCapacity:
			nodes, r, amount = k.Nodes, -1, int64(k.Amount)
			if !k.Continuous {
				continue
			}
		}
		if !has(nodes, n) {
			continue
		}
		l, cnt := s.load(st, func(x int) bool { return has(nodes, x) })
		if (r < 0 && cnt > amount) || (r >= 0 && l[r] > amount) {
			return false
		}
	}
	for _, k := range s.cons {
		if !s.continuousOK(st, k, v, n) {
			return false
		}
	}
	return true
}

func has(xs []int, x int) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// continuousOK: the arrival of v on n keeps continuous constraint k.
func (s *search) continuousOK(st *state, k cluster.Constraint, v, n int) bool {
	if !k.IsContinuous() {
		return true
	}
	others := func(tasks []int, f func(u int, nodes []int) bool) bool {
		for _, u := range tasks {
			if u != v && !f(u, s.runningOn(st, u)) {
				return false
			}
		}
		return true
	}
	switch k := k.(type) {
	case cluster.Spread:
		if has(k.Tasks, v) {
			return others(k.Tasks, func(_ int, ns []int) bool { return !has(ns, n) })
		}
	case cluster.Ban:
		return !has(k.Tasks, v) || !has(k.Nodes, n)
	case cluster.Fence:
		return !has(k.Tasks, v) || has(k.Nodes, n)
	case cluster.Gather:
		if has(k.Tasks, v) {
			return others(k.Tasks, func(_ int, ns []int) bool {
				for _, m := range ns {
					if m != n {
						return false
					}
				}
				return true
			})
		}
	case cluster.Among:
		if has(k.Tasks, v) {
			used := []int{n}
			others(k.Tasks, func(_ int, ns []int) bool { used = append(used, ns...); return true })
			for _, g := range k.Groups {
				all := true
				for _, x := range used {
					all = all && has(g, x)
				}
				if all {
					return true
				}
			}
			return false
		}
	case cluster.Split:
		gv := groupIndex(k.Groups, v)
		if gv >= 0 {
			for _, u := range flat(k.Groups) {
				if u != v && groupIndex(k.Groups, u) != gv && has(s.runningOn(st, u), n) {
					return false
				}
			}
		}
	case cluster.SplitAmong:
		if groupIndex(k.TaskGroups, v) >= 0 {
			return s.splitAmongOK(k, func(u int) []int {
				if u == v {
					return []int{n}
				}
				return s.runningOn(st, u)
			})
		}
	case cluster.Lonely:
		in := has(k.Tasks, v)
		for u := range st.vms {
			if u != v && has(k.Tasks, u) != in && has(s.runningOn(st, u), n) {
				return false
			}
		}
	}
	return true
}

func groupIndex(gs [][]int, x int) int {
	for i, g := range gs {
		if has(g, x) {
			return i
		}
	}
	return -1
}

func flat(gs [][]int) []int {
	var out []int
	for _, g := range gs {
		out = append(out, g...)
	}
	return out
}

func (s *search) splitAmongOK(k cluster.SplitAmong, where func(u int) []int) bool {
	used := map[int]int{}
	owner := map[int]int{}
	for _, u := range flat(k.TaskGroups) {
		g := groupIndex(k.TaskGroups, u)
		for _, n := range where(u) {
			ng := groupIndex(k.NodeGroups, n)
			if ng < 0 {
				return false
			}
			if p, ok := used[g]; ok && p != ng {
				return false
			}
			used[g] = ng
			if o, ok := owner[ng]; ok && o != g {
				return false
			}
			owner[ng] = g
		}
	}
	return true
}

// finalOK checks the final-state rules on a state with no running action.
func (s *search) finalOK(st *state) bool {
	for v, x := range st.vms {
		if x.st != s.wantT[v] || x.mustBack {
			return false
		}
	}
	for n, x := range st.nodes {
		if s.wantN[n] >= 0 && int(x.st) != s.wantN[n] {
			return false
		}
	}
	run := func(u int) []int {
		if st.vms[u].st == cluster.Running {
			return []int{st.vms[u].node}
		}
		return nil
	}
	for n := range st.nodes {
		l := make([]int64, len(s.m.Resources))
		for v := range st.vms {
			if st.vms[v].st == cluster.Running && st.vms[v].node == n {
				for r := range l {
					l[r] += s.demand[v][r]
				}
			}
		}
		for r := range l {
			if l[r] > s.capa[n][r] {
				return false
			}
		}
	}
	for _, k := range s.cons {
		ok := true
		switch k := k.(type) {
		case cluster.Spread:
			seen := map[int]bool{}
			for _, u := range k.Tasks {
				for _, n := range run(u) {
					ok = ok && !seen[n]
					seen[n] = true
				}
			}
		case cluster.Ban:
			for _, u := range k.Tasks {
				for _, n := range run(u) {
					ok = ok && !has(k.Nodes, n)
				}
			}
		case cluster.Fence:
			for _, u := range k.Tasks {
				for _, n := range run(u) {
					ok = ok && has(k.Nodes, n)
				}
			}
		case cluster.Gather:
			where := -1
			for _, u := range k.Tasks {
				for _, n := range run(u) {
					ok = ok && (where < 0 || where == n)
					where = n
				}
			}
		case cluster.Among:
			var used []int
			for _, u := range k.Tasks {
				used = append(used, run(u)...)
			}
			if len(used) > 0 {
				ok = false
				for _, g := range k.Groups {
					all := true
					for _, x := range used {
						all = all && has(g, x)
					}
					ok = ok || all
				}
			}
		case cluster.Split:
			owner := map[int]int{}
			for _, u := range flat(k.Groups) {
				g := groupIndex(k.Groups, u)
				for _, n := range run(u) {
					if o, seen := owner[n]; seen && o != g {
						ok = false
					}
					owner[n] = g
				}
			}
		case cluster.SplitAmong:
			ok = s.splitAmongOK(k, run)
		case cluster.Lonely:
			for u := range st.vms {
				for w := range st.vms {
					if has(k.Tasks, u) && !has(k.Tasks, w) {
						for _, n := range run(u) {
							ok = ok && !has(run(w), n)
						}
					}
				}
			}
		case cluster.ResourceCapacity:
			r := s.m.Resource(k.Resource)
			var sum int64
			for u := range st.vms {
				for _, n := range run(u) {
					if has(k.Nodes, n) {
						sum += s.demand[u][r]
					}
				}
			}
			ok = sum <= k.Amount
		case cluster.RunningCapacity:
			cnt := 0
			for u := range st.vms {
				for _, n := range run(u) {
					if has(k.Nodes, n) {
						cnt++
					}
				}
			}
			ok = cnt <= k.Amount
		case cluster.MaxOnline:
			cnt := 0
			for _, n := range k.Nodes {
				if st.nodes[n].st == cluster.NodeOnline {
					cnt++
				}
			}
			ok = cnt <= k.Amount
		}
		if !ok {
			return false
		}
	}
	return true
}

// heuristic: every idle task or node that must still act costs at least the
// end of the cheapest action sequence that fixes it, started now.
func (s *search) heuristic(st *state) int64 {
	var h int64
	t := st.t
	for v, x := range st.vms {
		if x.busy > t {
			continue
		}
		md := s.minDur[v]
		want := s.wantT[v]
		switch {
		case x.mustBack:
			h += t + md[cluster.Resume]
		case x.st != want:
			var k cluster.ActionKind
			switch want {
			case cluster.Running:
				k = cluster.Boot
				if x.st == cluster.Sleeping {
					k = cluster.Resume
				}
			case cluster.Sleeping:
				k = cluster.Suspend
			case cluster.Ready:
				k = cluster.Shutdown
			default:
				k = cluster.Kill
			}
			h += t + md[k]
		case x.st == cluster.Running && s.mustLeave[v][x.node]:
			h += min(t+md[cluster.Migrate], 2*t+2*md[cluster.Suspend]+md[cluster.Resume])
		}
	}
	for n, x := range st.nodes {
		if x.busy <= t && s.wantN[n] >= 0 && int(x.st) != s.wantN[n] {
			kind := cluster.BootNode
			if x.st == cluster.NodeOnline {
				kind = cluster.ShutdownNode
			}
			h += t + s.dur(kind, -1, -1, n)
		}
	}
	return h
}

// precompute fills minDur (per task and kind, the shortest duration over
// all node pairs) and mustLeave (a running task may not end on the node).
func (s *search) precompute() {
	s.minDur = make([][]int64, s.nT)
	s.mustLeave = make([][]bool, s.nT)
	kinds := cluster.ActionKinds()
	for v := 0; v < s.nT; v++ {
		s.minDur[v] = make([]int64, len(kinds))
		for _, k := range kinds {
			best := int64(math.MaxInt64)
			for from := -1; from < s.nN; from++ {
				for to := -1; to < s.nN; to++ {
					if d := s.dur(k, v, from, to); d < best {
						best = d
					}
				}
			}
			s.minDur[v][k] = best
		}
		s.mustLeave[v] = make([]bool, s.nN)
		for n := 0; n < s.nN; n++ {
			leave := s.wantN[n] == int(cluster.NodeOffline)
			for _, k := range s.cons {
				switch k := k.(type) {
				case cluster.Ban:
					leave = leave || (has(k.Tasks, v) && has(k.Nodes, n))
				case cluster.Fence:
					leave = leave || (has(k.Tasks, v) && !has(k.Nodes, n))
				}
			}
			s.mustLeave[v][n] = leave
		}
	}
}

// successors of st: the options of decision st.d.
func (s *search) successors(st *state) []*state {
	if st.d >= s.nN+s.nT {
		return s.advance(st)
	}
	var out []*state
	wait := st.clone()
	wait.d++
	out = append(out, wait)
	if st.d < s.nN {
		n := st.d
		x := st.nodes[n]
		if x.busy > st.t || x.nActs >= 1 {
			return out
		}
		if x.st == cluster.NodeOffline && s.wantN[n] != int(cluster.NodeOffline) {
			c := st.clone()
			c.d++
			d := s.dur(cluster.BootNode, -1, -1, n)
			c.nodes[n] = node{st: cluster.NodeOnline, busy: st.t + d, nActs: x.nActs + 1}
			if s.maxOnlineOK(c) {
				s.emit(c, plan.Action{Kind: cluster.BootNode, Task: -1, Node: n, From: cluster.NoNode, To: n, Start: st.t, End: st.t + d})
				out = append(out, c)
			}
		} else if s.wantN[n] == int(cluster.NodeOffline) && !s.occupied(st, n) {
			c := st.clone()
			c.d++
			d := s.dur(cluster.ShutdownNode, -1, -1, n)
			c.nodes[n] = node{st: cluster.NodeOffline, busy: st.t + d, nActs: x.nActs + 1}
			s.emit(c, plan.Action{Kind: cluster.ShutdownNode, Task: -1, Node: n, From: cluster.NoNode, To: n, Start: st.t, End: st.t + d})
			out = append(out, c)
		}
		return out
	}
	v := st.d - s.nN
	x := st.vms[v]
	if x.busy > st.t || x.nActs >= 2 || x.st == cluster.Killed || (s.noDelay[v] && st.t > 0) || !s.seqAllows(st, v) {
		return out
	}
	want := s.wantT[v]
	try := func(kind cluster.ActionKind, from, to int, fromRun bool, after cluster.TaskState, dest int) {
		if s.root[v] && (kind == cluster.Migrate || (kind == cluster.Resume && to != from)) {
			return
		}
		arrives := kind == cluster.Migrate || kind == cluster.Boot || kind == cluster.Resume
		if arrives && s.quar[to] && !(kind == cluster.Resume && to == from) {
			return
		}
		if (kind == cluster.Migrate || (kind == cluster.Resume && to != from)) && s.quar[from] {
			return
		}
		c := st.clone()
		c.d++
		d := s.dur(kind, v, from, to)
		if d < 1 {
			return // outside the space: see the package comment
		}
		nv := vm{st: after, node: dest, busy: st.t + d, kind: kind, from: from, fromRun: fromRun, nActs: x.nActs + 1}
		if kind == cluster.Suspend && want == cluster.Running {
			nv.mustBack = true
		}
		c.vms[v] = nv
		if arrives && !s.arrivalOK(c, v, to) {
			return
		}
		s.markSeq(c, v)
		s.emit(c, plan.Action{Kind: kind, Task: v, Node: -1, From: from, To: to, Start: st.t, End: st.t + d})
		out = append(out, c)
	}
	switch x.st {
	case cluster.Running:
		if want == cluster.Running || want == cluster.Sleeping || want == cluster.Ready {
			for m := 0; m < s.nN; m++ {
				if m != x.node {
					try(cluster.Migrate, x.node, m, true, cluster.Running, m)
				}
			}
		}
		if want == cluster.Sleeping || (want == cluster.Running && x.nActs == 0) {
			try(cluster.Suspend, x.node, x.node, true, cluster.Sleeping, x.node)
		}
		if want == cluster.Ready {
			try(cluster.Shutdown, x.node, cluster.NoNode, true, cluster.Ready, cluster.NoNode)
		}
		if want == cluster.Killed {
			try(cluster.Kill, x.node, cluster.NoNode, true, cluster.Killed, cluster.NoNode)
		}
	case cluster.Sleeping:
		if want == cluster.Running || (want == cluster.Ready && x.nActs == 0) {
			for m := 0; m < s.nN; m++ {
				try(cluster.Resume, x.node, m, false, cluster.Running, m)
			}
		}
		if want == cluster.Killed {
			try(cluster.Kill, x.node, cluster.NoNode, false, cluster.Killed, cluster.NoNode)
		}
	case cluster.Ready:
		if want == cluster.Running || (want == cluster.Sleeping && x.nActs == 0) {
			for m := 0; m < s.nN; m++ {
				try(cluster.Boot, cluster.NoNode, m, false, cluster.Running, m)
			}
		}
		if want == cluster.Killed {
			try(cluster.Kill, cluster.NoNode, cluster.NoNode, false, cluster.Killed, cluster.NoNode)
		}
	}
	return out
}

// seqAllows: a task of a seq may act only when every earlier task of the
// list is idle and no later task has acted.
func (s *search) seqAllows(st *state, v int) bool {
	for i, q := range s.seqs {
		pos := -1
		for j, u := range q.Tasks {
			if u == v {
				pos = j
			}
		}
		if pos < 0 {
			continue
		}
		if st.seqPos[i] > pos {
			return false
		}
		for j := 0; j < pos; j++ {
			if st.vms[q.Tasks[j]].busy > st.t {
				return false
			}
		}
	}
	return true
}

func (s *search) markSeq(st *state, v int) {
	for i, q := range s.seqs {
		for j, u := range q.Tasks {
			if u == v && j > st.seqPos[i] {
				st.seqPos[i] = j
			}
		}
	}
}

// maxOnlineOK checks continuous maxOnline right after a node powers on.
func (s *search) maxOnlineOK(st *state) bool {
	for _, k := range s.cons {
		if mo, ok := k.(cluster.MaxOnline); ok && mo.Continuous {
			cnt := 0
			for _, n := range mo.Nodes {
				x := st.nodes[n]
				if x.st == cluster.NodeOnline || x.busy > st.t {
					cnt++
				}
			}
			if cnt > mo.Amount {
				return false
			}
		}
	}
	return true
}

func (s *search) emit(st *state, a plan.Action) {
	st.actions = append(st.actions, a)
	st.g += a.End
	st.h = s.heuristic(st)
}

// advance moves to the next end time, or marks a final state.
func (s *search) advance(st *state) []*state {
	next := int64(math.MaxInt64)
	for _, x := range st.vms {
		if x.busy > st.t && x.busy < next {
			next = x.busy
		}
	}
	for _, x := range st.nodes {
		if x.busy > st.t && x.busy < next {
			next = x.busy
		}
	}
	if next == math.MaxInt64 {
		if s.finalOK(st) {
			c := st.clone()
			c.d = -1 // final
			c.h = 0
			return []*state{c}
		}
		return nil
	}
	c := st.clone()
	c.t, c.d = next, 0
	for i := range c.vms {
		if c.vms[i].busy <= next {
			c.vms[i].from = -1
			c.vms[i].kind = 0
			c.vms[i].fromRun = false
			if c.vms[i].st == cluster.Running && c.vms[i].mustBack {
				c.vms[i].mustBack = false
			}
		}
	}
	c.h = s.heuristic(c)
	return []*state{c}
}

type pq []*state

func (q pq) Len() int { return len(q) }
func (q pq) Less(i, j int) bool {
	fi, fj := q[i].g+q[i].h, q[j].g+q[j].h
	if fi != fj {
		return fi < fj
	}
	if q[i].t != q[j].t {
		return q[i].t > q[j].t
	}
	return q[i].d > q[j].d
}
func (q pq) Swap(i, j int) { q[i], q[j] = q[j], q[i]; q[i].idx = i; q[j].idx = j }
func (q *pq) Push(x any)   { s := x.(*state); s.idx = len(*q); *q = append(*q, s) }
func (q *pq) Pop() any {
	old := *q
	s := old[len(old)-1]
	*q = old[:len(old)-1]
	return s
}

func (s *search) run(budget int) (*Result, error) {
	best := map[string]int64{}
	q := &pq{}
	heap.Push(q, s.initial())
	expanded := 0
	for q.Len() > 0 {
		st := heap.Pop(q).(*state)
		if st.d == -1 {
			acts := append([]plan.Action(nil), st.actions...)
			sort.SliceStable(acts, func(i, j int) bool { return acts[i].Start < acts[j].Start })
			return &Result{Plan: &plan.Plan{Origin: s.m, Actions: acts}, MTTR: st.g, Expanded: expanded}, nil
		}
		k := st.key()
		if g, ok := best[k]; ok && g < st.g {
			continue
		}
		expanded++
		if expanded > budget {
			return nil, fmt.Errorf("%w after %d states", ErrBudget, budget)
		}
		for _, c := range s.successors(st) {
			if c.d == -1 {
				heap.Push(q, c)
				continue
			}
			ck := c.key()
			if g, ok := best[ck]; ok && g <= c.g {
				continue
			}
			best[ck] = c.g
			heap.Push(q, c)
		}
	}
	return nil, ErrInfeasible
}
