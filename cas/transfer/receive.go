package transfer

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/ferrycluster/ferry/cas"
	"github.com/ferrycluster/ferry/cas/chunker"
)

// Receiver accepts transfers. One Receiver serves any number of concurrent
// transfers (each on its own connection); two with the same id at once are
// refused with ErrBusy.
type Receiver struct {
	// StagingDir holds partial files (ID.part) and their index digests
	// (ID.state) until a transfer completes; it must be on the same
	// filesystem as the destinations so the final rename is atomic.
	StagingDir string
	// DestDir is where a transfer lands: DestDir/Name. Dest, if set,
	// overrides it and may refuse a transfer by returning an error.
	DestDir string
	Dest    func(h Header, x *cas.Index) (string, error)
	// Store, if set, is consulted for chunks before asking for them; a
	// corrupt chunk found there is removed and asked for.
	Store *cas.Store
	// Keep adds the received file's chunks to Store once it is committed,
	// so later transfers of similar files find them: by reference (the
	// file is hard-linked into the store, cas.Store.KeepLinked), not
	// copied.
	Keep bool
	// PinAs, with Keep, names the pin under which a completed transfer's
	// index is kept in Store (replacing an earlier pin of that name; then
	// Store's MaxBytes is applied), so its chunks stay for later transfers
	// instead of being collected. Empty: not pinned.
	PinAs func(Header) string
	// Fresh, if set, says whether this side expects to hold none of the
	// chunks of directory transfer h (say, the first image of a task this
	// node receives). Then the directory crosses without an index (MODE
	// raw, tree.go): its bytes go straight into place and nothing is
	// hashed during the transfer; with Keep its chunks are indexed and
	// kept after the commit. A resumed transfer always uses the index.
	Fresh func(h Header) bool
	// NoSync skips the fsync of a rebuilt file and of its directory (and
	// the early writeback): for data that can simply be fetched again. A
	// crash can then leave a committed file with missing blocks.
	NoSync bool
	// Limits on the index a sender may announce (zero: DefaultMaxEntries
	// and cas.DefaultMaxFileSize). The receiver's memory grows with the
	// entry count (about 150 bytes per entry).
	Limits cas.DecodeLimits
	// Background, if set, runs work that may follow a transfer's commit
	// (keeping a received directory's chunks in Store, with Keep) after
	// Serve returns; it must call f eventually, with a context that ends
	// when the work should stop. Nil: Serve runs it before returning.
	Background func(f func(context.Context))
	Progress   ProgressFunc
	Logger     *slog.Logger

	mu     sync.Mutex
	active map[string]bool
}

// DefaultMaxEntries bounds the index a Receiver accepts by default: 4 Mi
// entries, 16 GiB of non-zero data in 4 KiB blocks (far more with FastCDC).
const DefaultMaxEntries = 4 << 20

// ReceiveResult says what a transfer did on this side.
type ReceiveResult struct {
	Header Header
	Index  *cas.Index
	// Path is where the file or directory now is.
	Path string
	// Resumed counts chunks found in the partial file of an earlier
	// attempt; FromStore those copied from the store; Refetched those found
	// corrupt in the store and asked for again; Received those that came
	// over the wire (ReceivedBytes before decompression).
	Resumed, FromStore, Refetched, Received int
	ReceivedBytes                           int64
	WantedChunks                            int
}

func (rc *Receiver) lock(id string) bool {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.active == nil {
		rc.active = map[string]bool{}
	}
	if rc.active[id] {
		return false
	}
	rc.active[id] = true
	return true
}

func (rc *Receiver) unlock(id string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	delete(rc.active, id)
}

// Serve runs the receiving side of one transfer on conn. On failure it
// tells the sender why (ERROR) and keeps the partial file for a resume,
// unless the data was found corrupt.
func (rc *Receiver) Serve(ctx context.Context, conn io.ReadWriter) (res ReceiveResult, err error) {
	log := rc.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "cas.transfer", "role", "receiver")
	stop := watch(ctx, conn)
	defer stop()
	w := newFrameWriter(conn, flusherOf(conn))
	r := newFrameReader(conn)
	defer func() {
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("transfer: %w (%v)", ctx.Err(), err)
		}
		if !errors.Is(err, ErrRemote) && !errors.Is(err, ErrTruncated) {
			w.frame(msgError, []byte(err.Error()))
			w.Flush()
		}
		log.Warn("receive failed", "transfer", res.Header.ID, "err", err)
	}()
	err = rc.serve(ctx, r, w, &res, log)
	return res, err
}

