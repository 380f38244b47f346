package transfer

import (
	"bytes"
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
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/ferrycluster/ferry/cas"
)

// A directory travels as its files (KindTree), without packing it:
//
//	sender                                  receiver
//	HELLO (kind tree)                    ─▶
//	TREE  (every entry: path, type,      ─▶ checks every path and the total
//	       mode, size, symlink target)      size (Dest), creates the files in
//	                                        StagingDir/ID.tree, sized
//	SEG 0 (file, offset, index of        ─▶ looks each chunk up (partial file
//	       a piece of that file)            of an earlier attempt, store)
//	SEG 1                                ─▶ ◀─ WANT 0
//	RUN / CHUNK × n of SEG 0             ─▶ verifies, writes in place
//	SEG 2 …                              ─▶ ◀─ WANT 1 …
//	DONE                                 ─▶ every file complete: fsyncs the
//	                                        files and directories once, swaps
//	                                        the tree into place
//	                                     ◀─ RESULT
//
// After the TREE the receiver answers MODE. "index" is the exchange above.
// "raw" — the receiver expects none of the chunks (Receiver.Fresh: say the
// first image of a task this node receives) — skips the index: the sender
// sends each file's bytes in order as DATA frames (file u32, offset u64,
// bytes), the receiver writes them in place, and nothing is hashed during
// the transfer; the channel's integrity (TLS, as for the tar stream)
// protects the bytes. With a store to keep chunks in, both sides index the
// files after the commit (off the transfer's path) and keep their chunks,
// so the next transfer of that task crosses as its changes.
//
// The sender cuts and hashes each file piece by piece (segBytes, FastCDC)
// on its own goroutine while earlier pieces cross, and announces up to
// segWindow pieces ahead of the chunks it sends, so hashing, the
// receiver's look-ups and the stream overlap. Pieces come in the TREE's
// file order, each starting where the previous one of its file ended; the
// receiver refuses anything else. Every piece's index is an IndexV2 (its
// digest is the root of its chunk IDs) and every chunk is verified against
// its ID before it is written, so each file is the one the sender
// indexed.

const (
	// segBytes is the longest file piece the sender indexes and announces
	// at once; a file's first pieces are shorter (segLen), so its bytes
	// start to move soon.
	segBytes    = 32 << 20
	minSegBytes = 4 << 20
	// segWindow is how many pieces the sender announces ahead of the
	// chunks it sends: the next piece is hashed and looked up while the
	// chunks of this one cross.
	segWindow = 1
	// maxSegBytes, maxSegEntries and maxSegsAhead bound what a receiver
	// accepts: one piece's length and entries, and the pieces announced
	// whose chunks have not all arrived.
	maxSegBytes   = 1 << 30
	maxSegEntries = 1 << 18
	maxSegsAhead  = 64
	segHdrLen     = 12 // file u32, offset u64 (SEG and DATA)
	// maxDataLen bounds the bytes of one DATA frame.
	maxDataLen   = 4 << 20
	maxDataFrame = segHdrLen + maxDataLen
	maxSegFrame  = segHdrLen + cas.HeaderLen + maxSegEntries*cas.DataEntryLen
	// maxTreeEntries and maxTreeFrame bound a TREE.
	maxTreeEntries = 1 << 20
	maxTreeFrame   = 64 << 20
	// keepOpenFiles: a receiver keeping the chunks of a tree after it
	// returns holds the files open (they may be removed meanwhile); a tree
	// of more files is kept before Serve returns.
	keepOpenFiles = 1024
)

// MODE answers.
const (
	modeIndex = 0
	modeRaw   = 1
)

// Types of tree entries.
const (
	treeDir     = 'd'
	treeFile    = 'f'
	treeSymlink = 'l'
)

// TreeEntry is one entry of a directory transfer.
type TreeEntry struct {
	Path   string // relative, slash-separated, clean
	Type   byte   // 'd', 'f' or 'l'
	Mode   uint32 // permission bits
	Size   int64  // files only
	Target string // symlinks only
}

// Tree lists a directory: its entries in lexical walk order (a directory
// before what it holds).
type Tree struct {
	Entries []TreeEntry
	// Size is the sum of the files' sizes (set by DecodeTree and walkTree).
	Size int64
}

var treeMagic = [8]byte{'F', 'R', 'Y', 'T', 'R', 'E', 'E', '1'}

// encodeTree: magic, count u32, then per entry type u8, mode u32, size u64,
// path (u16 length, bytes), target (u16 length, bytes).
func encodeTree(t *Tree) []byte {
	b := make([]byte, 0, 12+len(t.Entries)*48)
	b = append(b, treeMagic[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(t.Entries)))
	for _, e := range t.Entries {
		b = append(b, e.Type)
		b = binary.BigEndian.AppendUint32(b, e.Mode)
		b = binary.BigEndian.AppendUint64(b, uint64(e.Size))
		b = binary.BigEndian.AppendUint16(b, uint16(len(e.Path)))
		b = append(b, e.Path...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(e.Target)))
		b = append(b, e.Target...)
	}
	return b
}

