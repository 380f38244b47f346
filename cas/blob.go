package cas

import (
	"bufio"
	"bytes"
	"container/list"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Blobs: most chunks are not stored one file each but as ranges of a few
// large files in DIR/blobs, each pin's ranges listed in DIR/locs/NAME:
//
//   - a link is a hard link to a file the node committed (a checkpoint's
//     or image's file, Linked): keeping a gigabyte costs a link, not a copy;
//   - a pack is a file the store wrote itself, the chunks Keep had to copy
//     (from a plain reader, or a file it could not link) back to back.
//
// A location table (DIR/locs/NAME, naming its index's root; written as
// DIR/locs/.next-NAME before the pin NAME and moved into place after it)
// says where each chunk of the pin lies: blob, offset, length. Every read is verified against the chunk's ID, as a chunk file's
// is: a blob is someone else's file too (a link shares the inode with the
// image it came from), so a range that no longer holds its chunk is a miss,
// never wrong data. A blob goes when no pin's table names it and GCGrace
// has passed (unpinned chunks stay readable that long, as unreferenced
// chunk files do); blobs no table names (a keep cut by a crash) are
// removed at Open once their inode is older than GCGrace.

// blob is one file in DIR/blobs.
type blob struct {
	name string
	refs int       // location tables of pins naming it
	free time.Time // when refs last dropped to 0
	gone bool      // removed: its locations are stale
	// dirty: kept unpinned (KeepLinked without a name), not fsynced; the
	// first pin to name it fsyncs it (syncNewBlobs).
	dirty bool
	// size is its bytes on disk and inode, read (sized) before a pin first
	// names it; the pins hold it (Held) while refs > 0.
	size  blobSize
	sized bool

	// Its file open for reads (opened on first read; at most
	// maxOpenBlobs of a store's blobs are, the least recently read closed
	// first), the reads using it and its place in Store.open.
	f     *os.File
	users int
	lru   *list.Element
}

// blobSize is a blob's bytes on disk (allocated blocks: a link to a
// sparse image holds its data, not its holes) and its inode, which other
// blobs may share (a checkpoint file linked in place of the task's earlier
// one, then into the store again).
type blobSize struct {
	bytes int64
	ino   inodeKey
}

type inodeKey struct{ dev, ino uint64 }

// inodeHold counts the held blobs of one inode.
type inodeHold struct {
	blobs int
	bytes int64
}

func sizeOf(st *unix.Stat_t) blobSize {
	return blobSize{bytes: st.Blocks * 512, ino: inodeKey{uint64(st.Dev), st.Ino}}
}

// statBlobs returns the size of each blob of t not sized yet, taken from
// known (the blobs syncNewBlobs fstat'ed) or read now. A blob that cannot
// be read counts nothing (its reads are misses).
func (s *Store) statBlobs(t *locTable, known map[string]blobSize) map[string]blobSize {
	s.mu.Lock()
	var todo []string
	for _, n := range t.blobs {
		if b := s.blobs[n]; b != nil && b.sized {
			continue
		}
		if _, ok := known[n]; !ok {
			todo = append(todo, n)
		}
	}
	s.mu.Unlock()
	if len(todo) == 0 {
		return known
	}
	out := make(map[string]blobSize, len(known)+len(todo))
	for n, z := range known {
		out[n] = z
	}
	for _, n := range todo {
		var st unix.Stat_t
		if err := unix.Stat(s.blobPath(n), &st); err == nil {
			out[n] = sizeOf(&st)
		} else {
			out[n] = blobSize{}
		}
	}
	return out
}

// sizeBlobsLocked records the sizes of blobs not sized yet (s.mu held).
func (s *Store) sizeBlobsLocked(sizes map[string]blobSize) {
	for n, z := range sizes {
		if b := s.blobOf(n); !b.sized {
			b.size, b.sized = z, true
		}
	}
}

// blobOf returns blob name's entry, made if new (s.mu held).
func (s *Store) blobOf(name string) *blob {
	b := s.blobs[name]
	if b == nil {
		b = &blob{name: name}
		s.blobs[name] = b
	}
	return b
}

// holdInodeLocked counts b's inode as held by the pins (d = 1) or no
// longer by b (d = -1), adjusting Held when the inode's first blob comes
// or its last goes (s.mu held).
func (s *Store) holdInodeLocked(b *blob, d int) {
	h := s.inodes[b.size.ino]
	if h == nil {
		h = &inodeHold{bytes: b.size.bytes}
		s.inodes[b.size.ino] = h
	}
	h.blobs += d
	switch {
	case d > 0 && h.blobs == 1:
		s.held += h.bytes
	case h.blobs <= 0:
		s.held -= h.bytes
		delete(s.inodes, b.size.ino)
	}
}

// maxOpenBlobs bounds the blob files a store keeps open for reads (every
// file of every kept tree is a blob: thousands of them would each hold a
// descriptor, and keep a removed inode alive, until swept).
const maxOpenBlobs = 64

// loc is where a chunk lies: n bytes at off in b.
type loc struct {
	b   *blob
	off int64
	n   uint32
}

// locEnt is one entry of a location table.
type locEnt struct {
	id  ID
	b   int // index into locTable.blobs
	off int64
	n   uint32
}

// locTable is a pin's location table.
type locTable struct {
	root  ID // the pin's index root (x.Root)
	blobs []string
	ents  []locEnt
}

var blobName = regexp.MustCompile(`^(link|pack)-[0-9a-f]{32}$`)

func newBlobName(kind string) string {
	var b [16]byte
	rand.Read(b[:])
	return kind + "-" + hex.EncodeToString(b[:])
}

func (s *Store) blobPath(name string) string { return filepath.Join(s.dir, "blobs", name) }

var locMagic = [8]byte{'F', 'R', 'Y', 'L', 'O', 'C', '1', '\n'}

// encodeLocs: magic, root [32], blob count u32, each name (u8 length,
// bytes), entry count u32, each ID [32], blob u32, offset u64, length u32.
func encodeLocs(t *locTable) []byte {
	b := make([]byte, 0, 48+len(t.blobs)*40+len(t.ents)*48)
	b = append(b, locMagic[:]...)
	b = append(b, t.root[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(t.blobs)))
	for _, n := range t.blobs {
		b = append(b, byte(len(n)))
		b = append(b, n...)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(t.ents)))
	for _, e := range t.ents {
		b = append(b, e.id[:]...)
		b = binary.BigEndian.AppendUint32(b, uint32(e.b))
		b = binary.BigEndian.AppendUint64(b, uint64(e.off))
		b = binary.BigEndian.AppendUint32(b, e.n)
	}
	return b
}

