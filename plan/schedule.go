package plan

import (
	"container/heap"
	"fmt"
	"sort"

	"github.com/ferrycluster/ferry/cluster"
)

// The scheduler turns a target placement into timed actions by event-driven
// list scheduling. Departures (shutdown, suspend, kill, and a migration's
// hold on its source) need no room and start as soon as their predecessors
// allow; an arrival (boot, resume, the destination side of a migration)
// starts at the first event time at which the destination has room for it
// and every continuous constraint allows it, shortest first (what minimises
// the sum of end times). When nothing runs and arrivals still wait, they wait
// on each other in a cycle: one migration of the cycle is rerouted through a
// third node with room (a pivot), or replaced by a suspend and a resume.

type actState uint8

const (
	waiting actState = iota // predecessors not finished
	pending                 // eligible, waiting for room (gated) or to start
	running
	done
)

type sact struct {
	Action
	dur   int64
	deps  int32
	succ  []int32
	ready int64 // earliest start from predecessors
	gate  int32 // node whose room gates the start (arrivals, node boots), else -1
	leave int32 // node whose resources are freed at the end, else -1
	state actState
	first bool // first action of its task (noDelay applies to it)
}

func (a *sact) arrives() bool {
	switch a.Kind {
	case cluster.Boot, cluster.Resume, cluster.Migrate:
		return true
	}
	return false
}

type endHeap struct {
	s   *sched
	idx []int32
}

func (h *endHeap) Len() int { return len(h.idx) }
func (h *endHeap) Less(i, j int) bool {
	a, b := &h.s.acts[h.idx[i]], &h.s.acts[h.idx[j]]
	if a.End != b.End {
		return a.End < b.End
	}
	return h.idx[i] < h.idx[j]
}
func (h *endHeap) Swap(i, j int) { h.idx[i], h.idx[j] = h.idx[j], h.idx[i] }
func (h *endHeap) Push(x any)    { h.idx = append(h.idx, x.(int32)) }
func (h *endHeap) Pop() any {
	x := h.idx[len(h.idx)-1]
	h.idx = h.idx[:len(h.idx)-1]
	return x
}

type sched struct {
	in   *inst
	tgt  []int32 // target node of running tasks (assignment)
	acts []sact
	// per task: its last action (for seq and pivots), first action
	firstAct, lastAct []int32
	load              []int64 // current load per node and resource
	online            []bool  // node usable for arrivals now
	nodeAct           []int32 // node action per node, or -1
	pend              [][]int32
	dirty             []bool
	dirtyList         []int32
	allDirty          bool
	heap              endHeap
	now               int64
	// presence of running tasks per node for continuous rules
	nodePres []int32
	pA, pB   []int32 // nodes each task is present on now, or -1
	pivots   int
	// viaThird marks the tasks already rerouted through a third node: a
	// second pivot of the same task suspends it, so that pivots cannot
	// shuttle a task between third nodes for ever (nil until the first
	// pivot).
	viaThird []bool
	// stop is the planner's deadline and context (nil: no bound).
	stop *budget
}

// addAct appends an action and returns its index.
func (s *sched) addAct(a sact) int32 {
	s.acts = append(s.acts, a)
	return int32(len(s.acts) - 1)
}

func (s *sched) edge(from, to int32) {
	s.acts[from].succ = append(s.acts[from].succ, to)
	s.acts[to].deps++
}

