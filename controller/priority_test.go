package controller

import (
	"testing"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/policy"
)

func TestPriorityPreemptsAndKeepsPlaces(t *testing.T) {
	m := &cluster.Model{Resources: []string{"cpu", "memory"},
		Nodes: []cluster.Node{{Name: "a", Capacity: []int64{2, 10}}, {Name: "b", Capacity: []int64{2, 10}}},
		Tasks: []cluster.Task{
			{Name: "low0", State: cluster.Running, Node: 1, Demand: []int64{1, 1}},
			{Name: "low1", State: cluster.Running, Node: 1, Demand: []int64{1, 1}},
			{Name: "mid0", State: cluster.Running, Node: 0, Demand: []int64{2, 1}},
			{Name: "high0", State: cluster.Ready, Node: cluster.NoNode, Demand: []int64{1, 1}},
			{Name: "wait0", State: cluster.Ready, Node: cluster.NoNode, Demand: []int64{4, 1}},
		}}
	v := &policy.View{Model: m, Jobs: []policy.Job{
		{Name: "low", Priority: 1, Tasks: []int{0, 1}, Submitted: 1},
		{Name: "mid", Priority: 5, Tasks: []int{2}, Submitted: 2},
		{Name: "high", Priority: 9, Tasks: []int{3}, Submitted: 3},
		{Name: "wait", Priority: 1, Tasks: []int{4}, Submitted: 0},
	}}
	d, err := Priority{}.Decide(v)
	if err != nil {
		t.Fatal(err)
	}
	want := []cluster.TaskState{cluster.Sleeping, cluster.Sleeping, cluster.Running, cluster.Running, cluster.Ready}
	for i, w := range want {
		if d.Want[i] != w {
			t.Fatalf("task %s: %s, want %s (all %v)", m.Tasks[i].Name, d.Want[i], w, d.Want)
		}
	}
	// Draining node a: mid cannot stay and does not fit on b beside high.
	v.Draining = map[int]bool{0: true}
	d, _ = Priority{}.Decide(v)
	if d.Want[2] != cluster.Sleeping || d.Want[3] != cluster.Running {
		t.Fatalf("draining: %v", d.Want)
	}
}
