// Package verify replays a reconfiguration plan over time and checks it
// against the rules of issue 2, item 8, independently of how the planner
// found it. It knows nothing of the planner's internals: it reads only a
// plan.Problem and a plan.Plan.
//
// The replay builds, for every task, the intervals during which it occupies
// a node (running: its demand counts; sleeping: only its image is there) and,
// for every node, the windows during which it may host tasks. Every rule is
// then a check on those intervals:
//
//   - durations: End-Start is the duration model's value (p.Durations, else
//     cluster.AttrDurations: the attribute named after the action, else 1);
//   - life cycle: a task's actions chain through the state machine
//     (ready -boot-> running -migrate-> running -suspend-> sleeping
//     -resume-> running -shutdown-> ready; kill from any live state), do
//     not overlap, and each starts where the previous one left the task; a
//     task shut down may not boot again (a reboot is not a pivot);
//   - demand windows: migrate keeps the old demand on From until End and puts
//     the new demand on To from Start; boot and resume put it on the
//     destination from Start; shutdown, suspend and kill keep it until End;
//   - capacity: per node and resource, from the first arrival on the node on
//     and in the final state (overbook ratios scale the capacity);
//   - online windows: a booted node hosts from its bootNode's End; a node
//     being shut down is empty from its shutdownNode's Start;
//   - constraints: every constraint of the catalog in the final state, and
//     the continuous ones at every arrival (the only instants a placement can
//     get worse), seq and noDelay on action times;
//   - the final state: state constraints reached, other tasks keep their
//     state, and Plan.Result (when set) is the replayed configuration.
//
// Errors are *Violation values naming the rule, action, constraint, task,
// node, resource and time; they all wrap ErrViolation.
package verify

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/plan"
)

// ErrViolation marks a plan that breaks a rule. Every *Violation wraps it.
var ErrViolation = errors.New("plan violates a rule")

// Rule names, the Violation.Rule values.
const (
	RuleAction     = "action"     // malformed action (indices, times)
	RuleDuration   = "duration"   // End-Start differs from the duration model
	RuleLifecycle  = "lifecycle"  // action inconsistent with the task's or node's state
	RuleOnline     = "online"     // a task on a node outside its online window
	RuleCapacity   = "capacity"   // node capacity exceeded
	RuleConstraint = "constraint" // a catalog constraint broken
	RuleFinal      = "final"      // final state not the wanted one
	RuleOrigin     = "origin"     // Plan.Origin differs from the problem's model
)

// Violation is one broken rule. Fields that do not apply are empty or -1.
type Violation struct {
	Rule string
	// Action is the index of the action at fault in Plan.Actions, or -1.
	Action int
	// Constraint is the kind of the constraint at fault; ConstraintIndex its
	// index in Problem.Constraints (-1 when none).
	Constraint      string
	ConstraintIndex int
	Task, Node      string
	Resource        string
	// Time is the instant of the violation; -1 means the final state.
	Time int64
	Msg  string
}

func (v *Violation) Error() string {
	var b strings.Builder
	b.WriteString(v.Rule)
	if v.Constraint != "" {
		fmt.Fprintf(&b, " %s#%d", v.Constraint, v.ConstraintIndex)
	}
	if v.Action >= 0 {
		fmt.Fprintf(&b, " action#%d", v.Action)
	}
	if v.Task != "" {
		fmt.Fprintf(&b, " task %q", v.Task)
	}
	if v.Node != "" {
		fmt.Fprintf(&b, " node %q", v.Node)
	}
	if v.Resource != "" {
		fmt.Fprintf(&b, " resource %q", v.Resource)
	}
	if v.Time >= 0 {
		fmt.Fprintf(&b, " at t=%d", v.Time)
	} else {
		b.WriteString(" in the final state")
	}
	b.WriteString(": ")
	b.WriteString(v.Msg)
	return b.String()
}

// Unwrap makes errors.Is(err, ErrViolation) true.
func (v *Violation) Unwrap() error { return ErrViolation }