// newSched derives the actions from the origin and the assignment. sleep,
// when not nil, says per task whether a relocation goes by suspend and
// resume; nil means in.viaSleep decides.
func newSched(in *inst, a *assign, sleep []bool) *sched {
	s := &sched{in: in, tgt: a.node}
	s.firstAct = make([]int32, in.nT)
	s.lastAct = make([]int32, in.nT)
	s.nodeAct = make([]int32, in.nN)
	for i := range s.nodeAct {
		s.nodeAct[i] = -1
	}
	for n := int32(0); n < int32(in.nN); n++ {
		switch {
		case in.nodeCur[n] == cluster.NodeOffline && in.nodeTgt[n] == cluster.NodeOnline:
			s.nodeAct[n] = s.addAct(sact{Action: Action{Kind: cluster.BootNode, Task: -1, Node: int(n), From: cluster.NoNode, To: int(n)},
				dur: in.duration(cluster.BootNode, -1, -1, n), gate: n, leave: -1})
		case in.nodeCur[n] == cluster.NodeOnline && in.nodeTgt[n] == cluster.NodeOffline:
			s.nodeAct[n] = s.addAct(sact{Action: Action{Kind: cluster.ShutdownNode, Task: -1, Node: int(n), From: cluster.NoNode, To: int(n)},
				dur: in.duration(cluster.ShutdownNode, -1, -1, n), gate: -1, leave: -1})
		}
	}
	for t := int32(0); t < int32(in.nT); t++ {
		s.firstAct[t], s.lastAct[t] = -1, -1
		cs, ts := in.curState[t], in.tgtState[t]
		cn, tn := in.curNode[t], a.node[t]
		var x sact
		x.Task, x.Node, x.From, x.To, x.gate, x.leave = int(t), cluster.NoNode, cluster.NoNode, cluster.NoNode, -1, -1
		if in.parks(t) && tn >= 0 && tn != cn {
			// Move the task (migrate, or resume its image) to tn, then
			// suspend it there.
			mv := sact{Action: Action{Kind: cluster.Migrate, Task: int(t), Node: cluster.NoNode, From: int(cn), To: int(tn)},
				gate: tn, leave: cn, first: true}
			if cs == cluster.Sleeping {
				mv.Kind, mv.leave = cluster.Resume, -1
			}
			mv.dur = in.duration(mv.Kind, t, cn, tn)
			su := sact{Action: Action{Kind: cluster.Suspend, Task: int(t), Node: cluster.NoNode, From: int(tn), To: int(tn)},
				dur: in.duration(cluster.Suspend, t, tn, tn), gate: -1, leave: tn}
			i := s.addAct(mv)
			j := s.addAct(su)
			s.edge(i, j)
			s.firstAct[t], s.lastAct[t] = i, j
			continue
		}
		switch {
		case cs == ts && (cs != cluster.Running || cn == tn):
			continue
		case cs == cluster.Running && ts == cluster.Running:
			if (sleep == nil && in.viaSleep(t, cn, tn)) || (sleep != nil && sleep[t]) {
				// Suspend here, resume there.
				su := sact{Action: Action{Kind: cluster.Suspend, Task: int(t), Node: cluster.NoNode, From: int(cn), To: int(cn)},
					dur: in.duration(cluster.Suspend, t, cn, cn), gate: -1, leave: cn, first: true}
				re := sact{Action: Action{Kind: cluster.Resume, Task: int(t), Node: cluster.NoNode, From: int(cn), To: int(tn)},
					dur: in.duration(cluster.Resume, t, cn, tn), gate: tn, leave: -1}
				i := s.addAct(su)
				j := s.addAct(re)
				s.edge(i, j)
				s.firstAct[t], s.lastAct[t] = i, j
				continue
			}
			x.Kind, x.From, x.To, x.gate, x.leave = cluster.Migrate, int(cn), int(tn), tn, cn
		case cs == cluster.Running && ts == cluster.Sleeping:
			x.Kind, x.From, x.To, x.leave = cluster.Suspend, int(cn), int(cn), cn
		case cs == cluster.Running && ts == cluster.Ready:
			x.Kind, x.From, x.leave = cluster.Shutdown, int(cn), cn
		case cs == cluster.Running && ts == cluster.Killed:
			x.Kind, x.From, x.leave = cluster.Kill, int(cn), cn
		case cs == cluster.Ready && ts == cluster.Running:
			x.Kind, x.To, x.gate = cluster.Boot, int(tn), tn
		case cs == cluster.Ready && ts == cluster.Killed:
			x.Kind = cluster.Kill
		case cs == cluster.Sleeping && ts == cluster.Running:
			x.Kind, x.From, x.To, x.gate = cluster.Resume, int(cn), int(tn), tn
		case cs == cluster.Sleeping && ts == cluster.Killed:
			x.Kind, x.From = cluster.Kill, int(cn)
		default:
			continue // rejected by compile
		}
		x.dur = in.duration(x.Kind, t, int32(x.From), int32(x.To))
		x.first = true
		i := s.addAct(x)
		s.firstAct[t], s.lastAct[t] = i, i
	}
	// Node boots precede arrivals; node shutdowns follow departures.
	for i := range s.acts {
		x := &s.acts[i]
		if x.Task < 0 {
			continue
		}
		if x.gate >= 0 {
			if na := s.nodeAct[x.gate]; na >= 0 && s.acts[na].Kind == cluster.BootNode {
				s.edge(na, int32(i))
			}
		}
		if x.From >= 0 {
			if na := s.nodeAct[x.From]; na >= 0 && s.acts[na].Kind == cluster.ShutdownNode {
				s.edge(int32(i), na)
			}
		}
	}
	for _, seq := range in.seqs {
		prev := int32(-1)
		for _, t := range seq {
			if s.firstAct[t] < 0 {
				continue
			}
			if prev >= 0 {
				s.edge(s.lastAct[prev], s.firstAct[t])
			}
			prev = t
		}
	}
	return s
}