// decodeLocs parses a location table, refusing anything malformed.
func decodeLocs(b []byte) (*locTable, error) {
	bad := func(f string, a ...any) (*locTable, error) {
		return nil, fmt.Errorf("%w: location table: %s", ErrCorrupt, fmt.Sprintf(f, a...))
	}
	if len(b) < len(locMagic)+32+4 || !bytes.Equal(b[:8], locMagic[:]) {
		return bad("bad header")
	}
	t := &locTable{}
	copy(t.root[:], b[8:40])
	b = b[40:]
	nb := binary.BigEndian.Uint32(b)
	b = b[4:]
	if uint64(nb) > uint64(len(b)) {
		return bad("%d blobs in %d bytes", nb, len(b))
	}
	for i := uint32(0); i < nb; i++ {
		if len(b) < 1 || len(b) < 1+int(b[0]) {
			return bad("blob %d truncated", i)
		}
		n := string(b[1 : 1+int(b[0])])
		if !blobName.MatchString(n) {
			return bad("blob name %q", n)
		}
		t.blobs = append(t.blobs, n)
		b = b[1+int(b[0]):]
	}
	if len(b) < 4 {
		return bad("entry count truncated")
	}
	ne := binary.BigEndian.Uint32(b)
	b = b[4:]
	if uint64(ne)*48 != uint64(len(b)) {
		return bad("%d entries in %d bytes", ne, len(b))
	}
	t.ents = make([]locEnt, ne)
	for i := range t.ents {
		e := &t.ents[i]
		copy(e.id[:], b[:32])
		e.b = int(binary.BigEndian.Uint32(b[32:]))
		e.off = int64(binary.BigEndian.Uint64(b[36:]))
		e.n = binary.BigEndian.Uint32(b[44:])
		b = b[48:]
		if e.b >= len(t.blobs) || e.off < 0 || e.n == 0 || e.n > MaxChunkLen {
			return bad("entry %d: blob %d, offset %d, length %d", i, e.b, e.off, e.n)
		}
	}
	return t, nil
}

