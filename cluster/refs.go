package cluster

// This file is the one place that knows which task and node indices each
// constraint of the catalog references. The planner's validation, the
// verifier and the simulator's sub-problems all go through it, so a new
// constraint type is taught to all three at once.

// TaskRefs lists the task indices c references, in the order they appear
// in its fields (groups flattened, duplicates kept). It is nil for a
// constraint that names no task (and for a type outside the catalog).
func TaskRefs(c Constraint) []int {
	switch c := c.(type) {
	case Spread:
		return c.Tasks
	case Ban:
		return c.Tasks
	case Fence:
		return c.Tasks
	case Gather:
		return c.Tasks
	case Among:
		return c.Tasks
	case Split:
		return flatten(c.Groups)
	case SplitAmong:
		return flatten(c.TaskGroups)
	case Lonely:
		return c.Tasks
	case Root:
		return c.Tasks
	case StateConstraint:
		return c.Tasks
	case Preserve:
		return c.Tasks
	case Seq:
		return c.Tasks
	case NoDelay:
		return []int{c.Task}
	}
	return nil
}

// NodeRefs lists the node indices c references, in the order they appear
// (groups flattened, duplicates kept); nil when it names no node.
func NodeRefs(c Constraint) []int {
	switch c := c.(type) {
	case Ban:
		return c.Nodes
	case Fence:
		return c.Nodes
	case Among:
		return flatten(c.Groups)
	case SplitAmong:
		return flatten(c.NodeGroups)
	case Quarantine:
		return c.Nodes
	case NodeStateConstraint:
		return c.Nodes
	case ResourceCapacity:
		return c.Nodes
	case RunningCapacity:
		return c.Nodes
	case MaxOnline:
		return c.Nodes
	case Overbook:
		return c.Nodes
	}
	return nil
}

// ConstrainsOnlyNamedTasks reports whether c restricts only the tasks it
// names, so that a sub-problem holding those tasks (every other task
// folded into its node's capacity) keeps c's meaning. Lonely restricts the
// tasks it does not name; capacity, overbook, quarantine and node-state
// constraints depend on every task on their nodes.
func ConstrainsOnlyNamedTasks(c Constraint) bool {
	switch c.(type) {
	case Spread, Ban, Fence, Gather, Among, Split, SplitAmong, Root, StateConstraint, Preserve, Seq, NoDelay:
		return true
	}
	return false
}

// RemapTasks returns c with every task index t replaced by to(t), in new
// slices (c is not modified); node indices are unchanged. A constraint
// that names no task is returned as it is.
func RemapTasks(c Constraint, to func(int) int) Constraint {
	switch c := c.(type) {
	case Spread:
		c.Tasks = mapInts(c.Tasks, to)
		return c
	case Ban:
		c.Tasks = mapInts(c.Tasks, to)
		return c
	case Fence:
		c.Tasks = mapInts(c.Tasks, to)
		return c
	case Gather:
		c.Tasks = mapInts(c.Tasks, to)
		return c
	case Among:
		c.Tasks = mapInts(c.Tasks, to)
		return c
	case Split:
		c.Groups = mapGroups(c.Groups, to)
		return c
	case SplitAmong:
		c.TaskGroups = mapGroups(c.TaskGroups, to)
		return c
	case Lonely:
		c.Tasks = mapInts(c.Tasks, to)
		return c
	case Root:
		c.Tasks = mapInts(c.Tasks, to)
		return c
	case StateConstraint:
		c.Tasks = mapInts(c.Tasks, to)
		return c
	case Preserve:
		c.Tasks = mapInts(c.Tasks, to)
		return c
	case Seq:
		c.Tasks = mapInts(c.Tasks, to)
		return c
	case NoDelay:
		c.Task = to(c.Task)
		return c
	}
	return c
}

func flatten(gs [][]int) []int {
	var out []int
	for _, g := range gs {
		out = append(out, g...)
	}
	return out
}

func mapInts(xs []int, to func(int) int) []int {
	if xs == nil {
		return nil
	}
	out := make([]int, len(xs))
	for i, x := range xs {
		out[i] = to(x)
	}
	return out
}

func mapGroups(gs [][]int, to func(int) int) [][]int {
	if gs == nil {
		return nil
	}
	out := make([][]int, len(gs))
	for i, g := range gs {
		out[i] = mapInts(g, to)
	}
	return out
}
