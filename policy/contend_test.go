package policy

import (
	"testing"

	"github.com/ferrycluster/ferry/cluster"
)

// vmJob is a running job of VMs with a cpu (observed) and memory demand
// each, placed on the given nodes.
type vmJob struct {
	name  string
	nodes []int
	cpu   []int64
	mem   int64
	wall  int64
}

// vmView: nodes of 2 cores and mem memory; jobs all running, preemptible
// and migratable, with real durations (so the cost rules apply).
func vmView(nodes int, mem int64, jobs ...vmJob) *View {
	m := &cluster.Model{Resources: []string{"cpu", "memory"}}
	for i := range nodes {
		m.Nodes = append(m.Nodes, cluster.Node{Name: string(rune('a' + i)), Capacity: []int64{2, mem}})
	}
	v := &View{Model: m, Now: 1000, Durations: cluster.AttrDurations{Default: 10}}
	for _, j := range jobs {
		pj := Job{Name: j.name, Walltime: j.wall, Done: 500, Total: 500 + j.wall, Preemptible: true, Migratable: true}
		for k, n := range j.nodes {
			pj.Tasks = append(pj.Tasks, len(m.Tasks))
			m.Tasks = append(m.Tasks, cluster.Task{Name: j.name + string(rune('0'+k)), Job: j.name, State: cluster.Running, Node: n, Demand: []int64{j.cpu[k], j.mem}})
		}
		v.Jobs = append(v.Jobs, pj)
	}
	return v
}

// fences maps each fenced task to its node; it fails on a task fenced twice.
func fences(t *testing.T, d Decision) map[int]int {
	t.Helper()
	out := map[int]int{}
	for _, c := range d.Constraints {
		f, ok := c.(cluster.Fence)
		if !ok || len(f.Tasks) != 1 || len(f.Nodes) != 1 {
			t.Fatalf("unexpected constraint %+v", c)
		}
		if _, dup := out[f.Tasks[0]]; dup {
			t.Fatalf("task %d fenced twice: %+v", f.Tasks[0], d.Constraints)
		}
		out[f.Tasks[0]] = f.Nodes[0]
	}
	return out
}

