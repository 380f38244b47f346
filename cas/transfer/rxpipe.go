package transfer

import (
	"fmt"
	"os"
	"sync/atomic"

	"github.com/ferrycluster/ferry/cas"
	disk "github.com/ferrycluster/ferry/internal/writeback"
)

// rxPipeline verifies and writes received chunks on two goroutines, one per
// stage: the caller reads frames into batches (socket → memory), a hasher
// decodes each chunk and checks it against its ID, and a writer puts the
// verified chunks at their offsets — consecutive chunks in one pwrite,
// straight from the batch buffer — and only then marks them done. So the
// socket is read while the previous batch is hashed and the one before it
// written.
//
// After a failure in a stage the later batches pass through unprocessed;
// every chunk verified before the failure is still written, so a resume
// finds it in the partial file.
type rxPipeline struct {
	prog    *progressor
	wb      writeback
	hashers int // goroutines hashing one batch (1 or 2)

	batches, hashed, free chan *rxBatch
	herr, werr            chan error
	failed                atomic.Bool
	finished              bool
	err                   error

	// written by the writer only; read after finish
	received      int
	receivedBytes int64
}

// rxTarget is where the chunks of one index go: a file (a whole transfer)
// or a piece of one (a segment of a directory transfer, at base).
type rxTarget struct {
	x    *cas.Index
	offs []int64 // entry offsets within the file (base added)
	next []int32 // next occurrence of the same chunk, -1 at the end
	f    *os.File
	done []bool
	// onWritten runs on the writer goroutine after each batch that wrote
	// chunks of this target.
	onWritten func()
}

// rxBatches is how many batch buffers (of up to maxRunFrame bytes) one
// transfer has in flight: one being read, one hashed, one written, one
// spare.
const rxBatches = 4

func newRxPipeline(p *rxPipeline) *rxPipeline {
	p.batches, p.hashed, p.free = make(chan *rxBatch, rxBatches), make(chan *rxBatch, rxBatches), make(chan *rxBatch, rxBatches)
	p.herr, p.werr = make(chan error, 1), make(chan error, 1)
	for range rxBatches {
		p.free <- &rxBatch{}
	}
	go p.hashStage()
	go p.writeStage()
	return p
}

// get returns an empty batch to fill (waiting for one to come back).
func (p *rxPipeline) get() *rxBatch {
	bt := <-p.free
	bt.reset()
	return bt
}

// put hands a filled batch to the hasher.
func (p *rxPipeline) put(bt *rxBatch) { p.batches <- bt }

// finish hands over bt (if it holds anything), waits for both stages to
// drain and returns the first failure (the hasher's before the writer's).
func (p *rxPipeline) finish(bt *rxBatch) error {
	if p.finished {
		return p.err
	}
	p.finished = true
	if bt != nil && len(bt.items) > 0 {
		p.batches <- bt
	}
	close(p.batches)
	herr, werr := <-p.herr, <-p.werr
	if herr != nil {
		p.err = herr
	} else {
		p.err = werr
	}
	return p.err
}

func (p *rxPipeline) hashStage() {
	var err error
	for bt := range p.batches {
		if err == nil {
			if err = p.verify(bt); err != nil {
				p.failed.Store(true)
			}
		} else {
			bt.items = bt.items[:0]
		}
		p.hashed <- bt
	}
	close(p.hashed)
	p.herr <- err
}

// verify decodes and checks every chunk of bt; on a failure it keeps the
// chunks before the bad one (verified) for the writer.
func (p *rxPipeline) verify(bt *rxBatch) error {
	bt.dec = bt.dec[:0]
	// A batch of raw chunks (the common case) is hashed in two halves at
	// once: SHA-256 is the receiver's largest cost and the writer and the
	// socket reader are mostly in the kernel.
	if n := len(bt.items); n >= 8 && p.hashers > 1 && bt.allRaw() {
		half := n / 2
		errc := make(chan error, 1)
		go func() { errc <- p.verifyRange(bt, half, n) }()
		err1 := p.verifyRange(bt, 0, half)
		err2 := <-errc
		switch {
		case err1 != nil:
			bt.items = bt.items[:p.firstBad(bt, 0)]
			return err1
		case err2 != nil:
			bt.items = bt.items[:p.firstBad(bt, half)]
			return err2
		}
		return nil
	}
	if err := p.verifyRange(bt, 0, len(bt.items)); err != nil {
		bt.items = bt.items[:p.firstBad(bt, 0)]
		return err
	}
	return nil
}

// firstBad is the first item from j on that failed verification (has no
// data).
func (p *rxPipeline) firstBad(bt *rxBatch, j int) int {
	for j < len(bt.items) && bt.items[j].data != nil {
		j++
	}
	return j
}

