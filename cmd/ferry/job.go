package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/ferrycluster/ferry/controller"
	"github.com/ferrycluster/ferry/pki"
	"github.com/ferrycluster/ferry/store"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// apiFlags say how the CLI reaches the controller.
type apiFlags struct {
	addr, tokenFile, tlsDir, cert string
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func (o *apiFlags) add(f *pflag.FlagSet) {
	f.StringVar(&o.addr, "addr", envOr("FERRY_ADDR", "127.0.0.1:7700"), "controller API address ($FERRY_ADDR)")
	f.StringVar(&o.tokenFile, "token-file", os.Getenv("FERRY_TOKEN_FILE"), "file holding the API token ($FERRY_TOKEN_FILE; $FERRY_TOKEN holds the token itself)")
	f.StringVar(&o.tlsDir, "tls-dir", os.Getenv("FERRY_TLS_DIR"), "directory with ca.crt and the client identity ($FERRY_TLS_DIR)")
	f.StringVar(&o.cert, "cert", envOr("FERRY_CERT", "cli"), "client identity name in --tls-dir ($FERRY_CERT)")
}

func (o *apiFlags) client() (*controller.Client, error) {
	if o.tlsDir == "" {
		return nil, withCode(2, errors.New("no TLS directory: pass --tls-dir or set FERRY_TLS_DIR (ferry dev prints it)"))
	}
	id, err := pki.Load(o.tlsDir, o.cert)
	if err != nil {
		return nil, withCode(2, err)
	}
	tok := os.Getenv("FERRY_TOKEN")
	if o.tokenFile != "" {
		b, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return nil, withCode(2, err)
		}
		tok = strings.TrimSpace(string(b))
	}
	if tok == "" {
		return nil, withCode(2, errors.New("no API token: set FERRY_TOKEN or FERRY_TOKEN_FILE (or --token-file)"))
	}
	return controller.NewClient(o.addr, id.ClientConfig(), tok), nil
}

// apiCommand builds a command that talks to the controller.
func apiCommand(use, short string, args cobra.PositionalArgs, run func(ctx context.Context, c *controller.Client, cmd *cobra.Command, args []string) error) *cobra.Command {
	var o apiFlags
	cmd := &cobra.Command{Use: use, Short: short, Args: args}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, err := o.client()
		if err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return apiErr(run(ctx, c, cmd, args))
	}
	o.add(cmd.Flags())
	return cmd
}

// apiErr gives API errors their exit codes: 2 for bad input, 3 not found,
// 4 conflict.
func apiErr(err error) error {
	var ae *controller.APIError
	if !errors.As(err, &ae) {
		return err
	}
	switch {
	case errors.Is(err, store.ErrInvalid):
		return withCode(2, err)
	case errors.Is(err, store.ErrNotFound):
		return withCode(3, err)
	case errors.Is(err, store.ErrConflict):
		return withCode(4, err)
	}
	return err
}

func gib(b int64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1fGiB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%dMiB", b>>20)
	}
	return fmt.Sprintf("%dB", b)
}

func cpus(m int64) string {
	return strings.TrimSuffix(strings.TrimSuffix(fmt.Sprintf("%.2f", float64(m)/1000), "0"), ".0")
}

func printTasks(w io.Writer, tasks []store.Task) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TASK\tJOB\tPHASE\tNODE\tEPOCH\tCPUS\tMEMORY\tRESTARTS\tNOTE")
	for _, t := range tasks {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%d\t%s\n", t.Name, t.Job, t.Phase, dash(t.Node), t.Epoch, cpus(t.Demand.CPUMilli), gib(t.Demand.MemoryBytes), t.Restarts, t.Message)
	}
	tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func readSpec(path string) ([]byte, error) {
	if path == "-" {
		return io.ReadAll(io.LimitReader(os.Stdin, 1<<20+1))
	}
	return os.ReadFile(path)
}

