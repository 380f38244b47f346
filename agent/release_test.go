package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/agent/client"
	"github.com/ferrycluster/ferry/driver"
)

// Tests of who may fetch and release a task's image (mayActLocked): a
// third agent with a valid cluster certificate is refused and changes
// nothing, and the real destination still completes.

// threeNodes starts process agents A, B and C of one cluster, with the
// counter task "job" (env added to its job's) running on A at epoch 1.
func threeNodes(t *testing.T, env map[string]string) (context.Context, *node, *node, *node) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	ca := newTestCA(t)
	a := startNode(t, ca, "node-a", processDrivers(t), nil)
	b := startNode(t, ca, "node-b", processDrivers(t), nil)
	c := startNode(t, ca, "node-c", processDrivers(t), nil)
	if _, err := a.c.Run(ctx, api.RunRequest{Spec: counterSpec("job", env)}); err != nil {
		t.Fatal(err)
	}
	a.waitCounter(ctx, "job", 3)
	return ctx, a, b, c
}

// suspendJob suspends "job" on n at epoch 1 and returns its last counter.
func (n *node) suspendJob(ctx context.Context) int64 {
	n.t.Helper()
	if _, err := n.c.Suspend(ctx, "job", 1); err != nil {
		n.t.Fatal(err)
	}
	cs := n.counters(ctx, "job")
	return cs[len(cs)-1]
}

// grantJob grants n's suspended image of "job" at epoch 1 to the agent
// to, as the controller does before it asks to to resume the task.
func (n *node) grantJob(ctx context.Context, to *node) {
	n.t.Helper()
	if err := n.c.Grant(ctx, "job", api.GrantRequest{Epoch: 1, To: to.addr}); err != nil {
		n.t.Fatalf("grant of job at %s to %s: %v", n.name, to.name, err)
	}
}

// resumeFrom resumes "job" on n from its image at epoch 1 on from, as the
// controller asks (the grant at from, then the resume at n), and checks
// that its counter continues from last.
func (n *node) resumeFrom(ctx context.Context, from *node, last int64) {
	n.t.Helper()
	from.grantJob(ctx, n)
	res, err := n.c.Resume(ctx, "job", api.ResumeRequest{Epoch: 1, From: from.addr})
	if err != nil || res.Epoch != 2 {
		n.t.Fatalf("resume on %s from %s: %+v %v", n.name, from.name, res, err)
	}
	n.continuesFrom(ctx, last)
}

// continuesFrom waits for "job" on n to print a counter above last and
// fails unless the first it printed is last+1.
func (n *node) continuesFrom(ctx context.Context, last int64) {
	n.t.Helper()
	if cs := n.waitCounter(ctx, "job", last); cs[0] != last+1 {
		n.t.Fatalf("on %s the counter starts at %d, want %d", n.name, cs[0], last+1)
	}
}

// tombstoneTo fails unless n's record of "job" is the tombstone of its
// move to the agent to at epoch 2 (pointing to its address, bound to its
// name), and returns it.
func (n *node) tombstoneTo(to *node) record {
	n.t.Helper()
	r := n.rec("job")
	if r.Phase != api.PhaseMoved || r.Epoch != 2 || r.Peer != to.addr || r.PeerName != to.name {
		n.t.Fatalf("%s's record is %+v, want a tombstone at epoch 2 pointing to %s, bound to %s", n.name, r, to.addr, to.name)
	}
	return r
}

// unbound fails unless n's record of "job" is suspended and bound to
// nobody, as a give-back leaves it.
func (n *node) unbound() {
	n.t.Helper()
	if r := n.rec("job"); r.Phase != api.PhaseSuspended || r.PeerName != "" {
		n.t.Fatalf("%s's record is %+v, want suspended and bound to nobody", n.name, r)
	}
}

// oneLiveCopy fails unless exactly one copy of "job" runs on nodes.
func oneLiveCopy(ctx context.Context, t *testing.T, nodes ...*node) {
	t.Helper()
	n := 0
	for _, x := range nodes {
		n += x.live(ctx, "job")
	}
	if n != 1 {
		t.Fatalf("%d live copies, want 1", n)
	}
}