// addLocsLocked registers the locations of t and, when hold is set (t is
// a pin's table), its hold on its blobs (s.mu held).
func (s *Store) addLocsLocked(t *locTable, hold bool) {
	bs := make([]*blob, len(t.blobs))
	for i, n := range t.blobs {
		b := s.blobOf(n)
		if hold {
			if b.refs++; b.refs == 1 {
				s.holdInodeLocked(b, 1)
			}
		}
		bs[i] = b
	}
next:
	for _, e := range t.ents {
		l := loc{b: bs[e.b], off: e.off, n: e.n}
		for _, c := range s.where[e.id] {
			if c == l {
				continue next
			}
		}
		s.where[e.id] = append(s.where[e.id], l)
	}
}

// dropLocsLocked releases pin name's table (s.mu held): its blobs stay
// readable until they are swept after the grace period.
func (s *Store) dropLocsLocked(name string, now time.Time) {
	t := s.tables[name]
	if t == nil {
		return
	}
	delete(s.tables, name)
	for _, n := range t.blobs {
		if b := s.blobs[n]; b != nil {
			if b.refs--; b.refs == 0 {
				b.free = now
				s.holdInodeLocked(b, -1)
			}
		}
	}
}

// sweepBlobsLocked removes the blobs no pin names whose grace ended
// before cutoff (s.mu held), and forgets the locations into them. It
// returns the blobs and bytes removed.
func (s *Store) sweepBlobsLocked(cutoff time.Time) (int, int64) {
	n, bytes := 0, int64(0)
	for name, b := range s.blobs {
		if b.refs > 0 || s.pending[name] || b.free.After(cutoff) {
			continue
		}
		freed := freedBy(s.blobPath(name))
		if err := os.Remove(s.blobPath(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			continue
		}
		bytes += freed
		b.gone = true
		// A read in progress on b.f completes (the descriptor is
		// released after it); later ones find b gone.
		s.closeBlobLocked(b)
		delete(s.blobs, name)
		n++
	}
	if n == 0 {
		return 0, 0
	}
	for id := range s.where {
		s.pruneLocked(id)
	}
	return n, bytes
}

// freedBy is what removing the blob at p frees on disk (freedBytes).
func freedBy(p string) int64 {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return 0
	}
	return freedBytes(&st)
}

// freedBytes is what removing a file of stat st frees on disk: its
// allocated bytes when it is its inode's last link, else nothing (a link
// blob whose image, or another blob, still links the inode).
func freedBytes(st *unix.Stat_t) int64 {
	if st.Nlink > 1 {
		return 0
	}
	return st.Blocks * 512
}

// pruneLocked drops id's locations into removed blobs.
func (s *Store) pruneLocked(id ID) {
	s.keepLocsLocked(id, func(l loc) bool { return !l.b.gone })
}

// keepLocsLocked keeps only id's locations that keep accepts (s.mu held).
func (s *Store) keepLocsLocked(id ID, keep func(loc) bool) {
	ls := s.where[id]
	k := ls[:0]
	for _, l := range ls {
		if keep(l) {
			k = append(k, l)
		}
	}
	if len(k) == 0 {
		delete(s.where, id)
	} else {
		s.where[id] = k
	}
}

// located reports whether id has a location in a blob.
func (s *Store) located(id ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.liveLocLocked(id)
	return ok
}

// liveLocLocked returns id's first location in a blob not removed (s.mu
// held); ok is false when there is none.
func (s *Store) liveLocLocked(id ID) (loc, bool) {
	for _, l := range s.where[id] {
		if !l.b.gone {
			return l, true
		}
	}
	return loc{}, false
}

