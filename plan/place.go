package plan

import (
	"fmt"
	"sort"

	"github.com/ferrycluster/ferry/cluster"
)

// placer computes a target placement by repair: tasks stay where they are
// unless their state, a constraint or a node's capacity forces a move; the
// tasks to place then go, most constrained and largest first, to a node
// where they fit from t=0 if one exists (so their arrival need not wait),
// else to the node where they fit in the final state with the least excess
// at t=0. Offline nodes are booted only when nothing else fits.
type placer struct {
	in    *inst
	a     *assign
	zload []int64 // load at t=0 plus arrivals placed so far, per node and resource
	scale []float64
	open  []int32 // online target nodes still scanned for room at t=0
	cur   int     // cursor into open (round robin)
	// repair state, built on the first ejection
	ejected []uint8   // times each task was ejected
	onNode  [][]int32 // placed tasks per node
}

func newPlacer(in *inst) *placer {
	pl := &placer{in: in, a: newAssign(in), zload: make([]int64, in.nN*in.nR)}
	for t := 0; t < in.nT; t++ {
		if in.curState[t] == cluster.Running {
			n := int(in.curNode[t])
			for r := 0; r < in.nR; r++ {
				pl.zload[n*in.nR+r] += in.demand[t*in.nR+r]
			}
		}
	}
	pl.scale = make([]float64, in.nR)
	for r := 0; r < in.nR; r++ {
		var mx int64 = 1
		for n := 0; n < in.nN; n++ {
			if c := in.capa[n*in.nR+r]; c > mx {
				mx = c
			}
		}
		pl.scale[r] = 1 / float64(mx)
	}
	return pl
}

func (pl *placer) size(t int32) float64 {
	var s float64
	for r, d := range pl.in.dem(t) {
		s += float64(d) * pl.scale[r]
	}
	return s
}

// zfits: t fits on n at t=0 (with the arrivals already placed there).
func (pl *placer) zfits(t, n int32) bool {
	in := pl.in
	d := in.dem(t)
	z := pl.zload[int(n)*in.nR : int(n+1)*in.nR]
	c := in.cap(n)
	for r := range d {
		if z[r]+d[r] > c[r] {
			return false
		}
	}
	return true
}

// zexcess is how far t overflows n at t=0, scaled.
func (pl *placer) zexcess(t, n int32) float64 {
	in := pl.in
	d := in.dem(t)
	z := pl.zload[int(n)*in.nR : int(n+1)*in.nR]
	c := in.cap(n)
	var e float64
	for r := range d {
		if x := z[r] + d[r] - c[r]; x > 0 {
			e += float64(x) * pl.scale[r]
		}
	}
	return e
}

func (pl *placer) put(t, n int32) {
	pl.a.place(t, n)
	in := pl.in
	if pl.onNode != nil {
		pl.onNode[n] = append(pl.onNode[n], t)
	}
	if in.curState[t] == cluster.Running && in.curNode[t] == n {
		return // already counted in zload
	}
	for r, d := range in.dem(t) {
		pl.zload[int(n)*in.nR+r] += d
	}
}

// applyMaxOnline turns off nodes (not fixed by a state constraint) until
// every maxOnline constraint holds in the target, preferring nodes that host
// fewest tasks.
func (in *inst) applyMaxOnline() error {
	if len(in.cont.online) == 0 {
		return nil
	}
	hosted := make([]int, in.nN)
	for t := 0; t < in.nT; t++ {
		if n := in.curNode[t]; n >= 0 {
			hosted[n]++
			if in.curState[t] == cluster.Sleeping && in.tgtState[t] == cluster.Sleeping {
				hosted[n] += in.nT // sleeping images pin the node online
			}
		}
	}
	for _, r := range in.cont.online {
		on := 0
		var cand []int32
		for _, n := range r.nodes {
			if in.nodeTgt[n] == cluster.NodeOnline {
				on++
				if !in.nodeFixed[n] && !in.sealed[n] {
					cand = append(cand, n)
				}
			}
		}
		if on <= r.amount {
			continue
		}
		sort.SliceStable(cand, func(i, j int) bool { return hosted[cand[i]] < hosted[cand[j]] })
		for _, n := range cand {
			if on <= r.amount {
				break
			}
			in.nodeTgt[n] = cluster.NodeOffline
			in.nodeFixed[n] = true
			on--
		}
		if on > r.amount {
			return &ConflictError{Constraint: r.kind, Reason: fmt.Sprintf("constraint %d: %d nodes must stay online, at most %d allowed", r.ci, on, r.amount)}
		}
	}
	return nil
}