// rec is a copy of n's record of task id (zero: none).
func (n *node) rec(id string) record {
	n.agent.mu.Lock()
	defer n.agent.mu.Unlock()
	if r, ok := n.agent.records[id]; ok {
		return *r
	}
	return record{}
}

// peerOf is a client of the agent at addr with n's certificate, as n's
// own calls to its peers have.
func (n *node) peerOf(addr string) *client.Client {
	c := n.agent.peer(addr)
	n.t.Cleanup(c.Close)
	return c
}

// refused checks that err is the refusal of caller, naming the node the
// image is bound to (bound; "" none).
func refused(t *testing.T, what string, err error, caller, bound string) {
	t.Helper()
	want := fmt.Sprintf("node %q may not", caller)
	if bound != "" {
		want = fmt.Sprintf("bound to node %q; %s", bound, want)
	}
	refusedAs(t, what, err, want)
}

// refusedAs checks that err is a refusal saying why.
func refusedAs(t *testing.T, what string, err error, why string) {
	t.Helper()
	wantKind(t, what, err, api.ErrForbidden)
	if !strings.Contains(err.Error(), why) {
		t.Fatalf("%s: the refusal %q does not say %q", what, err, why)
	}
}

// sameRecord fails unless got is want (its last write included).
func sameRecord(t *testing.T, what string, got, want record) {
	t.Helper()
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
		t.Fatalf("%s changed the record:\n got %+v\nwant %+v", what, got, want)
	}
}

// A task suspended on A and resumed on B from A's image: the image is
// bound to B, granted it by the controller; a third agent C can neither release it
// (committed or given back) nor fetch it, before, during or after B's
// fetch, and nothing changes; B gives the image back, then resumes the
// task and A keeps a tombstone bound to B.
func TestReleaseOnlyByTheImagesFetcher(t *testing.T) {
	t.Parallel()
	ctx, a, b, c := threeNodes(t, nil)
	rogue, fetcher := c.peerOf(a.addr), b.peerOf(a.addr)
	forged := api.ReleaseRequest{Epoch: 2, Peer: c.addr, Committed: true}
	before := a.rec("job")
	refused(t, "release of a running task", rogue.Release(ctx, "job", forged), "node-c", "")
	sameRecord(t, "a refused release of a running task", a.rec("job"), before)
	if n := a.live(ctx, "job"); n != 1 {
		t.Fatalf("A runs %d copies after a refused release, want 1", n)
	}

	last := a.suspendJob(ctx)
	before = a.rec("job")
	refused(t, "release of a suspended image", rogue.Release(ctx, "job", forged), "node-c", "")
	sameRecord(t, "a refused release of a suspended image", a.rec("job"), before)

	// B begins a fetch: the image is B's until B releases it.
	a.grantJob(ctx, b)
	conn, _, err := fetcher.FetchImageTar(ctx, "job", 1)
	if err != nil {
		t.Fatal(err)
	}
	before = a.rec("job")
	if before.Phase != api.PhaseMigratingOut || before.Mode != "fetch" || before.PeerName != "node-b" {
		t.Fatalf("during B's fetch A's record is %+v, want migrating-out, fetch, bound to node-b", before)
	}
	refused(t, "committed release during B's fetch", rogue.Release(ctx, "job", forged), "node-c", "node-b")
	refused(t, "release during B's fetch", rogue.Release(ctx, "job", api.ReleaseRequest{Epoch: 1, Peer: c.addr}), "node-c", "node-b")
	_, err = rogue.FetchImage(ctx, "job", 1)
	refused(t, "plain fetch during B's fetch", err, "node-c", "node-b")
	_, _, err = rogue.FetchImageStream(ctx, "job", 1)
	refused(t, "chunk fetch during B's fetch", err, "node-c", "node-b")
	// The epoch rules bind B too: a commit only at epoch+1, a give-back
	// only at the epoch.
	for _, req := range []api.ReleaseRequest{{Epoch: 3, Peer: b.addr, Committed: true}, {Epoch: 2, Peer: b.addr}} {
		wantKind(t, fmt.Sprintf("B's release %+v during its fetch", req), fetcher.Release(ctx, "job", req), api.ErrStaleEpoch)
	}
	sameRecord(t, "refused releases and fetches", a.rec("job"), before)
	// The controller's grant repeated during B's fetch (a retried action)
	// is answered and changes nothing; one to C is busy.
	a.grantJob(ctx, b)
	wantKind(t, "a grant to C during B's fetch", a.c.Grant(ctx, "job", api.GrantRequest{Epoch: 1, To: c.addr}), driver.ErrBusy)
	sameRecord(t, "grants during B's fetch", a.rec("job"), before)
	if _, err := os.Stat(a.agent.store.imageDir("job")); err != nil {
		t.Fatalf("A's image after refused releases: %v", err)
	}

	// B gives the image back; then the controller's resume on B completes.
	fmt.Fprintf(conn, "ERR the test gives it back\n")
	conn.Close()
	if err := fetcher.Release(ctx, "job", api.ReleaseRequest{Epoch: 1, Peer: b.addr}); err != nil {
		t.Fatalf("B gives the image back: %v", err)
	}
	a.unbound()
	_, err = fetcher.FetchImage(ctx, "job", 1)
	refused(t, "B's fetch after it gave the image back", err, "node-b", "")
	b.resumeFrom(ctx, a, last)
	tomb := a.tombstoneTo(b)
	oneLiveCopy(ctx, t, a, b)
	// The tombstone: B repeating its release is answered, C is refused.
	if err := fetcher.Release(ctx, "job", api.ReleaseRequest{Epoch: 2, Peer: b.addr, Committed: true}); err != nil {
		t.Fatalf("B's repeated release: %v", err)
	}
	refused(t, "release of the tombstone", rogue.Release(ctx, "job", api.ReleaseRequest{Epoch: 3, Peer: c.addr, Committed: true}), "node-c", "node-b")
	sameRecord(t, "releases of the tombstone", a.rec("job"), tomb)
}

