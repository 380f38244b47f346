package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/driver/qemu"
	"github.com/ferrycluster/ferry/image"
	"github.com/ferrycluster/ferry/image/imagetest"
	"github.com/ferrycluster/ferry/pki"
)

func guestImage(tb testing.TB) image.Image { return imagetest.Counter(tb) }

func newQEMUDriver(dir string, im image.Image) (*qemu.Driver, error) {
	return qemu.New(context.Background(), qemu.Config{DataDir: filepath.Join(dir, "drivers", "qemu"), Kernel: im.Kernel, Initrd: im.Initrd,
		MaxMemoryBytes: 1 << 30, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
}

func qemuDrivers(t testing.TB) func(string) []driver.Driver {
	im := guestImage(t)
	return func(dir string) []driver.Driver {
		d, err := newQEMUDriver(dir, im)
		if err != nil {
			t.Fatal(err)
		}
		return []driver.Driver{d}
	}
}

func vmSpec(id, workload string) driver.Spec {
	return driver.Spec{ID: id, Epoch: 1, CPUs: 1, MemoryBytes: 128 << 20, VM: &driver.VMSpec{Workload: workload}}
}

// waitNew waits until the task's log on n holds more than skip counters and
// returns the ones after skip (this incarnation's, when skip counted the
// earlier ones).
func (n *node) waitNew(ctx context.Context, id string, skip int) []int64 {
	n.t.Helper()
	for {
		cs := n.counters(ctx, id)
		if len(cs) > skip+1 {
			return cs[skip:]
		}
		select {
		case <-ctx.Done():
			n.t.Fatalf("task %s on %s printed no new counter (have %d, skip %d)", id, n.name, len(cs), skip)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func last(cs []int64) int64 { return cs[len(cs)-1] }

// Boot on A; live-migrate A → B → A; suspend on A and resume on B. The
// guest's counter continues through every move and there is one live copy
// after each.
func TestQEMULiveMigrateAndSuspendAcrossAgents(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ca := newTestCA(t)
	a := startNode(t, ca, "node-a", qemuDrivers(t), nil)
	b := startNode(t, ca, "node-b", qemuDrivers(t), nil)
	info, err := a.c.Node(ctx)
	if err != nil || info.Accelerator == "" || info.QEMUVersion == "" || info.Drivers[0] != "qemu" {
		t.Fatalf("node info %+v %v", info, err)
	}
	const id = "vm1"
	if _, err := a.c.Run(ctx, api.RunRequest{Spec: vmSpec(id, "counter")}); err != nil {
		t.Fatal(err)
	}
	a.waitCounter(ctx, id, 3)

	move := func(from, to *node, epoch uint64) {
		t.Helper()
		var perform int
		ev, err := from.c.Migrate(ctx, id, api.MigrateRequest{Epoch: epoch, To: to.addr, Options: driver.MigrationOptions{MaxDowntime: 50 * time.Millisecond}},
			func(e api.MigrateEvent) {
				if e.Step == "perform" {
					perform++
				}
			})
		if err != nil {
			t.Fatalf("migrate %s → %s: %v", from.name, to.name, err)
		}
		if ev.Epoch != epoch+1 || ev.Mode != "live" || perform == 0 {
			t.Fatalf("migrate %s → %s returned %+v after %d progress events", from.name, to.name, ev, perform)
		}
		t.Logf("live migration %s → %s: total %v, QEMU-reported downtime %v, %d bytes", from.name, to.name, ev.Took, ev.Downtime, ev.Progress.TransferredBytes)
	}

	skipB := len(b.counters(ctx, id))
	move(a, b, 1)
	lastA := last(a.counters(ctx, id))
	got := b.waitNew(ctx, id, skipB)
	if got[0] <= lastA || got[0] > lastA+20 {
		t.Fatalf("after A → B the counter is %d, last on A %d: not continuing", got[0], lastA)
	}
	wantLive(ctx, t, id, a, 0, b, 1)
	_, err = a.c.Suspend(ctx, id, 1)
	wantKind(t, "suspend at the old owner", err, api.ErrStaleEpoch)

	skipA := len(a.counters(ctx, id))
	move(b, a, 2)
	lastB := last(b.counters(ctx, id))
	got = a.waitNew(ctx, id, skipA)
	if got[0] <= lastB || got[0] > lastB+20 {
		t.Fatalf("after B → A the counter is %d, last on B %d", got[0], lastB)
	}
	wantLive(ctx, t, id, a, 1, b, 0)

	// Suspend on A, resume on B from A's image.
	sus, err := a.c.Suspend(ctx, id, 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("suspend image %d bytes, guest stopped %v", sus.Image.Bytes, sus.Image.Took)
	lastA = last(a.counters(ctx, id))
	skipB = len(b.counters(ctx, id))
	if err := a.c.Grant(ctx, id, api.GrantRequest{Epoch: 3, To: b.addr}); err != nil {
		t.Fatal(err)
	}
	res, err := b.c.Resume(ctx, id, api.ResumeRequest{Epoch: 3, From: a.addr})
	if err != nil {
		t.Fatal(err)
	}
	if res.Epoch != 4 {
		t.Fatalf("resumed at epoch %d, want 4", res.Epoch)
	}
	got = b.waitNew(ctx, id, skipB)
	if got[0] <= lastA || got[0] > lastA+20 {
		t.Fatalf("after resume on B the counter is %d, last on A %d", got[0], lastA)
	}
	wantLive(ctx, t, id, a, 0, b, 1)
	if err := b.c.Stop(ctx, id, 4); err != nil {
		t.Fatal(err)
	}
}

// slowMove starts a migration that cannot converge (the guest dirties
// memory faster than the bandwidth allows) and returns once it is
// transferring, with a channel that yields its result.
func slowMove(ctx context.Context, t *testing.T, from, to *node, id string, epoch uint64) chan error {
	t.Helper()
	started := make(chan struct{})
	done := make(chan error, 1)
	var once sync.Once
	go func() {
		_, err := from.c.Migrate(ctx, id, api.MigrateRequest{Epoch: epoch, To: to.addr, Mode: "live",
			Options: driver.MigrationOptions{Bandwidth: 1 << 20, MaxDowntime: time.Millisecond}},
			func(e api.MigrateEvent) {
				if e.Step == "perform" && e.Progress != nil && e.Progress.TransferredBytes > 0 {
					once.Do(func() { close(started) })
				}
			})
		once.Do(func() { close(started) })
		done <- err
	}()
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("migration never started transferring")
	}
	return done
}

// Cancel mid-flight leaves the source running; losing the destination
// agent mid-flight leaves exactly one live copy, the source, and the
// restarted destination drops its unfinished incoming copy.
func TestQEMUCancelAndDestinationLoss(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ca := newTestCA(t)
	a := startNode(t, ca, "node-a", qemuDrivers(t), nil)
	b := startNode(t, ca, "node-b", qemuDrivers(t), nil)
	const id = "vm2"
	if _, err := a.c.Run(ctx, api.RunRequest{Spec: vmSpec(id, "dirty 20 32")}); err != nil {
		t.Fatal(err)
	}
	a.waitCounter(ctx, id, 2)

	done := slowMove(ctx, t, a, b, id, 1)
	if x, err := a.c.Inspect(ctx, id); err != nil || x.Busy != "migrate" || x.Phase != api.PhaseMigratingOut {
		t.Fatalf("inspect during the move: %+v %v", x, err)
	}
	_, err := a.c.Migrate(ctx, id, api.MigrateRequest{Epoch: 1, To: b.addr}, nil)
	wantKind(t, "second move of a moving task", err, driver.ErrBusy)
	if err := a.c.Cancel(ctx, id, 1); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil {
		t.Fatal("cancelled migration succeeded")
	}
	skip := len(a.counters(ctx, id))
	a.waitNew(ctx, id, skip)
	wantLive(ctx, t, id, a, 1, b, 0)
	if _, err := b.c.Inspect(ctx, id); !errors.Is(err, driver.ErrNotFound) {
		t.Fatalf("destination after cancel: %v, want not found", err)
	}

	// The destination agent goes away mid-flight.
	done = slowMove(ctx, t, a, b, id, 1)
	b.shutdown(false)
	if err := <-done; err == nil {
		t.Fatal("migration to a dead destination succeeded")
	}
	skip = len(a.counters(ctx, id))
	a.waitNew(ctx, id, skip)
	if a.live(ctx, id) != 1 {
		t.Fatal("source not running after losing the destination")
	}
	x, err := a.c.Inspect(ctx, id)
	if err != nil || x.Epoch != 1 || x.Phase != api.PhaseRunning || x.Busy != "" {
		t.Fatalf("source after the failed move: %+v %v", x, err)
	}
	b.start()
	if n := b.live(ctx, id); n != 0 {
		t.Fatalf("restarted destination runs %d copies", n)
	}
	ts, _ := b.c.List(ctx)
	for _, x := range ts {
		if x.ID == id {
			t.Fatalf("restarted destination still lists %+v", x)
		}
	}
	// And the task still moves afterwards.
	if _, err := a.c.Migrate(ctx, id, api.MigrateRequest{Epoch: 1, To: b.addr, Options: driver.MigrationOptions{AutoConverge: true}}, nil); err != nil {
		t.Fatal(err)
	}
	wantLive(ctx, t, id, a, 0, b, 1)
}

// --- an agent in a subprocess, for kill -9 --------------------------------

// subAgentEnv carries a subAgent's configuration to the test binary.
const subAgentEnv = "FERRY_AGENT_TEST_AGENT"

type subAgentConfig struct {
	Name, DataDir, Listen, TLSDir, Kernel, Initrd string
}

// runSubAgent is the test binary acting as `ferry agent` with the qemu
// driver, until SIGTERM (or SIGKILL).
func runSubAgent(js string) int {
	var c subAgentConfig
	if err := json.Unmarshal([]byte(js), &c); err != nil {
		return 2
	}
	id, err := pki.Load(c.TLSDir, c.Name)
	if err != nil {
		return 2
	}
	d, err := newQEMUDriver(c.DataDir, image.Image{Kernel: c.Kernel, Initrd: c.Initrd})
	if err != nil {
		return 2
	}
	a, err := New(Config{Name: c.Name, DataDir: c.DataDir, Listen: c.Listen, Identity: id, Drivers: []driver.Driver{d},
		CPUs: 8, MemoryBytes: 4 << 30, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		return 2
	}
	if err := a.Start(); err != nil {
		return 2
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	<-sig
	a.Close()
	return 0
}

// startSubAgent runs an agent in a child process and waits until it answers.
func startSubAgent(ctx context.Context, t *testing.T, ca *testCA, c subAgentConfig) *exec.Cmd {
	t.Helper()
	ca.identity(c.Name, pki.RoleAgent)
	js, _ := json.Marshal(c)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), subAgentEnv+"="+string(js))
	logf, err := os.OpenFile(filepath.Join(c.DataDir, "agent.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	cl := ca.controller(c.Listen)
	defer cl.Close()
	for {
		if _, err := cl.Health(ctx); err == nil {
			return cmd
		}
		select {
		case <-ctx.Done():
			t.Fatal("subprocess agent never answered")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// The source agent is killed (SIGKILL) mid-flight and restarted: the move
// fails cleanly, the source VM survives and is re-attached, and once the
// destination gives up its incoming copy the new agent settles the move as
// not committed — one live copy, the source, counter continuing.
func TestQEMUSourceAgentKilledMidFlight(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ca := newTestCA(t)
	im := guestImage(t)
	b := startNode(t, ca, "node-b", qemuDrivers(t), nil)
	sc := subAgentConfig{Name: "node-a", DataDir: t.TempDir(), Listen: freePort(t), TLSDir: ca.dir, Kernel: im.Kernel, Initrd: im.Initrd}
	cmd := startSubAgent(ctx, t, ca, sc)
	a := &node{t: t, ca: ca, name: "node-a", addr: sc.Listen, c: ca.controller(sc.Listen)}
	t.Cleanup(func() {
		// Stop the VMs the subprocess agents left behind.
		d, err := newQEMUDriver(sc.DataDir, im)
		if err == nil {
			cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			sts, _ := d.List(cctx)
			for _, st := range sts {
				d.Stop(cctx, st.ID)
			}
		}
	})
	const id = "vm3"
	if _, err := a.c.Run(ctx, api.RunRequest{Spec: vmSpec(id, "dirty 20 32")}); err != nil {
		t.Fatal(err)
	}
	a.waitCounter(ctx, id, 2)
	done := slowMove(ctx, t, a, b, id, 1)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if err := <-done; err == nil {
		t.Fatal("migration survived its source agent's death")
	}
	startSubAgent(ctx, t, ca, sc)
	// The new agent settles the move (the destination aborts its incoming
	// copy after IncomingTimeout, then the source resumes ownership).
	for {
		x, err := a.c.Inspect(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if x.Phase == api.PhaseRunning && x.Busy == "" && !x.Stale {
			if x.Epoch != 1 {
				t.Fatalf("settled at epoch %d, want 1", x.Epoch)
			}
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("move never settled: %+v", x)
		case <-time.After(500 * time.Millisecond):
		}
	}
	skip := len(a.counters(ctx, id))
	got := a.waitNew(ctx, id, skip)
	all := a.counters(ctx, id)
	if got[0] <= all[0] {
		t.Fatalf("counter reset on the source: %v", tail(all))
	}
	wantLive(ctx, t, id, a, 1, b, 0)
	if err := a.c.Stop(ctx, id, 1); err != nil {
		t.Fatal(err)
	}
}

// wantLive waits (up to 30 s: a copy's state settles shortly after a move,
// e.g. QEMU's RESUME event) until a runs wantA live copies of id and b
// wantB, failing at once if the two ever run more than one together.
func wantLive(ctx context.Context, t *testing.T, id string, a *node, wantA int, b *node, wantB int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		na, nb := a.live(ctx, id), b.live(ctx, id)
		if na+nb > 1 {
			t.Fatalf("%d live copies of %s on %s and %d on %s", na, id, a.name, nb, b.name)
		}
		if na == wantA && nb == wantB {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("live copies of %s: %d on %s, %d on %s; want %d, %d", id, na, a.name, nb, b.name, wantA, wantB)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