func decide(t *testing.T, p Policy, v *View) Decision {
	t.Helper()
	d, err := p.Decide(v)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// wantFirst: the decision wants the first n tasks in state st, the others
// running.
func wantFirst(t *testing.T, d Decision, n int, st cluster.TaskState) {
	t.Helper()
	for i, s := range d.Want {
		want := cluster.Running
		if i < n {
			want = st
		}
		if s != want {
			t.Fatalf("task %d wanted %v, want %v (all: %v)", i, s, want, d.Want)
		}
	}
}

func TestFerryMovesAWakingVMToAFreeCoreInsteadOfSuspending(t *testing.T) {
	// Three computing VMs on node a (2 cores), node b empty.
	v := vmView(2, 4, vmJob{name: "j", nodes: []int{0, 0, 0}, cpu: []int64{1, 1, 1}, mem: 1, wall: 1000})
	d := decide(t, Ferry(), v)
	for i, s := range d.Want {
		if s != cluster.Running {
			t.Fatalf("task %d wanted %v", i, s)
		}
	}
	f := fences(t, d)
	if len(f) != 1 {
		t.Fatalf("want one task moved, got %v", f)
	}
	for _, n := range f {
		if n != 1 {
			t.Fatalf("moved to node %d, want b", n)
		}
	}
	// The old rule suspends instead: no core where the VM woke up, and
	// plain ss does not migrate a job that is not fenced.
	old := Ferry()
	old.Contend = false
	if d := decide(t, old, vmView(1, 4, vmJob{name: "j", nodes: []int{0, 0, 0}, cpu: []int64{1, 1, 1}, mem: 1, wall: 1000})); d.Want[0] != cluster.Sleeping {
		t.Fatalf("without Contend the overloaded job should be suspended: %v", d.Want)
	}
}

func TestFerryMovesIdleVMsOutOfTheWayOfAComputingOne(t *testing.T) {
	// Node a: 3 computing VMs of "hot" (overloaded). Node b: 2 free cores
	// but its memory held by four idle VMs of "cold". Node c: no free
	// core (two computing VMs of "busy") but memory for the idle ones.
	v := vmView(3, 4,
		vmJob{name: "hot", nodes: []int{0, 0, 0}, cpu: []int64{1, 1, 1}, mem: 1, wall: 1000},
		vmJob{name: "cold", nodes: []int{1, 1, 1, 1}, cpu: []int64{0, 0, 0, 0}, mem: 1, wall: 1000},
		vmJob{name: "busy", nodes: []int{2, 2}, cpu: []int64{1, 1}, mem: 1, wall: 1000},
	)
	d := decide(t, Ferry(), v)
	for i, s := range d.Want {
		if s != cluster.Running {
			t.Fatalf("task %d wanted %v, nothing needs suspending", i, s)
		}
	}
	f := fences(t, d)
	hotToB, coldOut := 0, 0
	for task, n := range f {
		switch {
		case task < 3 && n == 1:
			hotToB++
		case task >= 3 && task < 7 && n == 2:
			coldOut++ // to c: a has room only once the hot VM has left it
		default:
			t.Fatalf("task %d fenced to %d: %v", task, n, f)
		}
	}
	if hotToB != 1 || coldOut != 1 {
		t.Fatalf("want one computing VM to b and one idle VM off b, got %v", f)
	}
	// Without room on c, the idle VM could only swap places with the
	// computing one (a cycle the planner breaks by suspending a VM, which
	// stops its whole job): nothing moves, the hot VMs share a's cores.
	v = vmView(3, 4,
		vmJob{name: "hot", nodes: []int{0, 0, 0}, cpu: []int64{1, 1, 1}, mem: 1, wall: 1000},
		vmJob{name: "cold", nodes: []int{1, 1, 1, 1}, cpu: []int64{0, 0, 0, 0}, mem: 1, wall: 1000},
		vmJob{name: "busy", nodes: []int{2, 2, 2, 2}, cpu: []int64{1, 1, 0, 0}, mem: 1, wall: 1000},
	)
	d = decide(t, Ferry(), v)
	for i, s := range d.Want {
		if s != cluster.Running {
			t.Fatalf("no room on c: task %d wanted %v", i, s)
		}
	}
	if f := fences(t, d); len(f) != 0 {
		t.Fatalf("no room on c: want no move, got %v", f)
	}
}

func TestFerrySharesCoresUpToToleranceThenSheds(t *testing.T) {
	// One node, two jobs: within a core of overload both run (contention);
	// beyond it one is suspended (as wide as the other, less work done).
	within := vmView(1, 8,
		vmJob{name: "near", nodes: []int{0, 0}, cpu: []int64{1, 1}, mem: 1, wall: 200},
		vmJob{name: "far", nodes: []int{0}, cpu: []int64{1}, mem: 1, wall: 5000},
	)
	d := decide(t, Ferry(), within)
	for i, s := range d.Want {
		if s != cluster.Running {
			t.Fatalf("overload of one core: task %d wanted %v", i, s)
		}
	}
	beyond := vmView(1, 8,
		vmJob{name: "near", nodes: []int{0, 0}, cpu: []int64{1, 1}, mem: 1, wall: 200},
		vmJob{name: "far", nodes: []int{0, 0}, cpu: []int64{1, 1}, mem: 1, wall: 5000},
	)
	beyond.Jobs[1].Done = 100
	d = decide(t, Ferry(), beyond)
	if d.Want[0] != cluster.Running || d.Want[1] != cluster.Running || d.Want[2] != cluster.Sleeping || d.Want[3] != cluster.Sleeping {
		t.Fatalf("overload of two cores: want far suspended, got %v", d.Want)
	}
	// A job about to end is not worth its switch cost: nothing to shed.
	beyond.Jobs[1].Walltime = 5
	if d = decide(t, Ferry(), beyond); d.Want[2] != cluster.Running {
		t.Fatalf("shed a job not worth suspending: %v", d.Want)
	}
}

func TestPackIdlePutsIdleTasksWhereCPUIsBusy(t *testing.T) {
	m := &cluster.Model{Resources: []string{"cpu", "memory"},
		Nodes: []cluster.Node{{Name: "a", Capacity: []int64{2, 4}}, {Name: "b", Capacity: []int64{2, 4}}},
		Tasks: []cluster.Task{
			{Name: "run", State: cluster.Running, Node: 1, Demand: []int64{2, 1}},
			{Name: "idle", Node: -1, Demand: []int64{0, 1}},
		}}
	for _, c := range []struct {
		pack bool
		want int
	}{{false, 0}, {true, 1}} {
		p := NewPacker(&View{Model: m})
		p.SpreadIdle, p.PackIdle = 0, c.pack
		if !p.Keep(0) || !p.Place([]int{1}, false) {
			t.Fatal("does not fit")
		}
		if p.Placement[1] != c.want {
			t.Fatalf("PackIdle=%v: idle task on node %d, want %d", c.pack, p.Placement[1], c.want)
		}
	}
}

func TestKeepOverLetsOnlyTheSoftResourceGoOver(t *testing.T) {
	m := &cluster.Model{Resources: []string{"cpu", "memory"},
		Nodes: []cluster.Node{{Name: "a", Capacity: []int64{1, 2}}},
		Tasks: []cluster.Task{
			{Name: "x", State: cluster.Running, Node: 0, Demand: []int64{1, 1}},
			{Name: "y", State: cluster.Running, Node: 0, Demand: []int64{1, 1}},
			{Name: "z", State: cluster.Running, Node: 0, Demand: []int64{0, 1}},
		}}
	p := NewPacker(&View{Model: m})
	if !p.KeepOver(0, 0) || !p.KeepOver(1, 0) {
		t.Fatal("cpu overload refused")
	}
	if got := p.Free(0); got[0] != -1 || got[1] != 0 {
		t.Fatalf("free %v, want [-1 0]", got)
	}
	if p.KeepOver(2, 0) {
		t.Fatal("memory overbooked")
	}
	if p.Slots([]int64{1, 0}) != 0 {
		t.Fatal("an overloaded node offers slots")
	}
}

func TestFerryShedsTheWidestJob(t *testing.T) {
	// Two nodes of 2 cores: a job computing on 4 VMs and one on 2 VMs with
	// far more work left. Two cores of overload, no free core to move to:
	// suspending the wide job relieves it all (the narrow one would not).
	v := vmView(2, 8,
		vmJob{name: "wide", nodes: []int{0, 0, 1, 1}, cpu: []int64{1, 1, 1, 1}, mem: 1, wall: 600},
		vmJob{name: "narrow", nodes: []int{0, 1}, cpu: []int64{1, 1}, mem: 1, wall: 5000},
	)
	wantFirst(t, decide(t, Ferry(), v), 4, cluster.Sleeping)
	// The former rule (most remaining work first) suspends the narrow one
	// and still leaves a core of overload, within tolerance.
	old := Ferry()
	old.ShedWidest = false
	d := decide(t, old, v)
	if d.Want[0] != cluster.Running || d.Want[4] != cluster.Sleeping {
		t.Fatalf("most-remaining rule: %v", d.Want)
	}
}

func TestFerryAdmitsANeverRunJobByMemoryWhereCPUIsShared(t *testing.T) {
	// One node of 2 cores, both busy; a queued job of 2 VMs (peak 1 CPU
	// each, nothing observed yet) fits by memory.
	v := vmView(1, 8, vmJob{name: "run", nodes: []int{0, 0}, cpu: []int64{1, 1}, mem: 1, wall: 600})
	m := v.Model
	queue(v, "new", 2)
	// Hard CPU: the peak reservation does not fit, the job waits.
	if d := decide(t, Ferry(), v); d.Want[2] != cluster.Ready || d.Want[3] != cluster.Ready {
		t.Fatalf("hard cpu: %v", d.Want)
	}
	v.Soft = map[int]bool{0: true}
	d := decide(t, Ferry(), v)
	if d.Want[2] != cluster.Running || d.Want[3] != cluster.Running {
		t.Fatalf("soft cpu: want the new job started, got %v", d.Want)
	}
	if m.Tasks[2].Demand[0] != 1 {
		t.Fatal("the policy changed the view's model")
	}
	// Once it has run, its observed demand counts like anyone's.
	v.Jobs[1].Done = 10
	if d := decide(t, Ferry(), v); d.Want[2] != cluster.Ready {
		t.Fatalf("a job that ran is placed by its observed demand: %v", d.Want)
	}
}

func TestFerrySpreadsANeverRunJobWhereCPUIsFree(t *testing.T) {
	// Node a's cores are busy; a queued job of 4 VMs (nothing observed
	// yet) goes to b and c, two each, not beside the busy VMs.
	v := vmView(3, 8, vmJob{name: "run", nodes: []int{0, 0}, cpu: []int64{1, 1}, mem: 1, wall: 600})
	v.Soft = map[int]bool{0: true}
	queue(v, "new", 4)
	d := decide(t, Ferry(), v)
	per := map[int]int{}
	for task, n := range fences(t, d) {
		if task < 2 {
			t.Fatalf("running task %d moved to %d", task, n)
		}
		per[n]++
	}
	if per[0] != 0 || per[1] != 2 || per[2] != 2 {
		t.Fatalf("want the new VMs two on b and two on c, got %v", per)
	}
}

// queue adds a job of n VMs that never ran (1 CPU, 1 memory at peak).
func queue(v *View, name string, n int) {
	m := v.Model
	q := Job{Name: name, Submitted: v.Now, Walltime: 600, Total: 600, Preemptible: true, Migratable: true}
	for k := range n {
		q.Tasks = append(q.Tasks, len(m.Tasks))
		m.Tasks = append(m.Tasks, cluster.Task{Name: name + string(rune('0'+k)), Job: name, State: cluster.Ready, Node: cluster.NoNode, Demand: []int64{1, 1}})
	}
	v.Jobs = append(v.Jobs, q)
}

// neverRunJob adds a job submitted now that never ran: n ready VMs of 1
// core (peak) and memory mem each, estimate wall.
func neverRunJob(v *View, name string, n int, mem, wall int64) {
	m := v.Model
	j := Job{Name: name, Submitted: v.Now, Walltime: wall, Total: wall, Preemptible: true, Migratable: true}
	for k := range n {
		j.Tasks = append(j.Tasks, len(m.Tasks))
		m.Tasks = append(m.Tasks, cluster.Task{Name: name + string(rune('0'+k)), Job: name, State: cluster.Ready, Node: cluster.NoNode, Demand: []int64{1, mem}})
	}
	v.Jobs = append(v.Jobs, j)
}

func TestFerryAdmitsTheSmallerFootprintFirstAmongEquals(t *testing.T) {
	// One node of 4 memory, CPU time-shared; two never-run jobs of equal
	// expansion factor: "big" (first in FIFO order, 2 VMs of 2 memory)
	// and "small" (2 VMs of 1). Only one fits; the smaller goes first.
	v := vmView(1, 4)
	v.Soft = map[int]bool{0: true}
	neverRunJob(v, "big", 2, 2, 600)
	neverRunJob(v, "small", 2, 1, 600)
	d := decide(t, Ferry(), v)
	if d.Want[0] != cluster.Ready || d.Want[1] != cluster.Ready || d.Want[2] != cluster.Running || d.Want[3] != cluster.Running {
		t.Fatalf("want small started and big waiting, got %v", d.Want)
	}
}

func TestFerryAdmitsTheShorterEstimateFirstAmongEquals(t *testing.T) {
	// One node of 4 memory; two never-run jobs of equal expansion factor
	// and footprint: "long" (first in FIFO order, estimate 700) and
	// "short" (600), 2 VMs of 2 memory each. Only one fits. Where CPU is
	// time-shared the shorter goes first; where it is not (no footprint
	// order), FIFO order.
	for _, soft := range []bool{true, false} {
		v := vmView(1, 4)
		if soft {
			v.Soft = map[int]bool{0: true}
		}
		neverRunJob(v, "long", 2, 2, 700)
		neverRunJob(v, "short", 2, 2, 600)
		d := decide(t, Ferry(), v)
		long, short := cluster.Ready, cluster.Running
		if !soft {
			long, short = cluster.Running, cluster.Ready
		}
		if d.Want[0] != long || d.Want[1] != long || d.Want[2] != short || d.Want[3] != short {
			t.Fatalf("soft CPU %v: want long %v and short %v, got %v", soft, long, short, d.Want)
		}
	}
}

// sleepingJob adds a suspended job of n VMs (1 core observed each, memory
// mem) whose images are on node.
func sleepingJob(v *View, name string, n, node int, mem int64) {
	m := v.Model
	j := Job{Name: name, Walltime: 400, Done: 100, Total: 500, Preemptible: true, Migratable: true}
	for k := range n {
		j.Tasks = append(j.Tasks, len(m.Tasks))
		m.Tasks = append(m.Tasks, cluster.Task{Name: name + string(rune('0'+k)), Job: name, State: cluster.Sleeping, Node: node, Demand: []int64{1, mem}})
	}
	v.Jobs = append(v.Jobs, j)
}

// stoppedJob adds a job stopped after it ran (Selective.Restart): n ready
// VMs seen using 1 core each, no work kept.
func stoppedJob(v *View, name string, n int, mem int64) {
	m := v.Model
	j := Job{Name: name, Walltime: 500, Total: 500, Preemptible: true, Migratable: true, Ran: true}
	for k := range n {
		j.Tasks = append(j.Tasks, len(m.Tasks))
		m.Tasks = append(m.Tasks, cluster.Task{Name: name + string(rune('0'+k)), Job: name, State: cluster.Ready, Node: cluster.NoNode, Demand: []int64{1, mem}})
	}
	v.Jobs = append(v.Jobs, j)
}

func TestFerryResumesAJobAResumeBeforeTheEndOfTheOneUsingItsCores(t *testing.T) {
	// Node a's two cores are used by job r; job s sleeps (or was stopped,
	// see Selective.Restart) and needs them. Every action takes 10 s
	// (AttrDurations): r ending within 10 s (its estimate) lets s's
	// resume (or boot) start now.
	for _, c := range []struct {
		name    string
		wall    int64
		soft    bool
		stopped bool
		back    bool
		recheck int64
	}{
		{"ends within a resume", 5, true, false, true, 0},
		{"ends later", 100, true, false, false, 1000 + 100 - 10},
		{"cpu not time-shared", 5, false, false, false, 0},
		{"stopped, ends within a boot", 5, true, true, true, 0},
		{"stopped, ends later", 100, true, true, false, 1000 + 100 - 10},
		{"stopped, cpu not time-shared", 5, false, true, false, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			v := vmView(1, 4, vmJob{name: "r", nodes: []int{0, 0}, cpu: []int64{1, 1}, mem: 1, wall: c.wall})
			waiting := cluster.Sleeping
			if c.stopped {
				stoppedJob(v, "s", 2, 1)
				waiting = cluster.Ready
			} else {
				sleepingJob(v, "s", 2, 0, 1)
			}
			want := waiting
			if c.back {
				want = cluster.Running
			}
			if c.soft {
				v.Soft = map[int]bool{0: true}
			}
			d := decide(t, Ferry(), v)
			for _, i := range v.Jobs[0].Tasks {
				if d.Want[i] != cluster.Running {
					t.Fatalf("running task %d wanted %v", i, d.Want[i])
				}
			}
			for _, i := range v.Jobs[1].Tasks {
				if d.Want[i] != want {
					t.Fatalf("waiting task %d wanted %v, want %v", i, d.Want[i], want)
				}
			}
			if d.Recheck != c.recheck {
				t.Fatalf("recheck %d, want %d", d.Recheck, c.recheck)
			}
		})
	}
}

