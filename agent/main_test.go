package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/agent/client"
	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/driver/drivertest"
	"github.com/ferrycluster/ferry/driver/process"
	"github.com/ferrycluster/ferry/image/imagetest"
	"github.com/ferrycluster/ferry/pki"
)

// The test binary doubles as the process jobs the tests run (with
// FERRY_AGENT_TEST_JOB set) — the process driver re-executes it.
const testJobEnv = "FERRY_AGENT_TEST_JOB"

func TestMain(m *testing.M) {
	if os.Getenv(testJobEnv) != "" {
		os.Exit(counterJob())
	}
	if js := os.Getenv(subAgentEnv); js != "" {
		os.Exit(runSubAgent(js))
	}
	code := m.Run()
	imagetest.Cleanup()
	os.Exit(code)
}

// counterJob prints "counter N" every 50 ms and checkpoints N (exiting
// with the checkpoint code) on SIGUSR2; it continues from a checkpoint.
// FERRY_AGENT_TEST_SLOW delays its checkpoint answer;
// FERRY_AGENT_TEST_BALLAST adds a file of that many bytes to it.
func counterJob() int {
	var n int64
	if os.Getenv(process.EnvRestore) == "1" {
		b, err := os.ReadFile(filepath.Join(os.Getenv(process.EnvRestoreDir), "counter"))
		if err != nil {
			fmt.Println("restore:", err)
			return 2
		}
		n, _ = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGUSR2)
	tick := time.NewTicker(50 * time.Millisecond)
	for {
		select {
		case <-tick.C:
			n++
			fmt.Println("counter", n)
		case <-sigs:
			if d, err := time.ParseDuration(os.Getenv("FERRY_AGENT_TEST_SLOW")); err == nil {
				time.Sleep(d)
			}
			if b, err := strconv.Atoi(os.Getenv("FERRY_AGENT_TEST_BALLAST")); err == nil {
				if err := os.WriteFile(filepath.Join(os.Getenv(process.EnvCheckpointDir), "ballast"), make([]byte, b), 0o644); err != nil {
					return 2
				}
			}
			if err := os.WriteFile(filepath.Join(os.Getenv(process.EnvCheckpointDir), "counter"), []byte(strconv.FormatInt(n, 10)), 0o644); err != nil {
				return 2
			}
			return 85
		}
	}
}

// testCA is a cluster CA with identities issued on demand.
type testCA struct {
	t   testing.TB
	dir string
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	dir := t.TempDir()
	if err := pki.Init(dir, time.Now()); err != nil {
		t.Fatal(err)
	}
	return &testCA{t: t, dir: dir}
}

func (c *testCA) identity(name string, role pki.Role) *pki.Identity {
	c.t.Helper()
	if _, err := os.Stat(pki.CertFile(c.dir, name)); err != nil {
		if err := pki.Issue(c.dir, pki.IssueRequest{Name: name, Role: role, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}, time.Now()); err != nil {
			c.t.Fatal(err)
		}
	}
	id, err := pki.Load(c.dir, name)
	if err != nil {
		c.t.Fatal(err)
	}
	return id
}

// controller returns a client of addr with the controller's identity.
func (c *testCA) controller(addr string) *client.Client {
	return client.New(addr, c.identity("controller", pki.RoleServer).ClientConfig())
}

// node is one agent under test with its data dir, restartable.
type node struct {
	t       testing.TB
	ca      *testCA
	name    string
	dataDir string
	addr    string
	mkDrv   func(dataDir string) []driver.Driver
	cfg     func(*Config)
	agent   *Agent
	drivers []driver.Driver
	c       *client.Client
}

func startNode(t testing.TB, ca *testCA, name string, mkDrv func(string) []driver.Driver, cfg func(*Config)) *node {
	t.Helper()
	n := &node{t: t, ca: ca, name: name, dataDir: t.TempDir(), mkDrv: mkDrv, cfg: cfg}
	n.start()
	t.Cleanup(func() { n.shutdown(true) })
	return n
}