// DecodeTree parses and checks a TREE payload: at most maxTreeEntries
// entries; every path valid (ValidRelPath) and unique, its parent a
// directory listed before it; modes within 0777; sizes not negative and
// their sum at most maxSize; symlinks pointing inside the tree; nothing
// trailing.
func DecodeTree(b []byte, maxSize int64) (*Tree, error) {
	if len(b) < 12 || [8]byte(b[:8]) != treeMagic {
		return nil, fmt.Errorf("%w: TREE: bad magic or too short (%d bytes)", cas.ErrInvalid, len(b))
	}
	count := binary.BigEndian.Uint32(b[8:])
	if count > maxTreeEntries {
		return nil, fmt.Errorf("%w: TREE: %d entries over limit %d", cas.ErrInvalid, count, maxTreeEntries)
	}
	rest := b[12:]
	t := &Tree{Entries: make([]TreeEntry, 0, min(int(count), len(rest)/17))}
	seen := make(map[string]byte, min(int(count), len(rest)/17))
	str := func(i int, field string) (string, error) {
		if len(rest) < 2 {
			return "", fmt.Errorf("%w: TREE entry %d: truncated before its %s", cas.ErrInvalid, i, field)
		}
		n := int(binary.BigEndian.Uint16(rest))
		if len(rest)-2 < n {
			return "", fmt.Errorf("%w: TREE entry %d: %s of %d bytes truncated", cas.ErrInvalid, i, field, n)
		}
		s := string(rest[2 : 2+n])
		rest = rest[2+n:]
		return s, nil
	}
	for i := 0; i < int(count); i++ {
		if len(rest) < 13 {
			return nil, fmt.Errorf("%w: TREE entry %d of %d: truncated", cas.ErrInvalid, i, count)
		}
		e := TreeEntry{Type: rest[0], Mode: binary.BigEndian.Uint32(rest[1:5])}
		size := binary.BigEndian.Uint64(rest[5:13])
		rest = rest[13:]
		var err error
		if e.Path, err = str(i, "path"); err != nil {
			return nil, err
		}
		if e.Target, err = str(i, "symlink target"); err != nil {
			return nil, err
		}
		if err := ValidRelPath(e.Path); err != nil {
			return nil, fmt.Errorf("TREE entry %d: %w", i, err)
		}
		if e.Mode&^0o777 != 0 {
			return nil, fmt.Errorf("%w: TREE entry %d %q: mode %#o has bits beyond 0777", cas.ErrInvalid, i, e.Path, e.Mode)
		}
		if _, dup := seen[e.Path]; dup {
			return nil, fmt.Errorf("%w: TREE entry %d: %q listed twice", cas.ErrInvalid, i, e.Path)
		}
		if parent := path.Dir(e.Path); parent != "." && seen[parent] != treeDir {
			return nil, fmt.Errorf("%w: TREE entry %d %q: its parent is not a directory listed before it", cas.ErrInvalid, i, e.Path)
		}
		switch e.Type {
		case treeFile:
			if size > uint64(maxSize) || int64(size) > maxSize-t.Size {
				return nil, fmt.Errorf("%w: TREE entry %d %q: size %d over the remaining limit of %d bytes", cas.ErrInvalid, i, e.Path, size, maxSize-t.Size)
			}
			e.Size = int64(size)
			t.Size += e.Size
		case treeDir:
		case treeSymlink:
			if err := symlinkInside(e.Path, e.Target); err != nil {
				return nil, fmt.Errorf("TREE entry %d: %w", i, err)
			}
		default:
			return nil, fmt.Errorf("%w: TREE entry %d %q: type %q not accepted (only files, directories, symlinks)", cas.ErrInvalid, i, e.Path, e.Type)
		}
		if e.Type != treeFile && size != 0 {
			return nil, fmt.Errorf("%w: TREE entry %d %q: a %c entry has size %d", cas.ErrInvalid, i, e.Path, e.Type, size)
		}
		if e.Type != treeSymlink && e.Target != "" {
			return nil, fmt.Errorf("%w: TREE entry %d %q: only a symlink has a target", cas.ErrInvalid, i, e.Path)
		}
		seen[e.Path] = e.Type
		t.Entries = append(t.Entries, e)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: TREE: %d trailing bytes", cas.ErrInvalid, len(rest))
	}
	for i, e := range t.Entries {
		if e.Type == treeSymlink {
			if err := symlinkNotThroughLinks(e.Path, e.Target, seen); err != nil {
				return nil, fmt.Errorf("TREE entry %d: %w", i, err)
			}
		}
	}
	return t, nil
}

// symlinkNotThroughLinks refuses a symlink whose target passes through
// another symlink of the tree before its last element: symlinkInside
// checks each target lexically from its own directory, which a chain
// defeats (a/up -> "..", then x -> "a/up/../../y" is "y" lexically but
// resolves beside the tree). With every symlink inside by itself and no
// target going through one, every target resolves inside the tree.
func symlinkNotThroughLinks(name, target string, types map[string]byte) error {
	var at []string
	if d := path.Dir(name); d != "." {
		at = strings.Split(d, "/")
	}
	els := strings.Split(target, "/")
	for j, el := range els {
		switch el {
		case "", ".":
		case "..":
			if len(at) == 0 {
				return fmt.Errorf("%w: symlink %q -> %q points outside the destination (path traversal)", cas.ErrInvalid, name, target)
			}
			at = at[:len(at)-1]
		default:
			at = append(at, el)
			if j < len(els)-1 && types[strings.Join(at, "/")] == treeSymlink {
				return fmt.Errorf("%w: symlink %q -> %q goes through the symlink %q (path traversal)", cas.ErrInvalid, name, target, strings.Join(at, "/"))
			}
		}
	}
	return nil
}

// walkTree lists dir: regular files, directories and symlinks with their
// permission bits, in lexical order.
func walkTree(dir string) (*Tree, error) {
	t := &Tree{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		e := TreeEntry{Path: filepath.ToSlash(rel), Mode: uint32(info.Mode().Perm())}
		switch {
		case info.Mode().IsRegular():
			e.Type, e.Size = treeFile, info.Size()
			t.Size += e.Size
		case info.IsDir():
			e.Type = treeDir
		case info.Mode()&fs.ModeSymlink != 0:
			e.Type = treeSymlink
			if e.Target, err = os.Readlink(p); err != nil {
				return err
			}
		default:
			return fmt.Errorf("transfer: send %s: %s is not a file, directory or symlink", dir, rel)
		}
		if len(e.Path) > 0xffff || len(e.Target) > 0xffff {
			return fmt.Errorf("transfer: send %s: %s: name too long", dir, rel)
		}
		t.Entries = append(t.Entries, e)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("transfer: send dir: %w", err)
	}
	if len(t.Entries) > maxTreeEntries {
		return nil, fmt.Errorf("%w: send %s: %d entries over limit %d", cas.ErrInvalid, dir, len(t.Entries), maxTreeEntries)
	}
	return t, nil
}

// SendDir sends the directory dir — regular files, directories and
// symlinks, with their permission bits (owners and special files are not
// carried) — as its files, piece by piece (see the comment at the top of
// tree.go): hashing overlaps the stream, nothing is staged or packed, and
// only the chunks the receiver lacks cross. opts.Index is not used.
func SendDir(ctx context.Context, conn io.ReadWriter, dir string, opts SendOptions) (SendResult, error) {
	t, err := walkTree(dir)
	if err != nil {
		return SendResult{}, err
	}
	return sendTree(ctx, conn, dir, t, opts)
}

// txSeg is a piece of a file the sender has indexed.
type txSeg struct {
	file int // entry in the tree
	f    *os.File
	off  int64
	x    *cas.Index
	last bool // the file's last piece: close f after its chunks
	err  error
}

type answer struct {
	t   msgType
	b   []byte
	err error
}