// parks reports whether t ends sleeping but its image must move: it sleeps
// (or runs) on a node that goes offline. It then runs on a target node for a
// while and is suspended there, so it is placed like a running task.
func (in *inst) parks(t int32) bool {
	n := in.curNode[t]
	return in.tgtState[t] == cluster.Sleeping && n >= 0 && in.nodeTgt[n] != cluster.NodeOnline
}

// canBoot reports whether offline node n may be booted without breaking a
// maxOnline constraint.
func (in *inst) canBoot(n int32) bool {
	if in.nodeFixed[n] || in.nodeTgt[n] == cluster.NodeOnline {
		return false
	}
	for _, r := range in.cont.online {
		if !containsNode(r.nodes, n) {
			continue
		}
		on := 0
		for _, x := range r.nodes {
			if in.nodeTgt[x] == cluster.NodeOnline {
				on++
			}
		}
		if on+1 > r.amount {
			return false
		}
	}
	return true
}

// place computes the target placement. It returns the assignment (node of
// each task running in the target) or a *ConflictError.
func (in *inst) place() (*assign, error) {
	pl := newPlacer(in)
	a := pl.a
	// Keep phase.
	var keep, toPlace []int32
	for t := 0; t < in.nT; t++ {
		if in.parks(int32(t)) {
			toPlace = append(toPlace, int32(t))
			continue
		}
		if in.tgtState[t] != cluster.Running {
			continue
		}
		if in.curState[t] == cluster.Running {
			keep = append(keep, int32(t))
		} else {
			toPlace = append(toPlace, int32(t))
		}
	}
	mig := make([]int64, in.nT)
	for _, t := range keep {
		mig[t] = in.relocCost(t, in.curNode[t])
	}
	sort.SliceStable(keep, func(i, j int) bool {
		ti, tj := keep[i], keep[j]
		if in.pinned[ti] != in.pinned[tj] {
			return in.pinned[ti]
		}
		if mig[ti] != mig[tj] {
			return mig[ti] > mig[tj]
		}
		return pl.size(ti) > pl.size(tj)
	})
	evict := pl.evictions(keep, mig)
	for _, t := range keep {
		n := in.curNode[t]
		if evict[t] && !in.pinned[t] {
			toPlace = append(toPlace, t)
			continue
		}
		ok, _ := a.allowed(t, n)
		if ok && a.fits(t, n) {
			a.place(t, n)
			continue
		}
		if in.pinned[t] {
			return nil, in.conflictAt(a, t, n, "cannot stay on its node")
		}
		toPlace = append(toPlace, t)
	}
	// Place phase: noDelay and pinned first, then constrained, then largest.
	constrained := func(t int32) int {
		if in.noDelay[t] || in.pinned[t] {
			return 0
		}
		if len(in.taskRules[t]) > 0 {
			return 1
		}
		return 2
	}
	sizes := make(map[int32]float64, len(toPlace))
	for _, t := range toPlace {
		sizes[t] = pl.size(t)
	}
	sort.SliceStable(toPlace, func(i, j int) bool {
		ci, cj := constrained(toPlace[i]), constrained(toPlace[j])
		if ci != cj {
			return ci < cj
		}
		return sizes[toPlace[i]] > sizes[toPlace[j]]
	})
	for n := 0; n < in.nN; n++ {
		if in.nodeTgt[n] == cluster.NodeOnline && !in.sealed[n] {
			pl.open = append(pl.open, int32(n))
		}
	}
	// A task no node takes ejects the fewest tasks from the node where that
	// makes room; they go back to the queue. Bounded: each task is ejected
	// at most maxEjections times, and the whole repair has a budget.
	queue := toPlace
	budget := 20*len(toPlace) + 200
	for len(queue) > 0 {
		t := queue[0]
		queue = queue[1:]
		n := pl.choose(t)
		if n < 0 {
			n = pl.bootFor(t)
		}
		if n < 0 && budget > 0 {
			var victims []int32
			if n, victims = pl.eject(t); n >= 0 {
				budget -= len(victims) + 1
				queue = append(victims, queue...)
			}
		}
		if n < 0 {
			return nil, pl.explain(t)
		}
		pl.put(t, n)
	}
	return a, nil
}

