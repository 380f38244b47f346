package workload

import (
	"fmt"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/sim/swf"
)

// SWFOptions state the mapping of an SWF trace onto nodes and tasks.
type SWFOptions struct {
	// Nodes in the cluster; 0: the trace's MaxProcs header.
	Nodes int
	// TaskMemory in bytes when the trace has no memory field (default 1 GiB).
	TaskMemory int64
	// NodeMemory in bytes (default 2 GiB).
	NodeMemory int64
	// MaxJobs keeps only the first jobs (0: all).
	MaxJobs int
}

// GiB is 2^30 bytes.
const GiB = int64(1) << 30

// SWFDurations are the action costs assumed for SWF traces: a 2010s
// node's local disk at 100 MB/s for suspend and resume, 1 Gb/s Ethernet
// (117 MB/s of payload) for live migration and remote resume, 1 s of fixed
// latency per sized action, 1 s to boot or stop a task (the trace's run
// time already includes the job's own start-up).
func SWFDurations() cluster.BandwidthDurations {
	return cluster.BandwidthDurations{
		Memory: "memory", NetBandwidth: 117_000_000, DiskBandwidth: 100_000_000,
		BootTask: 1, ShutdownTask: 1, KillTask: 1, Latency: 1,
	}
}

// FromSWF maps a trace onto a cluster: one node per processor (capacity: 1
// cpu slot and NodeMemory bytes), and a job of k processors is k tasks of
// one cpu each. A task's memory is the trace's used memory per processor,
// else its requested memory, else TaskMemory, capped at NodeMemory. Work is
// the recorded run time; the walltime estimate is the requested time when
// the trace has one (at least the run time), else the run time (perfect
// estimates). Jobs with no run time or no processors (cancelled before
// starting) are dropped, and so are jobs wider than the cluster; the count
// is returned.
func FromSWF(tr *swf.Trace, name string, o SWFOptions) (*Workload, int, error) {
	if o.TaskMemory <= 0 {
		o.TaskMemory = GiB
	}
	if o.NodeMemory <= 0 {
		o.NodeMemory = 2 * GiB
	}
	nodes := o.Nodes
	if nodes <= 0 {
		nodes = int(tr.MaxProcs())
	}
	if nodes <= 0 {
		for _, j := range tr.Jobs {
			nodes = max(nodes, int(j.Procs))
		}
	}
	if nodes <= 0 || nodes > 1<<16 {
		return nil, 0, fmt.Errorf("%w: cannot size the cluster (%d nodes)", ErrInvalid, nodes)
	}
	w := &Workload{Name: name, Resources: []string{"cpu", "memory"}, Durations: SWFDurations()}
	for i := range nodes {
		w.Nodes = append(w.Nodes, Node{Name: fmt.Sprintf("n%03d", i), Capacity: []int64{1, o.NodeMemory}})
	}
	dropped := 0
	var t0 int64 = -1
	for _, j := range tr.Jobs {
		if o.MaxJobs > 0 && len(w.Jobs) >= o.MaxJobs {
			break
		}
		procs := j.Procs
		if procs <= 0 {
			procs = j.ReqProcs
		}
		if j.Run <= 0 || procs <= 0 || procs > int64(nodes) {
			dropped++
			continue
		}
		if t0 < 0 {
			t0 = j.Submit
		}
		mem := o.TaskMemory
		if j.UsedMemKB > 0 {
			mem = j.UsedMemKB * 1024
		} else if j.ReqMemKB > 0 {
			mem = j.ReqMemKB * 1024
		}
		mem = min(mem, o.NodeMemory)
		wall := j.Run
		if j.ReqTime > j.Run {
			wall = j.ReqTime
		}
		w.Jobs = append(w.Jobs, Job{
			Name: fmt.Sprintf("j%d", j.ID), Submit: max(j.Submit-t0, 0), Tasks: int(procs),
			Demand: []int64{1, mem}, Work: j.Run, Walltime: wall,
			Preemptible: true, Migratable: true, Kind: "swf",
		})
	}
	sortJobs(w.Jobs)
	return w, dropped, w.Validate()
}