func sendTree(ctx context.Context, conn io.ReadWriter, dir string, t *Tree, opts SendOptions) (res SendResult, err error) {
	h := Header{ID: opts.ID, Name: opts.Name, Kind: KindTree}
	if err := h.Validate(); err != nil {
		return res, err
	}
	log := senderLog(opts, h)
	prog := &progressor{fn: opts.Progress, p: Progress{ID: h.ID, Size: t.Size}}
	chunking := opts.Chunking
	if chunking == 0 {
		chunking = cas.CDC
	}
	w, r, stop := openConn(ctx, conn)
	defer stop()
	defer ctxCause(ctx, &err)
	defer func() { res.WireBytes = w.n }()
	if err := w.frame(msgHello, encodeHello(h)); err != nil {
		return res, err
	}
	tb := encodeTree(t)
	if len(tb) > maxTreeFrame {
		return res, fmt.Errorf("%w: send %s: its list of %d entries is over %d bytes", cas.ErrInvalid, dir, len(t.Entries), maxTreeFrame)
	}
	if err := w.frame(msgTree, tb); err != nil {
		return res, err
	}
	if err := w.Flush(); err != nil {
		return res, fmt.Errorf("transfer: send tree: %w", err)
	}

	// The receiver's answers (WANT per piece, then RESULT) are read on
	// their own goroutine, so the sender never waits on one while the
	// receiver waits on the sender.
	answers := make(chan answer, maxSegsAhead+2)
	go func() {
		for {
			t, n, err := r.next("WANT", map[msgType]int{msgMode: 1, msgWant: 4 + 4*maxSegEntries, msgResult: maxSmallFrame})
			var b []byte
			if err == nil {
				b, err = r.payload(t, n, nil)
			}
			answers <- answer{t, b, err}
			if err != nil || t == msgResult {
				return
			}
		}
	}()
	nextAnswer := func(what string) (answer, error) {
		select {
		case a := <-answers:
			return a, a.err
		case <-ctx.Done():
			return answer{}, fmt.Errorf("transfer: waiting for %s: %w", what, ctx.Err())
		}
	}

	a, err := nextAnswer("MODE")
	if err != nil {
		return res, err
	}
	if a.t != msgMode || len(a.b) != 1 || a.b[0] > modeRaw {
		return res, fmt.Errorf("%w: got %s %x while waiting for MODE", ErrProtocol, a.t, a.b)
	}
	if a.b[0] == modeRaw {
		return sendTreeRaw(ctx, w, conn, dir, t, opts, nextAnswer, &res, prog, log)
	}

	// Pieces are cut and hashed on their own goroutine, ahead of the stream.
	segs := make(chan *txSeg, 2)
	quit := make(chan struct{})
	defer stopIndexing(quit, segs)
	go indexTree(ctx, t, fileOpener(dir, t), chunking, segs, quit)

	all := &cas.Index{Version: cas.IndexV2, Chunking: chunking}
	var pending []*txSeg
	var open []*os.File // files to close when the send ends
	defer func() {
		for _, f := range open {
			f.Close()
		}
	}()
	held := newSentFiles(opts, t)
	defer held.close()
	flushSeg := func() error {
		s := pending[0]
		pending = pending[1:]
		a, err := nextAnswer("WANT")
		if err != nil {
			return err
		}
		if a.t != msgWant {
			return fmt.Errorf("%w: got %s while waiting for WANT", ErrProtocol, a.t)
		}
		want, err := DecodeWant(a.b, s.x)
		if err != nil {
			return err
		}
		for _, i := range want {
			prog.p.Wanted += int64(s.x.Entries[i].Length)
		}
		prog.p.ChunksWanted += len(want)
		if err := sendChunks(ctx, w, conn, s.f, s.off, s.x, want, opts.Compress, &res, prog); err != nil {
			return fmt.Errorf("transfer: send %s/%s: %w", dir, t.Entries[s.file].Path, err)
		}
		if s.last && held.files == nil {
			s.f.Close() // again at the end: harmless
		}
		return nil
	}
	prog.phase(PhaseStream)
	var segBuf bytes.Buffer
	for s := range segs {
		if s.err != nil {
			return res, s.err
		}
		if s.off == 0 && !held.hold(s.file, s.f) {
			open = append(open, s.f)
		}
		all.Entries = append(all.Entries, s.x.Entries...)
		all.Size += s.x.Size
		segBuf.Reset()
		var hdr [segHdrLen]byte
		binary.BigEndian.PutUint32(hdr[:], uint32(s.file))
		binary.BigEndian.PutUint64(hdr[4:], uint64(s.off))
		segBuf.Write(hdr[:])
		if err := cas.EncodeIndex(&segBuf, s.x); err != nil {
			return res, err
		}
		res.IndexBytes += int64(segBuf.Len())
		if err := w.frame(msgSeg, segBuf.Bytes()); err != nil {
			return res, err
		}
		if err := w.Flush(); err != nil {
			return res, fmt.Errorf("transfer: send: %w", err)
		}
		pending = append(pending, s)
		if len(pending) > segWindow {
			if err := flushSeg(); err != nil {
				return res, err
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	for len(pending) > 0 {
		if err := flushSeg(); err != nil {
			return res, err
		}
	}
	if err := w.frame(msgDone); err != nil {
		return res, err
	}
	if err := w.Flush(); err != nil {
		return res, fmt.Errorf("transfer: send: %w", err)
	}
	if err := treeResult(nextAnswer); err != nil {
		return res, err
	}
	all.Digest = all.Root()
	res.Index = all
	prog.phase(PhaseComplete)
	res.Kept, _ = held.keepAfter(ctx, opts, dir, t, all, log)
	log.Info("sent", "name", h.Name, "files", len(open), "size", all.Size, "chunks_sent", res.ChunksSent, "bytes_sent", res.BytesSent)
	return res, nil
}

// treeResult waits for the receiver's RESULT.
func treeResult(nextAnswer func(string) (answer, error)) error {
	a, err := nextAnswer("RESULT")
	if err != nil {
		return err
	}
	if a.t != msgResult {
		return fmt.Errorf("%w: got %s while waiting for RESULT", ErrProtocol, a.t)
	}
	return decodeResult(a.b)
}

// sendTreeRaw sends t's files as DATA frames (MODE raw), then keeps their
// chunks in opts.Keep (indexing them after the transfer).
func sendTreeRaw(ctx context.Context, w *frameWriter, conn io.ReadWriter, dir string, t *Tree, opts SendOptions, nextAnswer func(string) (answer, error), res *SendResult, prog *progressor, log *slog.Logger) (SendResult, error) {
	prog.p.Wanted = t.Size
	prog.phase(PhaseStream)
	rf, zeroCopy := conn.(io.ReaderFrom)
	held := newSentFiles(opts, t)
	defer held.close()
	var buf []byte
	files := 0
	for i, e := range t.Entries {
		if e.Type != treeFile || e.Size == 0 {
			continue
		}
		p := filepath.Join(dir, filepath.FromSlash(e.Path))
		f, err := os.Open(p)
		if err != nil {
			return *res, fmt.Errorf("transfer: send: %w", err)
		}
		files++
		closeF := func() {}
		if !held.hold(i, f) {
			closeF = func() { f.Close() }
		}
		for off := int64(0); off < e.Size; {
			if err := ctx.Err(); err != nil {
				closeF()
				return *res, err
			}
			n := min(maxDataLen, e.Size-off)
			var hdr [segHdrLen]byte
			binary.BigEndian.PutUint32(hdr[:], uint32(i))
			binary.BigEndian.PutUint64(hdr[4:], uint64(off))
			err := w.header(msgData, segHdrLen+int(n))
			if err == nil {
				_, err = w.bw.Write(hdr[:])
			}
			if err == nil {
				if zeroCopy {
					if err = w.Flush(); err == nil {
						if _, err = f.Seek(off, io.SeekStart); err == nil {
							var m int64
							m, err = rf.ReadFrom(&io.LimitedReader{R: f, N: n})
							if err == nil && m < n {
								err = fmt.Errorf("%w: %s shrank while sending (at %d)", cas.ErrInvalid, p, off+m)
							}
						}
					}
				} else {
					if cap(buf) < int(n) {
						buf = make([]byte, maxDataLen)
					}
					if err = readFull(f, buf[:n], off); err == nil {
						_, err = w.bw.Write(buf[:n])
					}
				}
			}
			if err != nil {
				closeF()
				return *res, fmt.Errorf("transfer: send %s: %w", p, err)
			}
			off += n
			res.BytesSent += n
			res.PayloadBytes += n
			prog.add(n)
		}
		closeF()
	}
	if err := w.frame(msgDone); err != nil {
		return *res, err
	}
	if err := w.Flush(); err != nil {
		return *res, fmt.Errorf("transfer: send: %w", err)
	}
	if err := treeResult(nextAnswer); err != nil {
		return *res, err
	}
	prog.phase(PhaseComplete)
	res.Index = &cas.Index{Version: cas.IndexV2, Chunking: cas.CDC, Size: t.Size}
	log.Info("sent", "name", opts.Name, "mode", "raw", "files", files, "size", t.Size, "bytes_sent", res.BytesSent)
	var x *cas.Index
	if res.Kept, x = held.keepAfter(ctx, opts, dir, t, nil, log); x != nil {
		res.Index = x
	}
	return *res, nil
}

// sentFiles keeps the files of a send open for keeping their chunks after
// it: the directory may go as soon as the receiver commits (the agent
// removes a moved task's image). Without a store to keep in, or with more
// than keepOpenFiles files, it holds nothing and the keep opens the files
// by path.
type sentFiles struct {
	files []*os.File // one per file entry of the tree, in order
	ord   map[int]int
}

func newSentFiles(opts SendOptions, t *Tree) *sentFiles {
	s := &sentFiles{}
	if opts.Keep == nil || opts.KeepAs == "" {
		return s
	}
	ord := map[int]int{}
	for i, e := range t.Entries {
		if e.Type == treeFile {
			ord[i] = len(ord)
		}
	}
	if len(ord) <= keepOpenFiles {
		s.files, s.ord = make([]*os.File, len(ord)), ord
	}
	return s
}

// hold keeps f (file entry i) open; it reports whether it did, so the
// caller does not close it.
func (s *sentFiles) hold(i int, f *os.File) bool {
	if s.files == nil {
		return false
	}
	s.files[s.ord[i]] = f
	return true
}

// keepAfter keeps the chunks of the tree t in dir (x: its index; nil after
// a raw send: indexed here first) in opts.Keep, if set, and returns the
// chunks added and the index. With opts.Background and the files held
// open, it hands the work over and returns at once (0, nil).
func (s *sentFiles) keepAfter(ctx context.Context, opts SendOptions, dir string, t *Tree, x *cas.Index, log *slog.Logger) (int, *cas.Index) {
	if opts.Keep == nil || opts.KeepAs == "" {
		return 0, nil
	}
	tr := newTreeReader(dir, t, s.files)
	ln := tr.linkInto(opts.Keep) // now: the directory may go before the keep runs
	bg := opts.Background != nil && s.files != nil
	s.files = nil // tr closes them
	keep := func(ctx context.Context) (int, *cas.Index) {
		defer tr.Close()
		defer ln.Close()
		var err error
		if x == nil {
			x, err = treeIndex(ctx, t, tr.opener())
		}
		kept := 0
		if err == nil {
			kept, err = opts.Keep.KeepLinked(ctx, opts.KeepAs, tr, ln, x)
		}
		if err != nil {
			log.Warn("keeping the sent chunks", "pin", opts.KeepAs, "err", err)
		}
		return kept, x
	}
	if bg {
		opts.Background(func(ctx context.Context) { keep(ctx) })
		return 0, nil
	}
	return keep(ctx)
}

// close closes what hold kept (after a failure).
func (s *sentFiles) close() {
	for _, f := range s.files {
		if f != nil {
			f.Close()
		}
	}
}

// fileOpener opens the files of t in dir by entry.
func fileOpener(dir string, t *Tree) func(int) (*os.File, error) {
	return func(i int) (*os.File, error) {
		return os.Open(filepath.Join(dir, filepath.FromSlash(t.Entries[i].Path)))
	}
}

// treeIndex indexes the files of t as a sender would (the same pieces):
// the index of the whole tree transfer.
func treeIndex(ctx context.Context, t *Tree, open func(int) (*os.File, error)) (*cas.Index, error) {
	segs := make(chan *txSeg, 2)
	quit := make(chan struct{})
	defer stopIndexing(quit, segs)
	go indexTree(ctx, t, open, cas.CDC, segs, quit)
	all := &cas.Index{Version: cas.IndexV2, Chunking: cas.CDC}
	var err error
	var cur *os.File // the file of the pieces being taken
	for s := range segs {
		if s.err != nil {
			err = s.err
			break
		}
		all.Entries = append(all.Entries, s.x.Entries...)
		all.Size += s.x.Size
		cur = s.f
		if s.last {
			s.f.Close()
			cur = nil
		}
	}
	if cur != nil {
		cur.Close()
	}
	if err != nil {
		return nil, err
	}
	all.Digest = all.Root()
	return all, nil
}

// indexTree cuts and hashes the files of t, in order, piece by piece, and
// hands the pieces to segs (closed at the end; an error ends it). It stops
// when quit closes. open opens file entry i.
func indexTree(ctx context.Context, t *Tree, open func(int) (*os.File, error), chunking cas.Chunking, segs chan<- *txSeg, quit <-chan struct{}) {
	defer close(segs)
	put := func(s *txSeg) bool {
		select {
		case <-quit:
			return false
		default:
		}
		select {
		case segs <- s:
			return true
		case <-quit:
			return false
		}
	}
	for i, e := range t.Entries {
		if e.Type != treeFile || e.Size == 0 {
			continue
		}
		p := e.Path
		f, err := open(i)
		if err == nil {
			var st os.FileInfo
			if st, err = f.Stat(); err == nil && st.Size() != e.Size {
				err = fmt.Errorf("%w: %s changed while sending (%d bytes, listed with %d)", cas.ErrInvalid, p, st.Size(), e.Size)
			}
			if err != nil {
				f.Close()
			}
		}
		if err != nil {
			put(&txSeg{err: fmt.Errorf("transfer: send: %w", err)})
			return
		}
		for off := int64(0); off < e.Size; off += segLen(off) {
			if ctx.Err() != nil {
				put(&txSeg{err: ctx.Err()})
				return
			}
			n := min(segLen(off), e.Size-off)
			x, err := cas.BuildIndex(io.NewSectionReader(f, off, n), cas.IndexOptions{Chunking: chunking})
			if err == nil && x.Size != n {
				err = fmt.Errorf("%w: %s changed while sending (piece at %d has %d bytes, want %d)", cas.ErrInvalid, p, off, x.Size, n)
			}
			if err != nil {
				if off == 0 {
					f.Close()
				}
				put(&txSeg{err: fmt.Errorf("transfer: index %s: %w", p, err)})
				return
			}
			if !put(&txSeg{file: i, f: f, off: off, x: x, last: off+n == e.Size}) {
				if off == 0 {
					f.Close()
				}
				return
			}
		}
	}
}

// stopIndexing ends an indexTree: it closes quit and drains segs until
// indexTree has returned, closing the file of every first piece nobody
// took (whoever takes a file's first piece closes the file).
func stopIndexing(quit chan struct{}, segs <-chan *txSeg) {
	close(quit)
	for s := range segs {
		if s.f != nil && s.off == 0 {
			s.f.Close()
		}
	}
}

// segLen is the length of the piece of a file at off (before the file's
// end): 4 MiB at the start, then doubling with the offset up to segBytes.
// It depends only on off, so two versions of a file are cut alike.
func segLen(off int64) int64 { return min(segBytes, max(minSegBytes, off)) }

// treeReader reads the files of a tree as one stream, in the tree's order
// (what the index of a whole tree transfer describes): from open files, or
// by opening each file of dir as it is reached.
type treeReader struct {
	dir    string
	t      *Tree
	starts []int64 // offset of each file in the stream
	idx    []int   // tree entry of each file
	files  []*os.File
	mu     sync.Mutex
	cur    int
	f      *os.File
}

// newTreeReader reads the files of t in dir; files, if set, are the open
// files (one per file entry of t, in order).
func newTreeReader(dir string, t *Tree, files []*os.File) *treeReader {
	r := &treeReader{dir: dir, t: t, files: files, cur: -1}
	var off int64
	for i, e := range t.Entries {
		if e.Type == treeFile {
			r.starts = append(r.starts, off)
			r.idx = append(r.idx, i)
			off += e.Size
		}
	}
	return r
}

// opener opens file entry i of the tree for treeIndex: a duplicate of its
// open file (closed by the caller), or the file by its path.
func (r *treeReader) opener() func(int) (*os.File, error) {
	if r.files == nil {
		return fileOpener(r.dir, r.t)
	}
	k := make(map[int]int, len(r.idx))
	for j, i := range r.idx {
		k[i] = j
	}
	return func(i int) (*os.File, error) {
		fd, err := syscall.Dup(int(r.files[k[i]].Fd()))
		if err != nil {
			return nil, err
		}
		return os.NewFile(uintptr(fd), r.t.Entries[i].Path), nil
	}
}

func (r *treeReader) file(k int) (*os.File, error) {
	if r.files != nil {
		return r.files[k], nil
	}
	if k != r.cur {
		if r.f != nil {
			r.f.Close()
			r.f = nil
		}
		f, err := os.Open(filepath.Join(r.dir, filepath.FromSlash(r.t.Entries[r.idx[k]].Path)))
		if err != nil {
			return nil, err
		}
		r.f, r.cur = f, k
	}
	return r.f, nil
}

func (r *treeReader) ReadAt(b []byte, off int64) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for n < len(b) {
		k := sort.Search(len(r.starts), func(i int) bool { return r.starts[i] > off }) - 1
		if k < 0 {
			return n, io.EOF
		}
		// Skip empty files at the same offset.
		size := r.t.Entries[r.idx[k]].Size
		if off-r.starts[k] >= size {
			return n, io.EOF
		}
		f, err := r.file(k)
		if err != nil {
			return n, err
		}
		m, err := f.ReadAt(b[n:min(len(b), n+int(size-(off-r.starts[k])))], off-r.starts[k])
		n += m
		off += int64(m)
		if err != nil && !(errors.Is(err, io.EOF) && off-r.starts[k] == size) {
			return n, err
		}
	}
	return n, nil
}

func (r *treeReader) Close() {
	if r.f != nil {
		r.f.Close()
	}
	for _, f := range r.files {
		f.Close()
	}
}

// rxSeg is a piece announced by the sender whose chunks are arriving.
type rxSeg struct {
	tgt      *rxTarget
	isWanted []bool
	left     int // chunks still to come
}

// rxFile is a file of the tree being received.
type rxFile struct {
	mu      sync.Mutex
	f       *os.File
	pending int       // pieces not yet all written
	full    bool      // its last piece was announced
	linked  bool      // f is a blob of the store linked in place (reuse.go)
	stamp   fileStamp // of the linked file, when it was linked
}

// release drops one piece's hold on the file and closes it after the last.
func (rf *rxFile) release() {
	rf.mu.Lock()
	defer rf.mu.Unlock()
	rf.pending--
	if rf.pending == 0 && rf.full && rf.f != nil {
		rf.f.Close()
		rf.f = nil
	}
}

// serveTree receives a KindTree transfer after its HELLO.
func (rc *Receiver) serveTree(ctx context.Context, r *frameReader, w *frameWriter, h Header, res *ReceiveResult, log *slog.Logger) error {
	lim := rc.Limits
	if lim.MaxEntries <= 0 {
		lim.MaxEntries = DefaultMaxEntries
	}
	if lim.MaxFileSize <= 0 {
		lim.MaxFileSize = cas.DefaultMaxFileSize
	}
	t, n, err := r.next("TREE", map[msgType]int{msgTree: maxTreeFrame})
	if err != nil {
		return err
	}
	tb, err := r.payload(t, n, nil)
	if err != nil {
		return err
	}
	tree, err := DecodeTree(tb, lim.MaxFileSize)
	if err != nil {
		return err
	}
	dest, err := rc.destination(h, &cas.Index{Version: cas.IndexV2, Chunking: cas.CDC, Size: tree.Size})
	if err != nil {
		return err
	}
	prog := &progressor{fn: rc.Progress, p: Progress{ID: h.ID, Size: tree.Size}}
	prog.phase(PhaseScan)
	tmp, resumed, err := rc.openTree(h, tb, tree)
	if err != nil {
		return err
	}
	root, err := os.OpenRoot(tmp)
	if err != nil {
		return err
	}
	defer root.Close()
	raw := !resumed && rc.Fresh != nil && rc.Fresh(h)
	mode := byte(modeIndex)
	if raw {
		mode = modeRaw
	}
	if err := w.frame(msgMode, []byte{mode}); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("transfer: send MODE: %w", err)
	}
	prog.phase(PhaseStream)
	var all *cas.Index // nil: raw, not indexed yet
	var linked map[string]fileStamp
	if raw {
		err = rc.receiveData(r, root, tree, res, prog)
	} else {
		sr := &segReceiver{rc: rc, r: r, w: w, root: root, tree: tree, resumed: resumed, pin: rc.pinName(h), lim: lim, res: res, prog: prog, log: log}
		all, linked, err = sr.receive(ctx)
	}
	if err != nil {
		return err
	}

	// Commit: modes, one fsync per file and directory, then the swap.
	prog.phase(PhaseVerify)
	keepFiles, err := finishTree(root, tree, linked, !rc.NoSync, rc.Keep && rc.Store != nil && rc.Background != nil && rc.countFiles(tree) <= keepOpenFiles)
	if err != nil {
		return err
	}
	closeKept := func() {
		for _, f := range keepFiles {
			f.Close()
		}
	}
	if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
		closeKept()
		return err
	}
	if err := swapDir(tmp, dest, h.ID); err != nil {
		closeKept()
		return err
	}
	os.Remove(rc.treeState(h))
	if !rc.NoSync {
		syncDir(filepath.Dir(dest))
	}
	res.Path = dest
	if all != nil {
		all.Digest = all.Root()
		res.Index = all
	} else {
		res.Index = &cas.Index{Version: cas.IndexV2, Chunking: cas.CDC, Size: tree.Size}
	}
	if rc.Keep && rc.Store != nil {
		// The chunks go into the store after the commit: off the
		// transfer's path when the caller runs it in the background.
		// Without a pin name they are kept unpinned (GC may collect them
		// after its grace period), as a file transfer's are.
		name := rc.pinName(h)
		// The files are linked into the store now (they may go before
		// the keep runs: the agent removes an image once its task runs).
		tr := newTreeReader(dest, tree, keepFiles)
		ln := tr.linkInto(rc.Store)
		keep := func(ctx context.Context) {
			defer tr.Close()
			defer ln.Close()
			x, err := all, error(nil)
			if x == nil {
				// Raw: index the files as a sender would have.
				x, err = treeIndex(ctx, tree, tr.opener())
			}
			if err == nil {
				_, err = rc.Store.KeepLinked(ctx, name, tr, ln, x)
			}
			if err != nil {
				log.Warn("keeping the received chunks", "pin", name, "err", err)
			}
		}
		if rc.Background != nil && keepFiles != nil {
			// Handed over before RESULT, so that a caller who tracks it
			// sees it before the sender can start another transfer.
			rc.Background(keep)
		} else {
			defer keep(ctx)
		}
	}
	if err := w.frame(msgResult, encodeResult(nil)); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		log.Warn("result not delivered", "err", err)
	}
	prog.phase(PhaseComplete)
	log.Info("received", "name", h.Name, "raw", raw, "size", tree.Size, "received", res.Received, "received_bytes", res.ReceivedBytes, "from_store", res.FromStore, "resumed", res.Resumed)
	return nil
}

