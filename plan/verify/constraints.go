package verify

import (
	"fmt"

	"github.com/ferrycluster/ferry/cluster"
)

// checkConstraints checks every constraint: continuous ones at every arrival
// (and node power-on for maxOnline), all of them in the final state.
func (c *checker) checkConstraints() {
	for ci, k := range c.p.Constraints {
		switch k := k.(type) {
		case cluster.Spread:
			c.checkPlacement(ci, k.Tasks, k.Continuous, func(v, n int, at func(int) []int) string {
				for _, u := range k.Tasks {
					if u != v && contains(at(u), n) {
						return fmt.Sprintf("%s already runs there", c.taskName(u))
					}
				}
				return ""
			}, func(run map[int]int) string {
				seen := map[int]int{}
				for _, u := range k.Tasks {
					if n, ok := run[u]; ok {
						if w, dup := seen[n]; dup && w != u {
							return fmt.Sprintf("%s and %s both run on %s", c.taskName(w), c.taskName(u), c.nodeName(n))
						}
						seen[n] = u
					}
				}
				return ""
			})
		case cluster.Ban:
			banned := set(k.Nodes)
			c.checkPlacement(ci, k.Tasks, k.Continuous, func(v, n int, _ func(int) []int) string {
				if banned[n] {
					return "the node is banned"
				}
				return ""
			}, func(run map[int]int) string {
				for _, u := range k.Tasks {
					if n, ok := run[u]; ok && banned[n] {
						return fmt.Sprintf("%s runs on banned %s", c.taskName(u), c.nodeName(n))
					}
				}
				return ""
			})
		case cluster.Fence:
			allowed := set(k.Nodes)
			c.checkPlacement(ci, k.Tasks, k.Continuous, func(v, n int, _ func(int) []int) string {
				if !allowed[n] {
					return "the node is outside the fence"
				}
				return ""
			}, func(run map[int]int) string {
				for _, u := range k.Tasks {
					if n, ok := run[u]; ok && !allowed[n] {
						return fmt.Sprintf("%s runs on %s, outside the fence", c.taskName(u), c.nodeName(n))
					}
				}
				return ""
			})
		case cluster.Gather:
			c.checkPlacement(ci, k.Tasks, k.Continuous, func(v, n int, at func(int) []int) string {
				for _, u := range k.Tasks {
					for _, m := range at(u) {
						if u != v && m != n {
							return fmt.Sprintf("%s runs on %s", c.taskName(u), c.nodeName(m))
						}
					}
				}
				return ""
			}, func(run map[int]int) string {
				where := -1
				for _, u := range k.Tasks {
					if n, ok := run[u]; ok {
						if where >= 0 && n != where {
							return fmt.Sprintf("running tasks on %s and %s", c.nodeName(where), c.nodeName(n))
						}
						where = n
					}
				}
				return ""
			})
		case cluster.Among:
			c.checkPlacement(ci, k.Tasks, k.Continuous, func(v, n int, at func(int) []int) string {
				used := []int{n}
				for _, u := range k.Tasks {
					if u != v {
						used = append(used, at(u)...)
					}
				}
				if groupOf(k.Groups, used) < 0 {
					return fmt.Sprintf("the tasks would run on %s, in no single group", c.nodeNames(used))
				}
				return ""
			}, func(run map[int]int) string {
				var used []int
				for _, u := range k.Tasks {
					if n, ok := run[u]; ok {
						used = append(used, n)
					}
				}
				if len(used) > 0 && groupOf(k.Groups, used) < 0 {
					return fmt.Sprintf("the tasks run on %s, in no single group", c.nodeNames(used))
				}
				return ""
			})
		case cluster.Split:
			gof := taskGroups(k.Groups)
			all := cluster.TaskRefs(k)
			c.checkPlacement(ci, all, k.Continuous, func(v, n int, at func(int) []int) string {
				for _, u := range all {
					if gof[u] != gof[v] && contains(at(u), n) {
						return fmt.Sprintf("%s of another group runs there", c.taskName(u))
					}
				}
				return ""
			}, func(run map[int]int) string {
				owner := map[int]int{}
				for _, u := range all {
					if n, ok := run[u]; ok {
						if w, seen := owner[n]; seen && gof[w] != gof[u] {
							return fmt.Sprintf("%s and %s of different groups both run on %s", c.taskName(w), c.taskName(u), c.nodeName(n))
						}
						owner[n] = u
					}
				}
				return ""
			})
		case cluster.SplitAmong:
			c.checkSplitAmong(ci, k)
		case cluster.Lonely:
			c.checkLonely(ci, k)
		case cluster.Root:
			for _, t := range k.Tasks {
				for _, i := range c.taskActs[t] {
					a := c.pl.Actions[i]
					if a.Kind == cluster.Migrate || (a.Kind == cluster.Resume && a.To != a.From) {
						c.cviol(ci, i, t, a.To, a.Start, "a root task may not move (%s from %s to %s)", a.Kind, c.nodeName(a.From), c.nodeName(a.To))
					}
				}
			}
		case cluster.Quarantine:
			q := set(k.Nodes)
			for i, a := range c.pl.Actions {
				if !c.valid[i] || a.Kind.IsNodeAction() {
					continue
				}
				switch a.Kind {
				case cluster.Boot, cluster.Migrate, cluster.Resume:
					if q[a.To] && !(a.Kind == cluster.Resume && a.From == a.To) {
						c.cviol(ci, i, a.Task, a.To, a.Start, "%s onto a quarantined node", a.Kind)
					}
				}
				if (a.Kind == cluster.Migrate || (a.Kind == cluster.Resume && a.From != a.To)) && q[a.From] {
					c.cviol(ci, i, a.Task, a.From, a.Start, "%s out of a quarantined node", a.Kind)
				}
			}
		case cluster.StateConstraint, cluster.NodeStateConstraint, cluster.Preserve, cluster.Overbook:
			// checked by checkFinal, computeDemand and effectiveCapacity.
		case cluster.ResourceCapacity:
			c.checkResourceCapacity(ci, k.Nodes, c.m.Resource(k.Resource), k.Amount, k.Continuous)
		case cluster.RunningCapacity:
			c.checkResourceCapacity(ci, k.Nodes, -1, int64(k.Amount), k.Continuous)
		case cluster.MaxOnline:
			c.checkMaxOnline(ci, k)
		case cluster.Seq:
			c.checkSeq(ci, k)
		case cluster.NoDelay:
			first := -1
			for _, i := range c.taskActs[k.Task] {
				if first < 0 || c.pl.Actions[i].Start < c.pl.Actions[first].Start {
					first = i
				}
			}
			if first >= 0 && c.pl.Actions[first].Start != 0 {
				c.cviol(ci, first, k.Task, -1, c.pl.Actions[first].Start, "the task's action must start at 0")
			}
		default:
			c.add(Violation{Rule: RuleConstraint, Action: -1, Constraint: k.Kind(), ConstraintIndex: ci, Time: Final, Msg: "unsupported constraint type"})
		}
	}
}