// fitsNow reports whether action x may start now on its gate node: room on
// the node and every continuous constraint.
func (s *sched) fitsNow(x *sact) bool {
	in := s.in
	n := x.gate
	if x.Kind == cluster.BootNode {
		for _, r := range in.cont.online {
			if !r.cont || !containsNode(r.nodes, n) {
				continue
			}
			on := 0
			for _, y := range r.nodes {
				if s.online[y] || (s.nodeAct[y] >= 0 && s.acts[s.nodeAct[y]].state == running) {
					on++
				}
			}
			if on+1 > r.amount {
				return false
			}
		}
		return true
	}
	if !s.online[n] {
		return false
	}
	t := int32(x.Task)
	d := in.dem(t)
	l := s.load[int(n)*in.nR : int(n+1)*in.nR]
	c := in.cap(n)
	for r := range d {
		if l[r]+d[r] > c[r] {
			return false
		}
	}
	src := int32(-1)
	if x.Kind == cluster.Migrate {
		src = int32(x.From)
	}
	return s.contAllows(t, n, src)
}

// where lists the nodes t is present on now (at most two: a migration's
// source and destination), skipping skip.
func (s *sched) where(t, skip int32, buf []int32) []int32 {
	buf = buf[:0]
	if n := s.pA[t]; n >= 0 && n != skip {
		buf = append(buf, n)
	}
	if n := s.pB[t]; n >= 0 && n != skip {
		buf = append(buf, n)
	}
	return buf
}

// contAllows checks the continuous placement rules for t arriving on n now
// (src is the node it leaves, for a migration, else -1): presence-based
// spread, split, lonely, gather, among, splitAmong and capacity rules.
func (s *sched) contAllows(t, n, src int32) bool {
	in := s.in
	var buf [2]int32
	for _, r := range in.taskRules[t] {
		switch r := r.(type) {
		case *gatherRule:
			if !r.cont {
				continue
			}
			for _, u := range r.tasks {
				if u == t {
					continue
				}
				if len(s.where(u, n, buf[:])) > 0 {
					return false
				}
			}
		case *amongRule:
			if !r.cont {
				continue
			}
			okAny := false
			for g, ns := range r.gs.groups {
				if !r.allowed[g] || !containsNode(ns, n) {
					continue
				}
				ok := true
				for _, u := range r.tasks {
					if u == t {
						continue
					}
					for _, m := range s.where(u, -1, buf[:]) {
						if !containsNode(ns, m) {
							ok = false
						}
					}
				}
				if ok {
					okAny = true
					break
				}
			}
			if !okAny {
				return false
			}
		case *splitAmongRule:
			if r.cont && !s.splitAmongAllows(r, t, n) {
				return false
			}
		case *spreadRule:
			if r.cont && r.pres[n] > 0 {
				return false
			}
		case *splitRule:
			if r.cont && r.presTot[n]-r.presCnt[int64(n)*r.ng+int64(r.group[t])] > 0 {
				return false
			}
		}
	}
	for _, r := range in.cont.lonely {
		if r.member[t] {
			if s.nodePres[n]-r.pres[n] > 0 {
				return false
			}
		} else if r.pres[n] > 0 {
			return false
		}
	}
	for _, r := range in.nodeRules[n] {
		if g, ok := r.(*capGroupRule); ok && g.cont && g.presSum+g.amountOf(in, t) > g.amount {
			return false
		}
	}
	return true
}

