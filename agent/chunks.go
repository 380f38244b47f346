package agent

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/ferrycluster/ferry/cas"
	"github.com/ferrycluster/ferry/cas/transfer"
	"golang.org/x/sys/unix"
)

// The node's chunk store (DataDir/chunks): every image this agent sends or
// receives with cas/transfer leaves its chunks there, pinned as the task's
// image ("image-TASK", one pin per task, replaced by the next image of the
// same task), so the next move of a similar image between nodes that have
// seen it sends only the chunks that changed. Disk use is bounded:
// chunkStoreMaxBytes on disk held by the pins (whole blobs, cas.Store.Held;
// the least recently pinned images go first, then GC frees their blobs),
// plus the chunks of transfers in flight and of unpinned images in their
// grace period.
//
// The store is opened when the agent starts (Start), once per data
// directory; a store that cannot be opened makes transfers run without it
// (logged), never fail.

// chunkStoreMaxBytes bounds the bytes the pins of one node's store hold
// on disk (cas.Options.MaxBytes).
var chunkStoreMaxBytes int64 = 8 << 30

type nodeChunks struct {
	once sync.Once
	st   *cas.Store
	err  error
}

var chunkStores sync.Map // data dir → *nodeChunks

// chunkStore returns the node's chunk store, or nil if it cannot be opened.
func (a *Agent) chunkStore() *cas.Store {
	v, _ := chunkStores.LoadOrStore(a.cfg.DataDir, &nodeChunks{})
	nc := v.(*nodeChunks)
	nc.once.Do(func() {
		nc.st, nc.err = cas.Open(filepath.Join(a.cfg.DataDir, "chunks"), cas.Options{MaxBytes: chunkStoreMaxBytes, Logger: a.log})
		if nc.err != nil {
			a.log.Warn("chunk store unavailable: transfers will not reuse chunks", "err", nc.err)
		}
	})
	return nc.st
}

// stagingDir is where checkpoints (images, replicas) are received before
// their commit.
func (a *Agent) stagingDir() string { return filepath.Join(a.cfg.DataDir, "run", "cas-staging") }

// receiveCopies is how many times its size a received checkpoint needs on
// the data dir: its files, then their chunks in the store. The keep
// hard-links the committed files into the store (a blob takes no room of
// its own) when the store is on the staging dir's filesystem: 1. Else, or
// when that cannot be told, the keep copies them into packs: 2. Without a
// store nothing is kept: 1.
func (a *Agent) receiveCopies() int64 {
	st := a.chunkStore()
	if st == nil {
		return 1
	}
	d1, err1 := deviceOf(st.Dir())
	d2, err2 := deviceOf(a.stagingDir())
	if err1 == nil && err2 == nil && d1 == d2 {
		return 1
	}
	return 2
}

// deviceOf returns the filesystem (st_dev) of path, or of its nearest
// existing parent (the staging dir is made on first use).
func deviceOf(path string) (uint64, error) {
	for {
		var st unix.Stat_t
		err := unix.Stat(path, &st)
		if err == nil {
			return uint64(st.Dev), nil
		}
		parent := filepath.Dir(path)
		if !errors.Is(err, fs.ErrNotExist) || parent == path {
			return 0, &os.PathError{Op: "stat", Path: path, Err: err}
		}
		path = parent
	}
}

// imagePin names the pin of task id's image.
func imagePin(id string) string {
	name := "image-" + id
	if cas.ValidName(name) != nil {
		name = "image-" + cas.Sum([]byte(id)).String()[:32]
	}
	return name
}

// keepReceived makes rc consult the node's chunk store before asking for
// chunks, add what it receives, and pin the result as task id's image. A
// directory's chunks are added after its transfer commits, on a goroutine
// of the agent (Close waits for it, and cancels it); the next transfer of
// the same task waits for it first, so it finds them.
func (a *Agent) keepReceived(rc *transfer.Receiver, id string) *transfer.Receiver {
	st := a.chunkStore()
	if st == nil {
		return rc
	}
	a.waitKept(id)
	rc.Store, rc.Keep = st, true
	rc.PinAs = func(transfer.Header) string { return imagePin(id) }
	rc.Background = a.background(id)
	return rc
}

// keepReceivedCheckpoint is keepReceived for a task's image or replica
// (a checkpoint): when no image of the task is pinned here, none of its
// chunks are expected (checkpoints resemble earlier checkpoints of the same
// task, not other images), so it crosses without an index, straight into
// place, and is indexed and kept after the commit
// (transfer.Receiver.Fresh). Guest images keep using the index: they
// resemble other images of their family.
func (a *Agent) keepReceivedCheckpoint(rc *transfer.Receiver, id string) *transfer.Receiver {
	a.keepReceived(rc, id)
	if st := rc.Store; st != nil {
		pin := imagePin(id)
		rc.Fresh = func(transfer.Header) bool {
			pins := st.Pins()
			i := sort.SearchStrings(pins, pin)
			return i == len(pins) || pins[i] != pin
		}
	}
	return rc
}

