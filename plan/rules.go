package plan

import (
	"fmt"

	"github.com/ferrycluster/ferry/cluster"
)

// rule is a placement constraint compiled for incremental checking against a
// partial target assignment: ok asks whether task t may run on node n given
// what is already placed; add and remove keep the rule's counters in step
// with the assignment.
type rule interface {
	ok(a *assign, t, n int32) bool
	add(a *assign, t, n int32)
	remove(a *assign, t, n int32)
	// name is the constraint's kind and index, for conflict reports.
	name() string
	reset()
}

type ruleBase struct {
	kind string
	ci   int
}

func (b ruleBase) name() string { return fmt.Sprintf("%s #%d", b.kind, b.ci) }

// ban / fence: node sets.
type banRule struct {
	ruleBase
	nodes []int32
	cont  bool
}

func (r *banRule) ok(_ *assign, _, n int32) bool { return !containsNode(r.nodes, n) }
func (*banRule) add(*assign, int32, int32)       {}
func (*banRule) remove(*assign, int32, int32)    {}
func (*banRule) reset()                          {}

type fenceRule struct {
	ruleBase
	nodes []int32
	cont  bool
}

func (r *fenceRule) ok(_ *assign, _, n int32) bool { return containsNode(r.nodes, n) }
func (*fenceRule) add(*assign, int32, int32)       {}
func (*fenceRule) remove(*assign, int32, int32)    {}
func (*fenceRule) reset()                          {}

// spread: one member per node.
type spreadRule struct {
	ruleBase
	tasks []int32
	cnt   map[int32]int32
	cont  bool
	pres  map[int32]int32 // scheduler: members present per node
}

func (r *spreadRule) ok(_ *assign, _, n int32) bool { return r.cnt[n] == 0 }
func (r *spreadRule) add(_ *assign, _, n int32)     { r.cnt[n]++ }
func (r *spreadRule) remove(_ *assign, _, n int32) {
	if r.cnt[n]--; r.cnt[n] == 0 {
		delete(r.cnt, n)
	}
}
func (r *spreadRule) reset() { clear(r.cnt) }

// gather: all running members on one node; fixed >= 0 pins that node.
type gatherRule struct {
	ruleBase
	tasks []int32
	cont  bool
	fixed int32
	node  int32
	cnt   int32
}

func (r *gatherRule) ok(_ *assign, _, n int32) bool {
	if r.fixed >= 0 && n != r.fixed {
		return false
	}
	return r.cnt == 0 || r.node == n
}
func (r *gatherRule) add(_ *assign, _, n int32) { r.node = n; r.cnt++ }
func (r *gatherRule) remove(*assign, int32, int32) {
	r.cnt--
}
func (r *gatherRule) reset() { r.cnt = 0 }

// among: all running members within one node group.
type amongRule struct {
	ruleBase
	tasks   []int32
	cont    bool
	gs      *groupSet
	allowed []bool // groups still allowed (continuous among pins the group)
	in      []int32
	total   int32
}

// groupSet is a list of node groups compiled once and shared by every
// constraint that names the same groups: sorted members and, per node, the
// groups that contain it.
type groupSet struct {
	groups  [][]int32
	ofNode  map[int32][]int32
	ofNode1 []int32 // dense node -> group (-1 none) when groups are disjoint
}

func newGroupSet(gs [][]int, nN int) *groupSet {
	s := &groupSet{ofNode: map[int32][]int32{}}
	disjoint := true
	for g, ns := range gs {
		sorted := sortedNodes(ns)
		s.groups = append(s.groups, sorted)
		for _, n := range sorted {
			if len(s.ofNode[n]) > 0 {
				disjoint = false
			}
			s.ofNode[n] = append(s.ofNode[n], int32(g))
		}
	}
	if disjoint {
		s.ofNode1 = make([]int32, nN)
		for i := range s.ofNode1 {
			s.ofNode1[i] = -1
		}
		for n, g := range s.ofNode {
			s.ofNode1[n] = g[0]
		}
		s.ofNode = nil
	}
	return s
}

