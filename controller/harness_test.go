package controller

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/agent"
	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/agent/client"
	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/driver/process"
	"github.com/ferrycluster/ferry/driver/qemu"
	"github.com/ferrycluster/ferry/image"
	"github.com/ferrycluster/ferry/pki"
	"github.com/ferrycluster/ferry/store"
)

// testCluster is a real server (raft on disk, TLS API) and real agents with
// the process driver, all on 127.0.0.1.
type testCluster struct {
	t       *testing.T
	tlsDir  string
	dataDir string
	srv     *Server
	cli     *Client
	agents  map[string]*testAgent
	token   string
	// guest, when set, gives every agent started from then on the qemu
	// driver with this guest image (besides the process driver).
	guest *image.Image
	// reportQEMU makes the named agents report this QEMU version instead of
	// their own (an old QEMU cannot be had on the test machine; the driver
	// itself still runs, and accepts, as the installed QEMU).
	reportQEMU map[string]string
}

// reportsQEMU is the qemu driver reporting another QEMU version.
type reportsQEMU struct {
	*qemu.Driver
	version string
}

func (r reportsQEMU) QEMUVersion() string { return r.version }

type testAgent struct {
	name, dir, addr string
	a               *agent.Agent
	drivers         []driver.Driver
}

func quietLog() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func issue(t *testing.T, dir, name string, role pki.Role) {
	t.Helper()
	if _, err := os.Stat(pki.CertFile(dir, name)); err == nil {
		return
	}
	if err := pki.Issue(dir, pki.IssueRequest{Name: name, Role: role, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}, time.Now()); err != nil {
		t.Fatal(err)
	}
}