// getLocated reads id from a blob, verified. found is false when no
// location holds it; bad counts the locations that no longer did (they
// are forgotten). An unreadable location is a miss, logged.
func (s *Store) getLocated(id ID, dst []byte) (data []byte, found bool, bad int) {
	s.mu.Lock()
	ls := append([]loc(nil), s.where[id]...)
	s.mu.Unlock()
	for _, l := range ls {
		if cap(dst) < int(l.n) {
			dst = make([]byte, l.n)
		}
		d := dst[:l.n]
		rerr := l.b.readAt(s, d, l.off)
		if rerr == nil && Sum(d) == id {
			return d, true, bad
		}
		if rerr != nil && !errors.Is(rerr, fs.ErrNotExist) && !errors.Is(rerr, io.ErrUnexpectedEOF) {
			// This node's trouble (EMFILE, EIO, EACCES), not a range
			// that lost its chunk: a miss now, the location kept.
			s.log.Warn("chunk location unreadable", "chunk", id.String(), "blob", l.b.name, "err", rerr)
			continue
		}
		bad++
		s.log.Warn("chunk location no longer holds it; forgotten", "chunk", id.String(), "blob", l.b.name, "offset", l.off, "err", rerr)
		s.mu.Lock()
		s.keepLocsLocked(id, func(m loc) bool { return m != l })
		s.mu.Unlock()
	}
	return nil, false, bad
}

func (b *blob) readAt(s *Store, d []byte, off int64) error {
	f, err := s.openBlob(b)
	if err != nil {
		return err
	}
	n, err := f.ReadAt(d, off)
	s.doneBlob(b)
	if n == len(d) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// openBlob returns b's file open for a read, which ends with doneBlob:
// until then the file is not closed to make room for another.
func (s *Store) openBlob(b *blob) (*os.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b.gone {
		return nil, fs.ErrNotExist
	}
	if s.closed {
		return nil, os.ErrClosed
	}
	if b.f == nil {
		f, err := os.Open(s.blobPath(b.name))
		if err != nil {
			return nil, err
		}
		b.f = f
		b.lru = s.open.PushFront(b)
	} else {
		s.open.MoveToFront(b.lru)
	}
	b.users++ // before evicting: never b itself
	s.evictLocked()
	return b.f, nil
}

func (s *Store) doneBlob(b *blob) {
	s.mu.Lock()
	b.users--
	s.evictLocked()
	s.mu.Unlock()
}

// evictLocked closes the least recently read blob files not in use while
// more than maxOpenBlobs are open.
func (s *Store) evictLocked() {
	for e := s.open.Back(); e != nil && s.open.Len() > s.maxOpen; {
		prev := e.Prev()
		if b := e.Value.(*blob); b.users == 0 {
			s.closeBlobLocked(b)
		}
		e = prev
	}
}

func (s *Store) closeBlobLocked(b *blob) {
	if b.f == nil {
		return
	}
	b.f.Close()
	b.f = nil
	s.open.Remove(b.lru)
	b.lru = nil
}

// Close closes the blob files the store holds open for reads. Reads from
// blobs after it are misses; the store is not to be used after Close
// otherwise either.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for s.open.Len() > 0 {
		s.closeBlobLocked(s.open.Front().Value.(*blob))
	}
	return nil
}

// reserveBlob names a new blob of kind "link" or "pack" and marks it
// pending (a keep or a compaction in flight: GC and Open's orphan sweep
// leave it alone) until the store registers it (a pin, an unnamed keep,
// a compaction's moved tables) or releaseBlob.
func (s *Store) reserveBlob(kind string) string {
	name := newBlobName(kind)
	s.mu.Lock()
	s.pending[name] = true
	s.mu.Unlock()
	return name
}

// releaseBlob ends a reservation: the blob is removed unless a pin took
// it (or it was never made).
func (s *Store) releaseBlob(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.pending, name)
	if s.blobs[name] == nil {
		os.Remove(s.blobPath(name))
	}
}