// presence updates the continuous rules' counts when t appears on (+1) or
// leaves (-1) node n.
func (s *sched) presence(t, n int32, delta int32) {
	in := s.in
	s.nodePres[n] += delta
	if delta > 0 {
		if s.pA[t] < 0 {
			s.pA[t] = n
		} else {
			s.pB[t] = n
		}
	} else if s.pA[t] == n {
		s.pA[t] = -1
	} else if s.pB[t] == n {
		s.pB[t] = -1
	}
	for _, r := range in.taskRules[t] {
		switch r := r.(type) {
		case *spreadRule:
			if r.cont {
				r.pres[n] += delta
			}
		case *splitRule:
			if r.cont {
				r.presTot[n] += delta
				r.presCnt[int64(n)*r.ng+int64(r.group[t])] += delta
			}
		}
	}
	for _, r := range in.cont.lonely {
		if r.member[t] {
			r.pres[n] += delta
		}
	}
	for _, r := range in.nodeRules[n] {
		if g, ok := r.(*capGroupRule); ok && g.cont {
			g.presSum += int64(delta) * g.amountOf(in, t)
			s.allDirty = true
		}
	}
}

func (s *sched) markDirty(n int32) {
	if n >= 0 && !s.dirty[n] {
		s.dirty[n] = true
		s.dirtyList = append(s.dirtyList, n)
	}
}

// start begins action i at s.now.
func (s *sched) start(i int32) {
	in := s.in
	x := &s.acts[i]
	x.state = running
	x.Start = s.now
	x.End = s.now + x.dur
	if x.Task >= 0 && x.arrives() {
		t := int32(x.Task)
		n := int32(x.To)
		for r, d := range in.dem(t) {
			s.load[int(n)*in.nR+r] += d
		}
		s.presence(t, n, 1)
	}
	heap.Push(&s.heap, i)
}

// finish ends action i.
func (s *sched) finish(i int32) {
	in := s.in
	x := &s.acts[i]
	x.state = done
	if x.Task >= 0 && x.leave >= 0 {
		t := int32(x.Task)
		n := x.leave
		for r, d := range in.dem(t) {
			s.load[int(n)*in.nR+r] -= d
		}
		s.presence(t, n, -1)
		s.markDirty(n)
	}
	switch x.Kind {
	case cluster.BootNode:
		s.online[x.Node] = true
		s.markDirty(int32(x.Node))
	case cluster.ShutdownNode:
		s.online[x.Node] = false
		if len(in.cont.online) > 0 {
			s.allDirty = true
		}
	}
	for _, j := range x.succ {
		y := &s.acts[j]
		if y.ready < x.End {
			y.ready = x.End
		}
		if y.deps--; y.deps == 0 {
			s.eligible(j)
		}
	}
}

// eligible makes action i pending: ungated actions start, gated ones queue.
func (s *sched) eligible(i int32) {
	x := &s.acts[i]
	x.state = pending
	if x.gate < 0 {
		s.start(i)
		return
	}
	s.pend[x.gate] = append(s.pend[x.gate], i)
	s.markDirty(x.gate)
}