func (rc *Receiver) serve(ctx context.Context, r *frameReader, w *frameWriter, res *ReceiveResult, log *slog.Logger) error {
	t, n, err := r.next("HELLO", map[msgType]int{msgHello: maxSmallFrame})
	if err != nil {
		return err
	}
	b, err := r.payload(t, n, nil)
	if err != nil {
		return err
	}
	h, err := DecodeHello(b)
	if err != nil {
		return err
	}
	res.Header = h
	log = log.With("transfer", h.ID)
	if !rc.lock(h.ID) {
		return fmt.Errorf("%w: %s", ErrBusy, h.ID)
	}
	defer rc.unlock(h.ID)
	if h.Kind == KindTree {
		return rc.serveTree(ctx, r, w, h, res, log)
	}

	lim := rc.Limits
	if lim.MaxEntries <= 0 {
		lim.MaxEntries = DefaultMaxEntries
	}
	if lim.MaxFileSize <= 0 {
		lim.MaxFileSize = cas.DefaultMaxFileSize
	}
	_, n, err = r.next("INDEX", map[msgType]int{msgIndex: cas.HeaderLen + lim.MaxEntries*cas.DataEntryLen})
	if err != nil {
		return err
	}
	lr := &io.LimitedReader{R: r.br, N: int64(n)}
	x, err := cas.DecodeIndexLimits(lr, lim)
	if err != nil {
		return err
	}
	res.Index = x
	dest, err := rc.destination(h, x)
	if err != nil {
		return err
	}

	prog := &progressor{fn: rc.Progress, p: Progress{ID: h.ID, Size: x.Size}}
	part, err := rc.openPartial(h, x)
	if err != nil {
		return err
	}
	defer part.f.Close()

	// Find what we have.
	prog.phase(PhaseScan)
	offs := x.Offsets()
	want, head, next, wanted, err := rc.scan(ctx, x, offs, part.f, part.resumed, res, log)
	if err != nil {
		return err
	}
	prog.p.Wanted += wanted
	prog.p.Present = x.Size - prog.p.Wanted
	prog.p.ChunksWanted = len(want)
	res.WantedChunks = len(want)
	if err := w.frame(msgWant, encodeWant(want)); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("transfer: send WANT: %w", err)
	}

	// Receive the chunks. Contiguous chunks are written in 1 MiB runs. Each
	// chunk is verified against its ID before it is written; for an
	// IndexV2 index that completes the whole-file check (the decoder
	// checked that the digest is the root of these IDs, so the rebuilt file
	// is the one the digest names). For an IndexV1 index the whole-file
	// SHA-256 follows the completed prefix of the file on another
	// goroutine, so verification overlaps the stream.
	prog.phase(PhaseStream)
	isWanted := make([]bool, len(x.Entries))
	for _, i := range want {
		isWanted[i] = true
	}
	done := make([]bool, len(x.Entries))
	for i, e := range x.Entries {
		done[i] = e.Hole || !isWanted[head[e.ID]]
	}
	var dg *prefixDigest
	if !x.V2() {
		dg = newPrefixDigest(part.f)
		defer dg.stop()
	}
	onDisk := 0 // first entry not known to be on disk
	advance := func() {
		for onDisk < len(done) && done[onDisk] {
			onDisk++
		}
		end := x.Size
		if onDisk < len(done) {
			end = offs[onDisk]
		}
		if dg != nil {
			dg.upTo(end)
		}
	}
	advance()
	// Frames are read on this goroutine into batches; the pipeline hashes
	// and writes them on two more. It finishes every batch already read
	// before Serve returns, so a resume finds those chunks.
	tgt := &rxTarget{x: x, offs: offs, next: next, f: part.f, done: done, onWritten: advance}
	pl := newRxPipeline(&rxPipeline{prog: prog, wb: writeback{off: rc.NoSync}, hashers: min(2, runtime.GOMAXPROCS(0))})
	fr := &chunkReader{r: r, pl: pl, bt: pl.get()}
	finish := func() error {
		err := fr.finish()
		res.Received, res.ReceivedBytes = pl.received, pl.receivedBytes
		return err
	}
	defer finish()
	read := 0
	limits := map[msgType]int{msgChunk: maxChunkFrame, msgRun: maxRunFrame, msgDone: 0}
	for {
		if pl.failed.Load() {
			return finish()
		}
		t, n, err := r.next("CHUNK", limits)
		if err != nil {
			return fmt.Errorf("after %d of %d chunks: %w", read, len(want), err)
		}
		if t == msgDone {
			break
		}
		k, err := fr.frame(t, n, tgt, isWanted)
		read += k
		if err != nil {
			return err
		}
	}
	if err := finish(); err != nil {
		return err
	}
	if res.Received != len(want) {
		return fmt.Errorf("%w: DONE with %d of %d chunks missing", ErrProtocol, len(want)-res.Received, len(want))
	}
	advance()

	// Verify and commit.
	prog.phase(PhaseVerify)
	if dg != nil {
		sum, err := dg.finish()
		if err != nil {
			return fmt.Errorf("transfer: verify partial: %w", err)
		}
		if sum != x.Digest {
			part.discard()
			return fmt.Errorf("%w: rebuilt %s does not match its whole-file digest %s", cas.ErrCorrupt, h.Name, x.Digest.Short())
		}
	}
	if !rc.NoSync {
		if err := part.f.Sync(); err != nil {
			return err
		}
	}
	// With Keep the file (a tar's partial for KindDir) is linked into the
	// store before the commit and kept by reference after it (Keep adds
	// nothing while the chunks arrive: one file per chunk cost more than
	// the transfer). Without a pin name the chunks stay unpinned, for the
	// store's grace period.
	var ln *cas.Linked
	if rc.Keep && rc.Store != nil {
		ln = rc.Store.Link()
		ln.Add(part.f, x.Size) // unlinked: Keep copies
		defer ln.Close()
	}
	if err := rc.commit(h, part, dest); err != nil {
		return err
	}
	res.Path = dest
	if ln != nil {
		name := rc.pinName(h) // "": kept unpinned (cas.Store.KeepLinked)
		if _, err := rc.Store.KeepLinked(ctx, name, part.f, ln, x); err != nil {
			log.Warn("keeping the received chunks", "pin", name, "err", err)
		}
	}
	if err := w.frame(msgResult, encodeResult(nil)); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		// The data is committed; the sender will retry and find it all here.
		log.Warn("result not delivered", "err", err)
	}
	prog.phase(PhaseComplete)
	log.Info("received", "name", h.Name, "size", x.Size, "received", res.Received, "from_store", res.FromStore, "resumed", res.Resumed)
	return nil
}