// maxEjections bounds how often one task is pushed out by the repair.
const maxEjections = 3

// eject finds the node where t can run after removing the fewest placed
// tasks (then the smallest), removes them and returns the node and the
// removed tasks; -1 when no node works.
func (pl *placer) eject(t int32) (int32, []int32) {
	in := pl.in
	a := pl.a
	if pl.ejected == nil {
		pl.ejected = make([]uint8, in.nT)
		pl.onNode = make([][]int32, in.nN)
		for u := int32(0); u < int32(in.nT); u++ {
			if n := a.node[u]; n >= 0 {
				pl.onNode[n] = append(pl.onNode[n], u)
			}
		}
	}
	nodes := pl.candidates(t)
	if nodes == nil {
		for n := int32(0); n < int32(in.nN); n++ {
			if in.nodeTgt[n] == cluster.NodeOnline && !in.sealed[n] {
				nodes = append(nodes, n)
			}
		}
	}
	best, bestK, bestSize := int32(-1), 0, 0.0
	var movable []int32
	for _, n := range nodes {
		if in.nodeTgt[n] != cluster.NodeOnline || (in.pinned[t] && in.curNode[t] >= 0 && in.curNode[t] != n) {
			continue
		}
		movable = movable[:0]
		for _, u := range pl.onNode[n] {
			if !in.pinned[u] && !in.noDelay[u] && pl.ejected[u] < maxEjections && u != t {
				movable = append(movable, u)
			}
		}
		sort.SliceStable(movable, func(i, j int) bool { return pl.size(movable[i]) > pl.size(movable[j]) })
		// Remove the largest first until t is allowed and fits, then put
		// back those not needed.
		k := 0
		ok := false
		for k <= len(movable) {
			if allowed, _ := a.allowed(t, n); allowed && a.fits(t, n) {
				ok = true
				break
			}
			if k == len(movable) {
				break
			}
			a.unplace(movable[k])
			k++
		}
		removed := append([]int32(nil), movable[:k]...)
		if ok {
			for i := len(removed) - 1; i >= 0; i-- {
				u := removed[i]
				a.place(u, n)
				if allowed, _ := a.allowed(t, n); !allowed || !a.fits(t, n) {
					a.unplace(u)
				} else {
					removed = append(removed[:i], removed[i+1:]...)
				}
			}
		}
		var size float64
		for _, u := range removed {
			size += pl.size(u)
			a.place(u, n)
		}
		if ok && (best < 0 || len(removed) < bestK || (len(removed) == bestK && size < bestSize)) {
			best, bestK, bestSize = n, len(removed), size
		}
	}
	if best < 0 {
		return -1, nil
	}
	// Redo the removal on the chosen node.
	movable = movable[:0]
	for _, u := range pl.onNode[best] {
		if !in.pinned[u] && !in.noDelay[u] && pl.ejected[u] < maxEjections && u != t {
			movable = append(movable, u)
		}
	}
	sort.SliceStable(movable, func(i, j int) bool { return pl.size(movable[i]) > pl.size(movable[j]) })
	var victims []int32
	for _, u := range movable {
		if allowed, _ := a.allowed(t, best); allowed && a.fits(t, best) {
			break
		}
		pl.take(u)
		victims = append(victims, u)
	}
	for i := len(victims) - 1; i >= 0; i-- {
		u := victims[i]
		pl.put(u, best)
		if allowed, _ := a.allowed(t, best); !allowed || !a.fits(t, best) {
			pl.take(u)
		} else {
			victims = append(victims[:i], victims[i+1:]...)
		}
	}
	for _, u := range victims {
		pl.ejected[u]++
	}
	return best, victims
}