// treeOrder walks the files of a tree that carry bytes, in order: next is
// the file entry expecting bytes, at off; advance moves to the next one.
type treeOrder struct {
	t    *Tree
	next int
	off  int64
}

func newTreeOrder(t *Tree) *treeOrder {
	o := &treeOrder{t: t, next: -1}
	o.advance()
	return o
}

func (o *treeOrder) advance() {
	for o.next++; o.next < len(o.t.Entries); o.next++ {
		if e := o.t.Entries[o.next]; e.Type == treeFile && e.Size > 0 {
			break
		}
	}
	o.off = 0
}

// take checks that n bytes of file fi at off come next and accounts for
// them; last reports that they end the file.
func (o *treeOrder) take(what string, fi uint32, off, n int64) (last bool, err error) {
	if o.next >= len(o.t.Entries) || int64(fi) != int64(o.next) || off != o.off {
		return false, fmt.Errorf("%w: %s of file %d at %d out of order (want file %d at %d)", cas.ErrInvalid, what, fi, off, o.next, o.off)
	}
	e := o.t.Entries[fi]
	if n <= 0 || n > e.Size-off {
		return false, fmt.Errorf("%w: %s of %q at %d: %d bytes, the file has %d", cas.ErrInvalid, what, e.Path, off, n, e.Size)
	}
	o.off += n
	if o.off == e.Size {
		o.advance()
		return true, nil
	}
	return false, nil
}

