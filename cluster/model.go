// Package cluster is ferry's vocabulary: nodes, tasks, jobs, resources,
// states, constraints and the configuration (a snapshot of which task is in
// which state on which node). It is pure data with validation; it does no
// I/O, starts no goroutines and reads no clock. The planner, the verifier, the
// policies, the simulator and the controller all speak it.
//
// References between elements are indices into the Model's slices (a task's
// Node is an index into Model.Nodes), which keeps 300,000-task models compact.
// Names are what the outside world sees (BtrPlace ids, controller names).
package cluster

import (
	"fmt"
	"strings"
)

// NodeState is the power state of a node as the planner sees it.
type NodeState uint8

const (
	// NodeOnline nodes can host running tasks.
	NodeOnline NodeState = iota
	// NodeOffline nodes host nothing until booted.
	NodeOffline
)

func (s NodeState) String() string {
	switch s {
	case NodeOnline:
		return "online"
	case NodeOffline:
		return "offline"
	}
	return fmt.Sprintf("NodeState(%d)", s)
}

// TaskState is Entropy's life cycle of a task (a BtrPlace VM).
type TaskState uint8

const (
	// Ready: waiting to run, on no node (BtrPlace "ready").
	Ready TaskState = iota
	// Running on a node, consuming its demand there.
	Running
	// Sleeping: suspended to disk on a node, consuming no resource.
	Sleeping
	// Killed: terminated; gone from the model after the plan.
	Killed
)

func (s TaskState) String() string {
	switch s {
	case Ready:
		return "ready"
	case Running:
		return "running"
	case Sleeping:
		return "sleeping"
	case Killed:
		return "killed"
	}
	return fmt.Sprintf("TaskState(%d)", s)
}

// ParseTaskState is the inverse of TaskState.String.
func ParseTaskState(s string) (TaskState, error) {
	switch strings.ToLower(s) {
	case "ready", "waiting":
		return Ready, nil
	case "running":
		return Running, nil
	case "sleeping", "suspended":
		return Sleeping, nil
	case "killed", "terminated":
		return Killed, nil
	}
	return 0, fmt.Errorf("%w: unknown task state %q", ErrInvalid, s)
}

// NoNode is the Node of a task that is on no node (a ready task).
const NoNode = -1

// Node is a machine that can host tasks.
type Node struct {
	Name  string
	State NodeState
	// Capacity per resource, indexed like Model.Resources.
	Capacity []int64
	// Labels are free-form key/values used by policies and job constraints.
	Labels map[string]string
	// Durations overrides action durations for node actions (bootNode,
	// shutdownNode) and, for task actions, durations on this node.
	Durations map[ActionKind]int64
}

// Task is the unit that is placed: a VM or a process.
type Task struct {
	Name string
	// Job groups tasks that change state together (Entropy's vjob); may be empty.
	Job   string
	State TaskState
	// Node hosting the task (running or sleeping), or NoNode.
	Node int
	// Demand per resource while running, indexed like Model.Resources.
	Demand []int64
	// Durations overrides the duration of actions on this task.
	Durations map[ActionKind]int64
}

// Model is a configuration: resources, nodes, tasks and where they are.
type Model struct {
	// Resources names each resource dimension (e.g. "cpu", "memory").
	Resources []string
	Nodes     []Node
	Tasks     []Task
}

// Resource returns the index of the named resource, or -1.
func (m *Model) Resource(name string) int {
	for i, r := range m.Resources {
		if r == name {
			return i
		}
	}
	return -1
}

// NodeIndex returns the index of the named node, or -1. It is linear; callers
// that look up many names should build their own map.
func (m *Model) NodeIndex(name string) int {
	for i := range m.Nodes {
		if m.Nodes[i].Name == name {
			return i
		}
	}
	return -1
}

// TaskIndex returns the index of the named task, or -1 (linear).
func (m *Model) TaskIndex(name string) int {
	for i := range m.Tasks {
		if m.Tasks[i].Name == name {
			return i
		}
	}
	return -1
}

// Clone returns a deep copy of m.
func (m *Model) Clone() *Model {
	c := &Model{Resources: append([]string(nil), m.Resources...)}
	c.Nodes = make([]Node, len(m.Nodes))
	for i, n := range m.Nodes {
		n.Capacity = append([]int64(nil), n.Capacity...)
		n.Labels = cloneMap(n.Labels)
		n.Durations = cloneMap(n.Durations)
		c.Nodes[i] = n
	}
	c.Tasks = make([]Task, len(m.Tasks))
	for i, t := range m.Tasks {
		t.Demand = append([]int64(nil), t.Demand...)
		t.Durations = cloneMap(t.Durations)
		c.Tasks[i] = t
	}
	return c
}

