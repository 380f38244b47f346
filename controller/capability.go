package controller

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/driver/qemu"
	"github.com/ferrycluster/ferry/store"
)

// The capability filter: which nodes can take a task at all.
//
// A VM needs a node with the qemu driver, and a node whose QEMU is older
// than 9.0 refuses a guest without the RAM tail — one first booted on QEMU
// 9.0 or later — with ErrUnsupported before anything starts (docs/vm.md,
// "Which QEMU"). Each node's drivers and QEMU version come from its
// heartbeats (api.NodeInfo); each guest's tail is recorded when it boots
// (store.Task.RAMTail). The policy sees the filter as View.Eligible and
// the planner as continuous fences, so no boot, resume, migration or pivot
// is planned onto a node that would refuse the task. Process tasks run on
// every agent (the process driver is always there) and are not filtered.

// NodeReports is what each node's agent last reported (GET /v1/node), by
// node name; a node missing from it has not been heard from since this
// controller started leading, and takes no VM until it has.
type NodeReports map[string]api.NodeInfo

// hasDriver reports whether the node runs the driver.
func hasDriver(info api.NodeInfo, kind string) bool { return slices.Contains(info.Drivers, kind) }

// bootTail is the RAM tail a guest booted on a node with info gets.
func bootTail(info api.NodeInfo) store.RAMTail {
	if !hasDriver(info, "qemu") {
		return store.RAMTailUnknown
	}
	if qemu.NeedsRAMTail(info.QEMUVersion) {
		return store.RAMTailWith
	}
	return store.RAMTailWithout
}

// Capability classes of tasks: the nodes that can take the tasks of a
// class are the same.
const (
	anyNode  = -1 // process tasks
	qemuNode = 0  // a VM to boot, or a guest with the RAM tail
	newQEMU  = 1  // a guest without the RAM tail, or not known to have it
)

// eligibility is the filter over a model's indices.
type eligibility struct {
	// nodes[class][n]: node n can take tasks of the class.
	nodes [2][]bool
	// class of each task.
	class []int
	// own is the node a running task is on: it may stay there whatever
	// the filter says (it runs there already; the node may simply not
	// have been heard from yet).
	own []int
	// all[class]: every node can take the class (no constraint needed).
	all [2]bool
	// unheard: online nodes not heard from yet.
	unheard []string
	// old: online nodes with the qemu driver and a QEMU older than 9.0,
	// with their version, for the events.
	old []string
	// spec[t], when set, is the nodes task t's job constraints allow
	// (pinned, fence, ban; see restrict); nil: any.
	spec [][]bool
}

// restrict narrows the filtered (VM) tasks to the nodes their jobs'
// constraints allow (pinned, fence, ban): a guest pinned to a node that
// would refuse it has nowhere to go, like one no node can take, rather
// than be wanted running where the planner may not put it (which fails
// the whole plan).
func (e *eligibility) restrict(cons []cluster.Constraint, nN int) {
	row := func(t int) []bool {
		if e.spec == nil {
			e.spec = make([][]bool, len(e.class))
		}
		if e.spec[t] == nil {
			e.spec[t] = make([]bool, nN)
			for n := range e.spec[t] {
				e.spec[t][n] = true
			}
		}
		return e.spec[t]
	}
	for _, c := range cons {
		switch c := c.(type) {
		case cluster.Fence:
			in := make([]bool, nN)
			for _, n := range c.Nodes {
				in[n] = true
			}
			for _, t := range c.Tasks {
				if e.class[t] == anyNode {
					continue
				}
				r := row(t)
				for n := range r {
					r[n] = r[n] && in[n]
				}
			}
		case cluster.Ban:
			for _, t := range c.Tasks {
				if e.class[t] == anyNode {
					continue
				}
				r := row(t)
				for _, n := range c.Nodes {
					r[n] = false
				}
			}
		}
	}
}

// allowed reports whether task t's job constraints allow node n.
func (e *eligibility) allowed(t, n int) bool {
	return e.spec == nil || e.spec[t] == nil || e.spec[t][n]
}