// scan looks for the chunks of x (at offs in f) that this side has: in f
// itself when it is the partial file of an earlier attempt (resumed), else
// in the store, and writes those found at every offset where they occur.
// It returns the first entries of the chunks to ask for, the first
// occurrence of each chunk (head) and the next one of each entry (next, -1
// at the end), and the bytes asked for.
func (rc *Receiver) scan(ctx context.Context, x *cas.Index, offs []int64, f *os.File, resumed bool, res *ReceiveResult, log *slog.Logger) (want []uint32, head map[cas.ID]int32, next []int32, wanted int64, err error) {
	// The entries of one chunk, in order: head[id] is the first, next[i]
	// the one after entry i (-1 at the end).
	head = make(map[cas.ID]int32, len(x.Entries))
	next = make([]int32, len(x.Entries))
	for i := len(x.Entries) - 1; i >= 0; i-- {
		e := x.Entries[i]
		if e.Hole {
			continue
		}
		if h, ok := head[e.ID]; ok {
			next[i] = h
		} else {
			next[i] = -1
		}
		head[e.ID] = int32(i)
	}
	buf := make([]byte, 0, 64<<10)
	var sbuf []byte // chunks read from the store
	var occ []int
	for first, e := range x.Entries {
		if e.Hole || head[e.ID] != int32(first) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, nil, nil, 0, err
		}
		occ = occ[:0]
		for k := int32(first); k >= 0; k = next[k] {
			occ = append(occ, int(k))
		}
		var good []bool
		var data []byte
		if resumed {
			good = make([]bool, len(occ))
			for k, i := range occ {
				if cap(buf) < int(e.Length) {
					buf = make([]byte, e.Length)
				}
				d := buf[:e.Length]
				if _, err := f.ReadAt(d, offs[i]); err == nil && !chunker.IsZero(d) && cas.Sum(d) == e.ID {
					good[k] = true
					if data == nil {
						data = append([]byte(nil), d...)
					}
				}
			}
			if data != nil {
				res.Resumed++
			}
		}
		if data == nil && rc.Store != nil {
			// Written below before the next chunk is read: sbuf is reused.
			d, err := rc.Store.Get(e.ID, sbuf)
			switch {
			case err == nil:
				data, sbuf = d, d
				res.FromStore++
			case errors.Is(err, cas.ErrCorrupt):
				res.Refetched++
				log.Warn("corrupt chunk in store, fetching it again", "chunk", e.ID.String(), "err", err)
			case errors.Is(err, cas.ErrNotFound):
			default:
				return nil, nil, nil, 0, err
			}
		}
		if data == nil {
			want = append(want, uint32(first))
			wanted += int64(e.Length)
			continue
		}
		for k, i := range occ {
			if good != nil && good[k] {
				continue
			}
			if _, err := f.WriteAt(data, offs[i]); err != nil {
				return nil, nil, nil, 0, fmt.Errorf("transfer: write partial: %w", err)
			}
		}
	}
	if resumed {
		// Holes are never written, but the partial file of an earlier
		// attempt is outside input: make sure they read as zeros (an IndexV2
		// transfer does not hash the rebuilt file again).
		if err := zeroHoles(f, x, offs, buf[:cap(buf)]); err != nil {
			return nil, nil, nil, 0, fmt.Errorf("transfer: check holes of partial: %w", err)
		}
	}
	return want, head, next, wanted, nil
}