// take undoes put.
func (pl *placer) take(t int32) {
	in := pl.in
	n := pl.a.node[t]
	pl.a.unplace(t)
	if pl.onNode != nil {
		l := pl.onNode[n]
		for i, u := range l {
			if u == t {
				l[i] = l[len(l)-1]
				pl.onNode[n] = l[:len(l)-1]
				break
			}
		}
	}
	if in.curState[t] == cluster.Running && in.curNode[t] == n {
		return
	}
	for r, d := range in.dem(t) {
		pl.zload[int(n)*in.nR+r] -= d
	}
}

// candidates returns the explicit node list for t when one rule restricts it
// to few nodes (a fence, the node it is pinned to), else nil.
func (pl *placer) candidates(t int32) []int32 {
	in := pl.in
	if in.pinned[t] && in.curNode[t] >= 0 {
		return []int32{in.curNode[t]}
	}
	var best []int32
	for _, r := range in.taskRules[t] {
		switch r := r.(type) {
		case *fenceRule:
			if best == nil || len(r.nodes) < len(best) {
				best = r.nodes
			}
		case *gatherRule:
			if r.fixed >= 0 {
				return []int32{r.fixed}
			}
			if r.cnt > 0 {
				return []int32{r.node}
			}
		case *amongRule:
			if g := r.group(); g >= 0 {
				if ns := r.gs.groups[g]; best == nil || len(ns) < len(best) {
					best = ns
				}
			}
		}
	}
	return best
}

// choose picks a node for t among online target nodes, or -1.
func (pl *placer) choose(t int32) int32 {
	in := pl.in
	a := pl.a
	// A sleeping task resumes where its image is when it can.
	if in.curState[t] == cluster.Sleeping {
		n := in.curNode[t]
		if ok, _ := a.allowed(t, n); ok && a.fits(t, n) && pl.zfits(t, n) {
			return n
		}
	}
	if cs := pl.candidates(t); cs != nil {
		best, bestEx := int32(-1), 0.0
		for _, n := range cs {
			if !a.fits(t, n) {
				continue
			}
			if ok, _ := a.allowed(t, n); !ok {
				continue
			}
			ex := pl.zexcess(t, n)
			if best < 0 || ex < bestEx {
				best, bestEx = n, ex
			}
			if ex == 0 {
				break
			}
		}
		return best
	}
	// Round robin over open nodes: first that fits at t=0.
	nOpen := len(pl.open)
	if nOpen == 0 {
		return -1
	}
	best, bestEx := int32(-1), 0.0
	for k := 0; k < nOpen; k++ {
		i := (pl.cur + k) % nOpen
		n := pl.open[i]
		if !a.fits(t, n) {
			continue
		}
		ex := pl.zexcess(t, n)
		if best >= 0 && ex >= bestEx {
			continue
		}
		if ok, _ := a.allowed(t, n); !ok {
			continue
		}
		best, bestEx = n, ex
		if ex == 0 {
			pl.cur = i
			break
		}
	}
	return best
}

// bootFor boots an offline node that t can run on, or returns -1.
func (pl *placer) bootFor(t int32) int32 {
	in := pl.in
	for n := int32(0); n < int32(in.nN); n++ {
		if !in.canBoot(n) || in.sealed[n] {
			continue
		}
		in.nodeTgt[n] = cluster.NodeOnline
		if ok, _ := pl.a.allowed(t, n); ok && pl.a.fits(t, n) {
			pl.open = append(pl.open, n)
			return n
		}
		in.nodeTgt[n] = cluster.NodeOffline
	}
	return -1
}