func (c *checker) nodeNames(ns []int) string {
	s := "["
	for i, n := range ns {
		if i > 0 {
			s += " "
		}
		s += c.nodeName(n)
	}
	return s + "]"
}

func set(xs []int) map[int]bool {
	m := make(map[int]bool, len(xs))
	for _, x := range xs {
		m[x] = true
	}
	return m
}

func contains(xs []int, x int) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// taskGroups maps each task to the index of the first group listing it.
func taskGroups(gs [][]int) map[int]int {
	m := map[int]int{}
	for g, ts := range gs {
		for _, t := range ts {
			if _, ok := m[t]; !ok {
				m[t] = g
			}
		}
	}
	return m
}

// groupOf returns the index of the first group containing every node of
// used, or -1.
func groupOf(groups [][]int, used []int) int {
	for g, ns := range groups {
		ok := true
		for _, n := range used {
			if !contains(ns, n) {
				ok = false
				break
			}
		}
		if ok {
			return g
		}
	}
	return -1
}

// runningAt returns the nodes where task t runs (its demand counts) at time
// s; Final means the final state.
func (c *checker) runningAt(t int, s int64) []int {
	var out []int
	for _, i := range c.byTask[t] {
		p := c.pres[i]
		if !p.running {
			continue
		}
		if s == Final {
			if p.end == inf {
				out = append(out, p.node)
			}
		} else if p.start <= s && s < p.end {
			out = append(out, p.node)
		}
	}
	return out
}

// finalRunning maps each running task to its final node.
func (c *checker) finalRunning(tasks []int) map[int]int {
	m := make(map[int]int, len(tasks))
	for _, t := range tasks {
		if c.finalT[t].state == cluster.Running {
			m[t] = c.finalT[t].node
		}
	}
	return m
}

// checkPlacement checks a placement constraint over tasks: when continuous,
// arrive(v, n, at) at every arrival of v in tasks on n (at(u) gives the
// nodes where u runs at that instant) must return "" ; final(run) on the
// final placement of the running tasks must return "".
func (c *checker) checkPlacement(ci int, tasks []int, continuous bool,
	arrive func(v, n int, at func(int) []int) string, final func(run map[int]int) string) {
	if continuous {
		for _, v := range tasks {
			for _, pi := range c.byTask[v] {
				p := c.pres[pi]
				if !p.running || p.arrival < 0 {
					continue
				}
				at := func(u int) []int { return c.runningAt(u, p.start) }
				if msg := arrive(v, p.node, at); msg != "" {
					c.cviol(ci, p.arrival, v, p.node, p.start, "arrival breaks the continuous constraint: %s", msg)
				}
			}
		}
	}
	if msg := final(c.finalRunning(tasks)); msg != "" {
		c.cviol(ci, -1, -1, -1, Final, "%s", msg)
	}
}

