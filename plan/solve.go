package plan

import (
	"context"
	"errors"
	"sort"
	"time"

	"github.com/ferrycluster/ferry/cluster"
)

// Solve computes a target placement and a viable reconfiguration plan for p.
//
// It returns a *ConflictError (errors.Is(err, ErrNoSolution)) when it finds
// no viable plan, naming the constraint, node or resource at fault, and an
// error wrapping cluster.ErrInvalid when the problem itself is malformed (an
// index out of range, an unknown resource, a negative amount). Solve is pure:
// it reads the clock only through opts.Now, to honour opts.Timeout, and the
// same problem and options give the same plan. When the timeout cuts the
// search short it returns the best viable plan found so far.
//
// Plan.Result shares the Labels and Durations maps of p.Model: treat them as
// read-only.
func Solve(ctx context.Context, p *Problem, opts Options) (*Plan, error) {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	t0 := now()
	stop := &budget{ctx: ctx, now: now}
	if opts.Timeout > 0 {
		stop.deadline = t0.Add(opts.Timeout)
	}
	in, err := compile(p)
	if err != nil {
		return nil, err
	}
	in.liveOnly = opts.LiveOnly
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	lb := in.lowerBound()
	s := search{in: in, stop: stop}
	best, err := s.run()
	if err != nil {
		return nil, err
	}
	pl := &Plan{Origin: p.Model, Actions: best.actions, Result: in.result(best.a)}
	pl.Stats = Stats{
		Elapsed:    now().Sub(t0),
		LowerBound: lb,
		TimedOut:   s.timedOut,
		Optimal:    s.proved || pl.MTTR() == lb,
	}
	return pl, nil
}

// candidate is a complete viable plan with its placement and scores.
type candidate struct {
	a          *assign
	sleep      []bool // relocation modes it was scheduled with (nil: default)
	actions    []Action
	mttr       int64
	migrations int
}

func (c *candidate) better(o *candidate, obj Objective) bool {
	if o == nil {
		return true
	}
	if obj == MinMigrations && c.migrations != o.migrations {
		return c.migrations < o.migrations
	}
	if c.mttr != o.mttr {
		return c.mttr < o.mttr
	}
	return c.migrations < o.migrations
}

// budget is how long the planner may search: until the deadline
// (Options.Timeout, read on Options.Now; zero: none) or until the context
// ends.
type budget struct {
	ctx      context.Context
	now      func() time.Time
	deadline time.Time
}

// expired reports whether the search must stop (a nil budget never does).
func (b *budget) expired() bool {
	if b == nil {
		return false
	}
	return b.ctx.Err() != nil || !b.deadline.IsZero() && !b.now().Before(b.deadline)
}

// cause is the context's error when the context stopped the search.
func (b *budget) cause() error {
	if b == nil {
		return nil
	}
	return b.ctx.Err()
}

// search drives the stages: placement, scheduling, then improvement while
// time remains.
type search struct {
	in       *inst
	stop     *budget
	timedOut bool
	proved   bool
	evals    int // schedules built by the exhaustive search
}

func (s *search) evaluate(a *assign, sleep []bool) (*candidate, error) {
	sc := newSched(s.in, a, sleep)
	sc.stop = s.stop
	if err := sc.run(); err != nil {
		return nil, err
	}
	c := &candidate{a: a, actions: sc.actions()}
	for _, x := range c.actions {
		c.mttr += x.End
		if x.Kind == cluster.Migrate {
			c.migrations++
		}
	}
	return c, nil
}

func (s *search) run() (*candidate, error) {
	in := s.in
	var best *candidate
	if err := in.applyMaxOnline(); err != nil {
		return nil, err
	}
	a, err := in.place()
	if err == nil {
		best, err = s.evaluate(a, nil)
	}
	if errors.Is(err, ErrTimeout) {
		// No first plan: nothing to improve on.
		return nil, err
	}
	if err == nil && s.stop.expired() {
		s.timedOut = true
		return best, nil
	}
	// Small problems get the exhaustive search: it improves on the greedy
	// plan, or may still find one when the greedy placement failed.
	c, proved, timedOut := s.exhaustive(best)
	if err != nil && c == nil {
		return nil, err
	}
	if c != nil && c.better(best, in.p.Objective) {
		best = c
	}
	s.proved, s.timedOut = proved, timedOut
	return best, nil
}

