package cas

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"
)

// Compaction: a pack stays whole while any pin's table names one of its
// chunks (a re-pinned image names the chunks it shares with its earlier
// version where they lie), so its dead chunks take disk the pins hold
// (Held). Compact copies the live chunks of such a pack into a new one and
// moves the tables onto it; the old pack, named by no table any more, goes
// like any unpinned blob.

// DefaultCompactBelow is the live share under which Trim compacts a pack.
const DefaultCompactBelow = 0.5

// CompactStats reports what a compaction did.
type CompactStats struct {
	// Packs rewritten, the tables moved onto their new packs, and the
	// live chunk bytes copied.
	Packs, Tables int
	Copied        int64
	// Freed is the bytes on disk the pins no longer hold (Held before
	// minus after); the old packs stay on disk for GCGrace.
	Freed int64
}

func (c *CompactStats) add(o CompactStats) {
	c.Packs += o.Packs
	c.Tables += o.Tables
	c.Copied += o.Copied
	c.Freed += o.Freed
}

// Compact rewrites every pack whose live bytes (the ranges some pin's
// table names) are less than below (a share, 0 to 1) of its bytes on
// disk, in four steps:
//
//  1. the live chunks are read from the old pack, each checked against its
//     ID (a pack holding a bad one is left as it is), into a new pack;
//  2. the new pack and DIR/blobs are fsynced, before any table names it;
//  3. each table naming the old pack is rewritten to name the new pack for
//     those chunks (fsynced, renamed), then DIR/locs is fsynced;
//  4. the store's memory follows: the old pack, named by no table, stays
//     readable for GCGrace (reads in flight), then GC removes it.
//
// A crash before step 3 leaves the new pack an orphan (Open and GC remove
// it after the grace period); during step 3, some tables name the old pack
// and some the new, and both stay as long as they are named. A pin made
// meanwhile may still name the old pack (it found a chunk there first):
// the old pack then stays, named, and nothing is lost.
func (s *Store) Compact(ctx context.Context, below float64) (CompactStats, error) {
	var st CompactStats
	s.gc.RLock()
	defer s.gc.RUnlock()
	before := s.Held()
	for _, c := range s.sparsePacks(below) {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		moved, pack, sizes, err := s.copyLive(c)
		if errors.Is(err, errStopped) {
			return st, err
		}
		if err != nil {
			s.log.Warn("pack not compacted", "pack", c.name, "err", err)
			continue
		}
		n, err := s.moveTables(c.name, pack, sizes, moved)
		if n > 0 {
			st.Packs++
			st.Tables += n
			st.Copied += pack.off
		}
		if err != nil {
			return st, err
		}
	}
	st.Freed = before - s.Held()
	if st.Packs > 0 {
		s.log.Info("compacted", "packs", st.Packs, "tables", st.Tables, "copied_bytes", st.Copied, "freed_bytes", st.Freed)
	}
	return st, nil
}

// livePack is a pack to compact and its live ranges, by offset.
type livePack struct {
	name string
	live []locEnt // id, off, n (b unused), sorted by off
}

