package policy

import (
	"math/rand/v2"
	"testing"

	"github.com/ferrycluster/ferry/cluster"
)

// view builds n nodes of 1 cpu and the given jobs (tasks of 1 cpu); state
// and node per job apply to all its tasks.
type js struct {
	name      string
	submit    int64
	tasks     int
	state     cluster.TaskState
	nodes     []int
	wall      int64
	done      int64
	preempt   bool
	migratory bool
}

func mkView(nodes int, now int64, jobs ...js) *View {
	m := &cluster.Model{Resources: []string{"cpu"}}
	for i := range nodes {
		m.Nodes = append(m.Nodes, cluster.Node{Name: string(rune('a' + i)), Capacity: []int64{1}})
	}
	v := &View{Model: m, Now: now}
	for _, j := range jobs {
		pj := Job{Name: j.name, Submitted: j.submit, Walltime: j.wall, Done: j.done, Total: j.done + j.wall, Preemptible: j.preempt, Migratable: j.migratory}
		for k := range j.tasks {
			n := cluster.NoNode
			if j.state != cluster.Ready {
				n = j.nodes[k]
			}
			pj.Tasks = append(pj.Tasks, len(m.Tasks))
			m.Tasks = append(m.Tasks, cluster.Task{Name: j.name + string(rune('0'+k)), State: j.state, Node: n, Demand: []int64{1}})
		}
		v.Jobs = append(v.Jobs, pj)
	}
	return v
}

func wants(t *testing.T, p Policy, v *View) []cluster.TaskState {
	t.Helper()
	d, err := p.Decide(v)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Want) != len(v.Model.Tasks) {
		t.Fatalf("%d wants for %d tasks", len(d.Want), len(v.Model.Tasks))
	}
	return d.Want
}

func TestFCFSHeadBlocksTheQueue(t *testing.T) {
	v := mkView(3, 10,
		js{name: "run", tasks: 2, state: cluster.Running, nodes: []int{0, 1}, wall: 100},
		js{name: "wide", submit: 1, tasks: 2, wall: 10},
		js{name: "small", submit: 2, tasks: 1, wall: 10},
	)
	w := wants(t, FCFS{}, v)
	if w[2] != cluster.Ready || w[4] != cluster.Ready {
		t.Fatalf("fcfs started a job behind a blocked head: %v", w)
	}
	w = wants(t, EASY{}, v)
	if w[4] != cluster.Running || w[2] != cluster.Ready {
		t.Fatalf("easy did not backfill the small job that ends before the shadow time: %v", w)
	}
}

func TestEASYDoesNotDelayTheHead(t *testing.T) {
	v := mkView(3, 10,
		js{name: "run", tasks: 2, state: cluster.Running, nodes: []int{0, 1}, wall: 100},
		js{name: "wide", submit: 1, tasks: 3, wall: 10},
		js{name: "long", submit: 2, tasks: 1, wall: 1000},
	)
	if w := wants(t, EASY{}, v); w[5] != cluster.Ready {
		t.Fatalf("easy backfilled a long job that delays the head's reservation: %v", w)
	}
}

func TestSelectiveSuspendsForAHighExpansionFactor(t *testing.T) {
	v := mkView(2, 1000,
		js{name: "long", tasks: 2, state: cluster.Running, nodes: []int{0, 1}, wall: 5000, done: 900, preempt: true},
		js{name: "short", submit: 100, tasks: 1, wall: 30},
	)
	w := wants(t, Selective{Factor: 2}, v)
	if w[0] != cluster.Sleeping || w[1] != cluster.Sleeping || w[2] != cluster.Running {
		t.Fatalf("ss did not preempt the long job: %v", w)
	}
	// A job about to finish is not worth suspending when cost-aware.
	v.Jobs[0].Walltime = 5
	v.Durations = cluster.AttrDurations{Default: 10}
	w = wants(t, Selective{Factor: 2, CostAware: true}, v)
	if w[0] != cluster.Running || w[2] != cluster.Ready {
		t.Fatalf("cost-aware ss suspended a job about to end: %v", w)
	}
}