// complete checks that every file's bytes arrived.
func (o *treeOrder) complete() error {
	if o.next < len(o.t.Entries) {
		e := o.t.Entries[o.next]
		return fmt.Errorf("%w: DONE before all of %q arrived (%d of %d bytes)", ErrProtocol, e.Path, o.off, e.Size)
	}
	return nil
}

// segReceiver receives the pieces of a tree (MODE index) into the files
// under root. Each SEG announces a piece of the next file (seg); the
// file is opened at its first piece, or a file of the task's image in the
// store linked in its place (open, reuse.go); a piece of a linked file is
// checked against it, and the first piece that differs copies the checked
// prefix out (reuse); the chunks the receiver lacks are asked for (want)
// and, as RUN and CHUNK frames bring them (chunks), verified and written
// by the pipeline; DONE ends it (commit).
type segReceiver struct {
	rc      *Receiver
	r       *frameReader
	w       *frameWriter
	root    *os.Root
	tree    *Tree
	resumed bool
	pin     string // the task's image in the store, whose files may be linked in place
	lim     cas.DecodeLimits
	res     *ReceiveResult
	prog    *progressor
	log     *slog.Logger

	files   []*rxFile // by tree entry, from its first piece
	order   *treeOrder
	pl      *rxPipeline
	fr      *chunkReader
	all     *cas.Index // the tree's index, piece by piece
	sameBuf []byte     // pieces of linked files checked (reuse.go)
	queue   []*rxSeg   // pieces waiting for chunks, in order
}