// A checkpoint move A → B: while A suspends the task (slowly), C's forged
// releases are refused and change nothing; the move then commits at B.
func TestCheckpointMoveReleasedOnlyByItsDestination(t *testing.T) {
	t.Parallel()
	ctx, a, b, c := threeNodes(t, map[string]string{"FERRY_AGENT_TEST_SLOW": "2s"})
	rogue := c.peerOf(a.addr)
	moved := make(chan error, 1)
	var ev api.MigrateEvent
	go func() {
		var err error
		ev, err = a.c.Migrate(ctx, "job", api.MigrateRequest{Epoch: 1, To: b.addr, Mode: "checkpoint"}, nil)
		moved <- err
	}()
	for r := a.rec("job"); r.PeerName != "node-b"; r = a.rec("job") {
		select {
		case err := <-moved:
			t.Fatalf("the move ended (%v) before A bound it to node-b", err)
		case <-ctx.Done():
			t.Fatalf("A never bound the move to node-b: %+v", a.rec("job"))
		case <-time.After(5 * time.Millisecond):
		}
	}
	for _, req := range []api.ReleaseRequest{{Epoch: 2, Peer: c.addr, Committed: true}, {Epoch: 1, Peer: c.addr}} {
		refused(t, fmt.Sprintf("release %+v during the move", req), rogue.Release(ctx, "job", req), "node-c", "node-b")
		// Normally still suspending; a slow machine may have let the move
		// commit meanwhile, but never to C.
		if r := a.rec("job"); r.Peer != b.addr || r.PeerName != "node-b" || r.Phase != api.PhaseMigratingOut && r.Phase != api.PhaseMoved {
			t.Fatalf("after a refused release A's record is %+v", r)
		}
	}
	if err := <-moved; err != nil || ev.Epoch != 2 {
		t.Fatalf("the move: %+v %v", ev, err)
	}
	cs := a.counters(ctx, "job")
	b.continuesFrom(ctx, cs[len(cs)-1])
	a.tombstoneTo(b)
	oneLiveCopy(ctx, t, a, b)
}