// less orders pending actions: noDelay first, then shortest, then index.
func (s *sched) less(i, j int32) bool {
	a, b := &s.acts[i], &s.acts[j]
	na := a.first && a.Task >= 0 && s.in.noDelay[a.Task]
	nb := b.first && b.Task >= 0 && s.in.noDelay[b.Task]
	if na != nb {
		return na
	}
	if a.dur != b.dur {
		return a.dur < b.dur
	}
	return i < j
}

// tryNode starts what fits among node n's pending actions.
func (s *sched) tryNode(n int32) {
	p := s.pend[n]
	if len(p) == 0 {
		return
	}
	sort.Slice(p, func(i, j int) bool { return s.less(p[i], p[j]) })
	k := 0
	for _, i := range p {
		if s.fitsNow(&s.acts[i]) {
			s.start(i)
		} else {
			p[k] = i
			k++
		}
	}
	s.pend[n] = p[:k]
}

func (s *sched) flush() {
	if s.allDirty {
		s.allDirty = false
		for n := range s.pend {
			if len(s.pend[n]) > 0 {
				s.markDirty(int32(n))
			}
		}
	}
	for len(s.dirtyList) > 0 {
		l := s.dirtyList
		s.dirtyList = nil
		sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
		for _, n := range l {
			s.dirty[n] = false
			s.tryNode(n)
		}
	}
}

// run schedules every action. It returns a *ConflictError when a wait
// cannot be broken.
func (s *sched) run() error {
	in := s.in
	s.load = make([]int64, in.nN*in.nR)
	s.online = make([]bool, in.nN)
	s.pend = make([][]int32, in.nN)
	s.dirty = make([]bool, in.nN)
	s.nodePres = make([]int32, in.nN)
	s.pA = make([]int32, in.nT)
	s.pB = make([]int32, in.nT)
	for t := range s.pA {
		s.pA[t], s.pB[t] = -1, -1
	}
	s.heap.s = s
	for _, r := range in.cont.spread {
		r.pres = map[int32]int32{}
	}
	for _, r := range in.cont.split {
		r.presTot, r.presCnt = map[int32]int32{}, map[int64]int32{}
	}
	for _, r := range in.cont.lonely {
		r.pres = map[int32]int32{}
	}
	for _, r := range in.cont.capGroup {
		r.presSum = 0
	}
	for n := 0; n < in.nN; n++ {
		s.online[n] = in.nodeCur[n] == cluster.NodeOnline
	}
	for t := int32(0); t < int32(in.nT); t++ {
		if in.curState[t] == cluster.Running {
			n := in.curNode[t]
			for r, d := range in.dem(t) {
				s.load[int(n)*in.nR+r] += d
			}
			s.presence(t, n, 1)
		}
	}
	s.allDirty = false
	for i := range s.acts {
		if s.acts[i].deps == 0 {
			s.eligible(int32(i))
		}
	}
	// Each task is pivoted at most twice (a third node, then a suspend),
	// so this bound is never reached; it guards the loop against a future
	// change that breaks that argument.
	maxPivots := 2*in.nT + 16
	for iter := 1; ; iter++ {
		if iter%scheduleCheckEvery == 0 && s.stop.expired() {
			return s.timeoutError()
		}
		s.flush()
		if s.heap.Len() == 0 {
			if s.unscheduled() == 0 {
				break
			}
			if s.pivots >= maxPivots {
				return s.stuckError()
			}
			if err := s.pivot(); err != nil {
				return err
			}
			continue
		}
		i := heap.Pop(&s.heap).(int32)
		s.now = s.acts[i].End
		s.finish(i)
		for s.heap.Len() > 0 && s.acts[s.heap.idx[0]].End == s.now {
			j := heap.Pop(&s.heap).(int32)
			s.finish(j)
		}
	}
	// noDelay: the task's first action must start at 0.
	for t := int32(0); t < int32(in.nT); t++ {
		if in.noDelay[t] && s.firstAct[t] >= 0 && s.acts[s.firstAct[t]].Start != 0 {
			return &ConflictError{Constraint: "noDelay", Reason: fmt.Sprintf("the action of task %q cannot start at 0", in.m.Tasks[t].Name)}
		}
	}
	return nil
}