// newEligibility computes the filter for a snapshot's model; vms are its
// qemu tasks (model indices) with their recorded RAM tails.
func newEligibility(m *cluster.Model, vms map[int]store.RAMTail, nodes NodeReports) *eligibility {
	e := &eligibility{class: make([]int, len(m.Tasks)), own: make([]int, len(m.Tasks))}
	for c := range e.nodes {
		e.nodes[c] = make([]bool, len(m.Nodes))
		e.all[c] = true
	}
	for n, cn := range m.Nodes {
		info, heard := nodes[cn.Name]
		switch {
		case !heard:
			if cn.State == cluster.NodeOnline {
				e.unheard = append(e.unheard, cn.Name)
			}
		case hasDriver(info, "qemu"):
			e.nodes[qemuNode][n] = true
			if bootTail(info) == store.RAMTailWithout {
				e.nodes[newQEMU][n] = true
			} else if cn.State == cluster.NodeOnline {
				v := info.QEMUVersion
				if v == "" {
					v = "of unknown version"
				}
				e.old = append(e.old, cn.Name+" has QEMU "+v)
			}
		}
		for c := range e.nodes {
			e.all[c] = e.all[c] && e.nodes[c][n]
		}
	}
	sort.Strings(e.old)
	for i, t := range m.Tasks {
		e.own[i] = cluster.NoNode
		if t.State == cluster.Running {
			e.own[i] = t.Node
		}
		tail, vm := vms[i]
		switch {
		case !vm:
			e.class[i] = anyNode
		case t.State == cluster.Ready:
			e.class[i] = qemuNode // a new guest: its node gives it its shape
		default:
			if tail == store.RAMTailUnknown && t.Node >= 0 {
				// Found on a node that would refuse it without the
				// tail: it has it.
				if info, ok := nodes[m.Nodes[t.Node].Name]; ok && bootTail(info) == store.RAMTailWith {
					tail = store.RAMTailWith
				}
			}
			e.class[i] = newQEMU
			if tail == store.RAMTailWith {
				e.class[i] = qemuNode
			}
		}
	}
	return e
}

// ok reports whether node n can take task t.
func (e *eligibility) ok(t, n int) bool {
	c := e.class[t]
	return c == anyNode || e.nodes[c][n] && e.allowed(t, n) || e.own[t] == n
}

// constraints are continuous fences holding each filtered task to the
// nodes that can take it (and the node it runs on), one per distinct set.
func (e *eligibility) constraints() []cluster.Constraint {
	type key struct{ class, own int }
	groups := map[key][]int{}
	var keys []key
	for t, c := range e.class {
		if c == anyNode || e.all[c] {
			continue
		}
		k := key{c, cluster.NoNode}
		if o := e.own[t]; o >= 0 && !e.nodes[c][o] {
			k.own = o
		}
		if groups[k] == nil {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], t)
	}
	out := make([]cluster.Constraint, 0, len(keys))
	for _, k := range keys {
		var ns []int
		for n, ok := range e.nodes[k.class] {
			if ok || n == k.own {
				ns = append(ns, n)
			}
		}
		out = append(out, cluster.Fence{Tasks: groups[k], Nodes: ns, Continuous: true})
	}
	return out
}

// stranded returns, for each task no usable node can take (usable: online
// and not draining), why; a task running on a usable node is not stranded.
func (e *eligibility) stranded(m *cluster.Model, draining map[int]bool) map[int]string {
	usable := func(n int) bool { return n >= 0 && m.Nodes[n].State == cluster.NodeOnline && !draining[n] }
	var out map[int]string
	for t, c := range e.class {
		if c == anyNode || usable(e.own[t]) {
			continue
		}
		room, fits := false, false // some usable node takes the class; one the job allows
		for n := range m.Nodes {
			if usable(n) && e.nodes[c][n] {
				room, fits = true, fits || e.allowed(t, n)
			}
		}
		if fits {
			continue
		}
		why := e.why(c)
		if room {
			why = "its job's constraints (pinned, fence, ban) allow no online node that is not draining and can take it" + e.notHeard()
		}
		if out == nil {
			out = map[int]string{}
		}
		out[t] = why
	}
	return out
}

// why says why no usable node takes tasks of class c.
func (e *eligibility) why(c int) string {
	var s string
	if c == qemuNode {
		s = "no online node that is not draining runs the qemu driver"
	} else {
		s = "its guest has no RAM tail (first booted on QEMU 9.0 or later, or not recorded), which nodes with QEMU older than 9.0 refuse, " +
			"and no online node that is not draining has QEMU 9.0 or later"
		if len(e.old) > 0 {
			s += " (" + strings.Join(e.old, ", ") + ")"
		}
	}
	return s + e.notHeard()
}

// notHeard names the online nodes not heard from yet, for the reasons.
func (e *eligibility) notHeard() string {
	if len(e.unheard) > 0 {
		return fmt.Sprintf("; not heard from yet: %s", strings.Join(e.unheard, ", "))
	}
	return ""
}
