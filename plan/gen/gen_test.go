package gen_test

import (
	"errors"
	"reflect"
	"testing"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/plan/gen"
)

// Instances are valid models, deterministic by seed, and carry the asked
// share of constraints and the scenario's event.
func TestGenerate(t *testing.T) {
	for _, sc := range []gen.Scenario{gen.LoadIncrease, gen.NodeReboot} {
		for _, c := range []float64{0, 0.33, 1} {
			cfg := gen.Config{Nodes: 120, VMs: 720, Constrained: c, Scenario: sc, Seed: 9}
			p, err := gen.Generate(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Model.Validate(); err != nil {
				t.Fatalf("%s c=%v: %v", sc, c, err)
			}
			if len(p.Model.Nodes) != 120 || len(p.Model.Tasks) != 720 {
				t.Fatalf("%s c=%v: %d nodes, %d tasks", sc, c, len(p.Model.Nodes), len(p.Model.Tasks))
			}
			q, _ := gen.Generate(cfg)
			if !reflect.DeepEqual(p, q) {
				t.Fatalf("%s c=%v: two generations with one seed differ", sc, c)
			}
			constrained := map[int]bool{}
			kinds := map[string]int{}
			for _, k := range p.Constraints {
				kinds[k.Kind()]++
				if s, ok := k.(cluster.Spread); ok {
					for _, t := range s.Tasks {
						constrained[t] = true
					}
				}
			}
			share := float64(len(constrained)) / 720
			if share < c-0.2 || share > c+0.2 {
				t.Errorf("%s c=%v: %.2f of the VMs constrained", sc, c, share)
			}
			if sc == gen.NodeReboot && (kinds["offline"] == 0 || kinds["running"] == 0) {
				t.Errorf("nr without node or VM state changes: %v", kinds)
			}
			if sc == gen.LoadIncrease {
				over := 0
				for n, u := range p.Model.Usage() {
					if u[0] > p.Model.Nodes[n].Capacity[0] {
						over++
					}
				}
				if over == 0 {
					t.Errorf("li c=%v: no node overloaded", c)
				}
			}
		}
	}
	if _, err := gen.Generate(gen.Config{Nodes: 0}); !errors.Is(err, cluster.ErrInvalid) {
		t.Fatalf("bad config: %v", err)
	}
}
