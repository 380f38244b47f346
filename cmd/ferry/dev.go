package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ferrycluster/ferry/agent/client"
	"github.com/ferrycluster/ferry/controller"
	"github.com/ferrycluster/ferry/pki"
	"github.com/spf13/cobra"
)

// devFlags configure `ferry dev`.
type devFlags struct {
	dir, listen, policy, memory string
	agents                      int
	cpus                        float64
	qemu                        bool
	forDur                      time.Duration
}

func init() {
	var o devFlags
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "run a local cluster: a server and agents on 127.0.0.1, TLS and an admin token set up",
		Long: "dev creates a cluster CA and identities under --dir/tls, starts a server (raft in\n" +
			"--dir/server) and --agents agents as child processes (data in --dir/agents/NAME,\n" +
			"logs in --dir/logs), registers them, writes --dir/env.sh and prints how to use\n" +
			"the cluster. Ctrl-C (or --for) stops the tasks, the agents and the server.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDev(cmd.OutOrStdout(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dir, "dir", "ferry-dev", "directory for everything the cluster keeps")
	f.StringVar(&o.listen, "listen", "127.0.0.1:7700", "server API address (127.0.0.1:0 picks a free port)")
	f.IntVar(&o.agents, "agents", 3, "number of agents")
	f.Float64Var(&o.cpus, "cpus", 2, "CPUs each agent offers")
	f.StringVar(&o.memory, "memory", "2G", "memory each agent offers")
	f.StringVar(&o.policy, "policy", "priority", "scheduling policy")
	f.BoolVar(&o.qemu, "qemu", false, "give the agents the qemu driver (needs the guest kernel from scripts/setup.sh)")
	f.DurationVar(&o.forDur, "for", 0, "stop after this long (0: until Ctrl-C)")
	root.AddCommand(cmd)
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func runDev(out io.Writer, o devFlags) error {
	if o.agents < 1 || o.agents > 16 {
		return withCode(2, fmt.Errorf("--agents %d: want 1 to 16", o.agents))
	}
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return err
	}
	tlsDir := filepath.Join(dir, "tls")
	logDir := filepath.Join(dir, "logs")
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(tlsDir, pki.CACertFile)); errors.Is(err, os.ErrNotExist) {
		if err := pki.Init(tlsDir, time.Now()); err != nil {
			return err
		}
	}
	names := []string{}
	for i := 1; i <= o.agents; i++ {
		names = append(names, fmt.Sprintf("n%d", i))
	}
	idents := map[string]pki.Role{"server": pki.RoleServer, "cli": pki.RoleClient}
	for _, n := range names {
		idents[n] = pki.RoleAgent
	}
	for name, role := range idents {
		if _, err := os.Stat(pki.CertFile(tlsDir, name)); err == nil {
			continue
		}
		if err := pki.Issue(tlsDir, pki.IssueRequest{Name: name, Role: role, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}, time.Now()); err != nil {
			return err
		}
	}
	policy, err := serverPolicy(o.policy)
	if err != nil {
		return withCode(2, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.forDur > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.forDur)
		defer cancel()
	}

	serverLog, err := os.OpenFile(filepath.Join(logDir, "server.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer serverLog.Close()
	srvDir := filepath.Join(dir, "server")
	_, statErr := os.Stat(filepath.Join(srvDir, "raft", "raft.db"))
	srv, err := controller.StartServer(ctx, controller.ServerConfig{
		DataDir: srvDir, Listen: o.listen, Bootstrap: statErr != nil, TLSDir: tlsDir, Identity: "server",
		Policy: policy, Period: 500 * time.Millisecond, HeartbeatTimeout: 5 * time.Second, Fast: true,
		Logger: slog.New(slog.NewTextHandler(serverLog, nil)),
	})
	if err != nil {
		return err
	}
	defer srv.Close()
	for !srv.Store.IsLeader() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}

	exe, err := os.Executable()
	if err != nil {
		return err
	}
	type child struct {
		name, addr string
		cmd        *exec.Cmd
		done       chan struct{}
	}
	var children []*child
	var mu sync.Mutex
	defer func() {
		// Stop the tasks (agents leave them running when they exit), then
		// the agents.
		sid, err := pki.Load(tlsDir, "server")
		for _, c := range children {
			if err == nil {
				cl := client.New(c.addr, sid.ClientConfig())
				sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				if ts, err := cl.List(sctx); err == nil {
					for _, t := range ts {
						_ = cl.Stop(sctx, t.ID, t.Epoch)
					}
				}
				cancel()
				cl.Close()
			}
			_ = c.cmd.Process.Signal(syscall.SIGTERM)
		}
		for _, c := range children {
			select {
			case <-c.done:
			case <-time.After(10 * time.Second):
				_ = c.cmd.Process.Kill()
				<-c.done
			}
		}
	}()
	for _, n := range names {
		addr, err := freeAddr()
		if err != nil {
			return err
		}
		lf, err := os.OpenFile(filepath.Join(logDir, n+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		args := []string{"agent", "--name", n, "--data-dir", filepath.Join(dir, "agents", n), "--listen", addr,
			"--tls-dir", tlsDir, "--cpus", fmt.Sprint(o.cpus), "--memory", o.memory}
		if !o.qemu {
			args = append(args, "--no-qemu")
		}
		c := &child{name: n, addr: addr, cmd: exec.Command(exe, args...), done: make(chan struct{})}
		c.cmd.Stdout, c.cmd.Stderr = lf, lf
		c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := c.cmd.Start(); err != nil {
			lf.Close()
			return fmt.Errorf("start agent %s: %w", n, err)
		}
		go func(c *child, lf *os.File) {
			_ = c.cmd.Wait()
			lf.Close()
			close(c.done)
		}(c, lf)
		mu.Lock()
		children = append(children, c)
		mu.Unlock()
	}
	// Register the agents once they answer.
	for _, c := range children {
		deadline := time.Now().Add(60 * time.Second)
		for {
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := srv.Controller.AddNode(rctx, c.addr, map[string]string{"dev": "true"})
			cancel()
			if err == nil {
				break
			}
			select {
			case <-c.done:
				return fmt.Errorf("agent %s exited; see %s", c.name, filepath.Join(logDir, c.name+".log"))
			case <-ctx.Done():
				return nil
			default:
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("agent %s did not answer at %s: %v (see %s)", c.name, c.addr, err, filepath.Join(logDir, c.name+".log"))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	tokenFile := filepath.Join(srvDir, "admin.token")
	env := fmt.Sprintf("export FERRY_ADDR=%s\nexport FERRY_TLS_DIR=%s\nexport FERRY_CERT=cli\nexport FERRY_TOKEN_FILE=%s\n", srv.Addr(), tlsDir, tokenFile)
	if err := os.WriteFile(filepath.Join(dir, "env.sh"), []byte(env), 0o600); err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "ferry dev: server on https://%s (policy %s), %d agents:", srv.Addr(), policy.Name(), len(children))
	for _, c := range children {
		fmt.Fprintf(&b, " %s=%s", c.name, c.addr)
	}
	fmt.Fprintf(&b, "\n\nUse it from another shell:\n  source %s\n  ferry nodes\n  ferry job run examples/jobs/batch-low.yaml\n  ferry ps -w\n  ferry events -f\n\n", filepath.Join(dir, "env.sh"))
	fmt.Fprintf(&b, "The admin token is in %s (mode 0600); logs are in %s.\nCtrl-C stops the tasks, the agents and the server.\n", tokenFile, logDir)
	fmt.Fprint(out, b.String())
	// Watch the agents while waiting.
	reported := map[string]bool{}
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(out, "ferry dev: stopping")
			return nil
		case <-time.After(time.Second):
		}
		for _, c := range children {
			select {
			case <-c.done:
				if !reported[c.name] {
					reported[c.name] = true
					fmt.Fprintf(out, "ferry dev: agent %s exited (see %s)\n", c.name, filepath.Join(logDir, c.name+".log"))
				}
			default:
			}
		}
	}
}
