package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ferrycluster/ferry/policy"
	"github.com/ferrycluster/ferry/sim"
	"github.com/ferrycluster/ferry/sim/check"
	"github.com/ferrycluster/ferry/sim/swf"
	"github.com/ferrycluster/ferry/sim/workload"
	"github.com/spf13/cobra"
)

func init() {
	var (
		trace, scenario, policies, out string
		vtdc, skipBad, full, noCheck   bool
		seed                           int64
		nodes, maxJobs                 int
		period                         int64
	)
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "simulate policies on a workload (SWF trace, the VTDC'10 experiment or a scenario file)",
		Long: `ferry sim runs the real policies and the real planner against a virtual clock.
Exactly one workload: --trace FILE.swf[.gz], --vtdc, or --scenario FILE (YAML/JSON).
It prints a table and, with --out DIR, writes summary.csv, summary.json, and per
policy jobs-POLICY.csv, events-POLICY.log, util-POLICY.svg and gantt-POLICY.svg.
Exit code 2: bad input (flags, trace, scenario).`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			n := 0
			for _, b := range []bool{trace != "", scenario != "", vtdc} {
				if b {
					n++
				}
			}
			if n != 1 {
				return withCode(2, fmt.Errorf("give exactly one of --trace, --scenario, --vtdc"))
			}
			var w *workload.Workload
			switch {
			case vtdc:
				w = workload.VTDC(uint64(seed))
			case scenario != "":
				f, err := os.Open(scenario)
				if err != nil {
					return withCode(2, err)
				}
				w, err = workload.ParseScenario(f)
				f.Close()
				if err != nil {
					return withCode(2, fmt.Errorf("%s: %w", scenario, err))
				}
			default:
				f, err := os.Open(trace)
				if err != nil {
					return withCode(2, err)
				}
				tr, err := swf.Read(f, swf.Options{Skip: skipBad, OnSkip: func(e *swf.LineError) {
					fmt.Fprintf(os.Stderr, "ferry sim: skipping %v\n", e)
				}})
				f.Close()
				if err != nil {
					return withCode(2, fmt.Errorf("%s: %w (use --skip-bad to skip malformed lines)", trace, err))
				}
				var dropped int
				w, dropped, err = workload.FromSWF(tr, filepath.Base(trace), workload.SWFOptions{Nodes: nodes, MaxJobs: maxJobs})
				if err != nil {
					return withCode(2, err)
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "%s: %d jobs on %d nodes (%d dropped: no run time, no processors or wider than the cluster)\n", w.Name, len(w.Jobs), len(w.Nodes), dropped)
			}
			var rs []*sim.Result
			for _, name := range strings.Split(policies, ",") {
				p, err := policy.ByName(strings.TrimSpace(name))
				if err != nil {
					return withCode(2, err)
				}
				r, err := sim.Run(context.Background(), sim.Config{Workload: w, Policy: p, Seed: seed, Full: full, Period: period})
				if err != nil {
					return fmt.Errorf("policy %s: %w", p.Name(), err)
				}
				if !noCheck {
					if err := check.Run(w, r); err != nil {
						return fmt.Errorf("policy %s: invariant broken: %w", p.Name(), err)
					}
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "%s: %d planner calls, %.1fs wall\n", p.Name(), r.PlannerCalls, r.Wall.Seconds())
				rs = append(rs, r)
			}
			if err := sim.Table(cmd.OutOrStdout(), rs); err != nil {
				return err
			}
			if out != "" {
				return sim.WriteDir(out, rs)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&trace, "trace", "", "SWF trace (.swf or .swf.gz)")
	f.BoolVar(&vtdc, "vtdc", false, "the VTDC'10 experiment: 11 nodes, 8 NGB vjobs of 9 VMs")
	f.StringVar(&scenario, "scenario", "", "scenario file (YAML or JSON)")
	f.StringVar(&policies, "policy", "fcfs,easy,ferry", "policies, comma separated: "+strings.Join(policy.Names(), ", "))
	f.Int64Var(&seed, "seed", 1, "seed (workload jitter, planner)")
	f.StringVar(&out, "out", "", "directory for CSV, JSON, logs and SVG plots")
	f.BoolVar(&skipBad, "skip-bad", false, "skip malformed trace lines instead of stopping")
	f.IntVar(&nodes, "nodes", 0, "nodes for an SWF trace (default: its MaxProcs)")
	f.IntVar(&maxJobs, "max-jobs", 0, "only the first N jobs of a trace")
	f.BoolVar(&full, "full", false, "give the planner the whole configuration at every decision")
	f.BoolVar(&noCheck, "no-check", false, "skip the invariant checker")
	f.Int64Var(&period, "period", 0, "seconds between decisions while jobs wait (default 300)")
	root.AddCommand(cmd)
}