// of returns the groups containing n.
func (s *groupSet) of(n int32, buf *[1]int32) []int32 {
	if s.ofNode1 != nil {
		if g := s.ofNode1[n]; g >= 0 {
			buf[0] = g
			return buf[:]
		}
		return nil
	}
	return s.ofNode[n]
}

func (r *amongRule) ok(_ *assign, _, n int32) bool {
	var buf [1]int32
	for _, g := range r.gs.of(n, &buf) {
		if r.allowed[g] && r.in[g] == r.total {
			return true
		}
	}
	return false
}
func (r *amongRule) add(_ *assign, _, n int32) {
	r.total++
	var buf [1]int32
	for _, g := range r.gs.of(n, &buf) {
		r.in[g]++
	}
}
func (r *amongRule) remove(_ *assign, _, n int32) {
	r.total--
	var buf [1]int32
	for _, g := range r.gs.of(n, &buf) {
		r.in[g]--
	}
}
func (r *amongRule) reset() { clear(r.in); r.total = 0 }

// group returns the only group members may still use, or -1 when several
// (or none) remain.
func (r *amongRule) group() int {
	found := -1
	for g := range r.gs.groups {
		if r.allowed[g] && r.in[g] == r.total {
			if found >= 0 {
				return -1
			}
			found = g
		}
	}
	return found
}

// split: members of different groups never share a node.
type splitRule struct {
	ruleBase
	group map[int32]int32 // task -> group
	tot   map[int32]int32 // node -> members
	cnt   map[int64]int32 // node*G+group -> members
	ng    int64
	cont  bool
	// scheduler: presence per node, and per node and group
	presTot map[int32]int32
	presCnt map[int64]int32
}

func (r *splitRule) ok(_ *assign, t, n int32) bool {
	g := r.group[t]
	return r.tot[n]-r.cnt[int64(n)*r.ng+int64(g)] == 0
}
func (r *splitRule) add(_ *assign, t, n int32) {
	r.tot[n]++
	r.cnt[int64(n)*r.ng+int64(r.group[t])]++
}
func (r *splitRule) remove(_ *assign, t, n int32) {
	r.tot[n]--
	r.cnt[int64(n)*r.ng+int64(r.group[t])]--
}
func (r *splitRule) reset() { clear(r.tot); clear(r.cnt) }

// splitAmong: each task group within one node group, distinct groups apart.
type splitAmongRule struct {
	ruleBase
	tasks  []int32
	cont   bool
	group  map[int32]int32 // task -> task group
	ngroup [][]int32       // node groups
	cnt    [][]int32       // [task group][node group] members placed
	tot    []int32         // per task group
	used   []int32         // per node group: members placed (any task group)
}

func (r *splitAmongRule) ok(_ *assign, t, n int32) bool {
	g := r.group[t]
	for j, ns := range r.ngroup {
		if !containsNode(ns, n) {
			continue
		}
		if r.cnt[g][j] == r.tot[g] && r.used[j] == r.cnt[g][j] {
			return true
		}
	}
	return false
}
func (r *splitAmongRule) add(_ *assign, t, n int32) {
	g := r.group[t]
	r.tot[g]++
	for j, ns := range r.ngroup {
		if containsNode(ns, n) {
			r.cnt[g][j]++
			r.used[j]++
		}
	}
}
func (r *splitAmongRule) remove(_ *assign, t, n int32) {
	g := r.group[t]
	r.tot[g]--
	for j, ns := range r.ngroup {
		if containsNode(ns, n) {
			r.cnt[g][j]--
			r.used[j]--
		}
	}
}
func (r *splitAmongRule) reset() {
	for _, c := range r.cnt {
		clear(c)
	}
	clear(r.tot)
	clear(r.used)
}

// lonely: a node hosting a member hosts no non-member. Checked for every task.
type lonelyRule struct {
	ruleBase
	member map[int32]bool
	cnt    map[int32]int32 // node -> members placed
	cont   bool
	pres   map[int32]int32 // scheduler: members present per node
}