// sparsePacks lists the packs pins name whose live ranges are less than
// below of their bytes on disk.
func (s *Store) sparsePacks(below float64) []livePack {
	s.mu.Lock()
	defer s.mu.Unlock()
	ranges := map[string]map[int64]locEnt{}
	for _, t := range s.tables {
		for _, e := range t.ents {
			n := t.blobs[e.b]
			if b := s.blobs[n]; b == nil || b.gone || !b.sized || !strings.HasPrefix(n, "pack-") {
				continue
			}
			if ranges[n] == nil {
				ranges[n] = map[int64]locEnt{}
			}
			ranges[n][e.off] = e
		}
	}
	var out []livePack
	for n, rs := range ranges {
		var live int64
		for _, e := range rs {
			live += int64(e.n)
		}
		if float64(live) >= below*float64(s.blobs[n].size.bytes) {
			continue
		}
		c := livePack{name: n}
		for _, e := range rs {
			c.live = append(c.live, e)
		}
		sort.Slice(c.live, func(i, j int) bool { return c.live[i].off < c.live[j].off })
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// copyLive writes the live chunks of c, verified, into a new pack and
// makes it durable (steps 1 and 2). It returns where each chunk went and
// the new pack's size.
func (s *Store) copyLive(c livePack) (map[ID]int64, *packWriter, map[string]blobSize, error) {
	f, err := os.Open(s.blobPath(c.name))
	if err != nil {
		return nil, nil, nil, err
	}
	defer f.Close()
	pack, err := s.newPack()
	if err != nil {
		return nil, nil, nil, err
	}
	moved := make(map[ID]int64, len(c.live))
	buf := make([]byte, MaxChunkLen)
	for _, e := range c.live {
		d := buf[:e.n]
		if _, err := f.ReadAt(d, e.off); err != nil {
			pack.discard()
			return nil, nil, nil, fmt.Errorf("read chunk %s at %d: %w", e.id.Short(), e.off, err)
		}
		if Sum(d) != e.id {
			pack.discard()
			return nil, nil, nil, fmt.Errorf("%w: chunk %s at %d does not hash to its id", ErrCorrupt, e.id.Short(), e.off)
		}
		off, err := pack.add(d)
		if err != nil {
			pack.discard()
			return nil, nil, nil, err
		}
		moved[e.id] = off
	}
	err = pack.finish()
	var sizes map[string]blobSize
	if err == nil {
		sizes, err = s.syncNewBlobs(&locTable{blobs: []string{pack.name}})
	}
	if err != nil {
		pack.discard()
		return nil, nil, nil, err
	}
	if err := s.stopPoint("pack"); err != nil {
		return nil, nil, nil, err
	}
	return moved, pack, sizes, nil
}

// moveTables rewrites the tables naming pack old so that they name pack
// (of size sizes) for the chunks in moved (step 3), then updates the
// store's memory (step 4). It returns how many tables it rewrote; after a
// failed write, the memory follows the tables already rewritten.
func (s *Store) moveTables(old string, pack *packWriter, sizes map[string]blobSize, moved map[ID]int64) (int, error) {
	s.pinMu.Lock()
	defer s.pinMu.Unlock()
	s.mu.Lock()
	var names []string
	for name, t := range s.tables {
		if slices.Contains(t.blobs, old) {
			names = append(names, name)
		}
	}
	s.mu.Unlock()
	sort.Strings(names)
	next := map[string]*locTable{}
	var werr error
	for _, name := range names {
		s.mu.Lock()
		t := s.tables[name]
		s.mu.Unlock()
		nt := remapTable(t, old, pack.name, moved)
		if err := s.writeAtomic(filepath.Join(s.dir, "locs", name), nil, encodeLocs(nt), true); err != nil {
			werr = fmt.Errorf("cas: compact: table of pin %q: %w", name, err)
			break
		}
		next[name] = nt
		if err := s.stopPoint("table " + name); err != nil {
			return len(next), err // as a crash: nothing more happens
		}
	}
	if len(next) == 0 {
		pack.discard()
		return 0, werr
	}
	syncDir(filepath.Join(s.dir, "locs"))
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sizeBlobsLocked(sizes)
	oldBlob := s.blobs[old]
	for name, nt := range next {
		s.addLocsLocked(nt, true) // before the drop: no blob both tables name reaches 0
		s.dropLocsLocked(name, now)
		s.tables[name] = nt
	}
	delete(s.pending, pack.name)
	for id := range moved {
		// New pins find the new pack; reads in flight keep the old one.
		s.keepLocsLocked(id, func(l loc) bool { return l.b != oldBlob })
	}
	return len(next), werr
}

// remapTable returns t with its entries in blob old whose chunk moved
// into pack pointing there.
func remapTable(t *locTable, old, pack string, moved map[ID]int64) *locTable {
	tb := &tableBuilder{t: &locTable{root: t.root}, bi: map[string]int{}, in: map[ID]bool{}}
	for _, e := range t.ents {
		if off, ok := moved[e.id]; ok && t.blobs[e.b] == old {
			tb.add(e.id, pack, off, e.n)
		} else {
			tb.add(e.id, t.blobs[e.b], e.off, e.n)
		}
	}
	return tb.t
}

// errStopped: a test stopped a pin or a compaction (stopPoint).
var errStopped = errors.New("cas: stopped")

// stopPoint is where a test stops a pin or a compaction after a step,
// leaving the disk as a crash there would (s.stopAt).
func (s *Store) stopPoint(step string) error {
	if s.stopAt != nil && s.stopAt(step) {
		return fmt.Errorf("%w after %s", errStopped, step)
	}
	return nil
}