func TestFerryStopsAShedJobWhenARestartCostsLess(t *testing.T) {
	// Two nodes of 2 cores: a job computing on 4 VMs of 512 MiB and one on
	// 2; the wide one is shed (TestFerryShedsTheWidestJob). With the VTDC
	// costs a suspend and a resume take 13 s each, a shutdown 5 s and a
	// boot 15 s: a job with less than 6 s of work done is stopped (its
	// work is lost), one with more is suspended; without Restart, always
	// suspended.
	const mib = int64(1) << 20
	for _, c := range []struct {
		name    string
		done    int64
		restart bool
		want    cluster.TaskState
	}{
		{"no work done", 0, true, cluster.Ready},
		{"5 s done", 5, true, cluster.Ready},
		{"6 s done", 6, true, cluster.Sleeping},
		{"no work done, Restart off", 0, false, cluster.Sleeping},
		{"progress unknown", -1, true, cluster.Sleeping},
	} {
		t.Run(c.name, func(t *testing.T) {
			v := vmView(2, 8192*mib,
				vmJob{name: "wide", nodes: []int{0, 0, 1, 1}, cpu: []int64{1, 1, 1, 1}, mem: 512 * mib, wall: 600},
				vmJob{name: "narrow", nodes: []int{0, 1}, cpu: []int64{1, 1}, mem: 512 * mib, wall: 5000},
			)
			v.Durations = cluster.BandwidthDurations{Memory: "memory", NetBandwidth: 110_000_000, DiskBandwidth: 50_000_000,
				BootTask: 15, ShutdownTask: 5, Latency: 2}
			v.Jobs[0].Done, v.Jobs[0].Total = c.done, c.done+600
			v.ProgressKnown = c.done >= 0
			if c.done < 0 { // a controller's view: no progress measured, even with an estimate
				v.Jobs[0].Done, v.Jobs[0].Total = 0, 600
			}
			f := Ferry()
			f.Restart = c.restart
			wantFirst(t, decide(t, f, v), 4, c.want)
		})
	}
}