// Linked is a stream of files hard-linked into the store (Store.Link,
// Add), to be kept by KeepLinked: the store references their bytes
// instead of copying them. Link the files as soon as they are committed:
// a file already removed cannot be linked, and its chunks are then copied
// into a pack by the keep.
type Linked struct {
	s     *Store
	parts []linkPart
	size  int64
	done  bool
}

type linkPart struct {
	blob  string // "" when the file could not be linked
	start int64  // in the stream
	size  int64
}

// Link starts a Linked stream for s.
func (s *Store) Link() *Linked { return &Linked{s: s} }

// Add appends f, of size bytes (its committed size), to the stream and
// hard-links it into the store now. When the file cannot be linked (nil,
// removed, on another filesystem, of another size) the part is remembered
// as unlinked and KeepLinked copies its chunks instead; the error says
// why.
func (l *Linked) Add(f *os.File, size int64) error {
	p := linkPart{start: l.size, size: size}
	l.size += size
	var err error
	if f != nil {
		err = l.link(f, size, &p)
	}
	l.parts = append(l.parts, p)
	return err
}

func (l *Linked) link(f *os.File, size int64, p *linkPart) error {
	if size == 0 {
		return nil
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || fi.Size() != size {
		return fmt.Errorf("cas: link %s: %d bytes, want %d", f.Name(), fi.Size(), size)
	}
	name := l.s.reserveBlob("link")
	// linkat through /proc: the file may be open only (its path gone or
	// moved); a removed file (no links left) is refused by the kernel.
	err = unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(int(f.Fd())), unix.AT_FDCWD, l.s.blobPath(name), unix.AT_SYMLINK_FOLLOW)
	if err != nil {
		l.s.releaseBlob(name)
		return fmt.Errorf("cas: link %s: %w", f.Name(), err)
	}
	p.blob = name
	return nil
}

// Close removes the links no pin took (after KeepLinked, or instead of it).
func (l *Linked) Close() {
	if l == nil || l.done {
		return
	}
	l.done = true
	for _, p := range l.parts {
		if p.blob != "" {
			l.s.releaseBlob(p.blob)
		}
	}
}

// part returns the part holding stream bytes [off, off+n), or nil when
// they do not lie in one linked file.
func (l *Linked) part(off int64, n uint32) *linkPart {
	if l == nil {
		return nil
	}
	lo, hi := 0, len(l.parts)
	for lo < hi {
		m := (lo + hi) / 2
		if l.parts[m].start+l.parts[m].size <= off {
			lo = m + 1
		} else {
			hi = m
		}
	}
	for i := lo; i < len(l.parts); i++ {
		p := &l.parts[i]
		if p.size == 0 {
			continue
		}
		if p.blob != "" && off >= p.start && off+int64(n) <= p.start+p.size {
			return p
		}
		return nil
	}
	return nil
}

// packWriter appends chunks to a new pack.
type packWriter struct {
	s    *Store
	name string
	f    *os.File
	w    *bufio.Writer
	off  int64
}

func (s *Store) newPack() (*packWriter, error) {
	name := s.reserveBlob("pack")
	f, err := os.OpenFile(s.blobPath(name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		s.releaseBlob(name)
		return nil, fmt.Errorf("cas: new pack: %w", err)
	}
	return &packWriter{s: s, name: name, f: f, w: bufio.NewWriterSize(f, 1<<20)}, nil
}

func (p *packWriter) add(d []byte) (int64, error) {
	off := p.off
	if _, err := p.w.Write(d); err != nil {
		return 0, fmt.Errorf("cas: write pack %s: %w", p.name, err)
	}
	p.off += int64(len(d))
	return off, nil
}

// finish flushes and closes the pack (pinLocked's syncNewBlobs fsyncs it
// before its table is written).
func (p *packWriter) finish() error {
	err := p.w.Flush()
	if cerr := p.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cas: write pack %s: %w", p.name, err)
	}
	return nil
}

// discard removes the pack unless a pin took it.
func (p *packWriter) discard() {
	if p == nil {
		return
	}
	p.f.Close()
	p.s.releaseBlob(p.name)
}

