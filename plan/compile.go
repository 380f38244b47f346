package plan

import (
	"fmt"
	"math"
	"sort"

	"github.com/ferrycluster/ferry/cluster"
)

// inst is a Problem compiled to dense arrays: what every later stage reads.
// Tasks and nodes are int32 indices; per-resource vectors are flattened
// (task t, resource r at t*nR+r).
type inst struct {
	p          *Problem
	m          *cluster.Model
	liveOnly   bool // Options.LiveOnly
	dm         cluster.DurationModel
	nT, nN, nR int

	demand []int64 // running demand, raised by preserve
	capa   []int64 // effective capacity (overbook applied)

	curState []cluster.TaskState
	curNode  []int32
	tgtState []cluster.TaskState
	stateBy  []int32 // index of the state constraint fixing tgtState, or -1

	nodeCur   []cluster.NodeState
	nodeTgt   []cluster.NodeState
	nodeFixed []bool // node state fixed by a constraint

	// pinned tasks may not change node (root, quarantine, continuous gather...).
	pinned []bool
	// sealed nodes accept no arrival (quarantine).
	sealed []bool

	// rules scoped to a task, to a node, or to every task.
	taskRules [][]rule
	nodeRules [][]rule
	allRules  []rule
	rules     []rule // every placement rule, for reset

	// scheduling constraints
	seqs    [][]int32
	noDelay []bool
	cont    contRules
}

// contRules are the continuous constraints the scheduler enforces at every
// instant (the placement ones are enforced by the target placement).
type contRules struct {
	spread   []*spreadRule
	split    []*splitRule
	lonely   []*lonelyRule
	capGroup []*capGroupRule
	online   []*maxOnlineRule
	// per task: continuous rules that restrict where it may be at any instant
	// (ban/fence), used to choose pivot nodes.
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{cluster.ErrInvalid}, args...)...)
}