// scheduleCheckEvery is how many iterations of the event loop run between
// two looks at the deadline: often enough to stop within a few milliseconds,
// rarely enough that a virtual clock (one tick per look) barely moves.
const scheduleCheckEvery = 1024

// unscheduled counts the actions not done yet.
func (s *sched) unscheduled() int {
	left := 0
	for i := range s.acts {
		if s.acts[i].state != done {
			left++
		}
	}
	return left
}

// timeoutError reports a schedule cut short by the deadline or the context.
func (s *sched) timeoutError() error {
	return &TimeoutError{Stage: "schedule", Detail: fmt.Sprintf("%d of %d actions unscheduled at t=%d after %d pivots", s.unscheduled(), len(s.acts), s.now, s.pivots),
		Cause: s.stop.cause()}
}

// pivot breaks a wait cycle: a pending migration goes first to a third node
// with room, or is replaced by a suspend and a resume. A task goes through
// a third node at most once; chosen again, it is suspended, which frees its
// source for good and leaves no migration of it to pivot. So each task is
// pivoted at most twice and the scheduler always ends.
func (s *sched) pivot() error {
	in := s.in
	var cands []int32
	for n := range s.pend {
		for _, i := range s.pend[n] {
			if s.acts[i].Kind == cluster.Migrate {
				cands = append(cands, i)
			}
		}
	}
	if len(cands) == 0 {
		return s.stuckError()
	}
	// Prefer migrations whose source has arrivals waiting, then shortest.
	blocks := func(i int32) bool { return len(s.pend[s.acts[i].From]) > 0 }
	sort.Slice(cands, func(a, b int) bool {
		x, y := cands[a], cands[b]
		if bx, by := blocks(x), blocks(y); bx != by {
			return bx
		}
		if s.acts[x].dur != s.acts[y].dur {
			return s.acts[x].dur < s.acts[y].dur
		}
		return x < y
	})
	v := cands[0]
	x := s.acts[v]
	t := int32(x.Task)
	s.removePending(v)
	s.pivots++
	if s.viaThird == nil {
		s.viaThird = make([]bool, in.nT)
	}
	p := int32(-1)
	if !s.viaThird[t] {
		p = s.pivotNode(t, int32(x.From), int32(x.To))
	}
	if p >= 0 {
		s.viaThird[t] = true
		// v: from -> p now; w: p -> to later.
		w := sact{Action: Action{Kind: cluster.Migrate, Task: x.Task, Node: cluster.NoNode, From: int(p), To: x.To},
			dur: in.duration(cluster.Migrate, t, p, int32(x.To)), gate: int32(x.To), leave: p}
		wi := s.addAct(w)
		s.acts[wi].succ = s.acts[v].succ
		s.acts[v].succ = []int32{wi}
		s.acts[wi].deps = 1
		s.acts[v].To, s.acts[v].gate = int(p), p
		s.acts[v].dur = in.duration(cluster.Migrate, t, int32(x.From), p)
		s.lastAct[t] = wi
		s.start(v)
		return nil
	}
	// Suspend on the source, resume on the destination.
	w := sact{Action: Action{Kind: cluster.Resume, Task: x.Task, Node: cluster.NoNode, From: x.From, To: x.To},
		dur: in.duration(cluster.Resume, t, int32(x.From), int32(x.To)), gate: int32(x.To), leave: -1}
	wi := s.addAct(w)
	s.acts[wi].succ = s.acts[v].succ
	s.acts[v].succ = []int32{wi}
	s.acts[wi].deps = 1
	sv := &s.acts[v]
	sv.Kind, sv.To, sv.gate = cluster.Suspend, x.From, -1
	sv.dur = in.duration(cluster.Suspend, t, int32(x.From), int32(x.From))
	s.lastAct[t] = wi
	s.start(v)
	return nil
}

func (s *sched) removePending(i int32) {
	n := s.acts[i].gate
	p := s.pend[n]
	for k, j := range p {
		if j == i {
			s.pend[n] = append(p[:k], p[k+1:]...)
			return
		}
	}
}

