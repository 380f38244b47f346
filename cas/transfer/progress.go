package transfer

import (
	"context"
	"io"
	"sync"
	"time"
)

// Phase is the stage a transfer is in.
type Phase string

const (
	PhaseIndex    Phase = "index"    // sender: cutting and hashing the source
	PhaseScan     Phase = "scan"     // receiver: looking for chunks it has
	PhaseStream   Phase = "stream"   // chunks moving
	PhaseVerify   Phase = "verify"   // receiver: checking the whole-file digest
	PhaseComplete Phase = "complete" // done and committed
)

// Progress is reported to the caller's callback, on the caller's goroutine,
// at each phase change and about every MiB while streaming.
type Progress struct {
	ID    string
	Phase Phase
	// Size is the file's (or tar stream's) length; Present the bytes the
	// receiver already had (including holes); Wanted the bytes it asked for;
	// Done the wanted bytes that have arrived (receiver) or been sent
	// (sender).
	Size, Present, Wanted, Done int64
	// Chunks counts: wanted and done.
	ChunksWanted, ChunksDone int
}

// ProgressFunc receives progress reports. It must not block for long.
type ProgressFunc func(Progress)

// progressor reports a transfer's Progress. Its methods may be called from
// the receiver's pipeline goroutines as well as the transfer's own (a
// tree's chunks are counted by the writer while SEGs are still read): they
// serialize on mu, and so do the callback's calls. Direct uses of p are for
// before or after the pipeline runs.
type progressor struct {
	mu   sync.Mutex
	fn   ProgressFunc
	p    Progress
	last int64
}

func (r *progressor) phase(ph Phase) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.p.Phase = ph
	if r.fn != nil {
		r.fn(r.p)
	}
}

// want counts n more bytes in chunks more chunks asked for.
func (r *progressor) want(n int64, chunks int) {
	r.mu.Lock()
	r.p.Wanted += n
	r.p.ChunksWanted += chunks
	r.mu.Unlock()
}

func (r *progressor) add(n int64) { r.addN(n, 1) }

// addN counts n bytes in chunks chunks.
func (r *progressor) addN(n int64, chunks int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.p.Done += n
	r.p.ChunksDone += chunks
	if r.fn != nil && (r.p.Done-r.last >= 1<<20 || r.p.ChunksDone == r.p.ChunksWanted) {
		r.last = r.p.Done
		r.fn(r.p)
	}
}

// watch makes ctx cancellation unblock I/O on conn when conn has deadlines
// (net.Conn does); it returns the function that stops watching.
func watch(ctx context.Context, conn io.ReadWriter) func() bool {
	d, ok := conn.(interface{ SetDeadline(time.Time) error })
	if !ok {
		if c, ok := conn.(io.Closer); ok {
			return context.AfterFunc(ctx, func() { c.Close() })
		}
		return func() bool { return true }
	}
	return context.AfterFunc(ctx, func() { d.SetDeadline(time.Unix(1, 0)) })
}

// flusherOf returns conn's Flush method if it has one (an HTTP response
// writer adapter does), so frames reach the peer at each turn.
func flusherOf(conn io.ReadWriter) func() error {
	if f, ok := conn.(interface{ Flush() error }); ok {
		return f.Flush
	}
	return nil
}