func (r *lonelyRule) ok(a *assign, t, n int32) bool {
	if r.member[t] {
		return a.count[n]-r.cnt[n] == 0
	}
	return r.cnt[n] == 0
}
func (r *lonelyRule) add(_ *assign, t, n int32) {
	if r.member[t] {
		r.cnt[n]++
	}
}
func (r *lonelyRule) remove(_ *assign, t, n int32) {
	if r.member[t] {
		r.cnt[n]--
	}
}
func (r *lonelyRule) reset() { clear(r.cnt) }

// capGroupRule: resourceCapacity (res >= 0) or runningCapacity (res < 0) over
// a node set. Attached to each node of the set.
type capGroupRule struct {
	ruleBase
	nodes  []int32
	res    int
	amount int64
	sum    int64
	cont   bool
	// scheduler: summed amount of the tasks present on the nodes now
	presSum int64
}

func (r *capGroupRule) amountOf(in *inst, t int32) int64 {
	if r.res < 0 {
		return 1
	}
	return in.demand[int(t)*in.nR+r.res]
}
func (r *capGroupRule) ok(a *assign, t, _ int32) bool {
	return r.sum+r.amountOf(a.in, t) <= r.amount
}
func (r *capGroupRule) add(a *assign, t, _ int32)    { r.sum += r.amountOf(a.in, t) }
func (r *capGroupRule) remove(a *assign, t, _ int32) { r.sum -= r.amountOf(a.in, t) }
func (r *capGroupRule) reset()                       { r.sum = 0 }

// maxOnlineRule is enforced on node states, not through ok.
type maxOnlineRule struct {
	ruleBase
	nodes  []int32
	amount int
	cont   bool
}

func toInt32(ts []int) []int32 {
	s := make([]int32, len(ts))
	for i, t := range ts {
		s[i] = int32(t)
	}
	return s
}