func TestEntropyFIFOPreemptsLaterJobs(t *testing.T) {
	// The earlier job is asleep, the later one runs on the only node: FIFO
	// priority resumes the earlier one and suspends the later one.
	v := mkView(1, 50,
		js{name: "early", tasks: 1, state: cluster.Sleeping, nodes: []int{0}, wall: 100, preempt: true},
		js{name: "late", submit: 5, tasks: 1, state: cluster.Running, nodes: []int{0}, wall: 100, preempt: true},
	)
	w := wants(t, Entropy{}, v)
	if w[0] != cluster.Running || w[1] != cluster.Sleeping {
		t.Fatalf("entropy: %v", w)
	}
}

func TestDrainingNodesAreEmptiedWithoutKilling(t *testing.T) {
	v := mkView(3, 0, js{name: "a", tasks: 2, state: cluster.Running, nodes: []int{0, 1}, wall: 100, migratory: true, preempt: true})
	v.Draining = map[int]bool{0: true}
	for _, p := range []Policy{FCFS{}, EASY{}, Entropy{}, Consolidate{}, Selective{}, Ferry()} {
		d, err := p.Decide(v)
		if err != nil {
			t.Fatal(err)
		}
		for i, s := range d.Want {
			if s == cluster.Killed {
				t.Fatalf("%s kills task %d", p.Name(), i)
			}
		}
		moved := false
		for _, c := range d.Constraints {
			if f, ok := c.(cluster.Fence); ok && len(f.Tasks) == 1 && f.Tasks[0] == 0 && f.Nodes[0] == 2 {
				moved = true
			}
		}
		if !moved {
			t.Fatalf("%s: task on the draining node not fenced to the free node: %+v", p.Name(), d.Constraints)
		}
	}
}

func TestPackerFirstFitDecreasing(t *testing.T) {
	m := &cluster.Model{Resources: []string{"cpu"}, Nodes: []cluster.Node{{Name: "a", Capacity: []int64{3}}, {Name: "b", Capacity: []int64{2}}},
		Tasks: []cluster.Task{{Name: "s", Node: -1, Demand: []int64{1}}, {Name: "l", Node: -1, Demand: []int64{2}}, {Name: "m", Node: -1, Demand: []int64{2}}}}
	p := NewPacker(&View{Model: m})
	if !p.Place([]int{0, 1, 2}, false) {
		t.Fatal("does not fit")
	}
	if p.Placement[1] != 0 || p.Placement[2] != 1 || p.Placement[0] != 0 {
		t.Fatalf("placement %v", p.Placement)
	}
	if p.Place([]int{0}, false) {
		t.Fatal("placed beyond capacity")
	}
}

// Slots keeps its answers per demand and updates them on every placement
// and release: they must equal a count from scratch after any sequence,
// for more demands than it keeps at once.
func TestSlotsFollowPlacementsAndReleases(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	m := &cluster.Model{Resources: []string{"cpu", "memory"}}
	for i := range 7 {
		m.Nodes = append(m.Nodes, cluster.Node{Name: string(rune('a' + i)), Capacity: []int64{4, 16}})
	}
	var demands [][]int64
	for c := range int64(3) {
		for mem := range int64(3) {
			demands = append(demands, []int64{c, 1 + 3*mem})
		}
	}
	for i := range 40 {
		m.Tasks = append(m.Tasks, cluster.Task{Name: string(rune('A' + i)), Node: cluster.NoNode, Demand: demands[rng.IntN(len(demands))]})
	}
	p := NewPacker(&View{Model: m})
	scratch := func(d []int64) int {
		total := 0
		for n := range m.Nodes {
			total += nodeSlots(p.Free(n), d)
		}
		return total
	}
	placed := 0
	for step := range 400 {
		task := rng.IntN(len(m.Tasks))
		if p.Placement[task] >= 0 {
			p.Release(task)
		} else if p.Place([]int{task}, false) {
			placed++
		}
		d := demands[rng.IntN(len(demands))]
		if got, want := p.Slots(d), scratch(d); got != want {
			t.Fatalf("step %d: Slots(%v) = %d, counted %d", step, d, got, want)
		}
	}
	if placed == 0 {
		t.Fatal("nothing was ever placed")
	}
}

func TestByName(t *testing.T) {
	for _, n := range Names() {
		p, err := ByName(n)
		if err != nil || p.Name() != n {
			t.Fatalf("%s: %v %v", n, p, err)
		}
	}
	if _, err := ByName("nope"); err == nil {
		t.Fatal("unknown policy accepted")
	}
}
