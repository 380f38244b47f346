package verify

import (
	"fmt"
	"testing"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/plan"
)

// bigCase builds nodes × tasks (6 per node), a plan that migrates every
// tenth task to the next node (all at t=0, in parallel), suspends every
// hundredth task and resumes it there, with continuous spreads over pairs and fences over a third
// of the tasks.
func bigCase(nodes int) (*plan.Problem, *plan.Plan) {
	m := &cluster.Model{Resources: []string{"cpu", "memory"}}
	for n := 0; n < nodes; n++ {
		m.Nodes = append(m.Nodes, cluster.Node{Name: fmt.Sprintf("n%d", n), Capacity: []int64{32, 128}})
	}
	var acts []plan.Action
	var cons []cluster.Constraint
	for t := 0; t < nodes*6; t++ {
		n := t % nodes
		m.Tasks = append(m.Tasks, cluster.Task{Name: fmt.Sprintf("t%d", t), State: cluster.Running, Node: n, Demand: []int64{2, 8},
			Durations: map[cluster.ActionKind]int64{cluster.Migrate: 5}})
		switch {
		case t%10 == 0:
			acts = append(acts, plan.Action{Kind: cluster.Migrate, Task: t, Node: -1, From: n, To: (n + 1) % nodes, Start: 0, End: 5})
		case t%100 == 1:
			acts = append(acts,
				plan.Action{Kind: cluster.Suspend, Task: t, Node: -1, From: n, To: n, Start: 0, End: 1},
				plan.Action{Kind: cluster.Resume, Task: t, Node: -1, From: n, To: (n + 1) % nodes, Start: 1, End: 2})
		}
		if t%3 == 0 {
			cons = append(cons, cluster.Fence{Tasks: []int{t}, Nodes: []int{n, (n + 1) % nodes}, Continuous: true})
		}
		if t%6 == 0 && t+3 < nodes*6 {
			cons = append(cons, cluster.Spread{Tasks: []int{t, t + 3}, Continuous: true})
		}
	}
	return &plan.Problem{Model: m, Constraints: cons}, &plan.Plan{Origin: m, Actions: acts}
}

func BenchmarkCheck(b *testing.B) {
	for _, nodes := range []int{500, 5000, 50000} {
		p, pl := bigCase(nodes)
		if err := Check(p, pl); err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("nodes=%d/tasks=%d/actions=%d", nodes, len(p.Model.Tasks), len(pl.Actions)), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if err := Check(p, pl); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
