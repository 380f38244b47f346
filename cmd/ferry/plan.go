package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/plan"
	"github.com/ferrycluster/ferry/plan/btrplace"
	"github.com/ferrycluster/ferry/plan/verify"
	"github.com/spf13/cobra"
)

// Exit codes of `ferry plan`.
const (
	exitMalformed = 2 // the instance is malformed
	exitNoPlan    = 3 // no viable plan exists
	exitViolation = 4 // --check: the given plan breaks a rule
)

// planFlags are the options of `ferry plan`.
type planFlags struct {
	timeout   time.Duration
	objective string
	seed      int64
	output    string
	explain   bool
	liveOnly  bool
	check     string
}

func init() {
	var f planFlags
	cmd := &cobra.Command{
		Use:   "plan [--timeout 30s] [--objective mttr|migrations] [--seed N] [-o PLAN.json] [--explain] [--live-only=false] INSTANCE|-",
		Short: "Compute a reconfiguration plan for a BtrPlace instance",
		Long: `Read a BtrPlace instance (JSON or .json.gz; - for stdin), compute a target
placement and a viable plan, and write it as a BtrPlace ReconfigurationPlan
({"origin", "actions"}) to -o or stdout. With --explain, print a readable
summary instead (and the JSON only to -o).

With --check PLAN.json, solve nothing: verify that plan (a BtrPlace
ReconfigurationPlan, e.g. one BtrPlace computed) against the instance.

Exit codes: 0 a plan was written (or --check: the plan is valid); 2 the
instance (or the checked plan) is malformed; 3 no viable plan exists (the
message names the constraint, node or resource at fault); 4 --check: the
plan breaks a rule (each violation is printed).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPlan(cmd.Context(), f, args[0], cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().DurationVar(&f.timeout, "timeout", 30*time.Second, "bound on the search; the best plan found by then is returned")
	cmd.Flags().StringVar(&f.objective, "objective", "", "mttr or migrations (default: the instance's objective, else mttr)")
	cmd.Flags().Int64Var(&f.seed, "seed", 0, "reserved: the planner makes no randomised choice today, so the seed has no effect")
	cmd.Flags().StringVarP(&f.output, "output", "o", "", "write the plan to this file (atomically) instead of stdout")
	cmd.Flags().BoolVar(&f.explain, "explain", false, "print a readable summary of the plan")
	cmd.Flags().StringVar(&f.check, "check", "", "verify this ReconfigurationPlan against the instance instead of solving")
	// Live-only is the default: a BtrPlace user expects a running VM that
	// stays running to move live. BtrPlace instances usually set only the
	// migrate duration, so suspend and resume default to 1 and would look
	// cheaper than a live migration although they stop the guest.
	cmd.Flags().BoolVar(&f.liveOnly, "live-only", true, "relocate running VMs by live migration only, as BtrPlace does (suspend and resume only as a pivot when no third node has room); --live-only=false lets the planner relocate by suspend and resume when the durations make that cheaper")
	root.AddCommand(cmd)
}

// runPlan is `ferry plan`; errors carry their exit code (withCode).
func runPlan(ctx context.Context, f planFlags, path string, stdout, stderr io.Writer) error {
	if ctx == nil {
		ctx = context.Background()
	}
	in, err := btrplace.ReadInstanceFile(path)
	if err != nil {
		return withCode(exitMalformed, fmt.Errorf("%s: %w", path, err))
	}
	for _, w := range in.Warnings {
		fmt.Fprintf(stderr, "ferry: warning: %s: %s\n", path, w)
	}
	if f.check != "" {
		return checkPlan(in, path, f.check, stdout)
	}
	switch f.objective {
	case "":
	case "mttr":
		in.Problem.Objective = plan.MinMTTR
	case "migrations":
		in.Problem.Objective = plan.MinMigrations
	default:
		return withCode(exitMalformed, fmt.Errorf("--objective %q: want mttr or migrations", f.objective))
	}
	start := time.Now()
	pl, err := plan.Solve(ctx, in.Problem, plan.Options{Timeout: f.timeout, Seed: f.seed, LiveOnly: f.liveOnly})
	spent := time.Since(start)
	switch {
	case errors.Is(err, plan.ErrNoSolution):
		return withCode(exitNoPlan, fmt.Errorf("%s: %w", path, err))
	case errors.Is(err, cluster.ErrInvalid):
		return withCode(exitMalformed, fmt.Errorf("%s: %w", path, err))
	case err != nil:
		return err
	}
	if err := verify.Check(in.Problem, pl); err != nil {
		return fmt.Errorf("internal error: the planner's plan fails the verifier: %w", err)
	}
	data, err := in.EncodePlan(pl)
	if err != nil {
		return err
	}
	data = append(data, '\n')
	if f.output != "" {
		if err := writeAtomic(f.output, data); err != nil {
			return err
		}
	} else if !f.explain {
		if _, err := stdout.Write(data); err != nil {
			return err
		}
	}
	if f.explain {
		explainPlan(stdout, path, in, pl, spent)
	}
	return nil
}

// checkPlan verifies the ReconfigurationPlan in planPath against the
// instance read from path.
func checkPlan(in *btrplace.Instance, path, planPath string, stdout io.Writer) error {
	fh, err := os.Open(planPath)
	if err != nil {
		return withCode(exitMalformed, err)
	}
	defer fh.Close()
	origin, pl, err := btrplace.ReadPlan(fh)
	if err != nil {
		return withCode(exitMalformed, fmt.Errorf("%s: %w", planPath, err))
	}
	if !slices.Equal(origin.NodeIDs, in.NodeIDs) || !slices.Equal(origin.VMIDs, in.VMIDs) {
		return withCode(exitMalformed, fmt.Errorf("%s: %w: the plan's origin has other nodes or VMs than %s", planPath, cluster.ErrInvalid, path))
	}
	vs, err := verify.Violations(in.Problem, pl)
	if err != nil {
		return withCode(exitMalformed, fmt.Errorf("%s: %w", path, err))
	}
	if len(vs) > 0 {
		for _, v := range vs {
			fmt.Fprintln(stdout, v)
		}
		return withCode(exitViolation, fmt.Errorf("%s: %d violations (the first: %v)", planPath, len(vs), vs[0]))
	}
	fmt.Fprintf(stdout, "%s: valid plan for %s: %d actions, %d migrations, MTTR %d, makespan %d\n",
		planPath, path, len(pl.Actions), pl.Migrations(), pl.MTTR(), pl.Makespan())
	return nil
}

// writeAtomic writes data to a temporary file next to path and renames it,
// so a reader never sees a partial plan.
func writeAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	name := tmp.Name()
	_, werr := tmp.Write(data)
	if werr == nil {
		werr = tmp.Sync()
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(name, path)
	}
	if werr != nil {
		os.Remove(name)
		return werr
	}
	return nil
}

// Bounds on what --explain lists, so that a 30,000-VM plan stays readable.
const (
	maxExplainActions = 200
	maxExplainNodes   = 100
)

// explainPlan prints the plan step by step, the load per node before and
// after, the migrations and the figures of merit.
func explainPlan(w io.Writer, path string, in *btrplace.Instance, pl *plan.Plan, spent time.Duration) {
	m := in.Problem.Model
	vm := func(t int) string { return "vm " + m.Tasks[t].Name }
	nd := func(n int) string { return "node " + m.Nodes[n].Name }
	fmt.Fprintf(w, "instance %s: %d nodes, %d VMs, resources %s, %d constraints, objective %s\n",
		path, len(m.Nodes), len(m.Tasks), strings.Join(m.Resources, ", "), len(in.Problem.Constraints), in.Problem.Objective)
	opt := ""
	if pl.Stats.Optimal {
		opt = ", proved optimal"
	}
	if pl.Stats.TimedOut {
		opt += ", cut short by the timeout"
	}
	fmt.Fprintf(w, "plan: %d actions, %d migrations, MTTR %d (lower bound %d), makespan %d; solved in %v%s\n",
		len(pl.Actions), pl.Migrations(), pl.MTTR(), pl.Stats.LowerBound, pl.Makespan(), spent.Round(time.Microsecond), opt)

	acts := append([]plan.Action(nil), pl.Actions...)
	sort.SliceStable(acts, func(i, j int) bool {
		if acts[i].Start != acts[j].Start {
			return acts[i].Start < acts[j].Start
		}
		return acts[i].End < acts[j].End
	})
	if len(acts) > 0 {
		fmt.Fprintln(w, "\nsteps (the actions of a step start together and run in parallel):")
	}
	for i := 0; i < len(acts); {
		if i >= maxExplainActions {
			fmt.Fprintf(w, "  ... and %d more actions (the JSON plan has them all)\n", len(acts)-i)
			break
		}
		t := acts[i].Start
		fmt.Fprintf(w, "  t=%d\n", t)
		for ; i < len(acts) && acts[i].Start == t; i++ {
			if i >= maxExplainActions {
				break
			}
			a := acts[i]
			var what string
			switch a.Kind {
			case cluster.Migrate:
				what = fmt.Sprintf("migrate %s: %s -> %s", vm(a.Task), nd(a.From), nd(a.To))
			case cluster.Boot:
				what = fmt.Sprintf("boot %s on %s", vm(a.Task), nd(a.To))
			case cluster.Shutdown:
				what = fmt.Sprintf("shut down %s on %s", vm(a.Task), nd(a.From))
			case cluster.Suspend:
				what = fmt.Sprintf("suspend %s on %s", vm(a.Task), nd(a.From))
			case cluster.Resume:
				what = fmt.Sprintf("resume %s: %s -> %s", vm(a.Task), nd(a.From), nd(a.To))
			case cluster.Kill:
				what = "kill " + vm(a.Task)
				if a.From >= 0 {
					what += " on " + nd(a.From)
				}
			case cluster.BootNode:
				what = "boot " + nd(a.Node)
			case cluster.ShutdownNode:
				what = "shut down " + nd(a.Node)
			}
			fmt.Fprintf(w, "    [%d, %d)  %s\n", a.Start, a.End, what)
		}
	}

	// Tasks that act more than once: pivots breaking a cycle.
	byTask := map[int][]plan.Action{}
	for _, a := range acts {
		if !a.Kind.IsNodeAction() {
			byTask[a.Task] = append(byTask[a.Task], a)
		}
	}
	var pivots []int
	for t, as := range byTask {
		if len(as) > 1 {
			pivots = append(pivots, t)
		}
	}
	sort.Ints(pivots)
	if len(pivots) > 0 {
		fmt.Fprintln(w, "\npivots (a temporary move that breaks a cycle):")
		for _, t := range pivots {
			hops := []string{}
			for _, a := range byTask[t] {
				hops = append(hops, fmt.Sprintf("%s %s -> %s", a.Kind, nodeOrNone(m, a.From), nodeOrNone(m, a.To)))
			}
			fmt.Fprintf(w, "  %s: %s\n", vm(t), strings.Join(hops, ", then "))
		}
	}

	after := pl.Result
	if after == nil {
		after = replay(m, acts)
	}
	before, end := usage(in.Problem, m), usage(in.Problem, after)
	fmt.Fprintln(w, "\nload per node, before -> after (used/capacity; demand raised to preserve amounts):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "  node\tstate")
	for _, r := range m.Resources {
		fmt.Fprintf(tw, "\t%s", r)
	}
	fmt.Fprintln(tw)
	for n := range m.Nodes {
		if n >= maxExplainNodes {
			fmt.Fprintf(tw, "  ... and %d more nodes\n", len(m.Nodes)-n)
			break
		}
		st := m.Nodes[n].State.String()
		if after.Nodes[n].State != m.Nodes[n].State {
			st += " -> " + after.Nodes[n].State.String()
		}
		fmt.Fprintf(tw, "  %s\t%s", m.Nodes[n].Name, st)
		for r := range m.Resources {
			c := m.Nodes[n].Capacity[r]
			fmt.Fprintf(tw, "\t%d/%d -> %d/%d", before[n][r], c, end[n][r], c)
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
}

// usage sums, per node and resource, the demand of the tasks running in c,
// each demand raised to the problem's preserve amounts.
func usage(p *plan.Problem, c *cluster.Model) [][]int64 {
	m := p.Model
	demand := make([][]int64, len(m.Tasks))
	for t := range m.Tasks {
		demand[t] = append([]int64(nil), m.Tasks[t].Demand...)
	}
	for _, k := range p.Constraints {
		if pr, ok := k.(cluster.Preserve); ok {
			if r := m.Resource(pr.Resource); r >= 0 {
				for _, t := range pr.Tasks {
					demand[t][r] = max(demand[t][r], pr.Amount)
				}
			}
		}
	}
	u := make([][]int64, len(c.Nodes))
	for n := range u {
		u[n] = make([]int64, len(m.Resources))
	}
	for t, tk := range c.Tasks {
		if tk.State == cluster.Running && tk.Node >= 0 && tk.Node < len(u) {
			for r := range u[tk.Node] {
				u[tk.Node][r] += demand[t][r]
			}
		}
	}
	return u
}

func nodeOrNone(m *cluster.Model, n int) string {
	if n < 0 || n >= len(m.Nodes) {
		return "-"
	}
	return m.Nodes[n].Name
}

// replay applies the actions (sorted by start) to a copy of m.
func replay(m *cluster.Model, acts []plan.Action) *cluster.Model {
	r := m.Clone()
	for _, a := range acts {
		switch a.Kind {
		case cluster.Migrate, cluster.Boot, cluster.Resume:
			r.Tasks[a.Task].State, r.Tasks[a.Task].Node = cluster.Running, a.To
		case cluster.Suspend:
			r.Tasks[a.Task].State, r.Tasks[a.Task].Node = cluster.Sleeping, a.To
		case cluster.Shutdown:
			r.Tasks[a.Task].State, r.Tasks[a.Task].Node = cluster.Ready, cluster.NoNode
		case cluster.Kill:
			r.Tasks[a.Task].State, r.Tasks[a.Task].Node = cluster.Killed, cluster.NoNode
		case cluster.BootNode:
			r.Nodes[a.Node].State = cluster.NodeOnline
		case cluster.ShutdownNode:
			r.Nodes[a.Node].State = cluster.NodeOffline
		}
	}
	return r
}