// Final is the Time of a violation in the final state.
const Final int64 = -1

// inf closes intervals that last past the plan.
const inf int64 = math.MaxInt64

// maxReported bounds the violations joined into Check's error.
const maxReported = 10

// Check verifies pl against p. It returns nil for a valid plan, an error
// wrapping cluster.ErrInvalid when the problem itself is malformed, and
// otherwise the violations (each a *Violation, joined with errors.Join, the
// first maxReported of them).
func Check(p *plan.Problem, pl *plan.Plan) error {
	vs, err := Violations(p, pl)
	if err != nil {
		return err
	}
	if len(vs) == 0 {
		return nil
	}
	errs := make([]error, 0, maxReported+1)
	for i, v := range vs {
		if i == maxReported {
			errs = append(errs, fmt.Errorf("%w: and %d more violations", ErrViolation, len(vs)-maxReported))
			break
		}
		errs = append(errs, v)
	}
	return errors.Join(errs...)
}

// presence is an interval [start, end) during which a task occupies a node.
type presence struct {
	task, node int
	running    bool // false: a sleeping image
	start, end int64
	// action that started it (an arrival), or -1 when it is there from t=0
	// or it only changed kind in place (suspend).
	arrival int
}

// checker holds one verification run.
type checker struct {
	p      *plan.Problem
	m      *cluster.Model
	pl     *plan.Plan
	dm     cluster.DurationModel
	demand [][]int64 // per task, raised by preserve
	vs     []*Violation

	pres     []presence
	byTask   [][]int // presence indices per task
	byNode   [][]int // presence indices per node
	hostWin  [][][2]int64
	powerWin [][][2]int64
	finalT   []taskState
	finalN   []cluster.NodeState
	valid    []bool  // per action: well-formed enough to replay
	taskActs [][]int // per task: indices of its valid actions
}

type taskState struct {
	state cluster.TaskState
	node  int
}

// Violations returns every violation of pl against p, in a deterministic
// order (replay rules first, then constraints in problem order, then the
// final state). The error is non-nil only for a malformed problem or plan
// container (nil pointers, invalid model, constraints with bad indices).
func Violations(p *plan.Problem, pl *plan.Plan) ([]*Violation, error) {
	if p == nil || p.Model == nil {
		return nil, fmt.Errorf("%w: nil problem or model", cluster.ErrInvalid)
	}
	if pl == nil {
		return nil, fmt.Errorf("%w: nil plan", cluster.ErrInvalid)
	}
	if err := p.Model.Validate(); err != nil {
		return nil, err
	}
	c := &checker{p: p, m: p.Model, pl: pl, dm: p.Durations}
	if c.dm == nil {
		c.dm = cluster.AttrDurations{}
	}
	if err := c.checkConstraintRefs(); err != nil {
		return nil, err
	}
	c.computeDemand()
	c.checkOrigin()
	c.checkActions()
	c.replayTasks()
	c.replayNodes()
	c.checkHosting()
	c.checkCapacity()
	c.checkConstraints()
	c.checkFinal()
	return c.vs, nil
}

func (c *checker) add(v Violation) {
	c.vs = append(c.vs, &v)
}

func (c *checker) taskName(t int) string {
	if t >= 0 && t < len(c.m.Tasks) {
		return c.m.Tasks[t].Name
	}
	if t < 0 {
		return ""
	}
	return fmt.Sprintf("#%d", t)
}

func (c *checker) nodeName(n int) string {
	if n >= 0 && n < len(c.m.Nodes) {
		return c.m.Nodes[n].Name
	}
	if n < 0 {
		return ""
	}
	return fmt.Sprintf("#%d", n)
}

func (c *checker) viol(rule string, action int, task, node int, t int64, format string, args ...any) {
	c.add(Violation{Rule: rule, Action: action, ConstraintIndex: -1, Task: c.taskName(task), Node: c.nodeName(node), Time: t, Msg: fmt.Sprintf(format, args...)})
}

