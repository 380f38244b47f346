package agent

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/agent/client"
	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/pki"
)

// Process tasks: run, logs, stats, suspend on A and resume on B from A's
// image, checkpoint-migrate B → A, stop — the counter never resets.
func TestProcessLifeCycleAndMoves(t *testing.T) {
	t.Parallel()
	ctx, a, b := processPair(t, 3*time.Minute)

	if h, err := a.c.Health(ctx); err != nil || !h.OK || h.Name != "node-a" {
		t.Fatalf("health: %+v %v", h, err)
	}
	info, err := a.c.Node(ctx)
	if err != nil || info.MemoryBytes != 4<<30 || len(info.Drivers) != 1 || info.Drivers[0] != "process" {
		t.Fatalf("node: %+v %v", info, err)
	}
	task, err := a.c.Run(ctx, api.RunRequest{Spec: counterSpec("job1", nil)})
	if err != nil {
		t.Fatal(err)
	}
	if task.Epoch != 1 || task.Phase != api.PhaseRunning || task.Driver != "process" {
		t.Fatalf("run returned %+v", task)
	}
	cs := a.waitCounter(ctx, "job1", 3)
	if _, err := a.c.Stats(ctx, "job1"); err != nil {
		t.Fatal(err)
	}
	if info, _ := a.c.Node(ctx); info.UsedMemoryBytes != 64<<20 {
		t.Fatalf("used memory %d, want %d", info.UsedMemoryBytes, 64<<20)
	}

	// Suspend on A, resume on B from A's image: epoch 2 on B.
	sus, err := a.c.Suspend(ctx, "job1", 1)
	if err != nil {
		t.Fatal(err)
	}
	if sus.Phase != api.PhaseSuspended || sus.Image == nil || sus.Image.Bytes == 0 {
		t.Fatalf("suspend returned %+v", sus)
	}
	last := a.counters(ctx, "job1")
	before := last[len(last)-1]
	if before < cs[len(cs)-1] {
		t.Fatalf("counter went back before suspend")
	}
	if err := a.c.Grant(ctx, "job1", api.GrantRequest{Epoch: 1, To: b.addr}); err != nil {
		t.Fatal(err)
	}
	res, err := b.c.Resume(ctx, "job1", api.ResumeRequest{Epoch: 1, From: a.addr})
	if err != nil {
		t.Fatal(err)
	}
	if res.Epoch != 2 || res.Phase != api.PhaseRunning {
		t.Fatalf("resume on B returned %+v", res)
	}
	cs = b.waitCounter(ctx, "job1", before)
	if cs[0] != before+1 {
		t.Fatalf("after resume on B the counter starts at %d, want %d (continuing)", cs[0], before+1)
	}
	// A no longer owns it: its epoch-1 commands are refused.
	_, err = a.c.Resume(ctx, "job1", api.ResumeRequest{Epoch: 1})
	wantKind(t, "resume at A after the move", err, api.ErrStaleEpoch)
	_, err = b.c.Suspend(ctx, "job1", 1)
	wantKind(t, "suspend with the old epoch", err, api.ErrStaleEpoch)
	if n := a.live(ctx, "job1"); n != 0 {
		t.Fatalf("A still runs %d copies", n)
	}

	// Checkpoint-migrate B → A (the process driver cannot live-migrate).
	var steps []string
	ev, err := b.c.Migrate(ctx, "job1", api.MigrateRequest{Epoch: 2, To: a.addr}, func(e api.MigrateEvent) { steps = append(steps, e.Step) })
	if err != nil {
		t.Fatal(err)
	}
	if ev.Epoch != 3 || ev.Mode != "checkpoint" {
		t.Fatalf("migrate returned %+v", ev)
	}
	want := []string{"begin", "perform", "finish", "confirm", "done"}
	if !reflect.DeepEqual(steps, want) {
		t.Fatalf("steps %v, want %v", steps, want)
	}
	bcs := b.counters(ctx, "job1")
	cs = a.waitCounter(ctx, "job1", bcs[len(bcs)-1])
	// A's log holds both incarnations; the new one continues B's count.
	if !continues(cs, bcs[len(bcs)-1]) {
		t.Fatalf("counter did not continue from %d on A: %v", bcs[len(bcs)-1], tail(cs))
	}
	if n := a.live(ctx, "job1") + b.live(ctx, "job1"); n != 1 {
		t.Fatalf("%d live copies after the move, want 1", n)
	}
	if _, err := b.c.Inspect(ctx, "job1"); err != nil {
		t.Fatalf("inspect of the tombstone at B: %v", err)
	}
	if err := a.c.Stop(ctx, "job1", 3); err != nil {
		t.Fatal(err)
	}
	_, err = a.c.Inspect(ctx, "job1")
	wantKind(t, "inspect after stop", err, driver.ErrNotFound)
}