func (rc *Receiver) pinName(h Header) string {
	if rc.PinAs == nil {
		return ""
	}
	return rc.PinAs(h)
}

func (rc *Receiver) destination(h Header, x *cas.Index) (string, error) {
	if rc.Dest != nil {
		return rc.Dest(h, x)
	}
	if rc.DestDir == "" {
		return "", errors.New("transfer: receiver has neither DestDir nor Dest")
	}
	return filepath.Join(rc.DestDir, filepath.FromSlash(h.Name)), nil
}

type partial struct {
	f           *os.File
	path, state string
	resumed     bool
}

func (p *partial) discard() {
	os.Remove(p.path)
	os.Remove(p.state)
}

// openPartial opens the staging file of transfer h. It is resumed only if
// the earlier attempt announced the same file (same digest and size);
// otherwise it starts empty (sparse, of the final size).
func (rc *Receiver) openPartial(h Header, x *cas.Index) (*partial, error) {
	if rc.StagingDir == "" {
		return nil, errors.New("transfer: receiver has no StagingDir")
	}
	if err := os.MkdirAll(rc.StagingDir, 0o700); err != nil {
		return nil, err
	}
	p := &partial{path: filepath.Join(rc.StagingDir, h.ID+".part"), state: filepath.Join(rc.StagingDir, h.ID+".state")}
	state := fmt.Sprintf("%s %d %s %d\n", hex.EncodeToString(x.Digest[:]), x.Size, h.Kind, x.Chunking)
	old, err := os.ReadFile(p.state)
	if err == nil && string(old) == state {
		if _, err := os.Stat(p.path); err == nil {
			p.resumed = true
		}
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if !p.resumed {
		os.Remove(p.path)
		if err := os.WriteFile(p.state, []byte(state), 0o600); err != nil {
			return nil, err
		}
	}
	f, err := os.OpenFile(p.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(x.Size); err != nil {
		f.Close()
		return nil, err
	}
	p.f = f
	return p, nil
}

// commit puts a verified partial file in place: a file is renamed to dest;
// a directory's tar is extracted into a fresh directory beside dest, which
// then replaces dest.
func (rc *Receiver) commit(h Header, p *partial, dest string) error {
	if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
		return err
	}
	switch h.Kind {
	case KindFile:
		if err := p.f.Chmod(fs.FileMode(h.Mode)); err != nil {
			return err
		}
		if err := os.Rename(p.path, dest); err != nil {
			return fmt.Errorf("transfer: commit %s: %w", dest, err)
		}
	case KindDir:
		if _, err := p.f.Seek(0, io.SeekStart); err != nil {
			return err
		}
		tmp := dest + ".ferry-new-" + h.ID
		os.RemoveAll(tmp)
		if err := Extract(p.f, tmp, ExtractLimits{}); err != nil {
			os.RemoveAll(tmp)
			p.discard()
			return err
		}
		if err := swapDir(tmp, dest, h.ID); err != nil {
			os.RemoveAll(tmp)
			return err
		}
		os.Remove(p.path)
	}
	os.Remove(p.state)
	if !rc.NoSync {
		syncDir(filepath.Dir(dest))
	}
	return nil
}

// swapDir replaces dest with tmp: dest is moved aside first, so at every
// instant dest is either the old complete directory or the new one.
func swapDir(tmp, dest, id string) error {
	old := dest + ".ferry-old-" + id
	os.RemoveAll(old)
	if err := os.Rename(dest, old); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("transfer: commit %s: %w", dest, err)
	}
	if err := os.Rename(tmp, dest); err != nil {
		os.Rename(old, dest)
		return fmt.Errorf("transfer: commit %s: %w", dest, err)
	}
	os.RemoveAll(old)
	return nil
}

