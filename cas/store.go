package cas

import (
	"bytes"
	"container/list"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Options configure a Store.
type Options struct {
	// Compress stores a chunk zstd-compressed when that saves at least 10%.
	Compress bool
	// SyncEachChunk fsyncs every chunk file before it is renamed into place.
	// Off by default: creating a small file costs ~70 µs here and an fsync
	// ~400 µs, so chunks are made durable in batches by Sync (one syncfs),
	// which Pin calls before it records a pin. A chunk lost or torn by a
	// crash before Sync is caught by the verification on read and fetched
	// again.
	SyncEachChunk bool
	// MaxBytes, if positive, bounds the bytes on disk the pins hold (see
	// Held: whole blobs, not the chunks of them the pins name): Trim
	// (which Keep calls after pinning) compacts sparse packs and drops the
	// oldest other pins (by the time they were last pinned) until they
	// fit, and GC frees the chunks and blobs nothing references any more. The newest pin is always
	// kept, even if it alone is larger. Chunks not yet pinned (a transfer
	// in flight, an unnamed keep) and blobs no pin names any more are not
	// counted and are kept for GCGrace.
	MaxBytes int64
	// GCGrace is how old an unreferenced chunk must be before the GC that
	// follows a trim removes it (default 10 minutes).
	GCGrace time.Duration
	// Logger receives corruption reports; nil means slog.Default().
	Logger *slog.Logger
}

// Store is a node's on-disk chunk store:
//
//	DIR/chunks/ab/abcdef…   one file per chunk (Put), named by its ID in
//	                        hex, fanned out by the first byte
//	DIR/blobs/…             links to committed files and packs of chunks
//	                        (Keep, KeepLinked; blob.go)
//	DIR/locs/NAME           where pin NAME's chunks lie in the blobs
//	DIR/locs/.next-NAME     pin NAME's new table until it is moved into
//	                        place (pinLocked)
//	DIR/pins/NAME           a pinned index (EncodeIndex format)
//	DIR/tmp/                pins being written
//
// A chunk file is a 5-byte header (encoding u8, length u32) and the payload.
// Writes go to a temporary file beside the final name and are renamed into place, so a chunk file is either
// absent or complete; concurrent writers of the same chunk race harmlessly
// (the last rename wins with identical content). Every read is verified
// against the ID; a chunk that fails is removed and reported as ErrCorrupt,
// so the next transfer fetches it again.
//
// Pins hold references: the store keeps a reference count per chunk (the
// number of pins naming it), rebuilt from pins/ at Open. GC removes chunks
// with no reference that are older than a grace period (so a transfer that
// has stored chunks but not yet pinned its index keeps them).
type Store struct {
	dir  string
	opts Options
	log  *slog.Logger

	// gc is held shared by writers and pinners and exclusively by GC, so a
	// chunk is never collected between its Put and its Pin.
	gc sync.RWMutex
	// pinMu serializes the writers of pins/ and locs/ (pinLocked, Unpin,
	// Compact's moveTables):
	// a pin's table and index are two files, which two pins of one name
	// at once could interleave (the table of one, the index of the other).
	pinMu sync.Mutex
	mu    sync.Mutex // guards the fields below but stopAt
	refs  map[ID]int
	pins  map[string][]ID // unique data chunk IDs of each pin
	pinAt map[string]time.Time
	// The bytes on disk the pins hold (Held): the blobs their tables name,
	// each inode once, and the chunks they hold as chunk files.
	held     int64
	inodes   map[inodeKey]*inodeHold // of the blobs pins name
	files    map[string][]Entry      // chunks each pin holds as chunk files
	fileRefs map[ID]int              // pins holding a chunk as a chunk file

	// Chunks in blobs (blob.go), guarded by mu.
	blobs   map[string]*blob
	where   map[ID][]loc
	tables  map[string]*locTable // of each pin
	pending map[string]bool      // blobs written or linked, not yet registered (reserveBlob)
	open    *list.List           // blobs with their file open, most recently read first
	maxOpen int                  // maxOpenBlobs
	closed  bool                 // Close ran

	// stopAt, set by tests only, stops a pin or a compaction after the
	// step it reports true for, leaving the disk as a crash there would
	// (stopPoint).
	stopAt func(step string) bool
}

const chunkHeaderLen = 5

// Open opens (creating if needed) the store in dir and loads its pins.
func Open(dir string, opts Options) (*Store, error) {
	s := &Store{dir: dir, opts: opts, log: opts.Logger, refs: map[ID]int{}, pins: map[string][]ID{},
		pinAt: map[string]time.Time{}, inodes: map[inodeKey]*inodeHold{}, files: map[string][]Entry{}, fileRefs: map[ID]int{},
		blobs: map[string]*blob{}, where: map[ID][]loc{}, tables: map[string]*locTable{}, pending: map[string]bool{},
		open: list.New(), maxOpen: maxOpenBlobs}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.log = s.log.With("component", "cas.store")
	for _, d := range []string{"chunks", "pins", "tmp", "blobs", "locs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("cas: open store: %w", err)
		}
	}
	for i := 0; i < 256; i++ {
		if err := os.MkdirAll(filepath.Join(dir, "chunks", fmt.Sprintf("%02x", i)), 0o755); err != nil {
			return nil, fmt.Errorf("cas: open store: %w", err)
		}
	}
	// Leftovers of writes interrupted by a crash.
	if ents, err := os.ReadDir(filepath.Join(dir, "tmp")); err == nil {
		for _, e := range ents {
			os.Remove(filepath.Join(dir, "tmp", e.Name()))
		}
	}
	ents, err := os.ReadDir(filepath.Join(dir, "pins"))
	if err != nil {
		return nil, fmt.Errorf("cas: open store: %w", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			// A pin write cut by a crash (writeAtomic's temporary).
			os.Remove(filepath.Join(dir, "pins", e.Name()))
			continue
		}
		x, err := s.readPin(e.Name())
		if err != nil {
			return nil, fmt.Errorf("cas: open store: pin %q: %w", e.Name(), err)
		}
		if info, err := e.Info(); err == nil {
			s.pinAt[e.Name()] = info.ModTime()
		}
		t, err := s.loadLocs(e.Name(), x)
		if err != nil {
			return nil, fmt.Errorf("cas: open store: locations of pin %q: %w", e.Name(), err)
		}
		if t != nil {
			s.sizeBlobsLocked(s.statBlobs(t, nil))
			s.addLocsLocked(t, true)
			s.tables[e.Name()] = t
		}
		s.addPinLocked(e.Name(), x, filesOf(x, t))
	}
	// Tables without their pin, and blobs no table names: a keep or an
	// unpin cut by a crash (or in flight in another process using the
	// store, as `ferry cas gc` beside an agent: hence the grace period).
	s.removeOrphans(time.Now().Add(-s.grace()))
	return s, nil
}