func (c *checker) cviol(ci int, action int, task, node int, t int64, format string, args ...any) {
	c.add(Violation{Rule: RuleConstraint, Action: action, Constraint: c.p.Constraints[ci].Kind(), ConstraintIndex: ci,
		Task: c.taskName(task), Node: c.nodeName(node), Time: t, Msg: fmt.Sprintf(format, args...)})
}

// checkConstraintRefs rejects constraints that reference unknown elements:
// that is a malformed problem, not a bad plan.
func (c *checker) checkConstraintRefs() error {
	nt, nn := len(c.m.Tasks), len(c.m.Nodes)
	bad := func(i int, what string, x int) error {
		return fmt.Errorf("%w: constraint #%d (%s): unknown %s index %d", cluster.ErrInvalid, i, c.p.Constraints[i].Kind(), what, x)
	}
	for i, k := range c.p.Constraints {
		for _, g := range cluster.TaskGroups(k) {
			for _, t := range g {
				if t < 0 || t >= nt {
					return bad(i, "task", t)
				}
			}
		}
		for _, g := range cluster.NodeGroups(k) {
			for _, n := range g {
				if n < 0 || n >= nn {
					return bad(i, "node", n)
				}
			}
		}
		switch k := k.(type) {
		case cluster.Preserve:
			if c.m.Resource(k.Resource) < 0 {
				return fmt.Errorf("%w: constraint #%d (preserve): unknown resource %q", cluster.ErrInvalid, i, k.Resource)
			}
		case cluster.ResourceCapacity:
			if c.m.Resource(k.Resource) < 0 {
				return fmt.Errorf("%w: constraint #%d (resourceCapacity): unknown resource %q", cluster.ErrInvalid, i, k.Resource)
			}
		case cluster.Overbook:
			if c.m.Resource(k.Resource) < 0 {
				return fmt.Errorf("%w: constraint #%d (overbook): unknown resource %q", cluster.ErrInvalid, i, k.Resource)
			}
			if !(k.Ratio >= 1) || math.IsInf(k.Ratio, 0) {
				return fmt.Errorf("%w: constraint #%d (overbook): ratio %v must be >= 1", cluster.ErrInvalid, i, k.Ratio)
			}
		case nil:
			return fmt.Errorf("%w: constraint #%d is nil", cluster.ErrInvalid, i)
		}
	}
	return nil
}

// computeDemand raises each task's demand to its preserve amounts.
func (c *checker) computeDemand() {
	c.demand = make([][]int64, len(c.m.Tasks))
	for t := range c.m.Tasks {
		c.demand[t] = append([]int64(nil), c.m.Tasks[t].Demand...)
	}
	for _, k := range c.p.Constraints {
		if pr, ok := k.(cluster.Preserve); ok {
			r := c.m.Resource(pr.Resource)
			for _, t := range pr.Tasks {
				if c.demand[t][r] < pr.Amount {
					c.demand[t][r] = pr.Amount
				}
			}
		}
	}
}

// checkOrigin compares Plan.Origin, when set, with the problem's model.
func (c *checker) checkOrigin() {
	o := c.pl.Origin
	if o == nil {
		return
	}
	if len(o.Nodes) != len(c.m.Nodes) || len(o.Tasks) != len(c.m.Tasks) {
		c.viol(RuleOrigin, -1, -1, -1, 0, "origin has %d nodes and %d tasks, the problem %d and %d", len(o.Nodes), len(o.Tasks), len(c.m.Nodes), len(c.m.Tasks))
		return
	}
	for n := range o.Nodes {
		if o.Nodes[n].State != c.m.Nodes[n].State {
			c.viol(RuleOrigin, -1, -1, n, 0, "origin says %s, the problem %s", o.Nodes[n].State, c.m.Nodes[n].State)
		}
	}
	for t := range o.Tasks {
		if o.Tasks[t].State != c.m.Tasks[t].State || o.Tasks[t].Node != c.m.Tasks[t].Node {
			c.viol(RuleOrigin, -1, t, -1, 0, "origin says %s on %s, the problem %s on %s", o.Tasks[t].State, c.nodeName(o.Tasks[t].Node), c.m.Tasks[t].State, c.nodeName(c.m.Tasks[t].Node))
		}
	}
}