// pivotNode finds a third node where t may run now and stay a while. A
// node where other arrivals wait is no pivot: taking its room would only
// move the wait there.
func (s *sched) pivotNode(t, from, to int32) int32 {
	in := s.in
	best := int32(-1)
	var bestFree float64
	for n := int32(0); n < int32(in.nN); n++ {
		if n == from || n == to || !s.online[n] || in.sealed[n] || in.nodeTgt[n] != cluster.NodeOnline || len(s.pend[n]) > 0 {
			continue
		}
		// A temporary stay needs only the continuous rules; fitsNow checks
		// the presence-based ones, ban and fence are checked here.
		ok := true
		for _, r := range in.taskRules[t] {
			switch r := r.(type) {
			case *banRule:
				ok = ok && (!r.cont || r.ok(nil, t, n))
			case *fenceRule:
				ok = ok && (!r.cont || r.ok(nil, t, n))
			}
		}
		if !ok {
			continue
		}
		x := sact{Action: Action{Task: int(t), Kind: cluster.Migrate}, gate: n}
		if !s.fitsNow(&x) {
			continue
		}
		var free float64
		for r, d := range in.dem(t) {
			c := in.capa[int(n)*in.nR+r]
			if c > 0 {
				free += float64(c-s.load[int(n)*in.nR+r]-d) / float64(c)
			}
		}
		if best < 0 || free > bestFree {
			best, bestFree = n, free
		}
	}
	return best
}

func (s *sched) stuckError() error {
	in := s.in
	for n := range s.pend {
		if len(s.pend[n]) == 0 {
			continue
		}
		x := &s.acts[s.pend[n][0]]
		ce := &ConflictError{Node: in.m.Nodes[n].Name}
		if x.Task >= 0 {
			ce.Reason = fmt.Sprintf("%s of task %q never finds room", x.Kind, in.m.Tasks[x.Task].Name)
			for r, d := range in.dem(int32(x.Task)) {
				if s.load[n*in.nR+r]+d > in.capa[n*in.nR+r] {
					ce.Resource = in.m.Resources[r]
					break
				}
			}
		} else {
			ce.Reason = fmt.Sprintf("%s never allowed", x.Kind)
			ce.Constraint = "maxOnline"
		}
		return ce
	}
	return &ConflictError{Reason: "actions wait on each other in a cycle that cannot be broken"}
}

// actions returns the plan's actions ordered by start, then end, then kind
// and element.
func (s *sched) actions() []Action {
	out := make([]Action, 0, len(s.acts))
	for i := range s.acts {
		out = append(out, s.acts[i].Action)
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Start != b.Start {
			return a.Start < b.Start
		}
		if a.End != b.End {
			return a.End < b.End
		}
		if a.Task != b.Task {
			return a.Task < b.Task
		}
		return a.Node < b.Node
	})
	return out
}

// splitAmongAllows checks a continuous splitAmong for t arriving on n: every
// task group present within one node group, distinct groups apart.
func (s *sched) splitAmongAllows(r *splitAmongRule, t, n int32) bool {
	nodeGroup := func(m int32) int {
		for j, ns := range r.ngroup {
			if containsNode(ns, m) {
				return j
			}
		}
		return -1
	}
	used := map[int32]int{}
	owner := map[int]int32{}
	var buf [2]int32
	visit := func(u, m int32) bool {
		j := nodeGroup(m)
		if j < 0 {
			return false
		}
		g := r.group[u]
		if prev, ok := used[g]; ok && prev != j {
			return false
		}
		used[g] = j
		if o, ok := owner[j]; ok && o != g {
			return false
		}
		owner[j] = g
		return true
	}
	if !visit(t, n) {
		return false
	}
	for _, u := range r.tasks {
		if u == t {
			continue
		}
		for _, m := range s.where(u, -1, buf[:]) {
			if !visit(u, m) {
				return false
			}
		}
	}
	return true
}