// receive runs the transfer's pieces to DONE. It returns the tree's index
// and the stamps of the files that stayed linked.
func (sr *segReceiver) receive(ctx context.Context) (*cas.Index, map[string]fileStamp, error) {
	sr.files = make([]*rxFile, len(sr.tree.Entries))
	defer sr.closeFiles()
	sr.order = newTreeOrder(sr.tree)
	sr.pl = newRxPipeline(&rxPipeline{prog: sr.prog, wb: writeback{off: sr.rc.NoSync}, hashers: min(2, runtime.GOMAXPROCS(0))})
	sr.fr = &chunkReader{r: sr.r, pl: sr.pl, bt: sr.pl.get()}
	defer sr.finish() // drains the pipeline before the files close
	sr.all = &cas.Index{Version: cas.IndexV2, Chunking: cas.CDC}
	limits := map[msgType]int{msgSeg: maxSegFrame, msgChunk: maxChunkFrame, msgRun: maxRunFrame, msgDone: 0}
	for {
		if sr.pl.failed.Load() {
			return nil, nil, sr.finish()
		}
		t, n, err := sr.r.next("SEG or CHUNK", limits)
		if err != nil {
			return nil, nil, fmt.Errorf("after %d chunks: %w", sr.pl.received, err)
		}
		switch t {
		case msgDone:
			return sr.commit()
		case msgSeg:
			err = sr.seg(ctx, n)
		default:
			err = sr.chunks(t, n)
		}
		if err != nil {
			return nil, nil, err
		}
	}
}

// finish drains the pipeline (once) and counts what it wrote.
func (sr *segReceiver) finish() error {
	err := sr.fr.finish()
	sr.res.Received, sr.res.ReceivedBytes = sr.pl.received, sr.pl.receivedBytes
	return err
}

func (sr *segReceiver) closeFiles() {
	for _, rf := range sr.files {
		if rf != nil && rf.f != nil {
			rf.f.Close()
			rf.f = nil
		}
	}
}

// chunks hands a RUN or CHUNK frame of n bytes to the piece at the head
// of the queue.
func (sr *segReceiver) chunks(t msgType, n int) error {
	if len(sr.queue) == 0 {
		return fmt.Errorf("%w: %s with no piece waiting for chunks", ErrProtocol, t)
	}
	s := sr.queue[0]
	k, err := sr.fr.frame(t, n, s.tgt, s.isWanted)
	s.left -= k
	if err != nil {
		return err
	}
	if s.left == 0 {
		sr.queue = sr.queue[1:]
	}
	return nil
}

// seg receives a SEG frame of n bytes: a piece of the next file, which is
// reused from a linked file or asked for.
func (sr *segReceiver) seg(ctx context.Context, n int) error {
	if len(sr.queue) >= maxSegsAhead {
		return fmt.Errorf("%w: more than %d pieces announced ahead of their chunks", ErrProtocol, maxSegsAhead)
	}
	fi, off, x, err := sr.readSeg(n)
	if err != nil {
		return err
	}
	last, err := sr.order.take("SEG", fi, off, x.Size)
	if err != nil {
		return err
	}
	e := sr.tree.Entries[fi]
	sr.all.Entries = append(sr.all.Entries, x.Entries...)
	sr.all.Size += x.Size
	rf, err := sr.open(fi, e, x, off)
	if err != nil {
		return err
	}
	rf.mu.Lock()
	rf.pending++
	rf.full = last
	rf.mu.Unlock()
	offs := x.Offsets()
	for i := range offs {
		offs[i] += off
	}
	if rf.linked {
		reused, err := sr.reuse(rf, e, x, offs, off)
		if err != nil || reused {
			return err
		}
	}
	return sr.want(ctx, rf, x, offs)
}