func TestFerryStopsOnlyAJobWhoseTasksAllRun(t *testing.T) {
	// A job with no work done, one VM running and one asleep, on a
	// draining node with nowhere to go: stopping the running VM would
	// lose the sleeping one's job too, so it is suspended like the other.
	const mib = int64(1) << 20
	v := vmView(1, 8192*mib, vmJob{name: "j", nodes: []int{0, 0}, cpu: []int64{1, 1}, mem: 512 * mib, wall: 600})
	v.Durations = cluster.BandwidthDurations{Memory: "memory", NetBandwidth: 110_000_000, DiskBandwidth: 50_000_000,
		BootTask: 15, ShutdownTask: 5, Latency: 2}
	v.ProgressKnown, v.Jobs[0].Done, v.Jobs[0].Total = true, 0, 600
	v.Model.Tasks[1].State = cluster.Sleeping
	v.Draining = map[int]bool{0: true}
	if d := decide(t, Ferry(), v); d.Want[0] != cluster.Sleeping || d.Want[1] != cluster.Sleeping {
		t.Fatalf("wanted %v, want both asleep", d.Want)
	}
}

func TestFerryPlacesAStoppedJobByTheDemandItWasSeenUsing(t *testing.T) {
	// One node of 2 cores, both busy, CPU time-shared: a job that never
	// ran is admitted by memory (its use is unknown), one stopped after
	// it ran is not (it was seen using a core per VM).
	for _, ran := range []bool{false, true} {
		v := vmView(1, 8, vmJob{name: "run", nodes: []int{0, 0}, cpu: []int64{1, 1}, mem: 1, wall: 600})
		v.Soft = map[int]bool{0: true}
		queue(v, "new", 2)
		v.Jobs[1].Ran = ran
		want := cluster.Running
		if ran {
			want = cluster.Ready
		}
		if d := decide(t, Ferry(), v); d.Want[2] != want || d.Want[3] != want {
			t.Fatalf("ran %v: %v, want the queued job's tasks %v", ran, d.Want, want)
		}
	}
}

