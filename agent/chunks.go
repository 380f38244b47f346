package agent

import (
	"path/filepath"
	"sync"

	"github.com/ferrycluster/ferry/cas"
	"github.com/ferrycluster/ferry/cas/transfer"
)

// The node's chunk store (DataDir/chunks): every image this agent sends or
// receives with cas/transfer leaves its chunks there, pinned as the task's
// image ("image-TASK", one pin per task, replaced by the next image of the
// same task), so the next move of a similar image between nodes that have
// seen it sends only the chunks that changed. Disk use is bounded:
// chunkStoreMaxBytes of pinned chunks (the least recently pinned images go
// first, then GC frees their chunks), plus the chunks of transfers in
// flight.
//
// The store is opened on first use, once per data directory; a store that
// cannot be opened makes transfers run without it (logged), never fail.

// chunkStoreMaxBytes bounds the pinned chunks of one node's store.
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

// imagePin names the pin of task id's image.
func imagePin(id string) string {
	name := "image-" + id
	if cas.ValidName(name) != nil {
		name = "image-" + cas.Sum([]byte(id)).String()[:32]
	}
	return name
}

// keepReceived makes rc consult the node's chunk store before asking for
// chunks, add what it receives, and pin the result as task id's image.
func (a *Agent) keepReceived(rc *transfer.Receiver, id string) *transfer.Receiver {
	if st := a.chunkStore(); st != nil {
		rc.Store, rc.Keep = st, true
		rc.PinAs = func(transfer.Header) string { return imagePin(id) }
	}
	return rc
}

// keepSent makes a send add the image's chunks to the node's chunk store
// and pin it as task id's image, so the image coming back crosses as its
// changes.
func (a *Agent) keepSent(opts transfer.SendOptions, id string) transfer.SendOptions {
	if st := a.chunkStore(); st != nil {
		opts.Keep, opts.KeepAs = st, imagePin(id)
	}
	return opts
}