// buildRules compiles the placement constraints into rules and the
// scheduling ones into in.seqs, in.noDelay and in.cont.
func (in *inst) buildRules() error {
	m := in.m
	addTask := func(r rule, ts []int) {
		seen := make(map[int]bool, len(ts))
		for _, t := range ts {
			if !seen[t] {
				seen[t] = true
				in.taskRules[t] = append(in.taskRules[t], r)
			}
		}
		in.rules = append(in.rules, r)
	}
	addNodes := func(r rule, ns []int32) {
		for _, n := range ns {
			in.nodeRules[n] = append(in.nodeRules[n], r)
		}
		in.rules = append(in.rules, r)
	}
	// Constraints often share one list of node groups (racks, zones):
	// compile it once.
	type groupKey struct {
		first *[]int
		n     int
	}
	groupSets := map[groupKey]*groupSet{}
	runningNow := func(t int) bool { return in.curState[t] == cluster.Running }
	staysRunning := func(t int) bool { return runningNow(t) && in.tgtState[t] == cluster.Running }
	for ci, c := range in.p.Constraints {
		base := ruleBase{kind: c.Kind(), ci: ci}
		switch c := c.(type) {
		case cluster.Ban:
			addTask(&banRule{ruleBase: base, nodes: sortedNodes(c.Nodes), cont: c.Continuous}, c.Tasks)
		case cluster.Fence:
			addTask(&fenceRule{ruleBase: base, nodes: sortedNodes(c.Nodes), cont: c.Continuous}, c.Tasks)
		case cluster.Spread:
			r := &spreadRule{ruleBase: base, tasks: toInt32(c.Tasks), cnt: map[int32]int32{}, cont: c.Continuous}
			addTask(r, c.Tasks)
			if c.Continuous {
				in.cont.spread = append(in.cont.spread, r)
			}
		case cluster.Gather:
			r := &gatherRule{ruleBase: base, fixed: -1, tasks: toInt32(c.Tasks), cont: c.Continuous}
			// Continuous: members that stay running stay on their node
			// when another member runs at the end (else it could not
			// arrive next to them without breaking the rule).
			members := map[int]bool{}
			for _, t := range c.Tasks {
				if in.tgtState[t] == cluster.Running {
					members[t] = true
				}
			}
			if c.Continuous && len(members) > 1 {
				for _, t := range c.Tasks {
					if staysRunning(t) {
						if r.fixed < 0 {
							r.fixed = in.curNode[t]
						}
						in.pinned[t] = true
					}
				}
			}
			addTask(r, c.Tasks)
		case cluster.Among:
			key := groupKey{&c.Groups[0], len(c.Groups)}
			gs := groupSets[key]
			if gs == nil {
				gs = newGroupSet(c.Groups, in.nN)
				groupSets[key] = gs
			}
			r := &amongRule{ruleBase: base, gs: gs, allowed: make([]bool, len(c.Groups)), in: make([]int32, len(c.Groups)), tasks: toInt32(c.Tasks), cont: c.Continuous}
			for g := range r.allowed {
				r.allowed[g] = true
			}
			if c.Continuous {
				for _, t := range c.Tasks {
					if staysRunning(t) {
						for g, ns := range gs.groups {
							if !containsNode(ns, in.curNode[t]) {
								r.allowed[g] = false
							}
						}
					}
				}
			}
			addTask(r, c.Tasks)
		case cluster.Split:
			r := &splitRule{ruleBase: base, group: map[int32]int32{}, tot: map[int32]int32{}, cnt: map[int64]int32{}, ng: int64(len(c.Groups)), cont: c.Continuous}
			var all []int
			for g, ts := range c.Groups {
				for _, t := range ts {
					if _, dup := r.group[int32(t)]; dup {
						return invalid("constraint %d (split): task %q in two groups", ci, m.Tasks[t].Name)
					}
					r.group[int32(t)] = int32(g)
					all = append(all, t)
				}
			}
			addTask(r, all)
			if c.Continuous {
				in.cont.split = append(in.cont.split, r)
			}
		case cluster.SplitAmong:
			r := &splitAmongRule{ruleBase: base, group: map[int32]int32{}, cont: c.Continuous}
			var all []int
			for g, ts := range c.TaskGroups {
				for _, t := range ts {
					if _, dup := r.group[int32(t)]; dup {
						return invalid("constraint %d (splitAmong): task %q in two groups", ci, m.Tasks[t].Name)
					}
					r.group[int32(t)] = int32(g)
					all = append(all, t)
				}
			}
			r.tasks = toInt32(all)
			for _, ns := range c.NodeGroups {
				r.ngroup = append(r.ngroup, sortedNodes(ns))
			}
			r.cnt = make([][]int32, len(c.TaskGroups))
			for g := range r.cnt {
				r.cnt[g] = make([]int32, len(c.NodeGroups))
			}
			r.tot = make([]int32, len(c.TaskGroups))
			r.used = make([]int32, len(c.NodeGroups))
			addTask(r, all)
		case cluster.Lonely:
			r := &lonelyRule{ruleBase: base, member: map[int32]bool{}, cnt: map[int32]int32{}, cont: c.Continuous}
			for _, t := range c.Tasks {
				r.member[int32(t)] = true
			}
			in.allRules = append(in.allRules, r)
			in.rules = append(in.rules, r)
			if c.Continuous {
				in.cont.lonely = append(in.cont.lonely, r)
			}
		case cluster.Root:
			for _, t := range c.Tasks {
				if in.curNode[t] >= 0 {
					in.pinned[t] = true
				}
			}
		case cluster.Quarantine:
			for _, n := range c.Nodes {
				in.sealed[n] = true
			}
		case cluster.ResourceCapacity:
			r := &capGroupRule{ruleBase: base, nodes: sortedNodes(c.Nodes), res: m.Resource(c.Resource), amount: c.Amount, cont: c.Continuous}
			addNodes(r, r.nodes)
			if c.Continuous {
				in.cont.capGroup = append(in.cont.capGroup, r)
			}
		case cluster.RunningCapacity:
			r := &capGroupRule{ruleBase: base, nodes: sortedNodes(c.Nodes), res: -1, amount: int64(c.Amount), cont: c.Continuous}
			addNodes(r, r.nodes)
			if c.Continuous {
				in.cont.capGroup = append(in.cont.capGroup, r)
			}
		case cluster.MaxOnline:
			in.cont.online = append(in.cont.online, &maxOnlineRule{ruleBase: base, nodes: sortedNodes(c.Nodes), amount: c.Amount, cont: c.Continuous})
		case cluster.Seq:
			in.seqs = append(in.seqs, toInt32(c.Tasks))
		case cluster.NoDelay:
			in.noDelay[c.Task] = true
		}
	}
	// Tasks on sealed nodes stay there.
	for t := 0; t < in.nT; t++ {
		if n := in.curNode[t]; n >= 0 && in.sealed[n] {
			in.pinned[t] = true
		}
	}
	return nil
}

