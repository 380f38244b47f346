package cluster

import (
	"errors"
	"fmt"
)

// ErrInvalid marks input that is malformed or inconsistent. Wrapped errors
// name the element at fault; callers test with errors.Is.
var ErrInvalid = errors.New("invalid input")

// ActionKind is a transition of a task or a node.
type ActionKind uint8

const (
	// Boot starts a ready task on a node (BtrPlace bootVM).
	Boot ActionKind = iota
	// Shutdown stops a running task; it becomes ready (shutdownVM).
	Shutdown
	// Suspend writes a running task to disk; it becomes sleeping (suspendVM).
	Suspend
	// Resume restarts a sleeping task, here or on another node (resumeVM).
	Resume
	// Migrate moves a running task live between nodes (migrateVM).
	Migrate
	// Kill terminates a task in any state (killVM).
	Kill
	// BootNode brings an offline node online.
	BootNode
	// ShutdownNode takes an empty online node offline.
	ShutdownNode
	numActionKinds
)

var actionNames = [...]string{
	Boot:         "boot",
	Shutdown:     "shutdown",
	Suspend:      "suspend",
	Resume:       "resume",
	Migrate:      "migrate",
	Kill:         "kill",
	BootNode:     "bootNode",
	ShutdownNode: "shutdownNode",
}

func (k ActionKind) String() string {
	if int(k) < len(actionNames) {
		return actionNames[k]
	}
	return fmt.Sprintf("ActionKind(%d)", k)
}

// ParseActionKind accepts the names String returns.
func ParseActionKind(s string) (ActionKind, error) {
	for k, n := range actionNames {
		if n == s {
			return ActionKind(k), nil
		}
	}
	return 0, fmt.Errorf("%w: unknown action kind %q", ErrInvalid, s)
}

// ActionKinds lists every action kind.
func ActionKinds() []ActionKind {
	ks := make([]ActionKind, numActionKinds)
	for i := range ks {
		ks[i] = ActionKind(i)
	}
	return ks
}

// IsNodeAction reports whether k acts on a node rather than a task.
func (k ActionKind) IsNodeAction() bool { return k == BootNode || k == ShutdownNode }

// DurationModel gives the duration of an action, in the plan's time unit.
// task is an index into m.Tasks (-1 for node actions); from and to are node
// indices (NoNode where they do not apply; for node actions to is the node).
// Implementations must be pure and return a value >= 0.
type DurationModel interface {
	Duration(m *Model, kind ActionKind, task, from, to int) int64
}

// AttrDurations is BtrPlace's duration model: a task's (or, for node actions,
// the node's) Durations entry for the action kind, else Default (1 when 0).
// Then a per-node override on the destination applies to task actions only
// when the task has none.
type AttrDurations struct {
	Default int64
}

// Duration implements DurationModel.
func (a AttrDurations) Duration(m *Model, kind ActionKind, task, from, to int) int64 {
	def := a.Default
	if def <= 0 {
		def = 1
	}
	if kind.IsNodeAction() {
		if to >= 0 && to < len(m.Nodes) {
			if d, ok := m.Nodes[to].Durations[kind]; ok {
				return d
			}
		}
		return def
	}
	if task >= 0 && task < len(m.Tasks) {
		if d, ok := m.Tasks[task].Durations[kind]; ok {
			return d
		}
	}
	return def
}

// BandwidthDurations models durations from sizes: moving or saving a task
// costs its memory demand divided by a bandwidth, plus a fixed latency. It is
// what the controller and simulator use; per-task and per-node Durations
// entries still override it (operators and tests can pin numbers).
//
// Units: Memory demand in bytes, bandwidths in bytes per time unit.
type BandwidthDurations struct {
	// Memory names the resource whose demand is the task's memory in bytes.
	Memory string
	// NetBandwidth for live migration and remote resume (bytes per unit).
	NetBandwidth int64
	// DiskBandwidth for suspend and local resume (bytes per unit).
	DiskBandwidth int64
	// Fixed durations for actions not driven by size, and the latency
	// added to sized ones.
	BootTask, ShutdownTask, KillTask, Latency, BootNodeTime, ShutdownNodeTime int64
}

// Duration implements DurationModel.
func (b BandwidthDurations) Duration(m *Model, kind ActionKind, task, from, to int) int64 {
	if kind.IsNodeAction() {
		if to >= 0 && to < len(m.Nodes) {
			if d, ok := m.Nodes[to].Durations[kind]; ok {
				return d
			}
		}
		if kind == BootNode {
			return b.BootNodeTime
		}
		return b.ShutdownNodeTime
	}
	if task >= 0 && task < len(m.Tasks) {
		if d, ok := m.Tasks[task].Durations[kind]; ok {
			return d
		}
	}
	var mem int64
	if r := m.Resource(b.Memory); r >= 0 && task >= 0 && task < len(m.Tasks) {
		mem = m.Tasks[task].Demand[r]
	}
	div := func(n, bw int64) int64 {
		if bw <= 0 {
			return 0
		}
		return (n + bw - 1) / bw
	}
	switch kind {
	case Boot:
		return b.BootTask
	case Shutdown:
		return b.ShutdownTask
	case Kill:
		return b.KillTask
	case Migrate:
		return b.Latency + div(mem, b.NetBandwidth)
	case Suspend:
		return b.Latency + div(mem, b.DiskBandwidth)
	case Resume:
		d := b.Latency + div(mem, b.DiskBandwidth)
		if from != to {
			d += div(mem, b.NetBandwidth)
		}
		return d
	}
	return b.Latency
}