// continues reports whether cs holds after+1 following a value ≤ after
// (the new incarnation picked up where the old one stopped).
func continues(cs []int64, after int64) bool {
	for i, c := range cs {
		if c == after+1 && (i == 0 || cs[i-1] <= after) {
			return true
		}
	}
	return false
}

// Bad requests get clear errors of the right kind and change nothing.
func TestBadRequestsChangeNothing(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ca := newTestCA(t)
	a := startNode(t, ca, "node-a", processDrivers(t), nil)
	b := startNode(t, ca, "node-b", processDrivers(t), nil)
	if _, err := a.c.Run(ctx, api.RunRequest{Spec: counterSpec("j", map[string]string{"FERRY_AGENT_TEST_SLOW": "3s"})}); err != nil {
		t.Fatal(err)
	}
	a.waitCounter(ctx, "j", 1)
	before, err := a.c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}

	_, err = a.c.Inspect(ctx, "nope")
	wantKind(t, "unknown task", err, driver.ErrNotFound)
	err = a.c.Stop(ctx, "nope", 1)
	wantKind(t, "stop unknown task", err, driver.ErrNotFound)
	_, err = a.c.Inspect(ctx, "../etc")
	if err == nil {
		t.Fatal("bad id accepted")
	}

	bad := counterSpec("", nil)
	_, err = a.c.Run(ctx, api.RunRequest{Spec: bad})
	wantKind(t, "empty id", err, driver.ErrInvalidSpec)
	bad = counterSpec("x", nil)
	bad.Process = nil
	_, err = a.c.Run(ctx, api.RunRequest{Spec: bad})
	wantKind(t, "no vm and no process", err, driver.ErrInvalidSpec)
	bad = counterSpec("x", nil)
	bad.Process.Command = nil
	_, err = a.c.Run(ctx, api.RunRequest{Spec: bad})
	wantKind(t, "empty command", err, driver.ErrInvalidSpec)
	_, err = a.c.Run(ctx, api.RunRequest{Driver: "xen", Spec: counterSpec("x", nil)})
	wantKind(t, "unknown driver", err, driver.ErrUnsupported)
	big := counterSpec("x", nil)
	big.MemoryBytes = 5 << 30
	_, err = a.c.Run(ctx, api.RunRequest{Spec: big})
	wantKind(t, "memory larger than the node", err, driver.ErrInsufficient)
	_, err = a.c.Run(ctx, api.RunRequest{Spec: counterSpec("j", nil)})
	wantKind(t, "run an existing task", err, driver.ErrExists)

	// Malformed JSON and unknown fields, straight over HTTP.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: ca.identity("controller", pki.RoleServer).ClientConfig()}}
	for _, body := range []string{`{"spec":`, `{"spec":{"id":"x"},"bogus":1}`, `[]`} {
		resp, err := hc.Post("https://"+a.addr+"/v1/tasks", "application/json", stringsReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("body %q: status %d, want 400", body, resp.StatusCode)
		}
	}

	err = a.c.Stop(ctx, "j", 7)
	wantKind(t, "stop with a stale epoch", err, api.ErrStaleEpoch)
	_, err = a.c.Suspend(ctx, "j", 0)
	wantKind(t, "suspend without epoch", err, driver.ErrInvalidSpec)
	_, err = a.c.Migrate(ctx, "j", api.MigrateRequest{Epoch: 1, To: b.addr, Mode: "live"}, nil)
	wantKind(t, "live migration of a process", err, driver.ErrUnsupported)
	_, err = a.c.Migrate(ctx, "j", api.MigrateRequest{Epoch: 1, To: a.addr}, nil)
	wantKind(t, "migrate to itself", err, driver.ErrInvalidSpec)
	err = a.c.Cancel(ctx, "j", 1)
	wantKind(t, "cancel without a move", err, driver.ErrNotFound)

	// A second command while the task is suspending (its checkpoint takes
	// 3 s) is refused as busy.
	done := make(chan error, 1)
	go func() { _, err := a.c.Suspend(ctx, "j", 1); done <- err }()
	for {
		x, err := a.c.Inspect(ctx, "j")
		if err != nil {
			t.Fatal(err)
		}
		if x.Busy == "suspend" {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	_, err = a.c.Migrate(ctx, "j", api.MigrateRequest{Epoch: 1, To: b.addr}, nil)
	wantKind(t, "migrate during suspend", err, driver.ErrBusy)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := a.c.Resume(ctx, "j", api.ResumeRequest{Epoch: 1}); err != nil {
		t.Fatal(err)
	}

	// Roles: a client may read but not command; peers only for agents.
	reader := client.New(a.addr, ca.identity("operator", pki.RoleClient).ClientConfig())
	if _, err := reader.List(ctx); err != nil {
		t.Fatalf("client role list: %v", err)
	}
	err = reader.Stop(ctx, "j", 1)
	wantKind(t, "client role stop", err, api.ErrForbidden)
	_, err = a.c.Prepare(ctx, api.PrepareRequest{Spec: counterSpec("p", nil)})
	wantKind(t, "controller calls a peer endpoint", err, api.ErrForbidden)

	// A client without a valid certificate never gets in.
	other := newTestCA(t)
	stranger := client.New(a.addr, other.identity("controller", pki.RoleServer).ClientConfig())
	if _, err := stranger.List(ctx); err == nil {
		t.Fatal("foreign client accepted")
	}
	noCert := ca.identity("controller", pki.RoleServer).ClientConfig()
	noCert.Certificates = nil
	if _, err := client.New(a.addr, noCert).List(ctx); err == nil {
		t.Fatal("client without certificate accepted")
	}
	insecure := client.New(a.addr, &tls.Config{InsecureSkipVerify: true})
	if _, err := insecure.List(ctx); err == nil {
		t.Fatal("client without certificate (skipping server verification) accepted")
	}

	after, err := a.c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) || after[0].ID != "j" || after[0].Epoch != 1 || after[0].Phase != api.PhaseRunning {
		t.Fatalf("state changed: before %+v after %+v", before, after)
	}
	if n := b.live(ctx, "j"); n != 0 {
		t.Fatalf("B runs %d copies", n)
	}
}