func (c *checker) checkSplitAmong(ci int, k cluster.SplitAmong) {
	gof := taskGroups(k.TaskGroups)
	all := cluster.TaskRefs(k)
	nodeGroup := func(n int) int {
		for g, ns := range k.NodeGroups {
			if contains(ns, n) {
				return g
			}
		}
		return -1
	}
	// state maps task -> nodes; returns "" if the split-among rule holds for
	// the tasks placed.
	rule := func(where func(u int) []int) string {
		used := map[int]int{} // task group -> node group
		owner := map[int]int{}
		for _, u := range all {
			for _, n := range where(u) {
				ng := nodeGroup(n)
				if ng < 0 {
					return fmt.Sprintf("%s runs on %s, in no node group", c.taskName(u), c.nodeName(n))
				}
				g := gof[u]
				if prev, ok := used[g]; ok && prev != ng {
					return fmt.Sprintf("task group %d spans node groups %d and %d", g, prev, ng)
				}
				used[g] = ng
				if o, ok := owner[ng]; ok && o != g {
					return fmt.Sprintf("task groups %d and %d share node group %d", o, g, ng)
				}
				owner[ng] = g
			}
		}
		return ""
	}
	if k.Continuous {
		for _, v := range all {
			for _, pi := range c.byTask[v] {
				p := c.pres[pi]
				if !p.running || p.arrival < 0 {
					continue
				}
				msg := rule(func(u int) []int {
					if u == v {
						return []int{p.node}
					}
					return c.runningAt(u, p.start)
				})
				if msg != "" {
					c.cviol(ci, p.arrival, v, p.node, p.start, "arrival breaks the continuous constraint: %s", msg)
				}
			}
		}
	}
	run := c.finalRunning(all)
	if msg := rule(func(u int) []int {
		if n, ok := run[u]; ok {
			return []int{n}
		}
		return nil
	}); msg != "" {
		c.cviol(ci, -1, -1, -1, Final, "%s", msg)
	}
}

func (c *checker) checkLonely(ci int, k cluster.Lonely) {
	in := set(k.Tasks)
	// rule: on node n, with the tasks running there, no mix of in and out.
	if k.Continuous {
		for _, p := range c.pres {
			if !p.running || p.arrival < 0 {
				continue
			}
			for _, q := range c.byNode[p.node] {
				o := c.pres[q]
				if !o.running || o.task == p.task || in[o.task] == in[p.task] {
					continue
				}
				if o.start <= p.start && p.start < o.end {
					c.cviol(ci, p.arrival, p.task, p.node, p.start, "arrival breaks the continuous constraint: %s runs there and only one of them is lonely", c.taskName(o.task))
					break
				}
			}
		}
	}
	mixed := map[int][2]int{} // node -> [an in task+1, an out task+1]
	for t := range c.m.Tasks {
		if c.finalT[t].state != cluster.Running {
			continue
		}
		n := c.finalT[t].node
		e := mixed[n]
		if in[t] {
			e[0] = t + 1
		} else {
			e[1] = t + 1
		}
		mixed[n] = e
	}
	for n := range c.m.Nodes {
		if e := mixed[n]; e[0] > 0 && e[1] > 0 {
			c.cviol(ci, -1, -1, n, Final, "lonely %s shares the node with %s", c.taskName(e[0]-1), c.taskName(e[1]-1))
		}
	}
}

// checkResourceCapacity: the sum of demand on resource r (r < 0: the number
// of running tasks) on nodes stays within amount in the final state and,
// when continuous, from the first arrival on the nodes on.
func (c *checker) checkResourceCapacity(ci int, nodes []int, r int, amount int64, continuous bool) {
	var idx []int
	for _, n := range nodes {
		idx = append(idx, c.byNode[n]...)
	}
	var load int64
	val := func(p int) int64 {
		if r < 0 {
			return 1
		}
		return c.demand[c.pres[p].task][r]
	}
	reported := false
	c.sweep(idx, func(p int) { load += val(p) }, func(p int) { load -= val(p) }, func(t int64) {
		if reported || (t != Final && !continuous) {
			return
		}
		if load > amount {
			reported = true
			what := "running tasks"
			res := ""
			if r >= 0 {
				what = "demand"
				res = c.m.Resources[r]
			}
			c.add(Violation{Rule: RuleConstraint, Action: -1, Constraint: c.p.Constraints[ci].Kind(), ConstraintIndex: ci, Node: c.nodeNames(nodes), Resource: res, Time: t,
				Msg: fmt.Sprintf("%s %d exceed %d", what, load, amount)})
		}
	})
}