// KeepLinked is Keep for a stream whose files are linked into the store
// (l, from Link): each chunk lying in one linked file is referenced where
// it is (not read, not hashed: reads verify it); the others are read from
// r (the same stream: an io.ReaderAt over the original files), checked
// against their IDs and copied into a pack unless the store holds them.
// It pins x as name and applies MaxBytes, then closes l. It returns the
// number of chunks the store did not hold before.
//
// With no name (""), nothing is pinned: the chunks are kept unreferenced,
// readable for GCGrace (the blobs holding them start their grace period
// again), as an unpinned chunk file is; no table or pin is written, and
// the new blobs are not fsynced until a pin names them.
func (s *Store) KeepLinked(ctx context.Context, name string, r io.ReaderAt, l *Linked, x *Index) (int, error) {
	defer l.Close()
	if name != "" {
		if err := ValidName(name); err != nil {
			return 0, err
		}
	}
	if err := x.Validate(); err != nil {
		return 0, err
	}
	if l != nil && l.size != x.Size {
		l.Close()
		l = nil // not this stream: copy
	}
	s.gc.RLock()
	tb := newTableBuilder(x)
	offs := x.Offsets()
	var pack *packWriter
	var buf []byte
	added, n := 0, 0
	fail := func(err error) (int, error) {
		pack.discard()
		s.gc.RUnlock()
		return 0, err
	}
	for i, e := range x.Entries {
		if e.Hole || tb.in[e.ID] {
			continue
		}
		if n++; n%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return fail(err)
			}
		}
		if p := l.part(offs[i], e.Length); p != nil {
			// (A linked chunk's chunk file, if any, is not looked for: the
			// count is then one too high, and a lstat per chunk is saved.)
			if !s.located(e.ID) {
				added++
			}
			tb.add(e.ID, p.blob, offs[i]-p.start, e.Length)
			continue
		}
		if s.holdStored(tb, e) {
			continue
		}
		added++
		if cap(buf) < int(e.Length) {
			buf = make([]byte, e.Length)
		}
		b := buf[:e.Length]
		if n, err := r.ReadAt(b, offs[i]); n < len(b) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fail(fmt.Errorf("cas: keep %q: entry %d at %d: %w", name, i, offs[i], err))
		}
		if Sum(b) != e.ID {
			return fail(fmt.Errorf("%w: keep %q: entry %d at %d: data does not hash to its id %s", ErrCorrupt, name, i, offs[i], e.ID.Short()))
		}
		if pack == nil {
			var err error
			if pack, err = s.newPack(); err != nil {
				return fail(err)
			}
		}
		off, err := pack.add(b)
		if err != nil {
			return fail(err)
		}
		tb.add(e.ID, pack.name, off, e.Length)
	}
	if pack != nil {
		if err := pack.finish(); err != nil {
			return fail(err)
		}
	}
	var err error
	if name == "" {
		s.keepUnpinned(tb.t)
	} else {
		err = s.pinLocked(name, x, tb)
	}
	s.gc.RUnlock()
	pack.discard() // no-op for the pin's own pack, now registered
	if err != nil {
		return 0, err
	}
	s.sweepLoose()
	_, err = s.Trim(ctx)
	return added, err
}

// keepUnpinned registers the locations of t, a keep's table that no pin
// takes (s.gc held shared): its blobs, new or not, are unreferenced from
// now and stay readable for the grace period. A crash forgets them: they
// are orphans, removed at Open or by GC once their grace has passed (their
// ctime is the link or the pack's last write).
func (s *Store) keepUnpinned(t *locTable) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range t.blobs {
		b := s.blobs[n]
		if b == nil {
			b = s.blobOf(n) // this keep's own link or pack
			b.dirty = true
		}
		if b.refs == 0 {
			b.free = now
		}
		delete(s.pending, n)
	}
	s.addLocsLocked(t, false)
}