func TestFerryMovesAWaitingJobsVMsWhereACoreIsFree(t *testing.T) {
	// Job c computes on none of its three VMs (between two steps); the
	// one on node a, whose two cores job w uses, moves to node b (beside
	// its job's other two, a core free), so it computes there without a
	// move when it wakes. It stays when a VM of c computes, where CPU is
	// not time-shared, or when c's remaining estimate does not repay the
	// move (every action takes 10 s here, Repay is 4).
	for _, c := range []struct {
		name string
		cpu  []int64
		wall int64
		soft bool
		move bool
	}{
		{"waiting", []int64{0, 0, 0}, 1000, true, true},
		{"computing on one", []int64{0, 1, 0}, 1000, true, false},
		{"cpu not time-shared", []int64{0, 0, 0}, 1000, false, false},
		{"ends before the move repays", []int64{0, 0, 0}, 30, true, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			// Node c is empty: more CPU free than b (job x uses one of
			// its cores), but b holds c's other two VMs.
			v := vmView(3, 8,
				vmJob{name: "w", nodes: []int{0, 0}, cpu: []int64{1, 1}, mem: 1, wall: 1000},
				vmJob{name: "c", nodes: []int{0, 1, 1}, cpu: c.cpu, mem: 1, wall: c.wall},
				vmJob{name: "x", nodes: []int{1}, cpu: []int64{1}, mem: 1, wall: 1000})
			if c.soft {
				v.Soft = map[int]bool{0: true}
			}
			d := decide(t, Ferry(), v)
			for i, s := range d.Want {
				if s != cluster.Running {
					t.Fatalf("task %d wanted %v", i, s)
				}
			}
			f := fences(t, d)
			idle := v.Jobs[1].Tasks[0]
			if !c.move {
				if len(f) != 0 {
					t.Fatalf("moves %v, want none", f)
				}
				return
			}
			if len(f) != 1 || f[idle] != 1 {
				t.Fatalf("moves %v, want task %d to node b", f, idle)
			}
		})
	}
}

