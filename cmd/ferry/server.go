package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ferrycluster/ferry/controller"
	"github.com/ferrycluster/ferry/policy"
	"github.com/spf13/cobra"
)

// serverPolicy returns the controller's policy by name: "priority" (the
// controller's default) or any of the policy package's.
func serverPolicy(name string) (policy.Policy, error) {
	if name == "" || name == "priority" {
		return controller.Priority{}, nil
	}
	return policy.ByName(name)
}

func init() {
	var cfg controller.ServerConfig
	var policyName string
	cmd := &cobra.Command{
		Use:   "server",
		Short: "run the controller: replicated state (raft), the API and the control loop",
		Long: "server keeps the cluster's state in a raft log under --data-dir, serves the API\n" +
			"on --listen over mutual TLS (identity --tls-dir/NAME.crt, role server), and runs\n" +
			"the loop: observe agents, decide (policy), plan, carry out. Start the first server\n" +
			"with --bootstrap; more servers --join one of them (writes go to the leader).\n" +
			"A bootstrap writes the first admin token to DATA/admin.token (mode 0600); a server\n" +
			"started with --join fetches the cluster's token hashes (DATA/tokens.json, 0600)\n" +
			"from the member it joins through, over mutual TLS with its server certificate.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.Bootstrap == (cfg.Join != "") {
				// Restarting an existing server needs neither.
				if cfg.Bootstrap || !hasRaftState(cfg.DataDir) {
					return withCode(2, fmt.Errorf("give exactly one of --bootstrap and --join (or neither to restart a server)"))
				}
			}
			p, err := serverPolicy(policyName)
			if err != nil {
				return withCode(2, err)
			}
			cfg.Policy = p
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
			srv, err := controller.StartServer(ctx, cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ferry server %s: API https://%s, raft %s, policy %s\n", cfg.Identity, srv.Addr(), srv.Store.RaftAddr(), p.Name())
			if srv.AdminTokenFile != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "admin token written to %s (mode 0600)\n", srv.AdminTokenFile)
			}
			<-ctx.Done()
			return srv.Close()
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data-dir", "", "directory for the raft log, snapshots and tokens")
	f.StringVar(&cfg.Listen, "listen", "127.0.0.1:7700", "API address")
	f.StringVar(&cfg.RaftListen, "raft-listen", "", "raft address (default: the API port + 1)")
	f.BoolVar(&cfg.Bootstrap, "bootstrap", false, "form a new one-server cluster")
	f.StringVar(&cfg.Join, "join", "", "API address of a member to join through")
	f.StringVar(&cfg.TLSDir, "tls-dir", "", "directory with ca.crt and the server identity")
	f.StringVar(&cfg.Identity, "name", "server", "server identity name (NAME.crt in --tls-dir; also the raft id)")
	f.StringVar(&policyName, "policy", "priority", "scheduling policy: priority, or one of "+fmt.Sprint(policy.Names()))
	f.DurationVar(&cfg.Period, "period", time.Second, "loop period")
	f.DurationVar(&cfg.HeartbeatTimeout, "heartbeat-timeout", 10*time.Second, "a node silent this long is down")
	cmd.MarkFlagRequired("data-dir")
	cmd.MarkFlagRequired("tls-dir")
	root.AddCommand(cmd)
}

func hasRaftState(dir string) bool {
	_, err := os.Stat(dir + "/raft/raft.db")
	return err == nil
}
