package sim_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/ferrycluster/ferry/policy"
	"github.com/ferrycluster/ferry/sim"
	"github.com/ferrycluster/ferry/sim/check"
	"github.com/ferrycluster/ferry/sim/workload"
	"pgregory.net/rapid"
)

// Random small scenarios under every policy: the run ends, every job
// completes once, the independent checker finds no broken invariant, and
// a second run is byte-identical.
func TestPropertyRandomScenarios(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		nodes := rapid.IntRange(1, 4).Draw(rt, "nodes")
		cpu := rapid.Int64Range(1, 2).Draw(rt, "cpu")
		s := &workload.Scenario{}
		s.Nodes.Count, s.Nodes.CPU, s.Nodes.MemoryMiB = nodes, cpu, 2048
		if rapid.Bool().Draw(rt, "soft") {
			s.Soft = []string{"cpu"}
		}
		nj := rapid.IntRange(1, 6).Draw(rt, "jobs")
		var at int64
		for i := range nj {
			at += rapid.Int64Range(0, 60).Draw(rt, "gap")
			j := workload.ScenarioJob{Name: fmt.Sprintf("j%d", i), Submit: at}
			if rapid.IntRange(0, 4).Draw(rt, "ngb?") == 0 && int64(nodes)*cpu >= 1 {
				j.NGB = rapid.SampledFrom(workload.NGBKinds()).Draw(rt, "ngb")
			} else {
				j.Tasks = rapid.IntRange(1, nodes).Draw(rt, "tasks")
				j.CPU = rapid.Int64Range(1, cpu).Draw(rt, "taskcpu")
				j.MemoryMiB = rapid.Int64Range(256, 1024).Draw(rt, "mem")
				j.Work = rapid.Int64Range(1, 300).Draw(rt, "work")
				j.Walltime = j.Work + rapid.Int64Range(0, 100).Draw(rt, "slack")
			}
			s.Jobs = append(s.Jobs, j)
		}
		w, err := s.Workload()
		if err != nil {
			rt.Skip(err) // e.g. an NGB VM larger than the drawn nodes
		}
		name := rapid.SampledFrom(policy.Names()).Draw(rt, "policy")
		p, _ := policy.ByName(name)
		var logs [2]bytes.Buffer
		for i := range logs {
			r, err := sim.Run(context.Background(), sim.Config{Workload: w, Policy: p, Seed: 3, MaxTime: 1e7})
			if err != nil {
				rt.Fatalf("%s: %v", name, err)
			}
			if err := check.Run(w, r); err != nil {
				rt.Fatalf("%s: %v", name, err)
			}
			if r.Summary.Completed != len(w.Jobs) {
				rt.Fatalf("%s: %d of %d jobs completed", name, r.Summary.Completed, len(w.Jobs))
			}
			r.WriteLog(&logs[i])
		}
		if !bytes.Equal(logs[0].Bytes(), logs[1].Bytes()) {
			rt.Fatalf("%s: same seed, different logs", name)
		}
	})
}
