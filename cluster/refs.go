package cluster

// This file is the one place that knows which task and node indices each
// constraint of the catalog references. The planner's validation, the
// verifier and the simulator's sub-problems all go through it, so a new
// constraint type is taught to all three at once.

// TaskRefs lists the task indices c references, in the order they appear
// in its fields (groups flattened, duplicates kept). It is nil for a
// constraint that names no task (and for a type outside the catalog). A
// constraint with one list returns that list itself (not a copy); use
// TaskGroups to walk grouped constraints without copying.
func TaskRefs(c Constraint) []int { return refs(TaskGroups(c)) }

// TaskGroups returns the lists of task indices c references, in field
// order, without copying them: a caller checking thousands of constraints
// over 50,000 nodes loops over these instead of a flattened copy. It is the
// one switch over the catalog for task references.
func TaskGroups(c Constraint) [][]int {
	switch c := c.(type) {
	case Spread:
		return [][]int{c.Tasks}
	case Ban:
		return [][]int{c.Tasks}
	case Fence:
		return [][]int{c.Tasks}
	case Gather:
		return [][]int{c.Tasks}
	case Among:
		return [][]int{c.Tasks}
	case Split:
		return c.Groups
	case SplitAmong:
		return c.TaskGroups
	case Lonely:
		return [][]int{c.Tasks}
	case Root:
		return [][]int{c.Tasks}
	case StateConstraint:
		return [][]int{c.Tasks}
	case Preserve:
		return [][]int{c.Tasks}
	case Seq:
		return [][]int{c.Tasks}
	case NoDelay:
		return [][]int{{c.Task}}
	}
	return nil
}

// NodeGroups is TaskGroups for node indices (groups kept, duplicates
// kept; nil when c names no node).
func NodeGroups(c Constraint) [][]int {
	switch c := c.(type) {
	case Ban:
		return [][]int{c.Nodes}
	case Fence:
		return [][]int{c.Nodes}
	case Among:
		return c.Groups
	case SplitAmong:
		return c.NodeGroups
	case Quarantine:
		return [][]int{c.Nodes}
	case NodeStateConstraint:
		return [][]int{c.Nodes}
	case ResourceCapacity:
		return [][]int{c.Nodes}
	case RunningCapacity:
		return [][]int{c.Nodes}
	case MaxOnline:
		return [][]int{c.Nodes}
	case Overbook:
		return [][]int{c.Nodes}
	}
	return nil
}

// refs flattens gs; a single list is returned as it is.
func refs(gs [][]int) []int {
	if len(gs) == 1 {
		return gs[0]
	}
	var out []int
	for _, g := range gs {
		out = append(out, g...)
	}
	return out
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