// assign is a (partial) target placement of running tasks.
type assign struct {
	in    *inst
	node  []int32 // target node of each task that runs in the target, else -1
	load  []int64 // per node and resource
	count []int32 // running tasks per node
}

func newAssign(in *inst) *assign {
	a := &assign{in: in, node: make([]int32, in.nT), load: make([]int64, in.nN*in.nR), count: make([]int32, in.nN)}
	for i := range a.node {
		a.node[i] = -1
	}
	for _, r := range in.rules {
		r.reset()
	}
	return a
}

// fits reports whether t's demand fits in n's remaining final capacity.
func (a *assign) fits(t, n int32) bool {
	nR := a.in.nR
	d := a.in.demand[int(t)*nR : int(t+1)*nR]
	l := a.load[int(n)*nR : int(n+1)*nR]
	c := a.in.capa[int(n)*nR : int(n+1)*nR]
	for r := range d {
		if l[r]+d[r] > c[r] {
			return false
		}
	}
	return true
}

// allowed reports whether t may run on n in the target, capacity aside.
// It returns the first rule that refuses (nil when the refusal is the node's
// state, a seal or a pin).
func (a *assign) allowed(t, n int32) (bool, rule) {
	in := a.in
	if in.nodeTgt[n] != cluster.NodeOnline {
		return false, nil
	}
	if in.sealed[n] && in.curNode[t] != n {
		return false, nil
	}
	if in.pinned[t] && in.curNode[t] >= 0 && in.curNode[t] != n {
		return false, nil
	}
	for _, r := range in.taskRules[t] {
		if !r.ok(a, t, n) {
			return false, r
		}
	}
	for _, r := range in.nodeRules[n] {
		if !r.ok(a, t, n) {
			return false, r
		}
	}
	for _, r := range in.allRules {
		if !r.ok(a, t, n) {
			return false, r
		}
	}
	return true, nil
}

func (a *assign) place(t, n int32) {
	in := a.in
	for _, r := range in.taskRules[t] {
		r.add(a, t, n)
	}
	for _, r := range in.nodeRules[n] {
		r.add(a, t, n)
	}
	for _, r := range in.allRules {
		r.add(a, t, n)
	}
	a.node[t] = n
	a.count[n]++
	nR := in.nR
	for r := 0; r < nR; r++ {
		a.load[int(n)*nR+r] += in.demand[int(t)*nR+r]
	}
}

func (a *assign) unplace(t int32) {
	in := a.in
	n := a.node[t]
	for _, r := range in.taskRules[t] {
		r.remove(a, t, n)
	}
	for _, r := range in.nodeRules[n] {
		r.remove(a, t, n)
	}
	for _, r := range in.allRules {
		r.remove(a, t, n)
	}
	a.node[t] = -1
	a.count[n]--
	nR := in.nR
	for r := 0; r < nR; r++ {
		a.load[int(n)*nR+r] -= in.demand[int(t)*nR+r]
	}
}