// checkActions checks each action alone: indices, node fields, times and
// duration. Malformed actions are left out of the replay.
func (c *checker) checkActions() {
	nt, nn := len(c.m.Tasks), len(c.m.Nodes)
	okNode := func(n int) bool { return n >= 0 && n < nn }
	c.valid = make([]bool, len(c.pl.Actions))
	for i, a := range c.pl.Actions {
		bad := func(format string, args ...any) {
			c.viol(RuleAction, i, -1, -1, a.Start, "%s: %s", a.Kind, fmt.Sprintf(format, args...))
		}
		if a.Kind >= cluster.ActionKind(len(cluster.ActionKinds())) {
			bad("unknown action kind")
			continue
		}
		if a.Start < 0 || a.End < a.Start {
			bad("bad window [%d, %d)", a.Start, a.End)
			continue
		}
		var from, to int
		if a.Kind.IsNodeAction() {
			if !okNode(a.Node) {
				bad("unknown node index %d", a.Node)
				continue
			}
			from, to = cluster.NoNode, a.Node
		} else {
			if a.Task < 0 || a.Task >= nt {
				bad("unknown task index %d", a.Task)
				continue
			}
			switch a.Kind {
			case cluster.Boot:
				if !okNode(a.To) {
					bad("unknown destination node %d", a.To)
					continue
				}
			case cluster.Shutdown:
				if !okNode(a.From) {
					bad("unknown node %d", a.From)
					continue
				}
			case cluster.Kill:
				if a.From != cluster.NoNode && !okNode(a.From) {
					bad("unknown node %d", a.From)
					continue
				}
			case cluster.Suspend:
				if !okNode(a.From) || !okNode(a.To) {
					bad("unknown node %d or %d", a.From, a.To)
					continue
				}
				if a.To != a.From {
					bad("the image must stay on the source node %s, not %s", c.nodeName(a.From), c.nodeName(a.To))
					continue
				}
			case cluster.Resume, cluster.Migrate:
				if !okNode(a.From) || !okNode(a.To) {
					bad("unknown node %d or %d", a.From, a.To)
					continue
				}
				if a.Kind == cluster.Migrate && a.From == a.To {
					bad("migration from %s to itself", c.nodeName(a.From))
					continue
				}
			}
			from, to = a.From, a.To
		}
		task := a.Task
		if a.Kind.IsNodeAction() {
			task = -1
		}
		want := c.dm.Duration(c.m, a.Kind, task, from, to)
		if a.End-a.Start != want {
			node := a.Node
			if !a.Kind.IsNodeAction() {
				node = -1
			}
			c.viol(RuleDuration, i, task, node, a.Start, "%s lasts %d, the duration model says %d", a.Kind, a.End-a.Start, want)
		}
		c.valid[i] = true
	}
	c.taskActs = make([][]int, nt)
	for i, a := range c.pl.Actions {
		if c.valid[i] && !a.Kind.IsNodeAction() {
			c.taskActs[a.Task] = append(c.taskActs[a.Task], i)
		}
	}
}

// sortedActions returns the indices of valid actions selected by keep,
// grouped by key and ordered by (Start, End, index).
func (c *checker) sortedActions(keep func(a plan.Action) (int, bool), n int) [][]int {
	out := make([][]int, n)
	for i, a := range c.pl.Actions {
		if !c.valid[i] {
			continue
		}
		if k, ok := keep(a); ok {
			out[k] = append(out[k], i)
		}
	}
	for _, l := range out {
		sort.SliceStable(l, func(x, y int) bool {
			ax, ay := c.pl.Actions[l[x]], c.pl.Actions[l[y]]
			if ax.Start != ay.Start {
				return ax.Start < ay.Start
			}
			return ax.End < ay.End
		})
	}
	return out
}