// readSeg parses a SEG frame's payload of n bytes: file, offset and the
// piece's index.
func (sr *segReceiver) readSeg(n int) (uint32, int64, *cas.Index, error) {
	if n < segHdrLen {
		return 0, 0, nil, fmt.Errorf("%w: SEG of %d bytes is too short", cas.ErrInvalid, n)
	}
	var hdr [segHdrLen]byte
	if _, err := io.ReadFull(sr.r.br, hdr[:]); err != nil {
		return 0, 0, nil, fmt.Errorf("%w: SEG frame: %v", ErrTruncated, err)
	}
	fi, off := binary.BigEndian.Uint32(hdr[:]), int64(binary.BigEndian.Uint64(hdr[4:]))
	x, err := cas.DecodeIndexLimits(&io.LimitedReader{R: sr.r.br, N: int64(n - segHdrLen)}, cas.DecodeLimits{MaxEntries: maxSegEntries, MaxFileSize: maxSegBytes})
	if err != nil {
		return 0, 0, nil, fmt.Errorf("SEG of file %d at %d: %w", fi, off, err)
	}
	if !x.V2() {
		return 0, 0, nil, fmt.Errorf("%w: SEG of file %d at %d: index v%d, want v2", cas.ErrInvalid, fi, off, x.Version)
	}
	if len(sr.all.Entries)+len(x.Entries) > sr.lim.MaxEntries {
		return 0, 0, nil, fmt.Errorf("%w: tree of more than %d index entries", cas.ErrInvalid, sr.lim.MaxEntries)
	}
	return fi, off, x, nil
}

// open returns file fi's rxFile, opening the file at its first piece: a
// blob of the task's image linked in place when one may equal it (a first
// piece of a fresh tree, reuse.go), else the staging file.
func (sr *segReceiver) open(fi uint32, e TreeEntry, x *cas.Index, off int64) (*rxFile, error) {
	if rf := sr.files[fi]; rf != nil {
		return rf, nil
	}
	rf := &rxFile{}
	if off == 0 && !sr.resumed {
		rf.f, rf.stamp = sr.rc.linkSame(sr.root, e, x, sr.pin)
		rf.linked = rf.f != nil
	}
	if rf.f == nil {
		f, err := sr.root.OpenFile(filepath.FromSlash(e.Path), os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("transfer: open %s: %w", e.Path, err)
		}
		rf.f = f
	}
	sr.files[fi] = rf
	return rf, nil
}

// reuse checks a piece of a linked file against it: when it is the same,
// it asks for nothing and reports true; else it replaces the link by a
// staging file holding the checked prefix, to receive the rest into.
func (sr *segReceiver) reuse(rf *rxFile, e TreeEntry, x *cas.Index, offs []int64, off int64) (bool, error) {
	same, err := checkSame(rf.f, x, offs, &sr.sameBuf)
	if err != nil {
		return false, fmt.Errorf("transfer: check %s: %w", e.Path, err)
	}
	if same {
		for _, c := range x.Entries {
			if !c.Hole {
				sr.res.FromStore++
			}
		}
		if err := sr.sendWant(nil); err != nil {
			return false, err
		}
		rf.release()
		return true, nil
	}
	// Every earlier piece of the file was found the same, so no chunk of
	// it is in flight: nothing writes to rf.f.
	f, err := unlinkSame(sr.root, e, rf.f, rf.stamp, off)
	if err != nil {
		return false, err
	}
	rf.f.Close()
	rf.f, rf.linked = f, false
	return false, nil
}

// want asks for the chunks of a piece that neither the store nor the
// partial file holds, and queues the piece for them.
func (sr *segReceiver) want(ctx context.Context, rf *rxFile, x *cas.Index, offs []int64) error {
	want, head, next, wanted, err := sr.rc.scan(ctx, x, offs, rf.f, sr.resumed, sr.res, sr.log)
	if err != nil {
		return err
	}
	sr.prog.want(wanted, len(want)) // the writer counts what arrives meanwhile
	sr.res.WantedChunks += len(want)
	if err := sr.sendWant(want); err != nil {
		return err
	}
	if len(want) == 0 {
		rf.release()
		return nil
	}
	s := &rxSeg{isWanted: make([]bool, len(x.Entries)), left: len(want)}
	for _, i := range want {
		s.isWanted[i] = true
	}
	done := make([]bool, len(x.Entries))
	for i, e := range x.Entries {
		done[i] = e.Hole || !s.isWanted[head[e.ID]]
	}
	left := len(want)
	s.tgt = &rxTarget{x: x, offs: offs, next: next, f: rf.f, done: done}
	s.tgt.onWritten = func() {
		// On the writer goroutine: count this piece's written chunks.
		k := 0
		for _, i := range want {
			if done[i] {
				k++
			}
		}
		if k == len(want) && left > 0 {
			left = 0
			rf.release()
		}
	}
	sr.queue = append(sr.queue, s)
	return nil
}

func (sr *segReceiver) sendWant(want []uint32) error {
	if err := sr.w.frame(msgWant, encodeWant(want)); err != nil {
		return err
	}
	if err := sr.w.Flush(); err != nil {
		return fmt.Errorf("transfer: send WANT: %w", err)
	}
	return nil
}

// commit ends the pieces at DONE: every chunk asked for arrived and was
// written, every file's bytes were announced. It closes the files and
// returns the tree's index and the stamps of the files still linked.
func (sr *segReceiver) commit() (*cas.Index, map[string]fileStamp, error) {
	if err := sr.finish(); err != nil {
		return nil, nil, err
	}
	if len(sr.queue) > 0 || sr.res.Received != sr.res.WantedChunks {
		return nil, nil, fmt.Errorf("%w: DONE with %d of %d chunks missing", ErrProtocol, sr.res.WantedChunks-sr.res.Received, sr.res.WantedChunks)
	}
	if err := sr.order.complete(); err != nil {
		return nil, nil, err
	}
	sr.closeFiles()
	var linked map[string]fileStamp
	for i, rf := range sr.files {
		if rf != nil && rf.linked {
			if linked == nil {
				linked = map[string]fileStamp{}
			}
			linked[sr.tree.Entries[i].Path] = rf.stamp
		}
	}
	return sr.all, linked, nil
}