// explain builds the conflict for a task no node can take.
func (pl *placer) explain(t int32) error {
	in := pl.in
	a := pl.a
	name := in.m.Tasks[t].Name
	var rejected rule
	anyAllowed := false
	counts := map[rule]int{}
	for n := int32(0); n < int32(in.nN); n++ {
		ok, r := a.allowed(t, n)
		if ok {
			anyAllowed = true
			break
		}
		if r != nil {
			counts[r]++
		}
	}
	// The rule that refuses the fewest nodes is the one that closed the
	// last doors (a fence refuses most nodes but leaves some open).
	for r, c := range counts {
		if rejected == nil || c < counts[rejected] || (c == counts[rejected] && r.name() < rejected.name()) {
			rejected = r
		}
	}
	if !anyAllowed {
		ce := &ConflictError{Reason: fmt.Sprintf("no node may host task %q", name)}
		if rejected != nil {
			ce.Constraint = rejected.name()
		} else if in.pinned[t] {
			ce.Constraint = "root"
		}
		return ce
	}
	// Capacity: the resource with the most total shortage.
	res := ""
	worst := -1.0
	for r := 0; r < in.nR; r++ {
		var free int64
		for n := int32(0); n < int32(in.nN); n++ {
			if ok, _ := a.allowed(t, n); ok {
				if f := in.capa[int(n)*in.nR+r] - a.load[int(n)*in.nR+r]; f > free {
					free = f
				}
			}
		}
		if sh := float64(in.demand[int(t)*in.nR+r]-free) * pl.scale[r]; sh > worst {
			worst, res = sh, in.m.Resources[r]
		}
	}
	return &ConflictError{Resource: res, Reason: fmt.Sprintf("no node has room for task %q", name)}
}

// conflictAt explains why t cannot stay on n.
func (in *inst) conflictAt(a *assign, t, n int32, what string) error {
	ce := &ConflictError{Node: in.m.Nodes[n].Name, Reason: fmt.Sprintf("pinned task %q %s", in.m.Tasks[t].Name, what)}
	if ok, r := a.allowed(t, n); !ok {
		if r != nil {
			ce.Constraint = r.name()
		}
		return ce
	}
	for r := 0; r < in.nR; r++ {
		if a.load[int(n)*in.nR+r]+in.demand[int(t)*in.nR+r] > in.capa[int(n)*in.nR+r] {
			ce.Resource = in.m.Resources[r]
			break
		}
	}
	return ce
}

// evictBudget bounds the search nodes of one node's eviction choice.
const evictBudget = 4096

// evictions chooses, on every node whose staying tasks overflow it, the set
// of tasks to move that frees enough room at least cost: the sum of their
// migration durations (the MTTR they add), or their number first for the
// MinMigrations objective. Pinned tasks never move. It is a small branch and
// bound per node (tasks sorted by cost), seeded with a greedy solution.
func (pl *placer) evictions(keep []int32, mig []int64) []bool {
	in := pl.in
	evict := make([]bool, in.nT)
	byNode := map[int32][]int32{}
	a := pl.a
	for _, t := range keep {
		n := in.curNode[t]
		if ok, _ := a.allowed(t, n); !ok && !in.pinned[t] {
			evict[t] = true // must leave anyway
			continue
		}
		byNode[n] = append(byNode[n], t)
	}
	nR := in.nR
	cost := func(t int32) int64 {
		if in.p.Objective == MinMigrations {
			return mig[t] + 1<<32
		}
		return mig[t]
	}
	nodes := make([]int32, 0, len(byNode))
	for n := range byNode {
		nodes = append(nodes, n)
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i] < nodes[j] })
	for _, n := range nodes {
		ts := byNode[n]
		excess := make([]int64, nR)
		over := false
		for r := 0; r < nR; r++ {
			var sum int64
			for _, t := range ts {
				sum += in.demand[int(t)*nR+r]
			}
			excess[r] = sum - in.capa[int(n)*nR+r]
			if excess[r] > 0 {
				over = true
			}
		}
		if !over {
			continue
		}
		var movable []int32
		for _, t := range ts {
			if !in.pinned[t] {
				movable = append(movable, t)
			}
		}
		best, _, _ := in.minCover(movable, excess, cost, pl.size)
		for _, t := range best {
			evict[t] = true
		}
	}
	return evict
}