// A restarts after B fetched the whole image and before B committed the
// task: the binding is in A's record, so C's release is still refused and
// B's committed release still makes A's image a tombstone — one copy, B's.
func TestFetchBindingSurvivesHolderRestart(t *testing.T) {
	t.Parallel()
	ctx, a, b, c := threeNodes(t, nil)
	rogue, fetcher := c.peerOf(a.addr), b.peerOf(a.addr)
	last := a.suspendJob(ctx)
	a.grantJob(ctx, b)
	var released error
	res, err := b.agent.resumeFetched(ctx, "job", api.ResumeRequest{Epoch: 1, From: a.addr}, imageSource{
		from: a.addr, what: "image",
		fetch: func(ctx context.Context, dir string) (*record, error) {
			prec, err := b.agent.receiveImageTar(ctx, a.addr, "job", 1, dir)
			if err != nil {
				return nil, err
			}
			a.restart()
			r := a.rec("job")
			if r.Phase != api.PhaseSuspended || r.Epoch != 1 || r.PeerName != "node-b" {
				t.Fatalf("after the restart A's record is %+v, want suspended at epoch 1, bound to node-b", r)
			}
			refused(t, "C's release after the restart", rogue.Release(ctx, "job", api.ReleaseRequest{Epoch: 2, Peer: c.addr, Committed: true}), "node-c", "node-b")
			sameRecord(t, "C's release after the restart", a.rec("job"), r)
			return prec, nil
		},
		check: func(*record) error { return nil },
		committed: func(epoch uint64) {
			released = fetcher.Release(ctx, "job", api.ReleaseRequest{Epoch: epoch, Peer: b.addr, Committed: true})
		},
	})
	if err != nil || res.Epoch != 2 || released != nil {
		t.Fatalf("resume on B: %+v %v; release at A: %v", res, err, released)
	}
	b.continuesFrom(ctx, last)
	a.tombstoneTo(b)
	if _, err := os.Stat(a.agent.store.imageDir("job")); !os.IsNotExist(err) {
		t.Fatalf("A's image after the move: %v, want gone", err)
	}
	oneLiveCopy(ctx, t, a, b)
}

// A third agent commands no task of another node: run, stop, suspend,
// pause, unpause, migrate and cancel are the controller's, and a resume an agent
// may ask only from its own image (the source of a checkpoint move asks
// its destination). Each refusal changes nothing; the controller's resume
// still moves the task.
func TestAgentAsksOnlyTheResumeOfItsOwnImage(t *testing.T) {
	t.Parallel()
	ctx, a, b, c := threeNodes(t, nil)
	rogueA, rogueB := c.peerOf(a.addr), c.peerOf(b.addr)
	before := a.rec("job")
	commands := map[string]error{"stop": rogueA.Stop(ctx, "job", 1), "cancel": rogueA.Cancel(ctx, "job", 1)}
	_, commands["suspend"] = rogueA.Suspend(ctx, "job", 1)
	_, commands["pause"] = rogueA.Pause(ctx, "job", 1)
	_, commands["unpause"] = rogueA.Unpause(ctx, "job", 1)
	_, commands["migrate"] = rogueA.Migrate(ctx, "job", api.MigrateRequest{Epoch: 1, To: c.addr, Mode: "checkpoint"}, nil)
	_, commands["run"] = rogueA.Run(ctx, api.RunRequest{Spec: counterSpec("other", nil)})
	for what, err := range commands {
		wantKind(t, "C's "+what+" at A", err, api.ErrForbidden)
	}
	sameRecord(t, "C's commands", a.rec("job"), before)
	if n := a.live(ctx, "job"); n != 1 {
		t.Fatalf("A runs %d copies after C's commands, want 1", n)
	}
	if _, err := a.c.Inspect(ctx, "other"); err == nil {
		t.Fatal("C's run started a task at A")
	}

	last := a.suspendJob(ctx)
	before = a.rec("job")
	// C's resume at A (a local one), else at B.
	resumeAt := func(req api.ResumeRequest) error {
		at := rogueB
		if req.From == "" {
			at = rogueA
		}
		_, err := at.Resume(ctx, "job", req)
		return err
	}
	resumes := map[string]api.ResumeRequest{
		"at B from A":         {Epoch: 1, From: a.addr},
		"at B from A replica": {Epoch: 1, From: a.addr, Replica: true},
		"at A from itself":    {Epoch: 1},
	}
	for what, req := range resumes {
		wantKind(t, "C's resume "+what, resumeAt(req), api.ErrForbidden)
	}
	// C's own replica, or a local resume: C may ask for neither, and the
	// refusal says why (not a failing dial or name check).
	for what, req := range map[string]api.ResumeRequest{"at B from C's replica": {Epoch: 1, From: c.addr, Replica: true}, "at A": {Epoch: 1}} {
		refusedAs(t, "C's resume "+what, resumeAt(req), "only to resume a task from its own image")
	}
	refusedAs(t, "C's resume at B from A", resumeAt(api.ResumeRequest{Epoch: 1, From: a.addr}), `from `+a.addr+`, which is node "node-a"`)
	// A `from` where nobody answers is a network error, not a refusal: it says
	// nothing of the caller (a checkpoint move's destination briefly cut
	// off from its source is not forbidden).
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	err = resumeAt(api.ResumeRequest{Epoch: 1, From: closed})
	if err == nil || errors.Is(err, api.ErrForbidden) || !strings.Contains(err.Error(), "whose certificate cannot be checked") {
		t.Fatalf("C's resume at B from %s, where nobody answers: %v, want a network error, not forbidden", closed, err)
	}
	sameRecord(t, "C's resumes", a.rec("job"), before)
	if r := b.rec("job"); r.ID != "" {
		t.Fatalf("C's resumes left a record at B: %+v", r)
	}
	b.resumeFrom(ctx, a, last)
}