func init() {
	jobCmd := &cobra.Command{Use: "job", Short: "submit, inspect and stop jobs"}

	run := apiCommand("run SPEC", "submit a job spec (YAML or JSON; - reads stdin)", cobra.ExactArgs(1), func(ctx context.Context, c *controller.Client, cmd *cobra.Command, args []string) error {
		data, err := readSpec(args[0])
		if err != nil {
			return withCode(2, err)
		}
		if _, err := controller.ParseSpec(data); err != nil {
			var se *controller.SpecError
			if errors.As(err, &se) {
				return withCode(2, fmt.Errorf("%s:%d: %s", args[0], se.Line, strings.TrimPrefix(se.Error(), fmt.Sprintf("line %d: ", se.Line))))
			}
			return withCode(2, err)
		}
		jv, err := c.Submit(ctx, data)
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "job %s submitted: %d tasks, priority %d, %s\n", jv.Name, len(jv.Tasks), jv.Priority, jv.Status)
		return nil
	})
	status := apiCommand("status JOB", "show a job and its tasks", cobra.ExactArgs(1), func(ctx context.Context, c *controller.Client, cmd *cobra.Command, args []string) error {
		jv, err := c.Job(ctx, args[0])
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "job %s: %s (priority %d, want %s, submitted %s)\n", jv.Name, jv.Status, jv.Priority, jv.Want, time.Unix(0, jv.Submitted).Format(time.RFC3339))
		printTasks(cmd.OutOrStdout(), jv.Tasks)
		return nil
	})
	jobAction := func(action, short string) *cobra.Command {
		return apiCommand(action+" JOB", short, cobra.ExactArgs(1), func(ctx context.Context, c *controller.Client, cmd *cobra.Command, args []string) error {
			jv, err := c.JobAction(ctx, args[0], action)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "job %s: %s requested (now %s)\n", jv.Name, action, jv.Status)
			return nil
		})
	}
	planCmd := apiCommand("plan", "show the plan the control loop would carry out now (a dry run; nothing changes)", cobra.NoArgs, func(ctx context.Context, c *controller.Client, cmd *cobra.Command, args []string) error {
		pv, err := c.DryRun(ctx)
		if err != nil {
			return err
		}
		w := cmd.OutOrStdout()
		if len(pv.Actions) == 0 {
			fmt.Fprintln(w, "nothing to do: the cluster is where the policy wants it")
			return nil
		}
		fmt.Fprintf(w, "%d actions, %d migrations, makespan %ds (modelled)\n", len(pv.Actions), pv.Migrations, pv.Makespan)
		printActions(w, pv.Actions)
		return nil
	})
	jobCmd.AddCommand(run, status, jobAction("stop", "stop a job (its tasks are killed)"), planCmd)
	root.AddCommand(jobCmd)
	root.AddCommand(jobAction("suspend", "suspend a job to disk (it keeps its state and resumes later)"))
	root.AddCommand(jobAction("resume", "let a suspended job run again (where there is room)"))

	var watch bool
	var all bool
	var forDur time.Duration
	ps := apiCommand("ps", "list tasks (-w: keep watching)", cobra.NoArgs, func(ctx context.Context, c *controller.Client, cmd *cobra.Command, args []string) error {
		if forDur > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, forDur)
			defer cancel()
		}
		last := ""
		for {
			tasks, err := c.Tasks(ctx, all)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			var b strings.Builder
			printTasks(&b, tasks)
			if out := b.String(); out != last {
				if watch {
					fmt.Fprintf(cmd.OutOrStdout(), "--- %s\n", time.Now().Format("15:04:05"))
				}
				fmt.Fprint(cmd.OutOrStdout(), out)
				last = out
			}
			if !watch {
				return nil
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
		}
	})
	ps.Flags().BoolVarP(&watch, "watch", "w", false, "print the table again whenever it changes")
	ps.Flags().BoolVar(&all, "all", false, "include terminated tasks")
	ps.Flags().DurationVar(&forDur, "for", 0, "with -w, stop watching after this long")
	root.AddCommand(ps)

	nodes := apiCommand("nodes", "list nodes with their usage", cobra.NoArgs, func(ctx context.Context, c *controller.Client, cmd *cobra.Command, args []string) error {
		ns, err := c.Nodes(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tSTATUS\tADDR\tCPUS\tMEMORY\tTASKS\tLABELS")
		for _, n := range ns {
			var labels []string
			for k, v := range n.Labels {
				labels = append(labels, k+"="+v)
			}
			sort.Strings(labels)
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s/%s\t%s/%s\t%d\t%s\n", n.Name, n.Status, n.Addr, cpus(n.Used.CPUMilli), cpus(n.Capacity.CPUMilli),
				gib(n.Used.MemoryBytes), gib(n.Capacity.MemoryBytes), n.Tasks, strings.Join(labels, ","))
		}
		return tw.Flush()
	})
	root.AddCommand(nodes)

	nodeCmd := &cobra.Command{Use: "node", Short: "register, drain and undrain nodes"}
	var deadline time.Duration
	drain := apiCommand("drain NODE", "move everything off a node without killing it (maintenance, a failing machine)", cobra.ExactArgs(1), func(ctx context.Context, c *controller.Client, cmd *cobra.Command, args []string) error {
		if err := c.Drain(ctx, args[0], true, deadline); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "node %s draining; watch with `ferry ps -w` or `ferry events -f`\n", args[0])
		return nil
	})
	drain.Flags().DurationVar(&deadline, "deadline", 0, "let what cannot move elsewhere keep running on the node until this long from now, then suspend it to disk (default: suspend it at once; nothing is ever killed)")
	undrain := apiCommand("undrain NODE", "let a drained node host tasks again", cobra.ExactArgs(1), func(ctx context.Context, c *controller.Client, cmd *cobra.Command, args []string) error {
		if err := c.Drain(ctx, args[0], false, 0); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "node %s online\n", args[0])
		return nil
	})
	var labels []string
	add := apiCommand("add ADDR", "register the agent listening at ADDR", cobra.ExactArgs(1), func(ctx context.Context, c *controller.Client, cmd *cobra.Command, args []string) error {
		lm := map[string]string{}
		for _, l := range labels {
			k, v, ok := strings.Cut(l, "=")
			if !ok || k == "" {
				return withCode(2, fmt.Errorf("--label %q: want KEY=VALUE", l))
			}
			lm[k] = v
		}
		name, err := c.AddNode(ctx, args[0], lm)
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "node %s registered at %s\n", name, args[0])
		return nil
	})
	add.Flags().StringSliceVar(&labels, "label", nil, "node label KEY=VALUE (repeatable)")
	nodeCmd.AddCommand(drain, undrain, add)
	root.AddCommand(nodeCmd)

	var to string
	migrate := apiCommand("migrate TASK --to NODE", "move one task to another node (live when it can, else by checkpoint)", cobra.ExactArgs(1), func(ctx context.Context, c *controller.Client, cmd *cobra.Command, args []string) error {
		if to == "" {
			return withCode(2, errors.New("--to NODE is required"))
		}
		id, err := c.Migrate(ctx, args[0], to)
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "plan %d: migrate %s to %s\n", id, args[0], to)
		return nil
	})
	migrate.Flags().StringVar(&to, "to", "", "destination node")
	root.AddCommand(migrate)

	var follow bool
	var tail int
	logs := apiCommand("logs TASK", "print a task's output (from the node it is on)", cobra.ExactArgs(1), func(ctx context.Context, c *controller.Client, cmd *cobra.Command, args []string) error {
		rc, err := c.Logs(ctx, args[0], tail, follow)
		if err != nil {
			return err
		}
		defer rc.Close()
		_, err = io.Copy(cmd.OutOrStdout(), rc)
		if ctx.Err() != nil {
			return nil
		}
		return err
	})
	logs.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output")
	logs.Flags().IntVar(&tail, "tail", -1, "only the last N lines (-1: all)")
	root.AddCommand(logs)

	var evFollow bool
	var evFor time.Duration
	events := apiCommand("events", "print what the control loop decided and did (-f: keep following)", cobra.NoArgs, func(ctx context.Context, c *controller.Client, cmd *cobra.Command, args []string) error {
		if evFor > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, evFor)
			defer cancel()
		}
		return c.Events(ctx, evFollow, func(e controller.Event) bool {
			fmt.Fprintln(cmd.OutOrStdout(), e.String())
			return true
		})
	})
	events.Flags().BoolVarP(&evFollow, "follow", "f", false, "keep following new events")
	events.Flags().DurationVar(&evFor, "for", 0, "stop following after this long")
	root.AddCommand(events)

	plans := apiCommand("plans", "list the recent plans with their journal", cobra.NoArgs, func(ctx context.Context, c *controller.Client, cmd *cobra.Command, args []string) error {
		ps, err := c.Plans(ctx, 10)
		if err != nil {
			return err
		}
		for _, p := range ps {
			fmt.Fprintf(cmd.OutOrStdout(), "plan %d %s (%s), %d actions\n", p.ID, p.State, p.Reason, len(p.Actions))
			printActions(cmd.OutOrStdout(), p.Actions)
		}
		return nil
	})
	root.AddCommand(plans)
}

func printActions(w io.Writer, acts []store.Action) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  #\tACTION\tTASK\tFROM\tTO\tAFTER\tSTATE\tERROR")
	for i, a := range acts {
		deps := make([]string, len(a.Deps))
		for k, d := range a.Deps {
			deps[k] = fmt.Sprint(d)
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", i, a.Kind, a.Task, dash(a.From), dash(a.To), dash(strings.Join(deps, ",")), a.State, a.Error)
	}
	tw.Flush()
}