// receiveData receives the DATA frames of a tree (MODE raw) into the files
// under root, in order, each file written sequentially from the stream
// (as the tar-stream fetch does), with early writeback.
func (rc *Receiver) receiveData(r *frameReader, root *os.Root, tree *Tree, res *ReceiveResult, prog *progressor) error {
	var cur *os.File
	defer func() {
		if cur != nil {
			cur.Close()
		}
	}()
	wb := writeback{off: rc.NoSync}
	order := newTreeOrder(tree)
	var hdr [segHdrLen]byte
	for {
		t, n, err := r.next("DATA", map[msgType]int{msgData: maxDataFrame, msgDone: 0})
		if err != nil {
			return fmt.Errorf("after %d bytes: %w", res.ReceivedBytes, err)
		}
		if t == msgDone {
			break
		}
		if n <= segHdrLen {
			return fmt.Errorf("%w: DATA of %d bytes is too short", cas.ErrInvalid, n)
		}
		if _, err := io.ReadFull(r.br, hdr[:]); err != nil {
			return fmt.Errorf("%w: DATA frame: %v", ErrTruncated, err)
		}
		fi, off, m := binary.BigEndian.Uint32(hdr[:]), int64(binary.BigEndian.Uint64(hdr[4:])), int64(n-segHdrLen)
		last, err := order.take("DATA", fi, off, m)
		if err != nil {
			return err
		}
		if off == 0 {
			if cur, err = root.OpenFile(filepath.FromSlash(tree.Entries[fi].Path), os.O_WRONLY, 0); err != nil {
				return fmt.Errorf("transfer: open %s: %w", tree.Entries[fi].Path, err)
			}
		}
		// The file is written in order: its offset is off.
		k, err := io.CopyN(cur, r.br, m)
		res.ReceivedBytes += k
		prog.add(k)
		if k > 0 {
			wb.wrote(cur, off, k)
		}
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("%w: DATA frame of %d bytes: %v", ErrTruncated, n, err)
			}
			return fmt.Errorf("transfer: write %s: %w", tree.Entries[fi].Path, err)
		}
		if last {
			wb.start()
			cur.Close()
			cur = nil
		}
	}
	return order.complete()
}

func (rc *Receiver) countFiles(t *Tree) int {
	n := 0
	for _, e := range t.Entries {
		if e.Type == treeFile {
			n++
		}
	}
	return n
}

func (rc *Receiver) treeState(h Header) string {
	return filepath.Join(rc.StagingDir, h.ID+".state")
}

// openTree prepares StagingDir/ID.tree with every directory, symlink and
// (sized, sparse) file of t. The tree of an earlier attempt with the same
// TREE is kept (resumed: its files' chunks are checked, not trusted);
// anything else there is removed first.
func (rc *Receiver) openTree(h Header, tb []byte, t *Tree) (string, bool, error) {
	if rc.StagingDir == "" {
		return "", false, errors.New("transfer: receiver has no StagingDir")
	}
	if err := os.MkdirAll(rc.StagingDir, 0o700); err != nil {
		return "", false, err
	}
	dir := filepath.Join(rc.StagingDir, h.ID+".tree")
	sum := sha256.Sum256(tb)
	state := "tree " + hex.EncodeToString(sum[:]) + "\n"
	old, err := os.ReadFile(rc.treeState(h))
	resumed := err == nil && string(old) == state
	if resumed {
		if err := makeTree(dir, t, true); err == nil {
			return dir, true, nil
		}
	}
	os.RemoveAll(dir)
	if err := os.WriteFile(rc.treeState(h), []byte(state), 0o600); err != nil {
		return "", false, err
	}
	if err := makeTree(dir, t, false); err != nil {
		os.RemoveAll(dir)
		return "", false, err
	}
	return dir, false, nil
}

// makeTree creates t under dir (confined to it), or with reuse checks that
// an earlier attempt's dir holds it.
func makeTree(dir string, t *Tree, reuse bool) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !(reuse && errors.Is(err, fs.ErrExist)) {
		return fmt.Errorf("transfer: receive tree: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	for i, e := range t.Entries {
		name := filepath.FromSlash(e.Path)
		var err error
		switch e.Type {
		case treeDir:
			err = root.Mkdir(name, 0o700)
			if reuse && errors.Is(err, fs.ErrExist) {
				var fi os.FileInfo
				if fi, err = root.Lstat(name); err == nil && !fi.IsDir() {
					err = fmt.Errorf("%s is not a directory", e.Path)
				}
			}
		case treeFile:
			flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
			if reuse {
				flags = os.O_WRONLY
			}
			var f *os.File
			if f, err = root.OpenFile(name, flags, 0o600); err == nil {
				var fi os.FileInfo
				if fi, err = f.Stat(); err == nil && !fi.Mode().IsRegular() {
					err = fmt.Errorf("%s is not a regular file", e.Path)
				}
				if err == nil && reuse && linkedElsewhere(fi) {
					// A blob of the store linked in place (reuse.go) by
					// the earlier attempt: never written to, start afresh.
					f.Close()
					if err = root.Remove(name); err == nil {
						f, err = root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
					}
					if err != nil {
						break
					}
				}
				if err == nil {
					err = f.Truncate(e.Size)
				}
				f.Close()
			}
		case treeSymlink:
			err = root.Symlink(e.Target, name)
			if reuse && errors.Is(err, fs.ErrExist) {
				var target string
				if target, err = root.Readlink(name); err == nil && target != e.Target {
					err = fmt.Errorf("%s points elsewhere", e.Path)
				}
			}
		}
		if err != nil {
			// The filesystem's own errors (no space, no permission) are
			// this node's, not the sender's: they pass through as they are.
			var pe *fs.PathError
			var le *os.LinkError
			if errors.As(err, &pe) || errors.As(err, &le) {
				return fmt.Errorf("transfer: receive tree: entry %d %q: %w", i, e.Path, err)
			}
			return fmt.Errorf("%w: tree entry %d %q: %v", cas.ErrInvalid, i, e.Path, err)
		}
	}
	if reuse {
		return removeUnlinkTemps(root, t) // reuse.go
	}
	return nil
}

// finishTree gives the received files and directories their modes and,
// with durable, fsyncs every file and then every directory (deepest
// first). With keep it returns the files, open, in the tree's order. A
// file linked in place (linked: its stamp when linked) must be as stamped:
// else it is removed (the retry rebuilds it) and the commit fails.
func finishTree(root *os.Root, t *Tree, linked map[string]fileStamp, durable, keep bool) ([]*os.File, error) {
	var kept []*os.File
	fail := func(err error) ([]*os.File, error) {
		for _, f := range kept {
			f.Close()
		}
		return nil, err
	}
	for _, e := range t.Entries {
		if e.Type != treeFile {
			continue
		}
		f, err := root.OpenFile(filepath.FromSlash(e.Path), os.O_RDONLY, 0)
		if err != nil {
			return fail(err)
		}
		if stamp, ok := linked[e.Path]; ok {
			if err := checkStamp(f, stamp); err != nil {
				f.Close()
				root.Remove(filepath.FromSlash(e.Path))
				return fail(fmt.Errorf("transfer: commit %s: %w", e.Path, err))
			}
		}
		err = f.Chmod(fs.FileMode(e.Mode))
		if err == nil && durable {
			err = f.Sync()
		}
		if err != nil {
			f.Close()
			return fail(fmt.Errorf("transfer: commit %s: %w", e.Path, err))
		}
		if keep {
			kept = append(kept, f)
		} else {
			f.Close()
		}
	}
	var dirs []string
	modes := map[string]fs.FileMode{}
	for _, e := range t.Entries {
		if e.Type == treeDir {
			d := filepath.FromSlash(e.Path)
			dirs = append(dirs, d)
			modes[d] = fs.FileMode(e.Mode)
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
	if durable {
		for _, d := range append(dirs, ".") {
			if err := syncRootDir(root, d); err != nil {
				return fail(err)
			}
		}
	}
	// Directory modes last, deepest first, so a read-only directory does
	// not block its own contents.
	for _, d := range dirs {
		if err := root.Chmod(d, modes[d]); err != nil {
			return fail(err)
		}
	}
	return kept, nil
}

func syncRootDir(root *os.Root, name string) error {
	f, err := root.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("transfer: fsync %s: %w", name, err)
	}
	return nil
}