// keeping marks task id's chunks as being added to the store until the
// returned function is called; waitKept waits for that (or the agent's
// end), so a transfer of the task looks them up only once they are there.
// cancel, if not nil, abandons that keep (supersedeKeeps).
func (a *Agent) keeping(id string, cancel context.CancelFunc) func() {
	done, _ := a.keepingAfter(id, cancel)
	return done
}

// keepingAfter is keeping that also returns the run it replaced (nil if
// none), which was still in flight or had just ended.
func (a *Agent) keepingAfter(id string, cancel context.CancelFunc) (func(), *keepRun) {
	key := a.keepKey(id)
	run := &keepRun{done: make(chan struct{}), cancel: cancel}
	var prev *keepRun
	if v, ok := keepsInFlight.Swap(key, run); ok {
		prev = v.(*keepRun)
	}
	return func() {
		close(run.done)
		keepsInFlight.CompareAndDelete(key, run)
	}, prev
}

type keepRun struct {
	done   chan struct{}
	cancel context.CancelFunc
}

func (a *Agent) waitKept(id string) {
	key := a.keepKey(id)
	for {
		v, ok := keepsInFlight.Load(key)
		if !ok {
			return
		}
		select {
		case <-v.(*keepRun).done:
		case <-a.ctx.Done():
			return
		}
		// A later keep of the task may have started meanwhile.
		if cur, ok := keepsInFlight.Load(key); !ok || cur == v {
			return
		}
	}
}

// supersedeKeeps abandons the keep of task id in flight, if any, and waits
// for it to stop: the task is leaving with a newer image, whose chunks the
// send keeps. (Keeping the older image's chunks first would hold the move
// up by seconds per GB.)
func (a *Agent) supersedeKeeps(id string) {
	if v, ok := keepsInFlight.Load(a.keepKey(id)); ok && v.(*keepRun).cancel != nil {
		v.(*keepRun).cancel()
	}
	a.waitKept(id)
}

// keepsInFlight: data dir + NUL + task id → the *keepRun of the task's
// last keep.
var keepsInFlight sync.Map

// keepSent makes a send add the image's chunks to the node's chunk store
// and pin it as task id's image, so the image coming back crosses as its
// changes; a directory's chunks are added on an agent goroutine after the
// send (background).
func (a *Agent) keepSent(opts transfer.SendOptions, id string) transfer.SendOptions {
	if st := a.chunkStore(); st != nil {
		opts.Keep, opts.KeepAs = st, imagePin(id)
		opts.Background = a.background(id)
	}
	return opts
}

// background runs the chunk keeps of task id's transfers: on an agent
// goroutine (Close cancels and waits for it), marked in flight for
// waitKept, and after the task's move has settled here if it has not yet
// (holdKeeps): indexing a gigabyte that crossed raw takes seconds of CPU
// that the move and the job's restart need more. One keep of a task runs
// at a time: a keep handed over while an earlier one of the same task
// still runs (two transfers of the task received at once, say) cancels
// it and waits for its end, as both pin the task's image and the later
// one holds the newer image.
func (a *Agent) background(id string) func(func(context.Context)) {
	return func(f func(context.Context)) {
		a.mu.Lock()
		if a.closed {
			a.mu.Unlock()
			f(a.ctx) // cancelled: the agent is going away, nothing is kept
			return
		}
		a.wg.Add(1)
		a.mu.Unlock()
		ctx, cancel := context.WithCancel(a.ctx)
		done, prev := a.keepingAfter(id, cancel)
		var gate <-chan struct{}
		if v, ok := keepGates.Load(a.keepKey(id)); ok {
			gate = v.(*keepGate).ch
		}
		go func() {
			defer a.wg.Done()
			defer done()
			defer cancel()
			if prev != nil {
				if prev.cancel != nil {
					prev.cancel()
				}
				select {
				case <-prev.done:
				case <-ctx.Done():
				}
			}
			if gate != nil {
				t := time.NewTimer(keepGateMax)
				select {
				case <-gate:
				case <-t.C:
				case <-ctx.Done():
				}
				t.Stop()
			}
			f(ctx)
		}()
	}
}

// keepGateMax bounds how long a keep waits for its task's move to settle.
const keepGateMax = cleanupTimeout

type keepGate struct {
	ch   chan struct{}
	once sync.Once
}

func (g *keepGate) open() { g.once.Do(func() { close(g.ch) }) }

// keepGates: data dir + NUL + task id → the gate keeps of the task wait
// for (holdKeeps).
var keepGates sync.Map

// holdKeeps makes the chunk keeps of task id that start from now wait
// until the returned function or releaseKeeps(id) is called (at most
// keepGateMax).
func (a *Agent) holdKeeps(id string) func() {
	g := &keepGate{ch: make(chan struct{})}
	if old, ok := keepGates.Swap(a.keepKey(id), g); ok {
		old.(*keepGate).open()
	}
	return func() {
		g.open()
		keepGates.CompareAndDelete(a.keepKey(id), g)
	}
}

// releaseKeeps opens task id's gate, if one is held.
func (a *Agent) releaseKeeps(id string) {
	if v, ok := keepGates.LoadAndDelete(a.keepKey(id)); ok {
		v.(*keepGate).open()
	}
}

func (a *Agent) keepKey(id string) string { return a.cfg.DataDir + "\x00" + id }