// An agent restart re-attaches to running tasks; a copy without a record is
// reported stale.
func TestRestartReattaches(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ca := newTestCA(t)
	a := startNode(t, ca, "node-a", processDrivers(t), nil)
	if _, err := a.c.Run(ctx, api.RunRequest{Spec: counterSpec("r", nil)}); err != nil {
		t.Fatal(err)
	}
	cs := a.waitCounter(ctx, "r", 2)
	// logs?tail=0&follow=1 streams only new output.
	fctx, fcancel := context.WithTimeout(ctx, time.Minute)
	rc, err := a.c.Logs(fctx, "r", 0, true)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(rc)
	var followed []string
	for len(followed) < 3 && sc.Scan() {
		followed = append(followed, sc.Text())
	}
	fcancel()
	rc.Close()
	if len(followed) < 3 {
		t.Fatalf("follow gave %q", followed)
	}
	// (The first line may be the tail of one being written: skip it.)
	var next int64
	if _, err := fmt.Sscanf(followed[1], "counter %d", &next); err != nil || next <= cs[len(cs)-1] {
		t.Fatalf("follow gave %q, want counters after %d", followed, cs[len(cs)-1])
	}
	// A copy the agent has no record of (started behind its back).
	if err := a.drivers[0].Start(ctx, counterSpec("orphan", nil)); err != nil {
		t.Fatal(err)
	}
	a.restart()
	a.waitCounter(ctx, "r", cs[len(cs)-1]+5)
	all := a.counters(ctx, "r")
	for i := 1; i < len(all); i++ {
		if all[i] != all[i-1]+1 {
			t.Fatalf("counter restarted across the agent restart: %v", all)
		}
	}
	ts, err := a.c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var sawOrphan, sawR bool
	for _, x := range ts {
		switch x.ID {
		case "orphan":
			sawOrphan = x.Stale && x.StaleReason != ""
		case "r":
			sawR = !x.Stale && x.Phase == api.PhaseRunning && x.Epoch == 1
		}
	}
	if !sawOrphan || !sawR {
		t.Fatalf("after restart: %+v", ts)
	}
}