func newTestCluster(t *testing.T, nodes int, cpus float64) *testCluster {
	t.Helper()
	c := &testCluster{t: t, tlsDir: t.TempDir(), dataDir: t.TempDir(), agents: map[string]*testAgent{}}
	if err := pki.Init(c.tlsDir, time.Now()); err != nil {
		t.Fatal(err)
	}
	issue(t, c.tlsDir, "server", pki.RoleServer)
	issue(t, c.tlsDir, "cli", pki.RoleClient)
	c.startServer("127.0.0.1:0")
	t.Cleanup(func() {
		if c.srv != nil {
			c.srv.Close()
		}
		for _, a := range c.agents {
			c.stopAgent(a.name, true)
		}
	})
	for i := 1; i <= nodes; i++ {
		name := fmt.Sprintf("n%d", i)
		c.startAgent(name, "127.0.0.1:0", cpus)
		if _, err := c.cli.AddNode(ctx(t), c.agents[name].addr, map[string]string{"idx": fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// testHeartbeatTimeout is how long a node may stay silent before the
// controller marks it down. It was 2 s; under the whole suite's load (real
// QEMU guests and race-instrumented binaries on 2 cores) a live node could
// miss that, be marked down, and its running tasks restart from scratch,
// which made tests about preemption fail for a reason they do not test.
// The tests that do kill agents wait 30-60 s for the node to go down.
const testHeartbeatTimeout = 8 * time.Second

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func (c *testCluster) startServer(listen string) {
	t := c.t
	t.Helper()
	raft := "127.0.0.1:0"
	if c.srv != nil {
		raft = c.srv.Store.RaftAddr()
	}
	var srv *Server
	var err error
	// A restart reuses the old addresses; a socket of the old server may
	// hold them for a moment.
	for deadline := time.Now().Add(20 * time.Second); ; {
		srv, err = StartServer(context.Background(), ServerConfig{
			DataDir: c.dataDir, Listen: listen, RaftListen: raft, Bootstrap: true, TLSDir: c.tlsDir, Identity: "server",
			Policy: Priority{}, Period: 200 * time.Millisecond, HeartbeatTimeout: testHeartbeatTimeout, Fast: true, Logger: quietLog(),
		})
		if err == nil || !strings.Contains(err.Error(), "address already in use") || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	c.srv = srv
	if srv.AdminTokenFile != "" {
		b, err := os.ReadFile(srv.AdminTokenFile)
		if err != nil {
			t.Fatal(err)
		}
		c.token = strings.TrimSpace(string(b))
	}
	id, err := pki.Load(c.tlsDir, "cli")
	if err != nil {
		t.Fatal(err)
	}
	c.cli = NewClient(srv.Addr(), id.ClientConfig(), c.token)
	c.waitFor("a leader", 30*time.Second, func() bool { return srv.Store.IsLeader() })
}

func (c *testCluster) startAgent(name, listen string, cpus float64) {
	t := c.t
	t.Helper()
	issue(t, c.tlsDir, name, pki.RoleAgent)
	a := c.agents[name]
	if a == nil {
		a = &testAgent{name: name, dir: t.TempDir(), addr: listen}
		c.agents[name] = a
	}
	d, err := process.New(process.Config{DataDir: filepath.Join(a.dir, "drivers", "process"), NoCgroups: true, StopGrace: 2 * time.Second, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	drivers := []driver.Driver{d}
	if c.guest != nil {
		q, err := qemu.New(context.Background(), qemu.Config{DataDir: filepath.Join(a.dir, "drivers", "qemu"), Kernel: c.guest.Kernel,
			Initrd: c.guest.Initrd, MaxMemoryBytes: 1 << 30, Logger: quietLog()})
		if err != nil {
			t.Fatal(err)
		}
		if v := c.reportQEMU[name]; v != "" {
			drivers = append(drivers, reportsQEMU{q, v})
		} else {
			drivers = append(drivers, q)
		}
	}
	id, err := pki.Load(c.tlsDir, name)
	if err != nil {
		t.Fatal(err)
	}
	ag, err := agent.New(agent.Config{Name: name, DataDir: a.dir, Listen: a.addr, CPUs: cpus, MemoryBytes: 4 << 30,
		Identity: id, Drivers: drivers, IncomingTimeout: 20 * time.Second, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	if err := ag.Start(); err != nil {
		t.Fatal(err)
	}
	a.a, a.addr, a.drivers = ag, ag.Addr(), drivers
}

// stopAgent closes the agent; with stopTasks its tasks are stopped too
// (cleanup), else they keep running as an agent crash leaves them.
func (c *testCluster) stopAgent(name string, stopTasks bool) {
	a := c.agents[name]
	if a == nil || a.a == nil {
		return
	}
	a.a.Close()
	a.a = nil
	if stopTasks {
		cx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, d := range a.drivers {
			sts, _ := d.List(cx)
			for _, st := range sts {
				_ = d.Stop(cx, st.ID)
			}
		}
	}
	for _, d := range a.drivers {
		if cl, ok := d.(interface{ Close() error }); ok {
			cl.Close()
		}
	}
}

// agentTasks lists what an agent reports.
func (c *testCluster) agentTasks(name string) []api.Task {
	id, _ := pki.Load(c.tlsDir, "server")
	cl := client.New(c.agents[name].addr, id.ClientConfig())
	defer cl.Close()
	cx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ts, err := cl.List(cx)
	if err != nil {
		return nil
	}
	return ts
}

// liveCopies counts running, non-stale copies of task over all live agents.
func (c *testCluster) liveCopies(task string) (n int, where []string) {
	for name, a := range c.agents {
		if a.a == nil {
			continue
		}
		for _, t := range c.agentTasks(name) {
			if t.ID == task && t.Phase == api.PhaseRunning && !t.Stale && t.Status != nil && t.Status.State == driver.StateRunning {
				n++
				where = append(where, name)
			}
		}
	}
	return n, where
}

func (c *testCluster) waitFor(what string, d time.Duration, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.t.Fatalf("timed out waiting for %s\n%s", what, c.dump())
}

func (c *testCluster) dump() string {
	var b strings.Builder
	if c.srv == nil {
		return ""
	}
	c.srv.Store.View(func(s *store.State) {
		for _, n := range s.SortedNodes() {
			fmt.Fprintf(&b, "node %s %s\n", n, s.Nodes[n].Status)
		}
		for _, j := range s.SortedJobs() {
			for _, tn := range j.Tasks {
				t := s.Tasks[tn]
				fmt.Fprintf(&b, "task %s %s on %q epoch %d %s\n", tn, t.Phase, t.Node, t.Epoch, t.Message)
			}
		}
		if p := s.ActivePlan(); p != nil {
			for i, a := range p.Actions {
				fmt.Fprintf(&b, "plan %d action %d %s %s %s->%s %s %s\n", p.ID, i, a.Kind, a.Task, a.From, a.To, a.State, a.Error)
			}
		}
	})
	for _, e := range c.srv.Controller.Events().Recent(0) {
		fmt.Fprintln(&b, e)
	}
	for name, a := range c.agents {
		if a.a == nil {
			continue
		}
		for _, t := range c.agentTasks(name) {
			st := ""
			if t.Status != nil {
				st = string(t.Status.State)
			}
			fmt.Fprintf(&b, "agent %s: %s %s epoch %d stale %v %s peer %s\n", name, t.ID, t.Phase, t.Epoch, t.Stale, st, t.Peer)
		}
	}
	return b.String()
}

func (c *testCluster) task(name string) store.Task {
	var t store.Task
	c.srv.Store.View(func(s *store.State) {
		if x := s.Tasks[name]; x != nil {
			t = *x
		}
	})
	return t
}

func (c *testCluster) phase(name string) store.TaskPhase { return c.task(name).Phase }

// counterJob is a process job whose tasks count and checkpoint their count
// on SIGUSR2 (exit 85), continuing from it when restored.
func counterJob(name string, prio, count int, cpus float64, extra string) string {
	return fmt.Sprintf(`name: %s
priority: %d
tasks:
  - name: c
    driver: process
    command: |
      n=0
      if [ "$FERRY_RESTORE" = 1 ]; then n=$(cat "$FERRY_RESTORE_DIR/counter"); fi
      trap 'echo $n > "$FERRY_CHECKPOINT_DIR/counter"; exit 85' USR2
      while :; do n=$((n+1)); echo "counter $n"; sleep 0.1; done
    cpus: %v
    memory: 64MiB
    count: %d
migration:
  live: false
%s`, name, prio, cpus, count, extra)
}