// compile validates the problem and builds the dense instance.
func compile(p *Problem) (*inst, error) {
	if p == nil || p.Model == nil {
		return nil, invalid("problem has no model")
	}
	m := p.Model
	if err := m.Validate(); err != nil {
		return nil, err
	}
	if p.Objective != MinMTTR && p.Objective != MinMigrations {
		return nil, invalid("unknown objective %d", p.Objective)
	}
	in := &inst{p: p, m: m, nT: len(m.Tasks), nN: len(m.Nodes), nR: len(m.Resources)}
	if len(m.Tasks) > math.MaxInt32-1 || len(m.Nodes) > math.MaxInt32-1 {
		return nil, invalid("model too large")
	}
	in.dm = p.Durations
	if in.dm == nil {
		in.dm = cluster.AttrDurations{}
	}
	nT, nN, nR := in.nT, in.nN, in.nR
	in.demand = make([]int64, nT*nR)
	in.capa = make([]int64, nN*nR)
	in.curState = make([]cluster.TaskState, nT)
	in.curNode = make([]int32, nT)
	in.tgtState = make([]cluster.TaskState, nT)
	in.stateBy = make([]int32, nT)
	in.pinned = make([]bool, nT)
	in.noDelay = make([]bool, nT)
	for i := range m.Tasks {
		t := &m.Tasks[i]
		copy(in.demand[i*nR:(i+1)*nR], t.Demand)
		in.curState[i] = t.State
		in.curNode[i] = int32(t.Node)
		in.tgtState[i] = t.State
		in.stateBy[i] = -1
	}
	in.nodeCur = make([]cluster.NodeState, nN)
	in.nodeTgt = make([]cluster.NodeState, nN)
	in.nodeFixed = make([]bool, nN)
	in.sealed = make([]bool, nN)
	for i := range m.Nodes {
		copy(in.capa[i*nR:(i+1)*nR], m.Nodes[i].Capacity)
		in.nodeCur[i] = m.Nodes[i].State
		in.nodeTgt[i] = m.Nodes[i].State
	}
	in.taskRules = make([][]rule, nT)
	in.nodeRules = make([][]rule, nN)

	// checkRefs: every task and node index the constraint references
	// (cluster.TaskGroups / NodeGroups, which copy nothing) is in range.
	// Large node groups are usually one slice shared by many constraints
	// (every among over the same partition of the cluster): each is
	// checked once.
	checkedGroups := map[groupKey]bool{}
	checkRefs := func(ci int, kind string, c cluster.Constraint) error {
		for _, g := range cluster.TaskGroups(c) {
			for _, t := range g {
				if t < 0 || t >= nT {
					return invalid("constraint %d (%s): task index %d out of range [0,%d)", ci, kind, t, nT)
				}
			}
		}
		for _, g := range cluster.NodeGroups(c) {
			if len(g) >= sharedGroupLen {
				k := groupKey{&g[0], len(g)}
				if checkedGroups[k] {
					continue
				}
				checkedGroups[k] = true
			}
			for _, n := range g {
				if n < 0 || n >= nN {
					return invalid("constraint %d (%s): node index %d out of range [0,%d)", ci, kind, n, nN)
				}
			}
		}
		return nil
	}
	resource := func(ci int, kind, name string) (int, error) {
		r := m.Resource(name)
		if r < 0 {
			return 0, invalid("constraint %d (%s): unknown resource %q", ci, kind, name)
		}
		return r, nil
	}
	nodeStateBy := make([]int32, nN)
	for i := range nodeStateBy {
		nodeStateBy[i] = -1
	}
	// Ratios of overbook, applied after every constraint is read.
	ratio := make(map[int]float64) // node*nR+r -> min ratio
	var preserves []cluster.Preserve
	var preserveRes []int

	// First pass: validate, states, preserve, overbook.
	for ci, c := range p.Constraints {
		if c == nil {
			return nil, invalid("constraint %d is nil", ci)
		}
		kind := c.Kind()
		if err := checkRefs(ci, kind, c); err != nil {
			return nil, err
		}
		var err error
		switch c := c.(type) {
		case cluster.Spread, cluster.Ban, cluster.Fence, cluster.Gather, cluster.Split, cluster.SplitAmong,
			cluster.Lonely, cluster.Root, cluster.Quarantine, cluster.NoDelay:
			// Only references, checked above.
		case *cluster.Spread:
			err = invalid("constraint %d (%s): pass constraints by value", ci, kind)
		case cluster.Among:
			if len(c.Groups) == 0 {
				err = invalid("constraint %d (%s): no node group", ci, kind)
			}
		case cluster.StateConstraint:
			if c.State > cluster.Killed {
				err = invalid("constraint %d: bad task state %d", ci, c.State)
				break
			}
			for _, t := range c.Tasks {
				if in.stateBy[t] >= 0 && in.tgtState[t] != c.State {
					return nil, &ConflictError{Constraint: kind, Reason: fmt.Sprintf("task %q is wanted both %s (constraint %d) and %s (constraint %d)",
						m.Tasks[t].Name, in.tgtState[t], in.stateBy[t], c.State, ci)}
				}
				in.tgtState[t] = c.State
				in.stateBy[t] = int32(ci)
			}
		case cluster.NodeStateConstraint:
			if c.State != cluster.NodeOnline && c.State != cluster.NodeOffline {
				err = invalid("constraint %d: bad node state %d", ci, c.State)
				break
			}
			for _, n := range c.Nodes {
				if nodeStateBy[n] >= 0 && in.nodeTgt[n] != c.State {
					return nil, &ConflictError{Constraint: kind, Node: m.Nodes[n].Name, Reason: fmt.Sprintf("node wanted both %s (constraint %d) and %s (constraint %d)",
						in.nodeTgt[n], nodeStateBy[n], c.State, ci)}
				}
				in.nodeTgt[n] = c.State
				in.nodeFixed[n] = true
				nodeStateBy[n] = int32(ci)
			}
		case cluster.Preserve:
			var r int
			if r, err = resource(ci, kind, c.Resource); err != nil {
				break
			}
			if c.Amount < 0 {
				err = invalid("constraint %d (%s): negative amount %d", ci, kind, c.Amount)
				break
			}
			preserves = append(preserves, c)
			preserveRes = append(preserveRes, r)
		case cluster.ResourceCapacity:
			if _, err = resource(ci, kind, c.Resource); err != nil {
				break
			}
			if c.Amount < 0 {
				err = invalid("constraint %d (%s): negative amount %d", ci, kind, c.Amount)
			}
		case cluster.RunningCapacity:
			if c.Amount < 0 {
				err = invalid("constraint %d (%s): negative amount %d", ci, kind, c.Amount)
			}
		case cluster.MaxOnline:
			if c.Amount < 0 {
				err = invalid("constraint %d (%s): negative amount %d", ci, kind, c.Amount)
			}
		case cluster.Overbook:
			var r int
			if r, err = resource(ci, kind, c.Resource); err != nil {
				break
			}
			if !(c.Ratio >= 1) || math.IsInf(c.Ratio, 0) {
				err = invalid("constraint %d (%s): ratio %v must be a finite number >= 1", ci, kind, c.Ratio)
				break
			}
			for _, n := range c.Nodes {
				k := n*nR + r
				if old, ok := ratio[k]; !ok || c.Ratio < old {
					ratio[k] = c.Ratio
				}
			}
		case cluster.Seq:
			seen := make(map[int]bool, len(c.Tasks))
			for _, t := range c.Tasks {
				if seen[t] {
					err = invalid("constraint %d (seq): task %q listed twice", ci, m.Tasks[t].Name)
					break
				}
				seen[t] = true
			}
		default:
			err = invalid("constraint %d: unsupported constraint type %T", ci, c)
		}
		if err != nil {
			return nil, err
		}
	}
	for k, r := range ratio {
		in.capa[k] = int64(math.Floor(float64(in.capa[k]) * r))
	}
	for i, c := range preserves {
		r := preserveRes[i]
		for _, t := range c.Tasks {
			if in.demand[t*nR+r] < c.Amount {
				in.demand[t*nR+r] = c.Amount
			}
		}
	}
	// Impossible transitions.
	for t := 0; t < nT; t++ {
		from, to := in.curState[t], in.tgtState[t]
		if from == to || to == cluster.Killed {
			continue
		}
		ok := true
		switch from {
		case cluster.Ready:
			ok = to == cluster.Running
		case cluster.Running:
			ok = true
		case cluster.Sleeping:
			ok = to == cluster.Running
		case cluster.Killed:
			ok = false
		}
		if !ok {
			return nil, &ConflictError{Constraint: to.String(), Reason: fmt.Sprintf("task %q cannot go from %s to %s in one plan", m.Tasks[t].Name, from, to)}
		}
	}
	if err := in.buildRules(); err != nil {
		return nil, err
	}
	return in, nil
}