func (b *rxBatch) allRaw() bool {
	for _, c := range b.items {
		if c.enc != cas.Raw {
			return false
		}
	}
	return true
}

// verifyRange verifies items [from, to) of bt, setting their data, and
// stops at the first bad one.
func (p *rxPipeline) verifyRange(bt *rxBatch, from, to int) error {
	for j := from; j < to; j++ {
		c := &bt.items[j]
		e := c.t.x.Entries[c.entry]
		want := int(e.Length)
		var dst []byte
		if c.enc != cas.Raw {
			if cap(bt.dec)-len(bt.dec) < want+1 {
				bt.dec = make([]byte, 0, max(1<<20, want+1))
			}
			dst = bt.dec[len(bt.dec):len(bt.dec):cap(bt.dec)]
		}
		data, err := cas.Decode(c.enc, bt.buf[c.start:c.end], want, dst)
		if err != nil {
			return fmt.Errorf("CHUNK for entry %d: %w", c.entry, err)
		}
		if c.enc != cas.Raw {
			bt.dec = bt.dec[:len(bt.dec)+want]
		}
		if cas.Sum(data) != e.ID {
			return fmt.Errorf("%w: CHUNK for entry %d does not hash to its id %s", cas.ErrCorrupt, c.entry, e.ID.Short())
		}
		c.data = data
	}
	return nil
}

func (p *rxPipeline) writeStage() {
	var err error
	for bt := range p.hashed {
		if err == nil {
			if err = p.write(bt); err != nil {
				p.failed.Store(true)
			}
		}
		p.free <- bt
	}
	p.werr <- err
}

// write puts the verified chunks of bt at every offset where they occur.
func (p *rxPipeline) write(bt *rxBatch) error {
	// A run of raw chunks that are adjacent both in bt.buf and in the same
	// file goes out in one pwrite.
	var runT *rxTarget
	runStart, runEnd, runOff := 0, 0, int64(0)
	flush := func() error {
		if runEnd > runStart {
			if _, err := runT.f.WriteAt(bt.buf[runStart:runEnd], runOff); err != nil {
				return fmt.Errorf("transfer: write partial: %w", err)
			}
			p.wb.wrote(runT.f, runOff, int64(runEnd-runStart))
		}
		runStart, runEnd = 0, 0
		return nil
	}
	for _, c := range bt.items {
		t := c.t
		off := t.offs[c.entry]
		switch {
		case c.enc == cas.Raw && runEnd > runStart && t.f == runT.f && c.start == runEnd && off == runOff+int64(runEnd-runStart):
			runEnd = c.end
		case c.enc == cas.Raw:
			if err := flush(); err != nil {
				return err
			}
			runT, runStart, runEnd, runOff = t, c.start, c.end, off
		default:
			if _, err := t.f.WriteAt(c.data, off); err != nil {
				return fmt.Errorf("transfer: write partial: %w", err)
			}
			p.wb.wrote(t.f, off, int64(len(c.data)))
		}
		for k := t.next[c.entry]; k >= 0; k = t.next[k] {
			if _, err := t.f.WriteAt(c.data, t.offs[k]); err != nil {
				return fmt.Errorf("transfer: write partial: %w", err)
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	var last *rxTarget
	for _, c := range bt.items {
		t := c.t
		for k := int32(c.entry); k >= 0; k = t.next[k] {
			t.done[k] = true
		}
		p.received++
		p.receivedBytes += int64(len(c.data))
		p.prog.add(int64(len(c.data)))
		if t != last && last != nil && last.onWritten != nil {
			last.onWritten()
		}
		last = t
	}
	if last != nil && last.onWritten != nil {
		last.onWritten()
	}
	return nil
}

// writeback starts the kernel writing a partial file back to disk every
// disk.Step bytes (asynchronously: sync_file_range on Linux), so the
// one fsync at the end of a transfer finds little left to do while the
// network is still busy. It does not make anything durable by itself.
type writeback struct {
	off     bool
	pending int64
	f       *os.File
	lo, hi  int64 // the range written since the last start
}

// wrote notes n bytes written to f at off; every disk.Step bytes it
// queues the range written since the last time (only that: asking for the
// whole file each time makes the kernel walk every page written so far).
func (w *writeback) wrote(f *os.File, off, n int64) {
	if w.off {
		return
	}
	if f != w.f {
		w.start()
		w.f = f
	}
	if w.pending == 0 {
		w.lo, w.hi = off, off+n
	} else {
		w.lo, w.hi = min(w.lo, off), max(w.hi, off+n)
	}
	w.pending += n
	if w.pending >= disk.Step {
		w.start()
	}
}

func (w *writeback) start() {
	if w.f != nil && w.pending > 0 {
		disk.Start(w.f, w.lo, w.hi-w.lo)
	}
	w.pending = 0
}