// result applies the target to a copy of the origin. The copy has its own
// node and task slices and demand and capacity vectors; it shares the
// read-only Labels and Durations maps with the origin (cloning 300,000 maps
// would cost more than the whole search).
func (in *inst) result(a *assign) *cluster.Model {
	m := in.m
	r := &cluster.Model{Resources: append([]string(nil), m.Resources...)}
	r.Nodes = append([]cluster.Node(nil), m.Nodes...)
	caps := make([]int64, len(m.Nodes)*in.nR)
	for i := range r.Nodes {
		c := caps[i*in.nR : (i+1)*in.nR : (i+1)*in.nR]
		copy(c, m.Nodes[i].Capacity)
		r.Nodes[i].Capacity = c
		r.Nodes[i].State = in.nodeTgt[i]
	}
	r.Tasks = append([]cluster.Task(nil), m.Tasks...)
	dems := make([]int64, len(m.Tasks)*in.nR)
	for t := range r.Tasks {
		task := &r.Tasks[t]
		d := dems[t*in.nR : (t+1)*in.nR : (t+1)*in.nR]
		copy(d, m.Tasks[t].Demand)
		task.Demand = d
		task.State = in.tgtState[t]
		switch task.State {
		case cluster.Running:
			task.Node = int(a.node[t])
		case cluster.Sleeping:
			task.Node = int(in.curNode[t])
			if a.node[t] >= 0 {
				task.Node = int(a.node[t]) // parked: moved, then suspended
			}
		default:
			task.Node = cluster.NoNode
		}
	}
	return r
}

// lowerBound is the sum of the durations of the actions no plan can avoid:
// state changes, node state changes fixed by constraints, migrations out of
// nodes that must go offline or that a ban or fence forbids, and the fewest
// migrations that relieve a node whose staying tasks overflow it.
func (in *inst) lowerBound() int64 {
	var lb int64
	for n := int32(0); n < int32(in.nN); n++ {
		if !in.nodeFixed[n] || in.nodeCur[n] == in.nodeTgt[n] {
			continue
		}
		if in.nodeTgt[n] == cluster.NodeOnline {
			lb += in.duration(cluster.BootNode, -1, -1, n)
		} else {
			lb += in.duration(cluster.ShutdownNode, -1, -1, n)
		}
	}
	// staying[n]: tasks running on n that stay running and are not forced off.
	forced := make([]bool, in.nT)
	for t := int32(0); t < int32(in.nT); t++ {
		cs, ts, cn := in.curState[t], in.tgtState[t], in.curNode[t]
		switch {
		case cs == ts && cs != cluster.Running:
		case cs == cluster.Running && ts == cluster.Running:
			if in.nodeFixed[cn] && in.nodeTgt[cn] == cluster.NodeOffline {
				forced[t] = true
			}
			for _, r := range in.taskRules[t] {
				switch r := r.(type) {
				case *banRule:
					if containsNode(r.nodes, cn) {
						forced[t] = true
					}
				case *fenceRule:
					if !containsNode(r.nodes, cn) {
						forced[t] = true
					}
				}
			}
			if forced[t] {
				lb += in.relocCost(t, cn)
			}
		case ts == cluster.Running && cs == cluster.Ready:
			lb += in.duration(cluster.Boot, t, -1, -1)
		case ts == cluster.Running && cs == cluster.Sleeping:
			lb += in.duration(cluster.Resume, t, cn, cn)
		case ts == cluster.Sleeping:
			lb += in.duration(cluster.Suspend, t, cn, cn)
		case ts == cluster.Ready:
			lb += in.duration(cluster.Shutdown, t, cn, -1)
		case ts == cluster.Killed:
			lb += in.duration(cluster.Kill, t, cn, -1)
		}
	}
	// Overflowing nodes.
	byNode := make([][]int32, in.nN)
	for t := int32(0); t < int32(in.nT); t++ {
		if in.curState[t] == cluster.Running && in.tgtState[t] == cluster.Running && !forced[t] {
			byNode[in.curNode[t]] = append(byNode[in.curNode[t]], t)
		}
	}
	for n := int32(0); n < int32(in.nN); n++ {
		ts := byNode[n]
		if len(ts) == 0 || in.nodeTgt[n] != cluster.NodeOnline {
			continue
		}
		excess := make([]int64, in.nR)
		over := false
		for r := 0; r < in.nR; r++ {
			var sum int64
			for _, t := range ts {
				sum += in.demand[int(t)*in.nR+r]
			}
			excess[r] = sum - in.capa[int(n)*in.nR+r]
			over = over || excess[r] > 0
		}
		if !over {
			continue
		}
		// The cheapest set of migrations that relieves n, when the search
		// proves it; else the k cheapest migrations, k the fewest tasks
		// whose demands can cover the excess.
		cost := func(t int32) int64 { return in.relocCost(t, n) }
		if _, c, complete := in.minCover(ts, excess, cost, func(int32) float64 { return 0 }); complete {
			lb += c
			continue
		}
		k := 0
		for r := 0; r < in.nR; r++ {
			if excess[r] <= 0 {
				continue
			}
			ds := make([]int64, 0, len(ts))
			for _, t := range ts {
				ds = append(ds, in.demand[int(t)*in.nR+r])
			}
			sort.Slice(ds, func(i, j int) bool { return ds[i] > ds[j] })
			kr, e := 0, excess[r]
			for _, d := range ds {
				if e <= 0 {
					break
				}
				e -= d
				kr++
			}
			k = max(k, kr)
		}
		durs := make([]int64, 0, len(ts))
		for _, t := range ts {
			durs = append(durs, cost(t))
		}
		sort.Slice(durs, func(i, j int) bool { return durs[i] < durs[j] })
		for i := 0; i < k && i < len(durs); i++ {
			lb += durs[i]
		}
	}
	return lb
}