// minCover finds the subset of tasks whose demands cover excess (per
// resource) at least total cost: a branch and bound over tasks sorted by
// cost, seeded greedily. complete is false when the search budget ran out
// (best is then the best found) or when no subset covers (best is nil).
func (in *inst) minCover(tasks []int32, excess []int64, cost func(int32) int64, size func(int32) float64) (best []int32, bestCost int64, complete bool) {
	nR := in.nR
	movable := append([]int32(nil), tasks...)
	sort.SliceStable(movable, func(i, j int) bool {
		ci, cj := cost(movable[i]), cost(movable[j])
		if ci != cj {
			return ci < cj
		}
		return size(movable[i]) > size(movable[j])
	})
	covered := func(ex []int64) bool {
		for _, e := range ex {
			if e > 0 {
				return false
			}
		}
		return true
	}
	// Greedy seed: cheapest useful first until covered, then put back what
	// is not needed.
	ex := append([]int64(nil), excess...)
	var greedy []int32
	for _, t := range movable {
		if covered(ex) {
			break
		}
		useful := false
		for r := 0; r < nR; r++ {
			if ex[r] > 0 && in.demand[int(t)*nR+r] > 0 {
				useful = true
			}
		}
		if !useful {
			continue
		}
		greedy = append(greedy, t)
		for r := 0; r < nR; r++ {
			ex[r] -= in.demand[int(t)*nR+r]
		}
	}
	if !covered(ex) {
		return nil, 0, false
	}
	for i := len(greedy) - 1; i >= 0; i-- {
		t := greedy[i]
		back := true
		for r := 0; r < nR; r++ {
			if ex[r]+in.demand[int(t)*nR+r] > 0 {
				back = false
			}
		}
		if back {
			for r := 0; r < nR; r++ {
				ex[r] += in.demand[int(t)*nR+r]
			}
			greedy = append(greedy[:i], greedy[i+1:]...)
		}
	}
	best = append([]int32(nil), greedy...)
	for _, t := range best {
		bestCost += cost(t)
	}
	// suffix[i]: can tasks i.. still cover what remains? (sum of demands)
	suffix := make([]int64, (len(movable)+1)*nR)
	for i := len(movable) - 1; i >= 0; i-- {
		for r := 0; r < nR; r++ {
			suffix[i*nR+r] = suffix[(i+1)*nR+r] + in.demand[int(movable[i])*nR+r]
		}
	}
	var cur []int32
	visits := 0
	complete = true
	ex = append(ex[:0], excess...)
	var dfs func(i int, c int64)
	dfs = func(i int, c int64) {
		if c >= bestCost {
			return
		}
		if visits++; visits > evictBudget {
			complete = false
			return
		}
		if covered(ex) {
			bestCost = c
			best = append(best[:0], cur...)
			return
		}
		for r := 0; r < nR; r++ {
			if ex[r] > suffix[i*nR+r] {
				return // the rest cannot cover
			}
		}
		t := movable[i]
		cur = append(cur, t)
		for r := 0; r < nR; r++ {
			ex[r] -= in.demand[int(t)*nR+r]
		}
		dfs(i+1, c+cost(t))
		for r := 0; r < nR; r++ {
			ex[r] += in.demand[int(t)*nR+r]
		}
		cur = cur[:len(cur)-1]
		dfs(i+1, c)
	}
	dfs(0, 0)
	return best, bestCost, complete
}
