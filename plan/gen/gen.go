// Package gen generates reconfiguration problems shaped like those of
// BtrPlace's evaluation (Hermenier et al., "BtrPlace: a flexible
// consolidation manager for highly available applications", IEEE TDSC 2013):
// a datacenter of racks of identical nodes (zones of two racks) running
// 3-tier applications, a fraction of which carry placement constraints (each
// tier spread over distinct nodes, the application among one zone, its
// database tier fenced to its zone, its front tier banned from two nodes),
// hit by one of two events:
//
//   - li (load increase): the CPU demand of half of the applications grows
//     by half, overloading some nodes, which must shed VMs;
//   - nr (node and VM state changes): a few nodes go offline for maintenance
//     (their VMs must leave), some VMs stop, some are suspended, some ready
//     ones boot, some sleeping ones resume, and offline spare nodes may boot.
//
// The generator is deterministic for a seed. It is used by the planner's
// benchmarks and tests, and by anyone who needs large realistic instances.
package gen

import (
	"fmt"
	"math/rand/v2"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/plan"
)

// Scenario is the event that makes the configuration need a change.
type Scenario uint8

const (
	// LoadIncrease raises the CPU demand of half of the applications.
	LoadIncrease Scenario = iota
	// NodeReboot takes nodes offline and changes VM states.
	NodeReboot
)

func (s Scenario) String() string {
	switch s {
	case LoadIncrease:
		return "li"
	case NodeReboot:
		return "nr"
	}
	return fmt.Sprintf("Scenario(%d)", s)
}

// Config describes an instance.
type Config struct {
	Nodes int
	VMs   int
	// Constrained is the fraction (0..1) of VMs whose application carries
	// placement constraints: spread per tier, among zones for the
	// application, a ban of two nodes, a fence to its zone for the database
	// tier.
	Constrained float64
	Scenario    Scenario
	Seed        uint64
}

// Resources of every node and VM.
const (
	CPU    = "cpu"
	Memory = "memory" // GiB
)

// Node capacity, as in the paper's simulated nodes.
const (
	nodeCPU    = 32
	nodeMemory = 128
	rackSize   = 50
)

// template is a VM size; the migration duration grows with memory.
type template struct {
	cpu, mem int64
	durs     map[cluster.ActionKind]int64
}

var templates = func() []template {
	sizes := [][2]int64{{1, 2}, {2, 4}, {4, 8}, {8, 16}}
	var ts []template
	for _, s := range sizes {
		ts = append(ts, template{cpu: s[0], mem: s[1], durs: map[cluster.ActionKind]int64{
			cluster.Migrate:  2 + s[1]/2,
			cluster.Suspend:  2 + s[1]/2,
			cluster.Resume:   2 + s[1]/2,
			cluster.Boot:     3,
			cluster.Shutdown: 2,
			cluster.Kill:     1,
		}})
	}
	return ts
}()

var nodeDurations = map[cluster.ActionKind]int64{cluster.BootNode: 8, cluster.ShutdownNode: 4}

