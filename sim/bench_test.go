package sim_test

import (
	"context"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/policy"
	"github.com/ferrycluster/ferry/sim"
	"github.com/ferrycluster/ferry/sim/check"
	"github.com/ferrycluster/ferry/sim/swf"
	"github.com/ferrycluster/ferry/sim/workload"
)

const traces = "../../shared/traces/"

func loadTrace(b *testing.B, name string, maxJobs int) *workload.Workload {
	f, err := os.Open(traces + name)
	if err != nil {
		b.Skipf("trace %s not present: %v", name, err)
	}
	defer f.Close()
	tr, err := swf.Read(f, swf.Options{})
	if err != nil {
		b.Fatal(err)
	}
	w, _, err := workload.FromSWF(tr, name, workload.SWFOptions{MaxJobs: maxJobs})
	if err != nil {
		b.Fatal(err)
	}
	return w
}

func benchTrace(b *testing.B, name string, maxJobs int) {
	w := loadTrace(b, name, maxJobs)
	for _, pn := range []string{"fcfs", "easy", "ss", "ferry"} {
		p, _ := policy.ByName(pn)
		b.Run(pn, func(b *testing.B) {
			for range b.N {
				cpu0 := cpuTime(b)
				r, err := sim.Run(context.Background(), sim.Config{Workload: w, Policy: p, Seed: 1})
				if err != nil {
					b.Fatal(err)
				}
				if err := check.Run(w, r); err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(r.Summary.MeanBSD, "bsd")
				b.ReportMetric(100*r.Summary.Utilization, "util%")
				b.ReportMetric(float64(r.PlannerCalls), "plans")
				// CPU seconds of the process (simulation and checker, all
				// threads): on a shared machine the wall time is mostly
				// other people's load, this is not.
				b.ReportMetric((cpuTime(b) - cpu0).Seconds(), "cpu-s")
			}
		})
	}
}

// cpuTime is the process's user + system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func BenchmarkKTH(b *testing.B)     { benchTrace(b, "KTH-SP2-1996-2.1-cln.swf.gz", 0) }
func BenchmarkCTC(b *testing.B)     { benchTrace(b, "CTC-SP2-1996-3.1-cln.swf.gz", 0) }
func BenchmarkLublin(b *testing.B)  { benchTrace(b, "lublin_256.swf.gz", 0) }
func BenchmarkKTH5000(b *testing.B) { benchTrace(b, "KTH-SP2-1996-2.1-cln.swf.gz", 5000) }

func BenchmarkLublin2000(b *testing.B) { benchTrace(b, "lublin_256.swf.gz", 2000) }