func (n *node) start() {
	n.t.Helper()
	n.drivers = n.mkDrv(n.dataDir)
	cfg := Config{
		Name: n.name, DataDir: n.dataDir, Listen: n.addr,
		CPUs: 8, MemoryBytes: 4 << 30,
		Identity:        n.ca.identity(n.name, pki.RoleAgent),
		Drivers:         n.drivers,
		IncomingTimeout: 20 * time.Second,
		Logger:          slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if testing.Verbose() {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if n.cfg != nil {
		n.cfg(&cfg)
	}
	fresh := n.addr == ""
	if fresh {
		cfg.Listen = lowPortAddr()
	}
	a, err := New(cfg)
	if err != nil {
		n.t.Fatal(err)
	}
	// Start fails at its listen, before anything else: try again, on
	// another port when the node is new, else (a restart) on its own.
	for try := 1; ; try++ {
		err = a.Start()
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) || try == 200 {
			break
		}
		if fresh {
			a.cfg.Listen = lowPortAddr()
		} else {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if err != nil {
		n.t.Fatal(err)
	}
	n.agent = a
	n.addr = a.Addr()
	n.c = n.ca.controller(n.addr)
}

// lowPortAddr is a loopback address whose port is below the kernel's
// ephemeral ports (from 32768): no port-0 listener or outgoing connection
// of a parallel test takes it while its node is down for a restart, which
// listens on the same address (it did: bind: address already in use).
func lowPortAddr() string { return fmt.Sprintf("127.0.0.1:%d", 20000+rand.IntN(12000)) }

// shutdown closes the agent; with stopTasks it also stops every task (test
// cleanup), else the tasks keep running for the next agent.
func (n *node) shutdown(stopTasks bool) {
	if n.agent == nil {
		return
	}
	n.agent.Close()
	n.agent = nil
	n.c.Close()
	if stopTasks {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, d := range n.drivers {
			sts, _ := d.List(ctx)
			for _, st := range sts {
				d.Stop(ctx, st.ID)
			}
		}
	}
	for _, d := range n.drivers {
		if c, ok := d.(interface{ Close() error }); ok {
			c.Close()
		}
	}
}

// restart simulates an agent restart: same data dir, same address, new
// drivers and agent; the tasks keep running.
func (n *node) restart() {
	n.t.Helper()
	n.shutdown(false)
	n.start()
}

func processDrivers(t testing.TB) func(string) []driver.Driver {
	return func(dir string) []driver.Driver {
		d, err := process.New(process.Config{DataDir: filepath.Join(dir, "drivers", "process"), NoCgroups: true, StopGrace: 2 * time.Second,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		return []driver.Driver{d}
	}
}

func counterSpec(id string, env map[string]string) driver.Spec {
	e := map[string]string{testJobEnv: "counter"}
	for k, v := range env {
		e[k] = v
	}
	return driver.Spec{ID: id, Epoch: 1, CPUs: 0.1, MemoryBytes: 64 << 20,
		Process: &driver.ProcessSpec{Command: []string{os.Args[0]}, Env: e, CheckpointTimeout: 30 * time.Second}}
}

// counters reads the counters the task printed on n.
func (n *node) counters(ctx context.Context, id string) []int64 {
	n.t.Helper()
	rc, err := n.c.Logs(ctx, id, -1, false)
	if errors.Is(err, driver.ErrNotFound) {
		return nil
	}
	if err != nil {
		n.t.Fatalf("logs of %s on %s: %v", id, n.name, err)
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	return drivertest.ParseCounters(b)
}

// waitCounter waits until the task on n printed a counter > after and
// returns the first and last counters seen in this incarnation's output.
func (n *node) waitCounter(ctx context.Context, id string, after int64) []int64 {
	n.t.Helper()
	for {
		cs := n.counters(ctx, id)
		if len(cs) > 0 && cs[len(cs)-1] > after {
			return cs
		}
		select {
		case <-ctx.Done():
			n.t.Fatalf("task %s on %s printed no counter above %d (got %v)", id, n.name, after, tail(cs))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func tail(cs []int64) []int64 {
	if len(cs) > 5 {
		return cs[len(cs)-5:]
	}
	return cs
}

// live returns the tasks n runs (not stale, phase running).
func (n *node) live(ctx context.Context, id string) int {
	n.t.Helper()
	ts, err := n.c.List(ctx)
	if err != nil {
		n.t.Fatal(err)
	}
	k := 0
	for _, t := range ts {
		if t.ID == id && t.Status != nil && (t.Status.State == driver.StateRunning || t.Status.State == driver.StateStarting) && !t.Stale {
			k++
		}
	}
	return k
}

func wantKind(t *testing.T, what string, err, kind error) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("%s: got %v, want %v", what, err, kind)
	}
}

func stringsReader(s string) io.Reader { return strings.NewReader(s) }