// A suspended image is fetched only by the agent the controller granted it
// to: before any grant nobody may fetch it; after the grant to B, a third
// agent C fetching first (plain, tar, chunked) is refused naming node-b and
// changes nothing, nor can C grant itself the image; the binding survives a
// restart of A; a repeated grant changes nothing; the controller's resume
// on B then moves the task, and a grant repeated after the commit (a
// retried action) is answered.
func TestSuspendedImageFetchedOnlyByTheGrantedAgent(t *testing.T) {
	t.Parallel()
	ctx, a, b, c := threeNodes(t, nil)
	rogue := c.peerOf(a.addr)
	fetches := func(what, bound string) {
		t.Helper()
		_, err := rogue.FetchImage(ctx, "job", 1)
		refused(t, "C's plain fetch "+what, err, "node-c", bound)
		_, _, err = rogue.FetchImageTar(ctx, "job", 1)
		refused(t, "C's tar fetch "+what, err, "node-c", bound)
		_, _, err = rogue.FetchImageStream(ctx, "job", 1)
		refused(t, "C's chunk fetch "+what, err, "node-c", bound)
	}
	last := a.suspendJob(ctx)
	before := a.rec("job")
	fetches("before any grant", "")
	err := rogue.Grant(ctx, "job", api.GrantRequest{Epoch: 1, To: c.addr})
	wantKind(t, "C's grant to itself", err, api.ErrForbidden)
	err = a.c.Grant(ctx, "job", api.GrantRequest{Epoch: 1, To: a.addr})
	wantKind(t, "a grant to the holder itself", err, driver.ErrInvalidSpec)
	err = a.c.Grant(ctx, "job", api.GrantRequest{Epoch: 2, To: b.addr})
	wantKind(t, "a grant at another epoch", err, api.ErrStaleEpoch)
	sameRecord(t, "refused fetches and grants", a.rec("job"), before)

	a.grantJob(ctx, b)
	granted := a.rec("job")
	if granted.Phase != api.PhaseSuspended || granted.PeerName != "node-b" || granted.Epoch != 1 {
		t.Fatalf("after the grant A's record is %+v, want suspended at epoch 1, bound to node-b", granted)
	}
	fetches("after the grant to B", "node-b")
	refused(t, "C's release after the grant to B", rogue.Release(ctx, "job", api.ReleaseRequest{Epoch: 2, Peer: c.addr, Committed: true}), "node-c", "node-b")
	sameRecord(t, "C's fetches and release after the grant", a.rec("job"), granted)

	a.restart()
	if r := a.rec("job"); r.Phase != granted.Phase || r.PeerName != "node-b" || r.Epoch != 1 || !r.UpdatedAt.Equal(granted.UpdatedAt) || r.Image == nil || *r.Image != *granted.Image {
		t.Fatalf("after A's restart its record is %+v, want %+v", r, granted)
	}
	granted = a.rec("job")
	rogue = c.peerOf(a.addr)
	fetches("after A restarted", "node-b")
	a.grantJob(ctx, b)
	sameRecord(t, "a repeated grant", a.rec("job"), granted)
	if _, err := os.Stat(a.agent.store.imageDir("job")); err != nil {
		t.Fatalf("A's image after refused fetches: %v", err)
	}

	res, err := b.c.Resume(ctx, "job", api.ResumeRequest{Epoch: 1, From: a.addr})
	if err != nil || res.Epoch != 2 {
		t.Fatalf("resume on B from A: %+v %v", res, err)
	}
	b.continuesFrom(ctx, last)
	tomb := a.tombstoneTo(b)
	a.grantJob(ctx, b)
	err = a.c.Grant(ctx, "job", api.GrantRequest{Epoch: 1, To: c.addr})
	wantKind(t, "a grant to C after B committed", err, api.ErrStaleEpoch)
	sameRecord(t, "grants after the commit", a.rec("job"), tomb)
	oneLiveCopy(ctx, t, a, b, c)
}

