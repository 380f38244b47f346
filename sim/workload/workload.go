// Package workload describes what the simulator runs: a cluster (resources
// and nodes), jobs arriving over time with their work profiles, and the
// duration model of actions. Workloads come from SWF traces (FromSWF), from
// the VTDC'10 NASGrid-like model (VTDC) or from a small JSON/YAML scenario
// file (ParseScenario). It is pure data: no clock, no I/O besides the
// scenario parser's reader.
package workload

import (
	"errors"
	"fmt"

	"github.com/ferrycluster/ferry/cluster"
)

// ErrInvalid marks a malformed workload or scenario.
var ErrInvalid = errors.New("invalid workload")

// Node is one machine of the simulated cluster.
type Node struct {
	Name     string
	Capacity []int64 // indexed like Workload.Resources
}

// Segment is a stretch of a job's progress during which each task's CPU
// demand is constant. End is the progress (seconds of gang execution) at
// which the segment ends; CPU holds one demand per task.
type Segment struct {
	End int64
	CPU []int64
}

// Job is a job to run: Tasks tasks that change state together.
type Job struct {
	Name     string
	Submit   int64 // seconds
	Priority int
	Tasks    int
	// Demand is each task's peak demand, indexed like Workload.Resources;
	// static policies reserve it.
	Demand []int64
	// Work is the job's run time alone (seconds of gang execution).
	Work int64
	// Walltime is the user's estimate of Work (0: unknown).
	Walltime int64
	// Segments, when set, give the observed CPU demand per task along the
	// job's progress (the last End equals Work). Nil: Demand throughout.
	Segments    []Segment
	Preemptible bool
	Migratable  bool
	// Kind is a free label (NGB graph name, "swf").
	Kind string
}

// Workload is a whole simulation input.
type Workload struct {
	Name      string
	Resources []string
	Nodes     []Node
	Jobs      []Job // sorted by Submit, then name
	Durations cluster.BandwidthDurations
	// Soft names resources whose observed demand may exceed capacity (CPU
	// contention slows jobs down); others are hard and never overbooked.
	Soft []string
}

// CPU is the index of the "cpu" resource, or -1.
func (w *Workload) CPU() int { return index(w.Resources, "cpu") }

func index(xs []string, s string) int {
	for i, x := range xs {
		if x == s {
			return i
		}
	}
	return -1
}

// Validate checks sizes, names and profiles; errors wrap ErrInvalid and name
// the element.
func (w *Workload) Validate() error {
	nr := len(w.Resources)
	if nr == 0 {
		return fmt.Errorf("%w: no resources", ErrInvalid)
	}
	if len(w.Nodes) == 0 {
		return fmt.Errorf("%w: no nodes", ErrInvalid)
	}
	names := map[string]bool{}
	for _, n := range w.Nodes {
		if n.Name == "" || names[n.Name] {
			return fmt.Errorf("%w: node name %q empty or repeated", ErrInvalid, n.Name)
		}
		names[n.Name] = true
		if len(n.Capacity) != nr {
			return fmt.Errorf("%w: node %q: %d capacities for %d resources", ErrInvalid, n.Name, len(n.Capacity), nr)
		}
		for _, c := range n.Capacity {
			if c < 0 {
				return fmt.Errorf("%w: node %q: negative capacity", ErrInvalid, n.Name)
			}
		}
	}
	jobs := map[string]bool{}
	var last int64
	for i, j := range w.Jobs {
		if j.Name == "" || jobs[j.Name] {
			return fmt.Errorf("%w: job %d: name %q empty or repeated", ErrInvalid, i, j.Name)
		}
		jobs[j.Name] = true
		if j.Submit < last {
			return fmt.Errorf("%w: job %q: jobs not sorted by submit time", ErrInvalid, j.Name)
		}
		last = j.Submit
		if j.Tasks <= 0 || j.Tasks > 1<<20 {
			return fmt.Errorf("%w: job %q: %d tasks", ErrInvalid, j.Name, j.Tasks)
		}
		if j.Work <= 0 {
			return fmt.Errorf("%w: job %q: work %d must be positive", ErrInvalid, j.Name, j.Work)
		}
		if len(j.Demand) != nr {
			return fmt.Errorf("%w: job %q: %d demands for %d resources", ErrInvalid, j.Name, len(j.Demand), nr)
		}
		for _, d := range j.Demand {
			if d < 0 {
				return fmt.Errorf("%w: job %q: negative demand", ErrInvalid, j.Name)
			}
		}
		slots := 0
		for _, n := range w.Nodes {
			k := j.Tasks
			for r := range n.Capacity {
				if j.Demand[r] > 0 {
					k = min(k, int(n.Capacity[r]/j.Demand[r]))
				}
			}
			slots += k
		}
		if slots < j.Tasks {
			return fmt.Errorf("%w: job %q: its %d tasks do not fit on the whole empty cluster", ErrInvalid, j.Name, j.Tasks)
		}
		var prev int64
		for s, seg := range j.Segments {
			if seg.End <= prev || len(seg.CPU) != j.Tasks {
				return fmt.Errorf("%w: job %q: segment %d: end %d must grow and hold %d demands", ErrInvalid, j.Name, s, seg.End, j.Tasks)
			}
			prev = seg.End
		}
		if len(j.Segments) > 0 && prev != j.Work {
			return fmt.Errorf("%w: job %q: segments end at %d, work is %d", ErrInvalid, j.Name, prev, j.Work)
		}
	}
	for _, s := range w.Soft {
		if index(w.Resources, s) < 0 {
			return fmt.Errorf("%w: soft resource %q is not a resource", ErrInvalid, s)
		}
		if s == "memory" {
			// Memory is never time-shared: a guest over its node's memory is
			// swapped or killed, so the engine and the checker keep it hard.
			return fmt.Errorf("%w: soft resource %q: memory cannot be time-shared", ErrInvalid, s)
		}
	}
	return nil
}
