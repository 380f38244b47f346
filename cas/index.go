package cas

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Limits on what an index may describe. They bound memory and disk use when
// an index arrives from another node.
const (
	// MaxChunkLen is the largest data chunk an index may name (FastCDC's
	// maximum is 64 KiB, fixed blocks are 4 KiB).
	MaxChunkLen = 1 << 20
	// MaxHoleLen is the largest single hole entry; longer runs of zeros use
	// several entries.
	MaxHoleLen = 1 << 30
	// DefaultMaxEntries bounds the entry count of a decoded index (8 Mi
	// entries: 32 GiB of non-zero data in 4 KiB blocks).
	DefaultMaxEntries = 8 << 20
	// DefaultMaxFileSize bounds the size of the file an index describes.
	DefaultMaxFileSize = 1 << 40
)

// Chunking names the way a file was cut into chunks.
type Chunking uint8

const (
	// Fixed: aligned 4 KiB blocks (the last one may be shorter).
	Fixed Chunking = 1
	// CDC: FastCDC content-defined chunks (cas/chunker).
	CDC Chunking = 2
)

func (c Chunking) String() string {
	switch c {
	case Fixed:
		return "fixed"
	case CDC:
		return "cdc"
	}
	return fmt.Sprintf("chunking(%d)", uint8(c))
}

// Entry is one piece of a file: a data chunk (ID set) or a hole (Hole true,
// ID zero) of Length bytes.
type Entry struct {
	ID     ID
	Length uint32
	Hole   bool
}

// Index format versions.
const (
	// IndexV1: Digest is the SHA-256 of the whole file (wire magic
	// "FRYIDX1\n"). A receiver checks it by hashing the rebuilt file.
	IndexV1 = 1
	// IndexV2: Digest is the root (Root): the SHA-256 of the chunking, the
	// size and the encoded entry list (wire magic "FRYIDX2\n"). It commits
	// to every chunk ID in order, so a file rebuilt from chunks verified
	// against their IDs is the file the root names without hashing the
	// file a second time; the decoder refuses an index whose digest is not
	// its root. What BuildIndex makes.
	IndexV2 = 2
)

// Index is the recipe of one file.
type Index struct {
	// Version is IndexV1 or IndexV2; zero means IndexV1.
	Version  uint8
	Chunking Chunking
	// Size is the file's length in bytes; the entries' lengths add up to it.
	Size int64
	// Digest names the whole file: its SHA-256 (IndexV1) or the root of
	// the index (IndexV2, see Root).
	Digest  ID
	Entries []Entry
}

// V2 reports whether x is an IndexV2 index (Digest is its root).
func (x *Index) V2() bool { return x.Version == IndexV2 }

// rootPrefix separates the root's hash input from any other SHA-256 input.
var rootPrefix = []byte("ferry index root v2\n")

// Root returns the SHA-256 over a domain prefix, the chunking u8, the size
// u64, the entry count u64 and the entries in wire encoding. Two files with
// the same root have the same bytes (as long as SHA-256 is collision
// resistant): each data entry names its bytes, each hole is zeros.
func (x *Index) Root() ID {
	h := sha256.New()
	h.Write(rootPrefix)
	var hdr [17]byte
	hdr[0] = byte(x.Chunking)
	binary.BigEndian.PutUint64(hdr[1:], uint64(x.Size))
	binary.BigEndian.PutUint64(hdr[9:], uint64(len(x.Entries)))
	h.Write(hdr[:])
	var buf [DataEntryLen]byte
	for _, e := range x.Entries {
		h.Write(encodeEntry(&buf, e))
	}
	return ID(h.Sum(nil))
}

func encodeEntry(buf *[DataEntryLen]byte, e Entry) []byte {
	binary.BigEndian.PutUint32(buf[1:5], e.Length)
	if e.Hole {
		buf[0] = entryHole
		return buf[:HoleEntryLen]
	}
	buf[0] = entryData
	copy(buf[5:], e.ID[:])
	return buf[:]
}

// Offsets returns the start offset of every entry.
func (x *Index) Offsets() []int64 {
	offs := make([]int64, len(x.Entries))
	var off int64
	for i, e := range x.Entries {
		offs[i] = off
		off += int64(e.Length)
	}
	return offs
}

// Stats summarises an index.
type Stats struct {
	Entries, DataChunks, UniqueChunks, Holes int
	DataBytes, UniqueBytes, HoleBytes        int64
}