// removeOrphans removes the location tables without a pin and the blobs no
// table names nor a keep in flight holds whose inode changed (ctime: a
// link or a write) before cutoff. It returns the blobs and bytes removed.
func (s *Store) removeOrphans(cutoff time.Time) (int, int64) {
	old := func(p string) (int64, bool) {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return 0, false
		}
		return freedBytes(&st), time.Unix(st.Ctim.Unix()).Before(cutoff)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ents, err := os.ReadDir(filepath.Join(s.dir, "locs")); err == nil {
		for _, e := range ents {
			p := filepath.Join(s.dir, "locs", e.Name())
			// A pin's .next-NAME may be its only table (pinLocked could
			// not move it into place): it goes with the pin (Unpin).
			_, ok := s.pins[strings.TrimPrefix(e.Name(), nextPrefix)]
			if !ok {
				if _, o := old(p); o {
					os.Remove(p)
				}
			}
		}
	}
	n, bytes := 0, int64(0)
	if ents, err := os.ReadDir(filepath.Join(s.dir, "blobs")); err == nil {
		for _, e := range ents {
			p := filepath.Join(s.dir, "blobs", e.Name())
			if s.blobs[e.Name()] != nil || s.pending[e.Name()] {
				continue
			}
			if size, o := old(p); o && os.Remove(p) == nil {
				n++
				bytes += size
			}
		}
	}
	return n, bytes
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

func (s *Store) chunkPath(id ID) string {
	h := id.String()
	return filepath.Join(s.dir, "chunks", h[:2], h)
}

// Has reports whether the chunk's file exists or a blob holds it (it is
// not read or verified).
func (s *Store) Has(id ID) bool {
	return s.hasFile(id) || s.located(id)
}

func (s *Store) hasFile(id ID) bool {
	_, err := os.Lstat(s.chunkPath(id))
	return err == nil
}

// Put stores data under id. It checks that data hashes to id (ErrCorrupt if
// not) and reports whether it wrote a new file (false: already present).
func (s *Store) Put(id ID, data []byte) (bool, error) {
	if len(data) == 0 || len(data) > MaxChunkLen {
		return false, fmt.Errorf("%w: chunk %s: length %d outside [1, %d]", ErrInvalid, id.Short(), len(data), MaxChunkLen)
	}
	if Sum(data) != id {
		return false, fmt.Errorf("%w: chunk %s: data does not hash to its id", ErrCorrupt, id.Short())
	}
	s.gc.RLock()
	defer s.gc.RUnlock()
	p := s.chunkPath(id)
	if _, err := os.Lstat(p); err == nil {
		now := time.Now()
		os.Chtimes(p, now, now) // restart the GC grace period
		return false, nil
	}
	enc, payload := Raw, data
	if s.opts.Compress {
		enc, payload = Compress(nil, data)
	}
	var hdr [chunkHeaderLen]byte
	hdr[0] = byte(enc)
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(data)))
	if err := s.writeAtomic(p, hdr[:], payload, s.opts.SyncEachChunk); err != nil {
		return false, fmt.Errorf("cas: put chunk %s: %w", id.Short(), err)
	}
	return true, nil
}