func syncDir(dir string) {
	if f, err := os.Open(dir); err == nil {
		f.Sync()
		f.Close()
	}
}

// chunkReader reads RUN and CHUNK frames into the pipeline's batches on
// the caller's goroutine.
type chunkReader struct {
	r      *frameReader
	pl     *rxPipeline
	bt     *rxBatch // being filled
	runHdr [runHdrLen]byte
}

// finish hands the batch being filled to the pipeline and waits for it to
// drain (once).
func (fr *chunkReader) finish() error {
	err := fr.pl.finish(fr.bt)
	fr.bt = nil
	return err
}

// frame reads the payload of a RUN or CHUNK frame of n bytes whose header
// was read, for target tg, whose still wanted entries isWanted marks
// (cleared for those the frame carries). It returns the chunks it queued:
// every whole chunk that arrived, even from a cut frame.
func (fr *chunkReader) frame(t msgType, n int, tg *rxTarget, isWanted []bool) (int, error) {
	r, x := fr.r, tg.x
	if t == msgRun {
		if n < runHdrLen {
			return 0, fmt.Errorf("%w: RUN of %d bytes is too short", cas.ErrInvalid, n)
		}
		if _, err := io.ReadFull(r.br, fr.runHdr[:]); err != nil {
			return 0, fmt.Errorf("%w: RUN frame of %d bytes: %v", ErrTruncated, n, err)
		}
		first, count, err := parseRun(fr.runHdr[:], n, x, isWanted)
		if err != nil {
			return 0, err
		}
		n -= runHdrLen
		bt := fr.room(n)
		start := bt.grow(n)
		m, rerr := io.ReadFull(r.br, bt.buf[start:])
		pos, read := start, 0
		for k := first; k < first+count; k++ {
			l := int(x.Entries[k].Length)
			if pos+l > start+m {
				break
			}
			bt.items = append(bt.items, rxChunk{entry: k, enc: cas.Raw, start: pos, end: pos + l, t: tg})
			pos += l
			read++
		}
		bt.buf = bt.buf[:pos]
		if rerr != nil {
			return read, fmt.Errorf("%w: RUN frame of %d bytes: %v", ErrTruncated, n+runHdrLen, rerr)
		}
		return read, nil
	}
	bt := fr.room(n)
	start := bt.grow(n)
	if _, err := io.ReadFull(r.br, bt.buf[start:]); err != nil {
		bt.buf = bt.buf[:start]
		return 0, fmt.Errorf("%w: %s frame of %d bytes: %v", ErrTruncated, t, n, err)
	}
	if n < chunkHdrLen {
		bt.buf = bt.buf[:start]
		return 0, fmt.Errorf("%w: CHUNK of %d bytes is too short", cas.ErrInvalid, n)
	}
	frame := bt.buf[start:]
	i := binary.BigEndian.Uint32(frame)
	if int64(i) >= int64(len(isWanted)) || !isWanted[i] {
		bt.buf = bt.buf[:start]
		return 0, fmt.Errorf("%w: CHUNK for entry %d, which was not asked for or came twice", cas.ErrInvalid, i)
	}
	isWanted[i] = false
	bt.items = append(bt.items, rxChunk{entry: i, enc: cas.Encoding(frame[4]), start: start + chunkHdrLen, end: start + n, t: tg})
	return 1, nil
}