// sweepLoose removes the blobs no pin has named for the grace period.
func (s *Store) sweepLoose() {
	// Not at the cost of waiting: another keep (or a Put) holding gc
	// shared may copy for long, and a writer waiting for gc would also
	// stop every keep starting meanwhile. The next keep or GC sweeps.
	if !s.gc.TryLock() {
		return
	}
	defer s.gc.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweepBlobsLocked(time.Now().Add(-s.grace()))
}

func (s *Store) grace() time.Duration {
	if s.opts.GCGrace > 0 {
		return s.opts.GCGrace
	}
	return 10 * time.Minute
}

// loadLocs reads the location table of pin name (x: its index), if any:
// locs/NAME, or locs/.next-NAME when a crash came after the pin was
// written and before that table took its place (moved into place now). A
// table of another index (a crash before the pin) is ignored.
func (s *Store) loadLocs(name string, x *Index) (*locTable, error) {
	root, found := x.Root(), false
	for _, n := range []string{name, nextPrefix + name} {
		p := filepath.Join(s.dir, "locs", n)
		b, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		found = true
		t, err := decodeLocs(b)
		if err != nil {
			s.log.Warn("location table unreadable", "pin", name, "file", n, "err", err)
			continue
		}
		if t.root != root {
			continue
		}
		if n != name && os.Rename(p, filepath.Join(s.dir, "locs", name)) == nil {
			syncDir(filepath.Join(s.dir, "locs"))
		}
		return t, nil
	}
	if found {
		s.log.Warn("no location table of the pinned index; its chunks are misses", "pin", name)
	}
	return nil, nil
}

// FileBlob returns the path of a blob of size bytes that holds chunk id at
// off and that pin's table names, or "" if there is none: a file of pin's
// image (an earlier checkpoint of the same task) that the file being
// rebuilt may equal (a state file that did not change). Only the pin's own
// blobs: a caller that links one in place shares its inode with that
// image, never with another task's. Nothing is read or verified; a caller
// that uses it checks every chunk it relies on.
func (s *Store) FileBlob(id ID, off, size int64, pin string) string {
	s.mu.Lock()
	var cand []string
	if t := s.tables[pin]; t != nil {
		for _, l := range s.where[id] {
			if !l.b.gone && l.off == off && slices.Contains(t.blobs, l.b.name) {
				cand = append(cand, l.b.name)
			}
		}
	}
	s.mu.Unlock()
	for _, n := range cand {
		if fi, err := os.Stat(s.blobPath(n)); err == nil && fi.Mode().IsRegular() && fi.Size() == size {
			return s.blobPath(n)
		}
	}
	return ""
}

// syncNewBlobs makes the blobs of t that no pin named yet durable (fsync
// of each and of DIR/blobs; a link's file is usually clean already), so
// the table never names a blob a crash could lose: the pending ones (this
// keep's) and those an unpinned keep left dirty. Chunk files need a
// syncfs instead (Sync).
//
// It returns the size of each blob it synced (fstat after the fsync).
func (s *Store) syncNewBlobs(t *locTable) (map[string]blobSize, error) {
	s.mu.Lock()
	var fresh []string
	var dirty []*blob
	for _, n := range t.blobs {
		if b := s.blobs[n]; b != nil && b.dirty {
			dirty = append(dirty, b)
			fresh = append(fresh, n)
		} else if s.pending[n] {
			fresh = append(fresh, n)
		}
	}
	s.mu.Unlock()
	sizes := make(map[string]blobSize, len(fresh))
	for _, n := range fresh {
		f, err := os.Open(s.blobPath(n))
		if err == nil {
			err = f.Sync()
			var st unix.Stat_t
			if err == nil && unix.Fstat(int(f.Fd()), &st) == nil {
				sizes[n] = sizeOf(&st)
			}
			f.Close()
		}
		if err != nil {
			return nil, fmt.Errorf("cas: sync blob %s: %w", n, err)
		}
	}
	if len(fresh) > 0 {
		syncDir(filepath.Join(s.dir, "blobs"))
	}
	s.mu.Lock()
	for _, b := range dirty {
		b.dirty = false
	}
	s.mu.Unlock()
	return sizes, nil
}