// replayTasks chains each task's actions through the life cycle and records
// its presences.
func (c *checker) replayTasks() {
	nt := len(c.m.Tasks)
	perTask := c.sortedActions(func(a plan.Action) (int, bool) { return a.Task, !a.Kind.IsNodeAction() }, nt)
	c.byTask = make([][]int, nt)
	c.byNode = make([][]int, len(c.m.Nodes))
	c.finalT = make([]taskState, nt)
	addPres := func(p presence) {
		if p.end <= p.start && p.end != inf {
			return // empty interval
		}
		c.pres = append(c.pres, p)
		i := len(c.pres) - 1
		c.byTask[p.task] = append(c.byTask[p.task], i)
		c.byNode[p.node] = append(c.byNode[p.node], i)
	}
	for t := 0; t < nt; t++ {
		st := taskState{c.m.Tasks[t].State, c.m.Tasks[t].Node}
		since, arrival := int64(0), -1
		var busyUntil int64
		prev, shut := -1, -1
		for _, ai := range perTask[t] {
			a := c.pl.Actions[ai]
			if prev >= 0 && a.Start < busyUntil {
				c.viol(RuleLifecycle, ai, t, -1, a.Start, "%s starts before the task's previous action #%d (%s) ends at %d", a.Kind, prev, c.pl.Actions[prev].Kind, busyUntil)
				continue
			}
			wrong := func(format string, args ...any) {
				c.viol(RuleLifecycle, ai, t, -1, a.Start, "%s of a %s task%s: %s", a.Kind, st.state, onNode(c, st.node), fmt.Sprintf(format, args...))
			}
			switch a.Kind {
			case cluster.Boot:
				if st.state != cluster.Ready {
					wrong("only a ready task boots")
					continue
				}
				st = taskState{cluster.Running, a.To}
				since, arrival = a.Start, ai
			case cluster.Shutdown, cluster.Suspend, cluster.Migrate:
				if st.state != cluster.Running {
					wrong("only a running task can %s", a.Kind)
					continue
				}
				if st.node != a.From {
					wrong("it runs on %s, not %s", c.nodeName(st.node), c.nodeName(a.From))
					continue
				}
				addPres(presence{task: t, node: st.node, running: true, start: since, end: a.End, arrival: arrival})
				switch a.Kind {
				case cluster.Shutdown:
					st = taskState{cluster.Ready, cluster.NoNode}
					shut = ai
				case cluster.Suspend:
					st = taskState{cluster.Sleeping, a.To}
					since, arrival = a.End, -1
				case cluster.Migrate:
					st = taskState{cluster.Running, a.To}
					since, arrival = a.Start, ai
				}
			case cluster.Resume:
				if st.state != cluster.Sleeping {
					wrong("only a sleeping task resumes")
					continue
				}
				if st.node != a.From {
					wrong("its image is on %s, not %s", c.nodeName(st.node), c.nodeName(a.From))
					continue
				}
				addPres(presence{task: t, node: st.node, running: false, start: since, end: a.End, arrival: -1})
				st = taskState{cluster.Running, a.To}
				since, arrival = a.Start, ai
			case cluster.Kill:
				switch st.state {
				case cluster.Killed:
					wrong("it is already killed")
					continue
				case cluster.Ready:
					if a.From != cluster.NoNode {
						wrong("a ready task is on no node, not %s", c.nodeName(a.From))
						continue
					}
				default:
					if a.From != st.node {
						wrong("it is on %s, not %s", c.nodeName(st.node), c.nodeName(a.From))
						continue
					}
					addPres(presence{task: t, node: st.node, running: st.state == cluster.Running, start: since, end: a.End, arrival: arrival})
				}
				st = taskState{cluster.Killed, cluster.NoNode}
			}
			prev, busyUntil = ai, a.End
		}
		if st.state == cluster.Running || st.state == cluster.Sleeping {
			addPres(presence{task: t, node: st.node, running: st.state == cluster.Running, start: since, end: inf, arrival: arrival})
			if shut >= 0 {
				c.viol(RuleLifecycle, shut, t, -1, c.pl.Actions[shut].Start, "the task is shut down and then booted again: a reboot loses its state and is not a pivot")
			}
		}
		c.finalT[t] = st
	}
}