// checkMaxOnline: at most Amount of the nodes online in the final state and,
// when continuous, whenever one of them powers on (from its bootNode's
// start to its shutdownNode's end a node counts as online).
func (c *checker) checkMaxOnline(ci int, k cluster.MaxOnline) {
	count := func(t int64) int {
		n := 0
		for _, x := range k.Nodes {
			for _, w := range c.powerWin[x] {
				if (t == Final && w[1] == inf) || (t != Final && w[0] <= t && t < w[1]) {
					n++
					break
				}
			}
		}
		return n
	}
	if k.Continuous {
		for _, x := range k.Nodes {
			for _, w := range c.powerWin[x] {
				if c.m.Nodes[x].State == cluster.NodeOnline && w[0] == 0 {
					continue // online from the start, not a power-on
				}
				if got := count(w[0]); got > k.Amount {
					c.cviol(ci, -1, -1, x, w[0], "%d nodes online, at most %d allowed", got, k.Amount)
					return
				}
			}
		}
	}
	if got := count(Final); got > k.Amount {
		c.cviol(ci, -1, -1, -1, Final, "%d nodes online, at most %d allowed", got, k.Amount)
	}
}

// checkSeq: every action of Tasks[i+1] starts at or after the end of every
// action of the previous tasks in the list that have actions.
func (c *checker) checkSeq(ci int, k cluster.Seq) {
	var doneBy int64
	lastTask := -1
	for _, t := range k.Tasks {
		var first, end int64 = inf, -1
		firstIdx := -1
		for _, i := range c.taskActs[t] {
			a := c.pl.Actions[i]
			if a.Start < first {
				first, firstIdx = a.Start, i
			}
			if a.End > end {
				end = a.End
			}
		}
		if firstIdx < 0 {
			continue
		}
		if lastTask >= 0 && first < doneBy {
			c.cviol(ci, firstIdx, t, -1, first, "starts before %s's action ends at %d", c.taskName(lastTask), doneBy)
		}
		if end > doneBy {
			doneBy = end
		}
		lastTask = t
	}
}

// checkFinal: the final state of every task and node is the wanted one, and
// Plan.Result, when set, is the replayed configuration.
func (c *checker) checkFinal() {
	wantT := make([]int, len(c.m.Tasks)) // -1: keep, else the wanted state
	for t := range wantT {
		wantT[t] = -1
	}
	wantN := make([]int, len(c.m.Nodes))
	for n := range wantN {
		wantN[n] = -1
	}
	for ci, k := range c.p.Constraints {
		switch k := k.(type) {
		case cluster.StateConstraint:
			for _, t := range k.Tasks {
				if c.finalT[t].state != k.State {
					c.cviol(ci, -1, t, -1, Final, "the task ends %s, not %s", c.finalT[t].state, k.State)
				}
				wantT[t] = int(k.State)
			}
		case cluster.NodeStateConstraint:
			for _, n := range k.Nodes {
				if c.finalN[n] != k.State {
					c.cviol(ci, -1, -1, n, Final, "the node ends %s, not %s", c.finalN[n], k.State)
				}
				wantN[n] = int(k.State)
			}
		}
	}
	for t := range c.m.Tasks {
		if wantT[t] < 0 && c.finalT[t].state != c.m.Tasks[t].State {
			c.viol(RuleFinal, -1, t, -1, Final, "the task has no state constraint and must stay %s, it ends %s", c.m.Tasks[t].State, c.finalT[t].state)
		}
	}
	r := c.pl.Result
	if r == nil {
		return
	}
	if len(r.Tasks) != len(c.m.Tasks) || len(r.Nodes) != len(c.m.Nodes) {
		c.viol(RuleFinal, -1, -1, -1, Final, "Plan.Result has %d nodes and %d tasks, the problem %d and %d", len(r.Nodes), len(r.Tasks), len(c.m.Nodes), len(c.m.Tasks))
		return
	}
	for t := range r.Tasks {
		got, want := r.Tasks[t], c.finalT[t]
		if got.State != want.state || (want.node != got.Node && (want.state == cluster.Running || want.state == cluster.Sleeping)) {
			c.viol(RuleFinal, -1, t, -1, Final, "Plan.Result says %s%s, the actions lead to %s%s", got.State, onNode(c, got.Node), want.state, onNode(c, want.node))
		}
	}
	for n := range r.Nodes {
		if r.Nodes[n].State != c.finalN[n] {
			c.viol(RuleFinal, -1, -1, n, Final, "Plan.Result says %s, the actions lead to %s", r.Nodes[n].State, c.finalN[n])
		}
	}
}
