package plan_test

import (
	"context"
	"fmt"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/plan"
	"github.com/ferrycluster/ferry/plan/gen"
	"github.com/ferrycluster/ferry/plan/verify"
)

// BenchmarkSolve solves TDSC-like instances (plan/gen) at three sizes, both
// scenarios and four constrained fractions. Besides time it reports the
// plan's MTTR, the lower bound, their ratio, migrations, makespan and memory
// (memory obtained from the OS, and bytes allocated per solve) and the
// process CPU time per solve.
// Plans up to 5,000 nodes are run through the verifier (outside the timer).
//
//	make bench-plan   # or: go test -run '^$' -bench Solve -benchtime 1x ./plan
func BenchmarkSolve(b *testing.B) {
	sizes := []struct{ nodes, vms int }{{500, 3000}, {5000, 30000}, {50000, 300000}}
	for _, sz := range sizes {
		for _, sc := range []gen.Scenario{gen.LoadIncrease, gen.NodeReboot} {
			for _, c := range []int{0, 33, 66, 100} {
				name := fmt.Sprintf("%s/%dx%d/c%d", sc, sz.nodes, sz.vms, c)
				b.Run(name, func(b *testing.B) {
					benchSolve(b, gen.Config{Nodes: sz.nodes, VMs: sz.vms, Constrained: float64(c) / 100, Scenario: sc, Seed: 1})
				})
			}
		}
	}
}

func benchSolve(b *testing.B, cfg gen.Config) {
	p, err := gen.Generate(cfg)
	if err != nil {
		b.Fatal(err)
	}
	runtime.GC()
	cpu0 := cpuTime()
	b.ReportAllocs()
	b.ResetTimer()
	var pl *plan.Plan
	for i := 0; i < b.N; i++ {
		pl, err = plan.Solve(context.Background(), p, plan.Options{Seed: 1})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	cpu := cpuTime() - cpu0
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(pl.MTTR()), "mttr")
	b.ReportMetric(float64(pl.Stats.LowerBound), "lb")
	if pl.Stats.LowerBound > 0 {
		b.ReportMetric(float64(pl.MTTR())/float64(pl.Stats.LowerBound), "mttr/lb")
	}
	b.ReportMetric(float64(pl.Migrations()), "migrations")
	b.ReportMetric(float64(len(pl.Actions)), "actions")
	b.ReportMetric(float64(pl.Makespan()), "makespan")
	b.ReportMetric(float64(after.Sys)/(1<<20), "sysMiB")
	// CPU time of the process per solve (all threads, GC included): on a
	// shared machine wall time also counts waiting for a core.
	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
	if cfg.Nodes <= 5000 {
		if err := verify.Check(p, pl); err != nil {
			b.Fatalf("plan fails verification: %v", err)
		}
	}
}

// cpuTime is the user+system CPU time the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