func onNode(c *checker, n int) string {
	if n < 0 {
		return ""
	}
	return " on " + c.nodeName(n)
}

// replayNodes chains each node's power actions and records its hosting
// windows (it may host tasks) and power windows (it counts as online for
// maxOnline: from a boot's start to a shutdown's end).
func (c *checker) replayNodes() {
	nn := len(c.m.Nodes)
	perNode := c.sortedActions(func(a plan.Action) (int, bool) { return a.Node, a.Kind.IsNodeAction() }, nn)
	c.hostWin = make([][][2]int64, nn)
	c.powerWin = make([][][2]int64, nn)
	c.finalN = make([]cluster.NodeState, nn)
	for n := 0; n < nn; n++ {
		st := c.m.Nodes[n].State
		var hostFrom, powerFrom int64
		var busyUntil int64
		prev := -1
		for _, ai := range perNode[n] {
			a := c.pl.Actions[ai]
			if prev >= 0 && a.Start < busyUntil {
				c.viol(RuleLifecycle, ai, -1, n, a.Start, "%s starts before the node's previous action #%d ends at %d", a.Kind, prev, busyUntil)
				continue
			}
			switch a.Kind {
			case cluster.BootNode:
				if st != cluster.NodeOffline {
					c.viol(RuleLifecycle, ai, -1, n, a.Start, "bootNode of an online node")
					continue
				}
				st, hostFrom, powerFrom = cluster.NodeOnline, a.End, a.Start
			case cluster.ShutdownNode:
				if st != cluster.NodeOnline {
					c.viol(RuleLifecycle, ai, -1, n, a.Start, "shutdownNode of an offline node")
					continue
				}
				c.hostWin[n] = append(c.hostWin[n], [2]int64{hostFrom, a.Start})
				c.powerWin[n] = append(c.powerWin[n], [2]int64{powerFrom, a.End})
				st = cluster.NodeOffline
			}
			prev, busyUntil = ai, a.End
		}
		if st == cluster.NodeOnline {
			c.hostWin[n] = append(c.hostWin[n], [2]int64{hostFrom, inf})
			c.powerWin[n] = append(c.powerWin[n], [2]int64{powerFrom, inf})
		}
		c.finalN[n] = st
	}
}

// checkHosting: every presence lies within an online window of its node.
func (c *checker) checkHosting() {
	for _, p := range c.pres {
		ok := false
		for _, w := range c.hostWin[p.node] {
			if w[0] <= p.start && p.end <= w[1] {
				ok = true
				break
			}
		}
		if ok {
			continue
		}
		kind := "runs"
		if !p.running {
			kind = "sleeps"
		}
		end := "the end"
		if p.end != inf {
			end = fmt.Sprint(p.end)
		}
		c.viol(RuleOnline, p.arrival, p.task, p.node, p.start, "the task %s there over [%d, %s) but the node hosts only during %s", kind, p.start, end, fmtWindows(c.hostWin[p.node]))
	}
}

func fmtWindows(ws [][2]int64) string {
	if len(ws) == 0 {
		return "no window (offline)"
	}
	parts := make([]string, len(ws))
	for i, w := range ws {
		if w[1] == inf {
			parts[i] = fmt.Sprintf("[%d, end)", w[0])
		} else {
			parts[i] = fmt.Sprintf("[%d, %d)", w[0], w[1])
		}
	}
	return strings.Join(parts, ", ")
}