// nextPrefix starts the name of a pin's new location table until its pin
// is written (pinLocked); pin names cannot start with '.'.
const nextPrefix = ".next-"

// tmpPrefix starts the name of a chunk file being written. It is created
// beside its final name (a rename within one directory costs half of one
// across directories here); GC removes stale ones.
const tmpPrefix = ".tmp-"

// writeAtomic writes parts to a temporary file in the directory of path
// and renames it to path.
func (s *Store) writeAtomic(path string, hdr, payload []byte, sync bool) error {
	f, err := os.CreateTemp(filepath.Dir(path), tmpPrefix+"*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(append(hdr[:len(hdr):len(hdr)], payload...))
	if err == nil && sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// Get returns the chunk's bytes, verified against id, from its chunk file
// or a blob. A chunk file that fails verification is removed, a blob
// location that does not hold the chunk any more forgotten, both reported
// in the log, and ErrCorrupt returned if nothing else holds it; a missing
// one gives ErrNotFound. dst is reused when large enough.
func (s *Store) Get(id ID, dst []byte) ([]byte, error) {
	data, err := s.getFile(id, dst)
	if err == nil || !(errors.Is(err, ErrNotFound) || errors.Is(err, ErrCorrupt)) {
		return data, err
	}
	d, found, bad := s.getLocated(id, dst)
	switch {
	case found:
		return d, nil
	case bad > 0 && errors.Is(err, ErrNotFound):
		return nil, fmt.Errorf("%w: chunk %s: no blob holds it any more", ErrCorrupt, id.Short())
	}
	return nil, err
}

func (s *Store) getFile(id ID, dst []byte) ([]byte, error) {
	p := s.chunkPath(id)
	raw, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: chunk %s", ErrNotFound, id.Short())
	}
	if err != nil {
		return nil, fmt.Errorf("cas: get chunk %s: %w", id.Short(), err)
	}
	data, err := decodeChunkFile(raw, dst)
	if err == nil && Sum(data) != id {
		err = fmt.Errorf("%w: chunk %s: content does not hash to its id", ErrCorrupt, id.Short())
	}
	if err != nil {
		s.log.Warn("corrupt chunk removed", "chunk", id.String(), "err", err)
		os.Remove(p)
		if !errors.Is(err, ErrCorrupt) {
			err = fmt.Errorf("%w: chunk %s: %v", ErrCorrupt, id.Short(), err)
		}
		return nil, err
	}
	return data, nil
}

func decodeChunkFile(raw, dst []byte) ([]byte, error) {
	if len(raw) < chunkHeaderLen {
		return nil, fmt.Errorf("%w: chunk file of %d bytes is shorter than its header", ErrCorrupt, len(raw))
	}
	n := binary.BigEndian.Uint32(raw[1:5])
	if n == 0 || n > MaxChunkLen {
		return nil, fmt.Errorf("%w: chunk file length %d outside [1, %d]", ErrCorrupt, n, MaxChunkLen)
	}
	out, err := Decode(Encoding(raw[0]), raw[chunkHeaderLen:], int(n), dst)
	if err != nil {
		return nil, err
	}
	if Encoding(raw[0]) == Raw && dst != nil {
		out = append(dst[:0], out...)
	}
	return out, nil
}

// Remove deletes a chunk whatever its references (used to drop a chunk
// found corrupt elsewhere).
func (s *Store) Remove(id ID) error {
	s.mu.Lock()
	delete(s.where, id)
	s.mu.Unlock()
	err := os.Remove(s.chunkPath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// Sync makes every chunk written so far durable (one syncfs on the store's
// filesystem).
func (s *Store) Sync() error {
	f, err := os.Open(s.dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("cas: syncfs %s: %w", s.dir, err)
	}
	return nil
}

var pinName = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)

// ValidName checks a pin or transfer name: 1 to 128 of [A-Za-z0-9._-], not
// starting with '.' or '-'.
func ValidName(name string) error {
	if !pinName.MatchString(name) {
		return fmt.Errorf("%w: name %q: want 1-128 of [A-Za-z0-9._-], not starting with '.' or '-'", ErrInvalid, name)
	}
	return nil
}

// Pin records x under name, holding a reference on each of its chunks,
// which must all be in the store (ErrNotFound names the first missing one).
// Chunks are synced before the pin is written. Pinning an existing name
// replaces it.
func (s *Store) Pin(name string, x *Index) error {
	if err := ValidName(name); err != nil {
		return err
	}
	if err := x.Validate(); err != nil {
		return err
	}
	s.gc.RLock()
	defer s.gc.RUnlock()
	return s.pinLocked(name, x, nil)
}

// pinLocked pins x as name (s.gc held shared). tb holds the table of the
// chunks a keep just linked or packed, and of those it found stored
// (nil: none); every other chunk must have a blob location or a chunk
// file, which the pin's table then names too, so the blob stays as long
// as the pin.
func (s *Store) pinLocked(name string, x *Index, tb *tableBuilder) error {
	s.pinMu.Lock()
	defer s.pinMu.Unlock()
	if tb == nil {
		tb = newTableBuilder(x)
	}
	for i, e := range x.Entries {
		if e.Hole || tb.in[e.ID] {
			continue
		}
		if !s.holdStored(tb, e) {
			return fmt.Errorf("%w: pin %q: entry %d: chunk %s not in store", ErrNotFound, name, i, e.ID.Short())
		}
	}
	t := tb.t
	if len(tb.files) > 0 {
		if err := s.Sync(); err != nil {
			return err
		}
	}
	synced, err := s.syncNewBlobs(t)
	if err != nil {
		return err
	}
	sizes := s.statBlobs(t, synced)
	// The new table beside the old one (locs/.next-NAME, naming the
	// index's root), then the pin, then the table into its place: a crash
	// before the pin leaves the old pin with its old table, one after it
	// the new pin with its table in .next-NAME, which Open moves into
	// place. (The table used to replace the old one before the pin did: a
	// crash between them left the old pin without its table, its chunks
	// misses; review finding 4.)
	locs := filepath.Join(s.dir, "locs", name)
	next := filepath.Join(s.dir, "locs", nextPrefix+name)
	if len(t.ents) > 0 {
		if err := s.writeAtomic(next, nil, encodeLocs(t), true); err != nil {
			return fmt.Errorf("cas: pin %q: locations: %w", name, err)
		}
		syncDir(filepath.Join(s.dir, "locs"))
	}
	if err := s.stopPoint("table"); err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := EncodeIndex(&buf, x); err != nil {
		return err
	}
	if err := s.writeAtomic(filepath.Join(s.dir, "pins", name), nil, buf.Bytes(), true); err != nil {
		os.Remove(next) // its new blobs go with this keep
		return fmt.Errorf("cas: pin %q: %w", name, err)
	}
	syncDir(filepath.Join(s.dir, "pins"))
	if err := s.stopPoint("pin"); err != nil {
		return err
	}
	var err2 error
	if len(t.ents) > 0 {
		if err2 = os.Rename(next, locs); err2 != nil {
			// The old table may be of this index too (a re-pin), naming
			// blobs this pin no longer holds: Open must take .next-NAME.
			os.Remove(locs)
		}
	} else {
		os.Remove(next) // a table a crash left (no pin has its root)
		if err2 = os.Remove(locs); errors.Is(err2, fs.ErrNotExist) {
			err2 = nil
		}
	}
	if err2 != nil {
		// The pin is written: Open finds its table either way.
		s.log.Warn("location table not moved into place", "pin", name, "err", err2)
	}
	syncDir(filepath.Join(s.dir, "locs"))
	now := time.Now()
	s.mu.Lock()
	s.sizeBlobsLocked(sizes)
	if len(t.ents) > 0 {
		s.addLocsLocked(t, true)
	}
	s.dropPinLocked(name, now)
	if len(t.ents) > 0 {
		s.tables[name] = t
	}
	for _, n := range t.blobs {
		delete(s.pending, n)
	}
	s.addPinLocked(name, x, tb.files)
	s.pinAt[name] = now
	s.mu.Unlock()
	return nil
}

// tableBuilder collects a pin's location table as its chunks are found.
type tableBuilder struct {
	t     *locTable
	bi    map[string]int // blob name → index in t.blobs
	in    map[ID]bool    // chunks held: in t, or a chunk file
	files []Entry        // the chunks held as chunk files (not fsynced by Put)
}

func newTableBuilder(x *Index) *tableBuilder {
	return &tableBuilder{t: &locTable{root: x.Root()}, bi: map[string]int{}, in: make(map[ID]bool, len(x.Entries))}
}

// add records that chunk id lies at off in blob.
func (tb *tableBuilder) add(id ID, blob string, off int64, n uint32) {
	k, ok := tb.bi[blob]
	if !ok {
		k = len(tb.t.blobs)
		tb.bi[blob] = k
		tb.t.blobs = append(tb.t.blobs, blob)
	}
	tb.t.ents = append(tb.t.ents, locEnt{id: id, b: k, off: off, n: n})
	tb.in[id] = true
}

// holdStored records where the store already holds chunk e: a location
// in a blob (tb names it; one the pins hold already if there is one, since
// naming another makes them hold it whole) or else a chunk file (one
// lstat). It reports false when the store holds neither.
func (s *Store) holdStored(tb *tableBuilder, e Entry) bool {
	s.mu.Lock()
	l, ok := s.liveLocLocked(e.ID)
	for _, m := range s.where[e.ID] {
		if m.b.refs > 0 && !m.b.gone {
			l = m
			break
		}
	}
	s.mu.Unlock()
	switch {
	case ok:
		tb.add(e.ID, l.b.name, l.off, l.n)
	case s.hasFile(e.ID):
		tb.in[e.ID] = true
		tb.files = append(tb.files, e)
	default:
		return false
	}
	return true
}

// TrimStats reports what a trim did.
type TrimStats struct {
	// Compact sums the compactions tried while the pins held more than
	// MaxBytes.
	Compact  CompactStats
	Unpinned []string
	GC       GCStats
	// Held is the bytes the remaining pins hold (Store.Held).
	Held int64
}

// Trim applies Options.MaxBytes: while the pins hold more (Held), it
// compacts the packs less than DefaultCompactBelow live (Compact) and, if
// that was not enough, unpins the oldest pin but the newest (whose dead
// chunks the next compaction frees), then, if it unpinned anything,
// collects the unreferenced chunks older than GCGrace. Pin does not call
// it (a caller may pin several indexes at once); callers that want the
// bound call Trim after pinning.
func (s *Store) Trim(ctx context.Context) (TrimStats, error) {
	var st TrimStats
	if s.opts.MaxBytes <= 0 {
		st.Held = s.Held()
		return st, nil
	}
	compacted := false // since the last unpin
	for {
		s.mu.Lock()
		held := s.held
		var oldest, newest string
		for n, t := range s.pinAt {
			if oldest == "" || t.Before(s.pinAt[oldest]) || (t.Equal(s.pinAt[oldest]) && n < oldest) {
				oldest = n
			}
			if newest == "" || t.After(s.pinAt[newest]) || (t.Equal(s.pinAt[newest]) && n > newest) {
				newest = n
			}
		}
		s.mu.Unlock()
		st.Held = held
		if held <= s.opts.MaxBytes {
			break
		}
		if !compacted {
			c, err := s.Compact(ctx, DefaultCompactBelow)
			st.Compact.add(c)
			if err != nil {
				return st, err
			}
			compacted = true
			continue
		}
		if oldest == newest {
			break
		}
		if err := s.Unpin(oldest); err != nil {
			return st, err
		}
		st.Unpinned = append(st.Unpinned, oldest)
		compacted = false
	}
	if len(st.Unpinned) == 0 {
		return st, nil
	}
	var err error
	st.GC, err = s.GC(ctx, time.Now(), s.grace())
	s.log.Info("trimmed", "unpinned", st.Unpinned, "removed", st.GC.Removed, "removed_bytes", st.GC.RemovedBytes, "held", st.Held, "max", s.opts.MaxBytes)
	return st, err
}

// Held is the number of bytes on disk the pins hold: every blob a pin's
// table names, whole (its allocated blocks, even where no pin names its
// chunks any more; each inode once, however many blobs link it), read
// when the blob was first named, plus the length of each chunk a pin
// holds as a chunk file (not its file's blocks). A link blob shares its
// inode with the file it was linked from: it is counted although that
// file may still hold the same blocks, since the store keeps them once
// the file is gone. Blobs no pin names (in their grace period) are not
// counted.
func (s *Store) Held() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held
}

// Unpin removes the pin, releasing its references.
func (s *Store) Unpin(name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	s.pinMu.Lock()
	defer s.pinMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.pins[name]; !ok {
		return fmt.Errorf("%w: pin %q", ErrNotFound, name)
	}
	if err := os.Remove(filepath.Join(s.dir, "pins", name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	os.Remove(filepath.Join(s.dir, "locs", name))
	os.Remove(filepath.Join(s.dir, "locs", nextPrefix+name))
	s.dropPinLocked(name, time.Now())
	delete(s.pinAt, name)
	return nil
}

// Pinned returns the index pinned under name.
func (s *Store) Pinned(name string) (*Index, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	return s.readPin(name)
}

// Pins lists the pin names in order.
func (s *Store) Pins() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.pins))
	for n := range s.pins {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Refs is the number of pins referencing id.
func (s *Store) Refs(id ID) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refs[id]
}

func (s *Store) readPin(name string) (*Index, error) {
	f, err := os.Open(filepath.Join(s.dir, "pins", name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: pin %q", ErrNotFound, name)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return DecodeIndex(f)
}

// addPinLocked counts pin name's references to the chunks of x; files
// are those it holds as chunk files (its table names the others).
func (s *Store) addPinLocked(name string, x *Index, files []Entry) {
	seen := map[ID]bool{}
	var ids []ID
	for _, e := range x.Entries {
		if !e.Hole && !seen[e.ID] {
			seen[e.ID] = true
			ids = append(ids, e.ID)
			s.refs[e.ID]++
		}
	}
	s.pins[name] = ids
	for _, e := range files {
		if s.fileRefs[e.ID]++; s.fileRefs[e.ID] == 1 {
			s.held += int64(e.Length)
		}
	}
	if len(files) > 0 {
		s.files[name] = files
	}
}

func (s *Store) dropPinLocked(name string, now time.Time) {
	s.dropLocsLocked(name, now)
	for _, id := range s.pins[name] {
		if s.refs[id]--; s.refs[id] <= 0 {
			delete(s.refs, id)
		}
	}
	for _, e := range s.files[name] {
		if s.fileRefs[e.ID]--; s.fileRefs[e.ID] <= 0 {
			delete(s.fileRefs, e.ID)
			s.held -= int64(e.Length)
		}
	}
	delete(s.files, name)
	delete(s.pins, name)
}

// filesOf lists the chunks of x that table t (nil: none) does not name,
// each once: those its pin holds as chunk files.
func filesOf(x *Index, t *locTable) []Entry {
	in := map[ID]bool{}
	if t != nil {
		in = make(map[ID]bool, len(t.ents))
		for _, e := range t.ents {
			in[e.id] = true
		}
	}
	var out []Entry
	for _, e := range x.Entries {
		if !e.Hole && !in[e.ID] {
			in[e.ID] = true
			out = append(out, e)
		}
	}
	return out
}

// GCStats reports what a collection did.
type GCStats struct {
	Scanned, Removed, Kept int
	// BlobsRemoved counts the blobs (links and packs) no pin named any
	// more; RemovedBytes includes what removing them freed (a link whose
	// inode is linked elsewhere too frees nothing).
	BlobsRemoved int
	RemovedBytes int64
}

// GC removes every chunk file that no pin references and that is older
// than now-grace, and every blob that no pin has named since then. now is
// an input so tests control time.
func (s *Store) GC(ctx context.Context, now time.Time, grace time.Duration) (GCStats, error) {
	s.gc.Lock()
	defer s.gc.Unlock()
	var st GCStats
	cutoff := now.Add(-grace)
	s.mu.Lock()
	refs := make(map[ID]bool, len(s.refs))
	for id := range s.refs {
		refs[id] = true
	}
	st.BlobsRemoved, st.RemovedBytes = s.sweepBlobsLocked(cutoff)
	s.mu.Unlock()
	n, bytes := s.removeOrphans(cutoff)
	st.BlobsRemoved += n
	st.RemovedBytes += bytes
	for i := 0; i < 256; i++ {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		d := filepath.Join(s.dir, "chunks", fmt.Sprintf("%02x", i))
		ents, err := os.ReadDir(d)
		if err != nil {
			return st, err
		}
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), tmpPrefix) {
				// A write interrupted by a crash.
				if info, err := e.Info(); err == nil && info.ModTime().Before(cutoff) {
					os.Remove(filepath.Join(d, e.Name()))
				}
				continue
			}
			st.Scanned++
			id, err := ParseID(e.Name())
			if err != nil || refs[id] {
				st.Kept++
				continue
			}
			info, err := e.Info()
			if err != nil || info.ModTime().After(cutoff) {
				st.Kept++
				continue
			}
			if err := os.Remove(filepath.Join(d, e.Name())); err == nil {
				st.Removed++
				st.RemovedBytes += info.Size()
			}
		}
	}
	return st, nil
}

func syncDir(dir string) {
	if f, err := os.Open(dir); err == nil {
		f.Sync()
		f.Close()
	}
}