// Generate builds the problem described by c. Duration maps are shared
// between VMs of one size and between nodes: treat them as read-only.
func Generate(c Config) (*plan.Problem, error) {
	if c.Nodes <= 0 || c.VMs < 0 || c.Constrained < 0 || c.Constrained > 1 {
		return nil, fmt.Errorf("%w: gen: bad config %+v", cluster.ErrInvalid, c)
	}
	if int64(c.VMs) > int64(c.Nodes)*16 {
		return nil, fmt.Errorf("%w: gen: %d VMs do not fit on %d nodes", cluster.ErrInvalid, c.VMs, c.Nodes)
	}
	rng := rand.New(rand.NewPCG(c.Seed, 0x9e3779b97f4a7c15))
	m := &cluster.Model{Resources: []string{CPU, Memory}}
	// Nodes: 3% spare nodes are offline (nr can boot them).
	m.Nodes = make([]cluster.Node, c.Nodes)
	spares := 0
	if c.Scenario == NodeReboot {
		spares = c.Nodes * 3 / 100
	}
	for n := range m.Nodes {
		m.Nodes[n] = cluster.Node{Name: fmt.Sprintf("node-%d", n), Capacity: []int64{nodeCPU, nodeMemory}, Durations: nodeDurations}
		if n >= c.Nodes-spares {
			m.Nodes[n].State = cluster.NodeOffline
		}
	}
	online := c.Nodes - spares
	racks := (online + rackSize - 1) / rackSize
	zones := (racks + 1) / 2 // a zone is two racks

	// Applications: 3 tiers of 2..6 VMs each.
	type app struct {
		tiers       [][]int
		constrained bool
		zone        int
	}
	var apps []app
	zoneLoad := make([]int64, zones)
	m.Tasks = make([]cluster.Task, 0, c.VMs)
	cpuLoad := make([]int64, c.Nodes)
	memLoad := make([]int64, c.Nodes)
	// place puts VM t on a node of the rack range with room, avoiding nodes
	// in avoid; it returns false when no node has room.
	place := func(t int, lo, hi int, avoid map[int]bool) bool {
		task := &m.Tasks[t]
		span := hi - lo
		start := rng.IntN(span)
		for k := 0; k < span; k++ {
			n := lo + (start+k)%span
			if avoid[n] {
				continue
			}
			if cpuLoad[n]+task.Demand[0] <= nodeCPU*8/10 && memLoad[n]+task.Demand[1] <= nodeMemory*8/10 {
				cpuLoad[n] += task.Demand[0]
				memLoad[n] += task.Demand[1]
				task.State, task.Node = cluster.Running, n
				return true
			}
		}
		return false
	}
	for len(m.Tasks) < c.VMs {
		a := app{constrained: rng.Float64() < c.Constrained, zone: rng.IntN(zones)}
		for tier := 0; tier < 3 && len(m.Tasks) < c.VMs; tier++ {
			size := 2 + rng.IntN(5)
			var ids []int
			tpl := templates[min(tier+rng.IntN(2), len(templates)-1)]
			for i := 0; i < size && len(m.Tasks) < c.VMs; i++ {
				t := len(m.Tasks)
				m.Tasks = append(m.Tasks, cluster.Task{
					Name: fmt.Sprintf("vm-%d", t), Job: fmt.Sprintf("app-%d", len(apps)),
					Node: cluster.NoNode, Demand: []int64{tpl.cpu, tpl.mem}, Durations: tpl.durs,
				})
				ids = append(ids, t)
			}
			a.tiers = append(a.tiers, ids)
		}
		if a.constrained {
			// Balance the zones: the least loaded one takes the application.
			var cpu int64
			for _, tier := range a.tiers {
				for _, t := range tier {
					cpu += m.Tasks[t].Demand[0]
				}
			}
			// Per node: the last zone may be smaller.
			size := func(z int) int64 { return int64(min((z+1)*2*rackSize, online) - z*2*rackSize) }
			best := a.zone
			for z := 0; z < zones; z++ {
				if zoneLoad[z]*size(best) < zoneLoad[best]*size(z) {
					best = z
				}
			}
			a.zone = best
			zoneLoad[best] += cpu
		}
		apps = append(apps, a)
	}
	// Initial placement: constrained applications inside their rack with
	// tiers spread; the others anywhere. Running VMs fill nodes to at most
	// 80%; what does not fit stays ready.
	for _, a := range apps {
		lo, hi := 0, online
		if a.constrained {
			lo = a.zone * 2 * rackSize
			hi = min(lo+2*rackSize, online)
		}
		for _, tier := range a.tiers {
			used := map[int]bool{}
			for _, t := range tier {
				var avoid map[int]bool
				if a.constrained {
					avoid = used
				}
				if place(t, lo, hi, avoid) {
					used[m.Tasks[t].Node] = true
				}
			}
		}
	}
	p := &plan.Problem{Model: m, Objective: plan.MinMTTR}
	// Constraints of the constrained applications.
	zoneNodes := func(z int) []int {
		var ns []int
		for n := z * 2 * rackSize; n < min((z+1)*2*rackSize, online); n++ {
			ns = append(ns, n)
		}
		return ns
	}
	var groups [][]int
	for z := 0; z < zones; z++ {
		groups = append(groups, zoneNodes(z))
	}
	for _, a := range apps {
		if !a.constrained {
			continue
		}
		var all []int
		for _, tier := range a.tiers {
			p.Constraints = append(p.Constraints, cluster.Spread{Tasks: tier, Continuous: true})
			all = append(all, tier...)
		}
		p.Constraints = append(p.Constraints, cluster.Among{Tasks: all, Groups: groups})
		// Ban two random nodes outside the VMs' current nodes.
		ban := []int{rng.IntN(online), rng.IntN(online)}
		var banned []int
		for _, n := range ban {
			ok := true
			for _, t := range all {
				if m.Tasks[t].Node == n {
					ok = false
				}
			}
			if ok {
				banned = append(banned, n)
			}
		}
		if len(banned) > 0 {
			p.Constraints = append(p.Constraints, cluster.Ban{Tasks: a.tiers[0], Nodes: banned})
		}
		if len(a.tiers) == 3 {
			p.Constraints = append(p.Constraints, cluster.Fence{Tasks: a.tiers[2], Nodes: zoneNodes(a.zone)})
		}
	}
	switch c.Scenario {
	case LoadIncrease:
		for _, a := range apps {
			if rng.IntN(2) != 0 {
				continue
			}
			for _, tier := range a.tiers {
				for _, t := range tier {
					d := m.Tasks[t].Demand
					d[0] += (d[0] + 1) / 2
				}
			}
		}
	case NodeReboot:
		// 5% of the online nodes go offline for maintenance.
		var off []int
		for n := 0; n < online; n++ {
			if rng.IntN(20) == 0 {
				off = append(off, n)
			}
		}
		if len(off) > 0 {
			p.Constraints = append(p.Constraints, cluster.NodeStateConstraint{State: cluster.NodeOffline, Nodes: off})
		}
		var stop, sleep, run []int
		for t := range m.Tasks {
			switch m.Tasks[t].State {
			case cluster.Running:
				switch x := rng.IntN(100); {
				case x < 4:
					stop = append(stop, t)
				case x < 6:
					sleep = append(sleep, t)
				case x < 8:
					// A VM that was suspended earlier and now resumes.
					m.Tasks[t].State = cluster.Sleeping
					cpuLoad[m.Tasks[t].Node] -= m.Tasks[t].Demand[0]
					memLoad[m.Tasks[t].Node] -= m.Tasks[t].Demand[1]
					run = append(run, t)
				}
			case cluster.Ready:
				if rng.IntN(2) == 0 {
					run = append(run, t)
				}
			}
		}
		// Sleeping VMs on nodes going offline cannot stay asleep there: they
		// were picked to resume, so any left sleeping would be a conflict.
		if len(stop) > 0 {
			p.Constraints = append(p.Constraints, cluster.StateConstraint{State: cluster.Ready, Tasks: stop})
		}
		if len(sleep) > 0 {
			offSet := map[int]bool{}
			for _, n := range off {
				offSet[n] = true
			}
			var ok []int
			for _, t := range sleep {
				if !offSet[m.Tasks[t].Node] {
					ok = append(ok, t)
				}
			}
			if len(ok) > 0 {
				p.Constraints = append(p.Constraints, cluster.StateConstraint{State: cluster.Sleeping, Tasks: ok})
			}
		}
		if len(run) > 0 {
			p.Constraints = append(p.Constraints, cluster.StateConstraint{State: cluster.Running, Tasks: run})
		}
	}
	return p, nil
}