// effectiveCapacity applies overbook ratios (the smallest ratio when several
// cover a node and resource).
func (c *checker) effectiveCapacity() [][]int64 {
	ratio := make([][]float64, len(c.m.Nodes))
	for n := range ratio {
		ratio[n] = make([]float64, len(c.m.Resources))
	}
	for _, k := range c.p.Constraints {
		if o, ok := k.(cluster.Overbook); ok {
			r := c.m.Resource(o.Resource)
			for _, n := range o.Nodes {
				if ratio[n][r] == 0 || o.Ratio < ratio[n][r] {
					ratio[n][r] = o.Ratio
				}
			}
		}
	}
	capa := make([][]int64, len(c.m.Nodes))
	for n := range capa {
		capa[n] = make([]int64, len(c.m.Resources))
		for r := range capa[n] {
			v := c.m.Nodes[n].Capacity[r]
			if ratio[n][r] > 1 {
				f := math.Floor(float64(v) * ratio[n][r])
				if f >= math.MaxInt64/2 {
					v = math.MaxInt64 / 2
				} else {
					v = int64(f)
				}
			}
			capa[n][r] = v
		}
	}
	return capa
}

// sweepEvent is one change of load on a set of nodes.
type sweepEvent struct {
	t       int64
	start   bool
	pres    int
	arrival bool
}

// sweep walks the running presences among idx in time order and calls check
// after the starts of each instant at or after the first arrival, with the
// presences current at that instant, then once for the final state (t=Final).
// load is maintained by add/remove callbacks.
func (c *checker) sweep(idx []int, add, remove func(p int), check func(t int64)) {
	evs := make([]sweepEvent, 0, 2*len(idx))
	first := inf
	for _, i := range idx {
		p := c.pres[i]
		if !p.running {
			continue
		}
		evs = append(evs, sweepEvent{t: p.start, start: true, pres: i, arrival: p.arrival >= 0})
		if p.end != inf {
			evs = append(evs, sweepEvent{t: p.end, pres: i})
		}
		if p.arrival >= 0 && p.start < first {
			first = p.start
		}
	}
	sort.Slice(evs, func(a, b int) bool {
		if evs[a].t != evs[b].t {
			return evs[a].t < evs[b].t
		}
		if evs[a].start != evs[b].start {
			return !evs[a].start // ends before starts at the same instant
		}
		return evs[a].pres < evs[b].pres
	})
	for i := 0; i < len(evs); {
		t := evs[i].t
		arrived := false
		for ; i < len(evs) && evs[i].t == t; i++ {
			if evs[i].start {
				add(evs[i].pres)
				arrived = arrived || evs[i].arrival
			} else {
				remove(evs[i].pres)
			}
		}
		if t >= first && arrived {
			check(t)
		}
	}
	check(Final)
}

// checkCapacity: per node and resource, from the first arrival on and in the
// final state.
func (c *checker) checkCapacity() {
	capa := c.effectiveCapacity()
	nr := len(c.m.Resources)
	for n := range c.m.Nodes {
		load := make([]int64, nr)
		reported := make([]bool, nr)
		c.sweep(c.byNode[n],
			func(p int) { addVec(load, c.demand[c.pres[p].task], 1) },
			func(p int) { addVec(load, c.demand[c.pres[p].task], -1) },
			func(t int64) {
				for r := 0; r < nr; r++ {
					if load[r] > capa[n][r] && !reported[r] {
						reported[r] = true
						c.add(Violation{Rule: RuleCapacity, Action: -1, ConstraintIndex: -1, Node: c.m.Nodes[n].Name, Resource: c.m.Resources[r], Time: t,
							Msg: fmt.Sprintf("load %d exceeds capacity %d", load[r], capa[n][r])})
					}
				}
			})
	}
}

func addVec(dst, v []int64, sign int64) {
	for i := range v {
		dst[i] += sign * v[i]
	}
}