func TestFerryMakesRoomForAResumeBeforeItIsDue(t *testing.T) {
	// Nodes of 2 cores and 4 memory. a: job r's two computing VMs (1
	// memory each) and job i's idle VM (2 memory): full. b: job b's two
	// computing VMs (1 each): no core free, 2 memory free. c: job c's two
	// computing VMs (2 each): full; job s sleeps with one VM (1 core, 1
	// memory) imaged on c. Every action takes 10 s, so s's resume is
	// anticipated 10 s before r's end. With r ending within Prepare (40 s)
	// but not within 10 s, i's idle VM moves to b (no core free there) so
	// that s finds a's memory when r's cores free; s stays asleep now.
	for _, c := range []struct {
		name string
		wall int64
		soft bool
		move bool
	}{
		{"ends within the window", 30, true, true},
		{"ends later", 100, true, false},
		{"cpu not time-shared", 30, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			v := vmView(3, 4,
				vmJob{name: "r", nodes: []int{0, 0}, cpu: []int64{1, 1}, mem: 1, wall: c.wall},
				vmJob{name: "i", nodes: []int{0}, cpu: []int64{0}, mem: 2, wall: 500},
				vmJob{name: "b", nodes: []int{1, 1}, cpu: []int64{1, 1}, mem: 1, wall: 500},
				vmJob{name: "c", nodes: []int{2, 2}, cpu: []int64{1, 1}, mem: 2, wall: 500})
			sleepingJob(v, "s", 1, 2, 1)
			if c.soft {
				v.Soft = map[int]bool{0: true}
			}
			d := decide(t, Ferry(), v)
			if s := v.Jobs[4].Tasks[0]; d.Want[s] != cluster.Sleeping {
				t.Fatalf("sleeping task wanted %v", d.Want[s])
			}
			f := fences(t, d)
			idle := v.Jobs[1].Tasks[0]
			if n, ok := f[idle]; c.move && (!ok || n != 1) || !c.move && ok && n != 0 {
				t.Fatalf("idle VM fenced to %d (fenced: %v), want moved to b: %v", n, ok, c.move)
			}
			for tk, n := range f {
				if tk != idle && n != v.Model.Tasks[tk].Node {
					t.Fatalf("task %d moved to %d", tk, n)
				}
			}
		})
	}
}