// Stats counts the index's chunks and bytes.
func (x *Index) Stats() Stats {
	var s Stats
	seen := make(map[ID]bool, len(x.Entries))
	s.Entries = len(x.Entries)
	for _, e := range x.Entries {
		if e.Hole {
			s.Holes++
			s.HoleBytes += int64(e.Length)
			continue
		}
		s.DataChunks++
		s.DataBytes += int64(e.Length)
		if !seen[e.ID] {
			seen[e.ID] = true
			s.UniqueChunks++
			s.UniqueBytes += int64(e.Length)
		}
	}
	return s
}

// Validate checks the index's internal consistency and the default limits
// (and, for IndexV2, that Digest is the root).
func (x *Index) Validate() error {
	if x.Version > IndexV2 {
		return fmt.Errorf("%w: index: unknown version %d", ErrInvalid, x.Version)
	}
	if x.Chunking != Fixed && x.Chunking != CDC {
		return fmt.Errorf("%w: index: unknown chunking %d", ErrInvalid, uint8(x.Chunking))
	}
	if x.Size < 0 || x.Size > DefaultMaxFileSize {
		return fmt.Errorf("%w: index: size %d outside [0, %d]", ErrInvalid, x.Size, int64(DefaultMaxFileSize))
	}
	var sum int64
	for i, e := range x.Entries {
		if err := checkEntry(i, e); err != nil {
			return err
		}
		sum += int64(e.Length)
	}
	if sum != x.Size {
		return fmt.Errorf("%w: index: entries add up to %d bytes, size says %d", ErrInvalid, sum, x.Size)
	}
	if x.V2() && x.Digest != x.Root() {
		return fmt.Errorf("%w: %w: index: digest %s is not the root of its entries", ErrInvalid, ErrCorrupt, x.Digest.Short())
	}
	return nil
}

func checkEntry(i int, e Entry) error {
	switch {
	case e.Length == 0:
		return fmt.Errorf("%w: index entry %d: zero length", ErrInvalid, i)
	case e.Hole && !e.ID.IsZero():
		return fmt.Errorf("%w: index entry %d: hole with a chunk id", ErrInvalid, i)
	case e.Hole && e.Length > MaxHoleLen:
		return fmt.Errorf("%w: index entry %d: hole of %d bytes over limit %d", ErrInvalid, i, e.Length, MaxHoleLen)
	case !e.Hole && e.Length > MaxChunkLen:
		return fmt.Errorf("%w: index entry %d: chunk of %d bytes over limit %d", ErrInvalid, i, e.Length, MaxChunkLen)
	}
	return nil
}

// Wire format of an index (all integers big-endian):
//
//	magic    "FRYIDX1\n" (IndexV1) or "FRYIDX2\n" (IndexV2)
//	chunking u8
//	size     u64
//	digest   [32]  whole-file SHA-256 (v1) or root (v2, checked on decode)
//	count    u64
//	count ×  kind u8 (0 data, 1 hole), length u32, [32] id if data
//
// Nothing may follow the last entry.
var (
	indexMagic   = [8]byte{'F', 'R', 'Y', 'I', 'D', 'X', '1', '\n'}
	indexMagicV2 = [8]byte{'F', 'R', 'Y', 'I', 'D', 'X', '2', '\n'}
)

const (
	entryData = 0
	entryHole = 1
	// HeaderLen is the encoded size of an index without entries.
	HeaderLen = 8 + 1 + 8 + 32 + 8
	// DataEntryLen and HoleEntryLen are the encoded sizes of one entry.
	DataEntryLen = 1 + 4 + IDSize
	HoleEntryLen = 1 + 4
)

// EncodedLen is the number of bytes EncodeIndex writes for x.
func (x *Index) EncodedLen() int64 {
	n := int64(HeaderLen)
	for _, e := range x.Entries {
		if e.Hole {
			n += HoleEntryLen
		} else {
			n += DataEntryLen
		}
	}
	return n
}