// sortedNodes returns ns as a sorted, deduplicated []int32.
func sortedNodes(ns []int) []int32 {
	s := make([]int32, 0, len(ns))
	for _, n := range ns {
		s = append(s, int32(n))
	}
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	out := s[:0]
	for i, n := range s {
		if i == 0 || n != s[i-1] {
			out = append(out, n)
		}
	}
	return out
}

func containsNode(s []int32, n int32) bool {
	i := sort.Search(len(s), func(i int) bool { return s[i] >= n })
	return i < len(s) && s[i] == n
}

func (in *inst) dem(t int32) []int64 { return in.demand[int(t)*in.nR : int(t+1)*in.nR] }
func (in *inst) cap(n int32) []int64 { return in.capa[int(n)*in.nR : int(n+1)*in.nR] }

func (in *inst) duration(k cluster.ActionKind, t, from, to int32) int64 {
	d := in.dm.Duration(in.m, k, int(t), int(from), int(to))
	if d < 0 {
		d = 0
	}
	return d
}

// migrateCost is the duration of a live migration of t away from n.
func (in *inst) migrateCost(t, n int32) int64 {
	return in.duration(cluster.Migrate, t, n, -1)
}

// sleepMoveCost is the least MTTR a relocation of t away from n by suspend
// then remote resume adds: the suspend ends at su, the resume at su+re.
func (in *inst) sleepMoveCost(t, n, to int32) int64 {
	su := in.duration(cluster.Suspend, t, n, n)
	return 2*su + in.duration(cluster.Resume, t, n, to)
}

// relocCost is the least MTTR any relocation of running task t away from n
// adds: a migration, or a suspend and a remote resume.
func (in *inst) relocCost(t, n int32) int64 {
	if in.liveOnly {
		return in.migrateCost(t, n)
	}
	return min(in.migrateCost(t, n), in.sleepMoveCost(t, n, -1))
}

// viaSleep reports whether the scheduler moves t from n to to by suspend and
// resume rather than by live migration: only for the MTTR objective, and only
// when that is strictly cheaper.
func (in *inst) viaSleep(t, n, to int32) bool {
	return !in.liveOnly && in.p.Objective == MinMTTR && in.sleepMoveCost(t, n, to) < in.migrateCost(t, n)
}

// sharedGroupLen is the node-group length from which compile remembers a
// group it has range-checked (by its first element's address and length).
const sharedGroupLen = 64

type groupKey struct {
	first *int
	n     int
}
