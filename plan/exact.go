package plan

import (
	"math"

	"github.com/ferrycluster/ferry/cluster"
)

// exactEvalBudget bounds the number of schedules the exhaustive search
// builds (complete placements times relocation modes); beyond it the search
// stops, unproved.
const exactEvalBudget = 6000

// exactVisitBudget bounds the search nodes (partial placements) visited.
const exactVisitBudget = 200000

// exactMaxTasks is the largest number of tasks to place for which the
// exhaustive search is tried at all.
const exactMaxTasks = 12

// exhaustive enumerates every target placement of small instances by depth
// first search, schedules each complete one and keeps the best. Branches
// whose unavoidable cost (state changes plus the migrations already decided)
// reaches the best plan's cost are cut. proved is true when the enumeration
// finished: the result is then the best plan this scheduler can build over
// all placements.
func (s *search) exhaustive(incumbent *candidate) (best *candidate, proved, timedOut bool) {
	in := s.in
	var free []int32
	for t := int32(0); t < int32(in.nT); t++ {
		if in.tgtState[t] == cluster.Running || in.parks(t) {
			free = append(free, t)
		}
	}
	if len(free) > exactMaxTasks || in.nN > 8 || len(free) == 0 {
		return nil, false, false
	}
	var nodes []int32
	for n := int32(0); n < int32(in.nN); n++ {
		if in.nodeTgt[n] == cluster.NodeOnline {
			nodes = append(nodes, n)
		}
	}
	// Fixed cost: every state change.
	var fixed int64
	mig := make([]int64, in.nT)
	for _, t := range free {
		if in.curState[t] == cluster.Running {
			mig[t] = in.relocCost(t, in.curNode[t])
		}
	}
	for t := int32(0); t < int32(in.nT); t++ {
		cs, ts := in.curState[t], in.tgtState[t]
		switch {
		case cs == ts:
		case ts == cluster.Running && cs == cluster.Ready:
			fixed += in.duration(cluster.Boot, t, -1, -1)
		case ts == cluster.Running && cs == cluster.Sleeping:
			fixed += in.duration(cluster.Resume, t, in.curNode[t], in.curNode[t])
		case ts == cluster.Sleeping:
			fixed += in.duration(cluster.Suspend, t, in.curNode[t], in.curNode[t])
		case ts == cluster.Ready:
			fixed += in.duration(cluster.Shutdown, t, in.curNode[t], -1)
		case ts == cluster.Killed:
			fixed += in.duration(cluster.Kill, t, in.curNode[t], -1)
		}
	}
	obj := in.p.Objective
	best = incumbent
	a := newAssign(in)
	leaves := 0
	complete := true
	cost := func(c *candidate) (int64, int) {
		if c == nil {
			return math.MaxInt64, math.MaxInt
		}
		return c.mttr, c.migrations
	}
	var dfs func(k int, partial int64, moved int)
	visits := 0
	dfs = func(k int, partial int64, moved int) {
		if !complete {
			return
		}
		// Branches that die before a complete placement cost time too.
		if visits++; visits > exactVisitBudget {
			complete = false
			return
		}
		if visits%1024 == 0 && s.stop.expired() {
			complete, timedOut = false, true
			return
		}
		bm, bmig := cost(best)
		if obj == MinMTTR && partial >= bm && !(partial == bm && moved < bmig) {
			return
		}
		if obj == MinMigrations && (moved > bmig || (moved == bmig && partial >= bm)) {
			return
		}
		if k == len(free) {
			leaves++
			if s.evals > exactEvalBudget {
				complete = false
				return
			}
			if leaves%16 == 0 && s.stop.expired() {
				complete = false
				timedOut = true
				return
			}
			s.leaf(a, obj, &best)
			return
		}
		t := free[k]
		cn := in.curNode[t]
		try := func(n int32) {
			if ok, _ := a.allowed(t, n); !ok || !a.fits(t, n) {
				return
			}
			p, mv := partial, moved
			if in.curState[t] == cluster.Running && n != cn {
				p += mig[t]
				mv++
			}
			a.place(t, n)
			dfs(k+1, p, mv)
			a.unplace(t)
		}
		if cn >= 0 && in.nodeTgt[cn] == cluster.NodeOnline {
			try(cn)
		}
		for _, n := range nodes {
			if n != cn {
				try(n)
			}
		}
	}
	dfs(0, fixed, 0)
	if best == incumbent {
		best = nil
	}
	return best, complete, timedOut
}

func (a *assign) clone() *assign {
	c := &assign{in: a.in}
	c.node = append([]int32(nil), a.node...)
	c.load = append([]int64(nil), a.load...)
	c.count = append([]int32(nil), a.count...)
	return c
}

// leaf schedules a complete placement, and for the MTTR objective also every
// choice between migration and suspend-and-resume for up to four moved
// tasks, keeping the best plan in *best.
func (s *search) leaf(a *assign, obj Objective, best **candidate) {
	in := s.in
	try := func(sleep []bool) {
		s.evals++
		c, err := s.evaluate(a, sleep)
		if err == nil && c.better(*best, obj) {
			c.a = a.clone()
			c.sleep = sleep
			*best = c
		}
	}
	try(nil)
	if obj != MinMTTR || in.liveOnly {
		return
	}
	var moved []int32
	for t := int32(0); t < int32(in.nT); t++ {
		if in.curState[t] == cluster.Running && a.node[t] >= 0 && a.node[t] != in.curNode[t] {
			moved = append(moved, t)
		}
	}
	if len(moved) == 0 || len(moved) > 4 {
		return
	}
	for mask := 0; mask < 1<<len(moved); mask++ {
		sleep := make([]bool, in.nT)
		for i, t := range moved {
			sleep[t] = mask&(1<<i) != 0
		}
		try(sleep)
	}
}