// EncodeIndex writes x in the wire format.
func EncodeIndex(w io.Writer, x *Index) error {
	if err := x.Validate(); err != nil {
		return err
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	var hdr [HeaderLen]byte
	copy(hdr[:8], indexMagic[:])
	if x.V2() {
		copy(hdr[:8], indexMagicV2[:])
	}
	hdr[8] = byte(x.Chunking)
	binary.BigEndian.PutUint64(hdr[9:], uint64(x.Size))
	copy(hdr[17:49], x.Digest[:])
	binary.BigEndian.PutUint64(hdr[49:], uint64(len(x.Entries)))
	bw.Write(hdr[:])
	var buf [DataEntryLen]byte
	for _, e := range x.Entries {
		bw.Write(encodeEntry(&buf, e))
	}
	return bw.Flush()
}

// DecodeLimits bounds a decoded index.
type DecodeLimits struct {
	MaxEntries  int
	MaxFileSize int64
}

// DefaultDecodeLimits are the limits DecodeIndex uses.
func DefaultDecodeLimits() DecodeLimits {
	return DecodeLimits{MaxEntries: DefaultMaxEntries, MaxFileSize: DefaultMaxFileSize}
}

// DecodeIndex reads one index in the wire format from r, which must hold
// nothing else, with the default limits.
func DecodeIndex(r io.Reader) (*Index, error) {
	return DecodeIndexLimits(r, DefaultDecodeLimits())
}

// DecodeIndexLimits is DecodeIndex with explicit limits. It never allocates
// more than the data read justifies, so a huge count in a short input costs
// nothing.
func DecodeIndexLimits(r io.Reader, lim DecodeLimits) (*Index, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var hdr [HeaderLen]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return nil, fmt.Errorf("%w: index header: %v", ErrInvalid, truncated(err))
	}
	x := &Index{Version: IndexV1, Chunking: Chunking(hdr[8])}
	switch [8]byte(hdr[:8]) {
	case indexMagic:
	case indexMagicV2:
		x.Version = IndexV2
	default:
		return nil, fmt.Errorf("%w: index: bad magic %q", ErrInvalid, hdr[:8])
	}
	if x.Chunking != Fixed && x.Chunking != CDC {
		return nil, fmt.Errorf("%w: index: unknown chunking %d", ErrInvalid, hdr[8])
	}
	size := binary.BigEndian.Uint64(hdr[9:])
	if size > uint64(lim.MaxFileSize) {
		return nil, fmt.Errorf("%w: index: file size %d over limit %d", ErrInvalid, size, lim.MaxFileSize)
	}
	x.Size = int64(size)
	copy(x.Digest[:], hdr[17:49])
	count := binary.BigEndian.Uint64(hdr[49:])
	if count > uint64(lim.MaxEntries) {
		return nil, fmt.Errorf("%w: index: %d entries over limit %d", ErrInvalid, count, lim.MaxEntries)
	}
	x.Entries = make([]Entry, 0, min(count, 4096))
	var sum int64
	var buf [DataEntryLen]byte
	for i := 0; i < int(count); i++ {
		if _, err := io.ReadFull(br, buf[:HoleEntryLen]); err != nil {
			return nil, fmt.Errorf("%w: index entry %d of %d: %v", ErrInvalid, i, count, truncated(err))
		}
		e := Entry{Length: binary.BigEndian.Uint32(buf[1:5])}
		switch buf[0] {
		case entryHole:
			e.Hole = true
		case entryData:
			if _, err := io.ReadFull(br, buf[HoleEntryLen:]); err != nil {
				return nil, fmt.Errorf("%w: index entry %d of %d: %v", ErrInvalid, i, count, truncated(err))
			}
			e.ID = ID(buf[HoleEntryLen:])
		default:
			return nil, fmt.Errorf("%w: index entry %d: unknown kind %d", ErrInvalid, i, buf[0])
		}
		if err := checkEntry(i, e); err != nil {
			return nil, err
		}
		sum += int64(e.Length)
		if sum > x.Size {
			return nil, fmt.Errorf("%w: index entry %d: entries exceed file size %d", ErrInvalid, i, x.Size)
		}
		x.Entries = append(x.Entries, e)
	}
	if sum != x.Size {
		return nil, fmt.Errorf("%w: index: entries add up to %d bytes, size says %d", ErrInvalid, sum, x.Size)
	}
	if x.V2() && x.Digest != x.Root() {
		return nil, fmt.Errorf("%w: %w: index: digest %s is not the root of its %d entries", ErrInvalid, ErrCorrupt, x.Digest.Short(), count)
	}
	if _, err := br.ReadByte(); err == nil {
		return nil, fmt.Errorf("%w: index: trailing bytes after %d entries", ErrInvalid, count)
	} else if !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: index: %v", ErrInvalid, err)
	}
	return x, nil
}

func truncated(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errors.New("truncated")
	}
	return err
}

// FileDigest returns the SHA-256 of everything read from r.
func FileDigest(r io.Reader) (ID, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return ID{}, n, err
	}
	return ID(h.Sum(nil)), n, nil
}