// B's fetch of the image granted to it is cut before B gave it back or
// committed (B's agent went away): the image stays bound to B, so C may
// neither fetch it nor be granted it (busy); the controller's retry — the
// grant again, answered as done without a change, then the resume at B —
// completes with one copy, B's. Before, B's second fetch was busy too and
// only a restart of A freed the image.
func TestGrantedAgentFetchesAgainAfterACutFetch(t *testing.T) {
	t.Parallel()
	ctx, a, b, c := threeNodes(t, nil)
	last := a.suspendJob(ctx)
	a.grantJob(ctx, b)
	conn, _, err := b.peerOf(a.addr).FetchImageTar(ctx, "job", 1)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close() // no give-back: B's agent went away
	cut := a.rec("job")
	if cut.Phase != api.PhaseMigratingOut || cut.Mode != "fetch" || cut.PeerName != "node-b" {
		t.Fatalf("after B's cut fetch A's record is %+v, want migrating-out, fetch, bound to node-b", cut)
	}
	_, err = c.peerOf(a.addr).FetchImage(ctx, "job", 1)
	refused(t, "C's fetch of the image bound to B", err, "node-c", "node-b")
	wantKind(t, "a grant to C after B's cut fetch", a.c.Grant(ctx, "job", api.GrantRequest{Epoch: 1, To: c.addr}), driver.ErrBusy)
	a.grantJob(ctx, b)
	sameRecord(t, "grants after B's cut fetch", a.rec("job"), cut)
	b.resumeFrom(ctx, a, last)
	a.tombstoneTo(b)
	oneLiveCopy(ctx, t, a, b, c)
}

// cutByRestart grants B the image of "job" suspended on A, begins B's
// fetch and restarts A before B gave it back or committed: A's record is
// suspended and still bound to B (recover). It returns A's last counter
// and a client of A with B's certificate.
func cutByRestart(ctx context.Context, t *testing.T, a, b *node) (int64, *client.Client) {
	t.Helper()
	last := a.suspendJob(ctx)
	a.grantJob(ctx, b)
	conn, _, err := b.peerOf(a.addr).FetchImageTar(ctx, "job", 1)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	a.restart()
	if r := a.rec("job"); r.Phase != api.PhaseSuspended || r.PeerName != "node-b" {
		t.Fatalf("after the restart A's record is %+v, want suspended and bound to node-b", r)
	}
	return last, b.peerOf(a.addr)
}

// B gives back the image whose fetch A's restart cut: the binding goes,
// and the controller's resume on C (its grant, then C's fetch) moves the
// task, A keeping a tombstone bound to C.
func TestGiveBackAfterHolderRestart(t *testing.T) {
	t.Parallel()
	ctx, a, b, c := threeNodes(t, nil)
	last, fetcher := cutByRestart(ctx, t, a, b)
	if err := fetcher.Release(ctx, "job", api.ReleaseRequest{Epoch: 1, Peer: b.addr}); err != nil {
		t.Fatalf("B gives the image back after A's restart: %v", err)
	}
	a.unbound()
	c.resumeFrom(ctx, a, last)
	a.tombstoneTo(c)
	oneLiveCopy(ctx, t, a, b, c)
}