func cloneMap[K comparable, V any](m map[K]V) map[K]V {
	if m == nil {
		return nil
	}
	c := make(map[K]V, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// Usage returns, per node and resource, the demand of the tasks running there.
func (m *Model) Usage() [][]int64 {
	u := make([][]int64, len(m.Nodes))
	for i := range u {
		u[i] = make([]int64, len(m.Resources))
	}
	for _, t := range m.Tasks {
		if t.State == Running && t.Node >= 0 && t.Node < len(m.Nodes) {
			for r, d := range t.Demand {
				u[t.Node][r] += d
			}
		}
	}
	return u
}

// Validate checks the model's internal consistency: unique names, sizes of
// capacity and demand vectors, non-negative amounts, and that every running
// or sleeping task is on an online node (sleeping tasks may sit on offline
// nodes' disks only if the node is online in BtrPlace; we require online for
// running and any existing node for sleeping). Errors wrap ErrInvalid and
// name the element.
func (m *Model) Validate() error {
	nr := len(m.Resources)
	seenR := make(map[string]bool, nr)
	for _, r := range m.Resources {
		if r == "" {
			return fmt.Errorf("%w: empty resource name", ErrInvalid)
		}
		if seenR[r] {
			return fmt.Errorf("%w: resource %q declared twice", ErrInvalid, r)
		}
		seenR[r] = true
	}
	seenN := make(map[string]bool, len(m.Nodes))
	for i, n := range m.Nodes {
		if n.Name == "" {
			return fmt.Errorf("%w: node %d has no name", ErrInvalid, i)
		}
		if seenN[n.Name] {
			return fmt.Errorf("%w: node %q declared twice", ErrInvalid, n.Name)
		}
		seenN[n.Name] = true
		if n.State != NodeOnline && n.State != NodeOffline {
			return fmt.Errorf("%w: node %q: bad state %d", ErrInvalid, n.Name, n.State)
		}
		if len(n.Capacity) != nr {
			return fmt.Errorf("%w: node %q: %d capacities for %d resources", ErrInvalid, n.Name, len(n.Capacity), nr)
		}
		for r, c := range n.Capacity {
			if c < 0 {
				return fmt.Errorf("%w: node %q: negative capacity %d for %q", ErrInvalid, n.Name, c, m.Resources[r])
			}
		}
		for k, d := range n.Durations {
			if d < 0 {
				return fmt.Errorf("%w: node %q: negative duration %d for %s", ErrInvalid, n.Name, d, k)
			}
		}
	}
	seenT := make(map[string]bool, len(m.Tasks))
	for i, t := range m.Tasks {
		if t.Name == "" {
			return fmt.Errorf("%w: task %d has no name", ErrInvalid, i)
		}
		if seenT[t.Name] {
			return fmt.Errorf("%w: task %q declared twice", ErrInvalid, t.Name)
		}
		seenT[t.Name] = true
		if len(t.Demand) != nr {
			return fmt.Errorf("%w: task %q: %d demands for %d resources", ErrInvalid, t.Name, len(t.Demand), nr)
		}
		for r, d := range t.Demand {
			if d < 0 {
				return fmt.Errorf("%w: task %q: negative demand %d for %q", ErrInvalid, t.Name, d, m.Resources[r])
			}
		}
		for k, d := range t.Durations {
			if d < 0 {
				return fmt.Errorf("%w: task %q: negative duration %d for %s", ErrInvalid, t.Name, d, k)
			}
		}
		switch t.State {
		case Ready, Killed:
			if t.Node != NoNode {
				return fmt.Errorf("%w: task %q is %s but placed on node %d", ErrInvalid, t.Name, t.State, t.Node)
			}
		case Running, Sleeping:
			if t.Node < 0 || t.Node >= len(m.Nodes) {
				return fmt.Errorf("%w: task %q is %s on unknown node %d", ErrInvalid, t.Name, t.State, t.Node)
			}
			if m.Nodes[t.Node].State != NodeOnline {
				return fmt.Errorf("%w: task %q is %s on offline node %q", ErrInvalid, t.Name, t.State, m.Nodes[t.Node].Name)
			}
		default:
			return fmt.Errorf("%w: task %q: bad state %d", ErrInvalid, t.Name, t.State)
		}
	}
	return nil
}
