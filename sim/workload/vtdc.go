package workload

import (
	"fmt"
	"math/rand/v2"
	"sort"

	"github.com/ferrycluster/ferry/cluster"
)

// MiB is 2^20 bytes.
const MiB = int64(1) << 20

// NGB data-flow graphs (NAS Grid Benchmarks), 9 tasks each. A graph is a
// list of steps; each step lists the tasks that compute during it. Between
// two steps, data flows from the tasks of a step to the next and every VM
// waits (CPU demand 0) for the transfer.
var ngbGraphs = map[string][][]int{
	// ED, Embarrassingly Distributed: 9 independent solvers at once.
	"ED": {{0, 1, 2, 3, 4, 5, 6, 7, 8}},
	// HC, Helical Chain: 9 tasks in a chain, one computes at a time.
	"HC": {{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}},
	// VP, Visualization Pipeline: 3 pipes of 3 stages (BT -> MG -> FT);
	// task (pipe p, stage s) runs in wavefront step p+s: 1,2,3,2,1 tasks.
	"VP": {{0}, {1, 3}, {2, 4, 6}, {5, 7}, {8}},
	// MB, Mixed Bag: 3 layers of 3 tasks, each layer fed by the previous.
	"MB": {{0, 1, 2}, {3, 4, 5}, {6, 7, 8}},
}

// ngbStep is the compute time of one step of each graph (seconds, before
// jitter), chosen so that a vjob alone lasts 10-12 minutes, and VM memory.
var ngbStep = map[string]struct {
	step int64
	mem  int64
}{
	"ED": {600, 512 * MiB},
	"HC": {70, 512 * MiB},
	"VP": {130, 1024 * MiB},
	"MB": {220, 1024 * MiB},
}

// VTDCTransfer is the data-transfer wait between two steps of a graph.
const VTDCTransfer = 10

// VTDCDurations are the action costs of the VTDC'10 model: Xen on 2010
// nodes, VM images on NFS storage nodes; suspend and resume write/read the
// VM's memory at 50 MB/s, live migration and remote resume cross 1 Gb/s
// Ethernet (110 MB/s), 2 s of fixed latency, 15 s to boot a VM, 5 s to
// stop it.
func VTDCDurations() cluster.BandwidthDurations {
	return cluster.BandwidthDurations{
		Memory: "memory", NetBandwidth: 110_000_000, DiskBandwidth: 50_000_000,
		BootTask: 15, ShutdownTask: 5, KillTask: 1, Latency: 2,
	}
}

// VTDC builds the VTDC'10 experiment: 11 working nodes of 2 cores and
// 3.5 GiB usable memory (4 GiB minus Xen's dom0), and 8 vjobs of 9 VMs (1
// vCPU each), two of each NGB graph, all queued at time 0 in a seeded
// order; each step's compute time is jittered by +-10% (seeded). The model
// is fixed before any policy is tuned; docs/simulator.md states it.
func VTDC(seed uint64) *Workload {
	rng := rand.New(rand.NewPCG(seed, 0x76746463))
	w := &Workload{
		Name:      fmt.Sprintf("vtdc10-seed%d", seed),
		Resources: []string{"cpu", "memory"},
		Durations: VTDCDurations(),
		Soft:      []string{"cpu"},
	}
	for i := range 11 {
		w.Nodes = append(w.Nodes, Node{Name: fmt.Sprintf("node%02d", i+1), Capacity: []int64{2, 3584 * MiB}})
	}
	kinds := []string{"ED", "HC", "VP", "MB", "ED", "HC", "VP", "MB"}
	rng.Shuffle(len(kinds), func(a, b int) { kinds[a], kinds[b] = kinds[b], kinds[a] })
	for i, k := range kinds {
		w.Jobs = append(w.Jobs, NGBJob(fmt.Sprintf("vjob%d-%s", i+1, k), k, 0, rng))
	}
	return w
}

// NGBJob is one NGB vjob of kind ED, HC, VP or MB, submitted at submit.
// rng (may be nil) jitters each step's compute time by +-10%.
func NGBJob(name, kind string, submit int64, rng *rand.Rand) Job {
	g, ok := ngbGraphs[kind]
	if !ok {
		kinds := make([]string, 0, len(ngbGraphs))
		for k := range ngbGraphs {
			kinds = append(kinds, k)
		}
		sort.Strings(kinds)
		panic(fmt.Sprintf("workload: unknown NGB graph %q (have %v)", kind, kinds))
	}
	p := ngbStep[kind]
	j := Job{Name: name, Submit: submit, Tasks: 9, Demand: []int64{1, p.mem}, Preemptible: true, Migratable: true, Kind: kind}
	var at int64
	for s, step := range g {
		if s > 0 {
			at += VTDCTransfer
			j.Segments = append(j.Segments, Segment{End: at, CPU: make([]int64, 9)})
		}
		d := p.step
		if rng != nil {
			d = d * int64(90+rng.IntN(21)) / 100
		}
		at += d
		cpu := make([]int64, 9)
		for _, t := range step {
			cpu[t] = 1
		}
		j.Segments = append(j.Segments, Segment{End: at, CPU: cpu})
	}
	j.Work = at
	j.Walltime = at
	return j
}

// NGBKinds lists the graph names NGBJob accepts.
func NGBKinds() []string { return []string{"ED", "HC", "MB", "VP"} }