// A resumes the task whose fetch its restart cut: the binding goes, so B's
// late commit is refused as anyone's (the record binds nobody) and A's
// copy runs on.
func TestLocalResumeEndsTheBinding(t *testing.T) {
	t.Parallel()
	ctx, a, b, _ := threeNodes(t, nil)
	last, fetcher := cutByRestart(ctx, t, a, b)
	if _, err := a.c.Resume(ctx, "job", api.ResumeRequest{Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	a.waitCounter(ctx, "job", last)
	before := a.rec("job")
	refused(t, "B's late commit", fetcher.Release(ctx, "job", api.ReleaseRequest{Epoch: 2, Peer: b.addr, Committed: true}), "node-b", "")
	sameRecord(t, "B's late commit", a.rec("job"), before)
	oneLiveCopy(ctx, t, a, b)
}

// A release of a suspended image is checked and written under the task's
// busy mark, as a fetch, a grant and a local resume are: one that comes
// while the holder is busy with the task (here as a local resume is) is
// busy and changes nothing, rather than tombstoning or unbinding an image
// in use, and so is the controller's grant of the image to C (grantLocked);
// afterwards the release goes through and leaves no mark behind.
func TestReleaseOfASuspendedImageHonoursBusy(t *testing.T) {
	t.Parallel()
	ctx, a, b, c := threeNodes(t, nil)
	a.suspendJob(ctx)
	a.grantJob(ctx, b)
	before := a.rec("job")
	a.agent.mu.Lock()
	err := a.agent.acquireLocked("job", "resume")
	a.agent.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	fetcher := b.peerOf(a.addr)
	for _, req := range []api.ReleaseRequest{{Epoch: 2, Peer: b.addr, Committed: true}, {Epoch: 1, Peer: b.addr}} {
		wantKind(t, fmt.Sprintf("B's release %+v while A is busy with the task", req), fetcher.Release(ctx, "job", req), driver.ErrBusy)
	}
	wantKind(t, "a grant to C while A is busy with the task", a.c.Grant(ctx, "job", api.GrantRequest{Epoch: 1, To: c.addr}), driver.ErrBusy)
	sameRecord(t, "B's releases and the grant to C while A is busy", a.rec("job"), before)
	a.agent.release("job")
	if err := fetcher.Release(ctx, "job", api.ReleaseRequest{Epoch: 1, Peer: b.addr}); err != nil {
		t.Fatalf("B gives the image back: %v", err)
	}
	a.unbound()
	if _, err := a.c.Resume(ctx, "job", api.ResumeRequest{Epoch: 1}); err != nil {
		t.Fatalf("A's local resume after the give-back: %v", err)
	}
}

// The controller grants C the image whose fetch by B A's restart cut (it
// gave up on B): the grant rebinds the suspended image to C (the
// controller's word is the latest), so B's fetch and B's late commit are
// refused naming node-c and change nothing, and C's resume from A moves the
// task with one live copy, A keeping a tombstone bound to C.
func TestGrantRebindsAnImageBoundToAnotherAgent(t *testing.T) {
	t.Parallel()
	ctx, a, b, c := threeNodes(t, nil)
	last, fetcher := cutByRestart(ctx, t, a, b)
	a.grantJob(ctx, c)
	rebound := a.rec("job")
	if rebound.Phase != api.PhaseSuspended || rebound.PeerName != "node-c" || rebound.Epoch != 1 || rebound.Image == nil {
		t.Fatalf("after the grant to C A's record is %+v, want suspended at epoch 1 with its image, bound to node-c", rebound)
	}
	_, _, err := fetcher.FetchImageTar(ctx, "job", 1)
	refused(t, "B's fetch after the grant to C", err, "node-b", "node-c")
	refused(t, "B's late commit after the grant to C", fetcher.Release(ctx, "job", api.ReleaseRequest{Epoch: 2, Peer: b.addr, Committed: true}), "node-b", "node-c")
	sameRecord(t, "B's fetch and commit after the grant to C", a.rec("job"), rebound)
	c.resumeFrom(ctx, a, last)
	a.tombstoneTo(c)
	oneLiveCopy(ctx, t, a, b, c)
}