// A destination without the disk space for an image refuses it before any
// byte moves, with either image transfer; the image stays the source's,
// suspended and resumable there.
func TestResumeRefusedWithoutDiskSpace(t *testing.T) {
	t.Parallel()
	for _, transfer := range []string{ImageTransferCAS, ImageTransferTar} {
		t.Run(transfer, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			ca := newTestCA(t)
			a := startNode(t, ca, "node-a", processDrivers(t), nil)
			b := startNode(t, ca, "node-b", processDrivers(t), func(c *Config) {
				c.FreeSpace = func(string) (int64, error) { return 1 << 20, nil }
				c.ImageTransfer = transfer
			})
			if _, err := a.c.Run(ctx, api.RunRequest{Spec: counterSpec("big", nil)}); err != nil {
				t.Fatal(err)
			}
			a.waitCounter(ctx, "big", 2)
			if _, err := a.c.Suspend(ctx, "big", 1); err != nil {
				t.Fatal(err)
			}
			if err := a.c.Grant(ctx, "big", api.GrantRequest{Epoch: 1, To: b.addr}); err != nil {
				t.Fatal(err)
			}
			_, err := b.c.Resume(ctx, "big", api.ResumeRequest{Epoch: 1, From: a.addr})
			wantKind(t, "resume without disk space", err, driver.ErrInsufficient)
			if _, err := b.c.Inspect(ctx, "big"); !errors.Is(err, driver.ErrNotFound) {
				t.Fatalf("destination after the refusal: %v", err)
			}
			x, err := a.c.Inspect(ctx, "big")
			if err != nil || x.Phase != api.PhaseSuspended || x.Epoch != 1 {
				t.Fatalf("source after the refusal: %+v %v", x, err)
			}
			if _, err := a.c.Resume(ctx, "big", api.ResumeRequest{Epoch: 1}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// With ImageTransferStream the source streams the checkpoint while the
// job writes it: the move commits epoch+1 at the destination, which
// continues the count, one live copy. Against a destination without the
// room for the estimate the move is refused before the job is asked:
// nothing changed on either node, the job still runs its first
// incarnation.
func TestProcessStreamedMigration(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ca := newTestCA(t)
	stream := func(c *Config) { c.ImageTransfer = ImageTransferStream }
	a := startNode(t, ca, "node-a", processDrivers(t), stream)
	b := startNode(t, ca, "node-b", processDrivers(t), stream)
	small := startNode(t, ca, "node-c", processDrivers(t), func(c *Config) {
		c.FreeSpace = func(string) (int64, error) { return 1 << 20, nil }
	})
	if _, err := a.c.Run(ctx, api.RunRequest{Spec: counterSpec("s", nil)}); err != nil {
		t.Fatal(err)
	}
	a.waitCounter(ctx, "s", 2)

	_, err := a.c.Migrate(ctx, "s", api.MigrateRequest{Epoch: 1, To: small.addr, Mode: "checkpoint"}, nil)
	wantKind(t, "streamed move to a node without room", err, driver.ErrInsufficient)
	if _, err := small.c.Inspect(ctx, "s"); !errors.Is(err, driver.ErrNotFound) {
		t.Fatalf("destination after the refusal: %v", err)
	}
	x, err := a.c.Inspect(ctx, "s")
	if err != nil || x.Phase != api.PhaseRunning || x.Epoch != 1 {
		t.Fatalf("source after the refusal: %+v %v", x, err)
	}
	rc, err := a.c.Logs(ctx, "s", -1, false)
	if err != nil {
		t.Fatal(err)
	}
	log, _ := io.ReadAll(rc)
	rc.Close()
	if strings.Contains(string(log), "restored") {
		t.Fatalf("the refused move checkpointed the job:\n%s", log)
	}

	var steps []string
	ev, err := a.c.Migrate(ctx, "s", api.MigrateRequest{Epoch: 1, To: b.addr, Mode: "checkpoint"}, func(e api.MigrateEvent) { steps = append(steps, e.Step) })
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"begin", "perform", "finish", "confirm", "done"}; ev.Epoch != 2 || !reflect.DeepEqual(steps, want) {
		t.Fatalf("migrate returned %+v after %v", ev, steps)
	}
	acs := a.counters(ctx, "s")
	cs := b.waitCounter(ctx, "s", acs[len(acs)-1])
	if !continues(cs, acs[len(acs)-1]) {
		t.Fatalf("counter did not continue from %d on B: %v", acs[len(acs)-1], tail(cs))
	}
	if n := a.live(ctx, "s") + b.live(ctx, "s"); n != 1 {
		t.Fatalf("%d live copies after the move, want 1", n)
	}
	// And back, streamed again, at epoch 3.
	if ev, err := b.c.Migrate(ctx, "s", api.MigrateRequest{Epoch: 2, To: a.addr, Mode: "checkpoint"}, nil); err != nil || ev.Epoch != 3 {
		t.Fatalf("move back: %+v %v", ev, err)
	}
	bcs := b.counters(ctx, "s")
	cs = a.waitCounter(ctx, "s", bcs[len(bcs)-1])
	if !continues(cs, bcs[len(bcs)-1]) {
		t.Fatalf("counter did not continue from %d on A: %v", bcs[len(bcs)-1], tail(cs))
	}
	_, err = b.c.Suspend(ctx, "s", 2)
	wantKind(t, "suspend at B with the old epoch", err, api.ErrStaleEpoch)
}

// A checkpoint move's image, plain or streamed, goes only to the agent
// whose certificate the move's address presents: another agent that knows
// the task and epoch is refused, and nothing changes (review finding 4).
func TestImageFetchOnlyByTheDestination(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ca := newTestCA(t)
	a := startNode(t, ca, "node-a", processDrivers(t), nil)
	b := startNode(t, ca, "node-b", processDrivers(t), nil)
	name, err := a.agent.peerName(ctx, b.addr)
	if err != nil || name != "node-b" {
		t.Fatalf("name at %s: %q %v, want node-b", b.addr, name, err)
	}
	fetcher := func(who string) *client.Client {
		c := client.New(a.addr, ca.identity(who, pki.RoleAgent).ClientConfig())
		t.Cleanup(c.Close)
		return c
	}
	dir := a.agent.store.imageDir("x")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "state"), []byte("memory"), 0o600); err != nil {
		t.Fatal(err)
	}
	rec := &record{ID: "x", Driver: "process", Epoch: 1, Phase: api.PhaseMigratingOut, Mode: "checkpoint",
		Peer: b.addr, PeerName: "node-b", Spec: counterSpec("x", nil), Image: &driver.Image{Dir: dir, Bytes: 6}}
	a.agent.mu.Lock()
	err = a.agent.putLocked(rec)
	a.agent.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	unchanged := func(what string) {
		t.Helper()
		a.agent.mu.Lock()
		got := *a.agent.records["x"]
		a.agent.mu.Unlock()
		if got.Phase != rec.Phase || got.Mode != rec.Mode || got.PeerName != rec.PeerName || got.Epoch != rec.Epoch {
			t.Fatalf("%s changed the record: %+v", what, got)
		}
	}

	_, err = fetcher("node-c").FetchImage(ctx, "x", 1)
	wantKind(t, "plain fetch by another agent", err, api.ErrForbidden)
	if !strings.Contains(err.Error(), `node "node-c" may not fetch`) {
		t.Fatalf("the refusal does not name the caller: %v", err)
	}
	unchanged("a refused plain fetch")
	rc, err := fetcher("node-b").FetchImage(ctx, "x", 1)
	if err != nil {
		t.Fatalf("plain fetch by the destination: %v", err)
	}
	io.Copy(io.Discard, rc)
	rc.Close()

	// Streamed: the slot the migration waits on is left to the destination.
	slot := &liveOut{conn: make(chan io.ReadWriter, 1), done: make(chan struct{})}
	a.agent.mu.Lock()
	a.agent.liveOuts["x"] = slot
	a.agent.mu.Unlock()
	_, _, err = fetcher("node-c").FetchImageLive(ctx, "x", 1)
	wantKind(t, "streamed fetch by another agent", err, api.ErrForbidden)
	if len(slot.conn) != 0 {
		t.Fatal("a refused streamed fetch was handed to the migration")
	}
	unchanged("a refused streamed fetch")
	conn, _, err := fetcher("node-b").FetchImageLive(ctx, "x", 1)
	if err != nil {
		t.Fatalf("streamed fetch by the destination: %v", err)
	}
	defer conn.Close()
	select {
	case <-slot.conn:
	case <-ctx.Done():
		t.Fatal("the destination's streamed fetch did not reach the migration")
	}
	close(slot.done)
}

// A streamed move that fails after the job was asked: the checkpoint
// grows past the room the destination answered (the estimate fitted). The
// source, suspended by then, learns that the destination committed
// nothing and resumes the task from its own checkpoint at the same epoch:
// nothing at the destination, one live copy (review finding 7).
func TestProcessStreamedMoveFailsAfterTheJobWasAsked(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ca := newTestCA(t)
	a := startNode(t, ca, "node-a", processDrivers(t), func(c *Config) { c.ImageTransfer = ImageTransferStream })
	// Room for the job's resident memory (the estimate), not for its
	// 96 MiB checkpoint.
	b := startNode(t, ca, "node-b", processDrivers(t), func(c *Config) {
		c.FreeSpace = func(string) (int64, error) { return 64 << 20, nil }
	})
	if _, err := a.c.Run(ctx, api.RunRequest{Spec: counterSpec("s", map[string]string{"FERRY_AGENT_TEST_BALLAST": strconv.Itoa(96 << 20)})}); err != nil {
		t.Fatal(err)
	}
	a.waitCounter(ctx, "s", 2)

	_, err := a.c.Migrate(ctx, "s", api.MigrateRequest{Epoch: 1, To: b.addr, Mode: "checkpoint"}, nil)
	wantKind(t, "streamed move past the destination's room", err, driver.ErrInsufficient)
	if !strings.Contains(err.Error(), "resumed here") {
		t.Fatalf("the move failed before the job was asked, or the source did not resume: %v", err)
	}
	x, err := a.c.Inspect(ctx, "s")
	if err != nil || x.Phase != api.PhaseRunning || x.Epoch != 1 {
		t.Fatalf("source after the failed move: %+v %v", x, err)
	}
	if _, err := b.c.Inspect(ctx, "s"); !errors.Is(err, driver.ErrNotFound) {
		t.Fatalf("destination after the failed move: %v", err)
	}
	if ents, err := os.ReadDir(b.agent.store.taskDir("s")); err == nil && len(ents) != 0 {
		t.Fatalf("the destination kept %v", ents)
	}
	// Resumed from its checkpoint: the counter goes on, not from zero.
	acs := a.counters(ctx, "s")
	cs := a.waitCounter(ctx, "s", acs[len(acs)-1]+2)
	if !continues(cs, acs[len(acs)-1]) {
		t.Fatalf("counter did not continue from %d on A: %v", acs[len(acs)-1], tail(cs))
	}
	if n := a.live(ctx, "s") + b.live(ctx, "s"); n != 1 {
		t.Fatalf("%d live copies after the failed move, want 1", n)
	}
	// And the task still moves where there is room.
	c := startNode(t, ca, "node-c", processDrivers(t), nil)
	if ev, err := a.c.Migrate(ctx, "s", api.MigrateRequest{Epoch: 1, To: c.addr, Mode: "checkpoint"}, nil); err != nil || ev.Epoch != 2 {
		t.Fatalf("move to a node with room: %+v %v", ev, err)
	}
}