// room returns a batch with room for n more bytes, handing a full one to
// the pipeline.
func (fr *chunkReader) room(n int) *rxBatch {
	if len(fr.bt.buf)+n > cap(fr.bt.buf) && len(fr.bt.items) > 0 {
		fr.pl.put(fr.bt)
		fr.bt = fr.pl.get()
	}
	return fr.bt
}

// rxBatch holds CHUNK and RUN payloads read back to back, handed to the
// pipeline; dec holds the decoded bytes of compressed chunks.
type rxBatch struct {
	buf, dec []byte
	items    []rxChunk
}

type rxChunk struct {
	entry      uint32
	enc        cas.Encoding
	start, end int    // payload in buf
	data       []byte // the verified chunk bytes (set by the hasher)
	t          *rxTarget
}

func (b *rxBatch) reset() { b.buf, b.items = b.buf[:0], b.items[:0] }

// grow extends buf by n bytes (keeping what it holds) and returns where
// they start.
func (b *rxBatch) grow(n int) int {
	start := len(b.buf)
	if cap(b.buf) < start+n {
		b.buf = append(make([]byte, 0, max(maxRunFrame, start+n)), b.buf...)
	}
	b.buf = b.buf[:start+n]
	return start
}

// zeroHoles makes the hole entries of a resumed partial file read as zeros:
// a piece that does not is overwritten with zeros.
func zeroHoles(f *os.File, x *cas.Index, offs []int64, buf []byte) error {
	if len(buf) < 64<<10 {
		buf = make([]byte, 64<<10)
	}
	var zero []byte
	for i, e := range x.Entries {
		if !e.Hole {
			continue
		}
		for pos, end := offs[i], offs[i]+int64(e.Length); pos < end; {
			n := int(min(int64(len(buf)), end-pos))
			if _, err := f.ReadAt(buf[:n], pos); err != nil {
				return err
			}
			if !chunker.IsZero(buf[:n]) {
				if zero == nil {
					zero = make([]byte, len(buf))
				}
				if _, err := f.WriteAt(zero[:n], pos); err != nil {
					return err
				}
			}
			pos += int64(n)
		}
	}
	return nil
}

// prefixDigest hashes a file from the start as far as it is known to be
// complete, on its own goroutine.
type prefixDigest struct {
	ends    chan int64
	result  chan error
	sum     cas.ID
	last    int64
	closed  bool
	aborted atomic.Bool
}

func newPrefixDigest(f *os.File) *prefixDigest {
	d := &prefixDigest{ends: make(chan int64, 256), result: make(chan error, 1)}
	go func() {
		h := sha256.New()
		buf := make([]byte, 1<<20)
		var pos int64
		var err error
		for end := range d.ends {
			for err == nil && pos < end && !d.aborted.Load() {
				n := int(min(int64(len(buf)), end-pos))
				if _, err = f.ReadAt(buf[:n], pos); err == nil {
					h.Write(buf[:n])
					pos += int64(n)
				}
			}
		}
		d.sum = cas.ID(h.Sum(nil))
		d.result <- err
	}()
	return d
}

// upTo says the file is complete up to end.
func (d *prefixDigest) upTo(end int64) {
	if end > d.last {
		d.last = end
		d.ends <- end
	}
}

func (d *prefixDigest) finish() (cas.ID, error) {
	d.closed = true
	close(d.ends)
	err := <-d.result
	return d.sum, err
}

// stop abandons the digest (after a failure) without hashing the rest.
func (d *prefixDigest) stop() {
	if !d.closed {
		d.aborted.Store(true)
		d.closed = true
		close(d.ends)
		<-d.result
	}
}
