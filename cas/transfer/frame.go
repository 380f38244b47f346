package transfer

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/ferrycluster/ferry/cas"
)

// Error kinds of this package (cas.ErrInvalid and cas.ErrCorrupt are used
// too).
var (
	// ErrProtocol: the peer sent a message out of order or malformed.
	ErrProtocol = errors.New("transfer: protocol error")
	// ErrTruncated: the stream ended before the transfer did.
	ErrTruncated = errors.New("transfer: stream truncated")
	// ErrBusy: a transfer with the same id is already running here.
	ErrBusy = errors.New("transfer: transfer id busy")
	// ErrRemote: the peer reported a failure (its reason is in the message).
	ErrRemote = errors.New("transfer: peer failed")
)

type msgType uint8

const (
	msgHello  msgType = 1
	msgIndex  msgType = 2
	msgWant   msgType = 3
	msgChunk  msgType = 4
	msgDone   msgType = 5
	msgResult msgType = 6
	msgError  msgType = 7
	msgRun    msgType = 8
	msgTree   msgType = 9
	msgSeg    msgType = 10
	msgMode   msgType = 11
	msgData   msgType = 12
)

func (t msgType) String() string {
	switch t {
	case msgHello:
		return "HELLO"
	case msgIndex:
		return "INDEX"
	case msgWant:
		return "WANT"
	case msgChunk:
		return "CHUNK"
	case msgDone:
		return "DONE"
	case msgResult:
		return "RESULT"
	case msgError:
		return "ERROR"
	case msgRun:
		return "RUN"
	case msgTree:
		return "TREE"
	case msgSeg:
		return "SEG"
	case msgMode:
		return "MODE"
	case msgData:
		return "DATA"
	}
	return fmt.Sprintf("message(%d)", uint8(t))
}

const (
	frameHeaderLen = 5
	maxSmallFrame  = 64 << 10
	chunkHdrLen    = 5 // entry u32, encoding u8
	maxChunkFrame  = chunkHdrLen + cas.MaxChunkLen
	maxReasonLen   = 4 << 10
)

// frameWriter buffers frames; flush pushes them to the peer.
type frameWriter struct {
	bw    *bufio.Writer
	flush func() error // extra flush after bw (http.Flusher); may be nil
	n     int64
	hdr   [frameHeaderLen]byte
}

func newFrameWriter(w io.Writer, flush func() error) *frameWriter {
	return &frameWriter{bw: bufio.NewWriterSize(w, 256<<10), flush: flush}
}

func (w *frameWriter) header(t msgType, n int) error {
	w.hdr[0] = byte(t)
	binary.BigEndian.PutUint32(w.hdr[1:], uint32(n))
	w.n += frameHeaderLen + int64(n)
	_, err := w.bw.Write(w.hdr[:])
	return err
}

func (w *frameWriter) frame(t msgType, parts ...[]byte) error {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	if err := w.header(t, n); err != nil {
		return err
	}
	for _, p := range parts {
		if _, err := w.bw.Write(p); err != nil {
			return err
		}
	}
	return nil
}

func (w *frameWriter) Flush() error {
	if err := w.bw.Flush(); err != nil {
		return err
	}
	if w.flush != nil {
		return w.flush()
	}
	return nil
}

// frameReader reads frames with per-type length limits.
type frameReader struct {
	br *bufio.Reader
	n  int64
}

func newFrameReader(r io.Reader) *frameReader {
	return &frameReader{br: bufio.NewReaderSize(r, 256<<10)}
}

// next reads a frame header; the caller must consume exactly length bytes.
// limits gives the largest length accepted for each expected type; any
// other type is a protocol error, except ERROR, which is read and returned
// as ErrRemote.
func (r *frameReader) next(what string, limits map[msgType]int) (msgType, int, error) {
	var h [frameHeaderLen]byte
	if _, err := io.ReadFull(r.br, h[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, 0, fmt.Errorf("%w: waiting for %s: connection closed", ErrTruncated, what)
		}
		return 0, 0, fmt.Errorf("transfer: waiting for %s: %w", what, err)
	}
	t, n := msgType(h[0]), int(binary.BigEndian.Uint32(h[1:]))
	r.n += frameHeaderLen + int64(n)
	if t == msgError {
		if n > maxSmallFrame {
			return 0, 0, fmt.Errorf("%w: ERROR frame of %d bytes over limit %d", ErrProtocol, n, maxSmallFrame)
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(r.br, b); err != nil {
			return 0, 0, fmt.Errorf("%w: ERROR frame: %v", ErrTruncated, err)
		}
		return 0, 0, fmt.Errorf("%w: %s", ErrRemote, sanitize(string(b)))
	}
	max, ok := limits[t]
	if !ok {
		return 0, 0, fmt.Errorf("%w: got %s while waiting for %s", ErrProtocol, t, what)
	}
	if n > max {
		return 0, 0, fmt.Errorf("%w: %s frame of %d bytes over limit %d", ErrProtocol, t, n, max)
	}
	return t, n, nil
}

// payload reads n bytes into buf (reused when large enough).
func (r *frameReader) payload(t msgType, n int, buf []byte) ([]byte, error) {
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r.br, buf); err != nil {
		return nil, fmt.Errorf("%w: %s frame of %d bytes: %v", ErrTruncated, t, n, err)
	}
	return buf, nil
}

// sanitize keeps a peer's reason printable and short.
func sanitize(s string) string {
	if len(s) > maxReasonLen {
		s = s[:maxReasonLen]
	}
	s = strings.ToValidUTF8(s, "?")
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == utf8.RuneError {
			return '?'
		}
		return r
	}, s)
}

// Kind is what a transfer carries.
type Kind uint8

const (
	// KindFile: one regular file, rebuilt as is.
	KindFile Kind = 1
	// KindDir: a directory packed as tar; the receiver extracts it (what
	// SendDir sent before KindTree; still received).
	KindDir Kind = 2
	// KindTree: a directory sent as its files (tree.go): a TREE frame
	// lists them, then each file's bytes travel as segments.
	KindTree Kind = 3
)

func (k Kind) String() string {
	switch k {
	case KindFile:
		return "file"
	case KindDir:
		return "dir"
	case KindTree:
		return "tree"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Header is what the sender says about a transfer before the index.
type Header struct {
	// ID names the transfer; the same ID resumes an interrupted one.
	ID string
	// Name is where the sender suggests the receiver put it: a relative
	// path that stays inside the receiver's destination directory.
	Name string
	Kind Kind
	// Mode holds the file's permission bits (files only).
	Mode uint32
}

var helloMagic = [8]byte{'F', 'R', 'Y', 'X', 'F', 'E', 'R', '1'}

const protoVersion = 2 // 2: RUN frames

func encodeHello(h Header) []byte {
	b := make([]byte, 0, 16+len(h.ID)+len(h.Name)+4)
	b = append(b, helloMagic[:]...)
	b = append(b, protoVersion, byte(h.Kind))
	b = binary.BigEndian.AppendUint32(b, h.Mode)
	b = binary.BigEndian.AppendUint16(b, uint16(len(h.ID)))
	b = append(b, h.ID...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(h.Name)))
	b = append(b, h.Name...)
	return b
}

// DecodeHello parses a HELLO payload and validates every field.
func DecodeHello(b []byte) (Header, error) {
	var h Header
	if len(b) < 16 {
		return h, fmt.Errorf("%w: HELLO of %d bytes is too short", cas.ErrInvalid, len(b))
	}
	if [8]byte(b[:8]) != helloMagic {
		return h, fmt.Errorf("%w: HELLO: bad magic %q", cas.ErrInvalid, b[:8])
	}
	if b[8] != protoVersion {
		return h, fmt.Errorf("%w: HELLO: protocol version %d, want %d", cas.ErrInvalid, b[8], protoVersion)
	}
	h.Kind = Kind(b[9])
	if h.Kind != KindFile && h.Kind != KindDir && h.Kind != KindTree {
		return h, fmt.Errorf("%w: HELLO: unknown kind %d", cas.ErrInvalid, b[9])
	}
	h.Mode = binary.BigEndian.Uint32(b[10:14])
	if h.Mode&^0o777 != 0 {
		return h, fmt.Errorf("%w: HELLO: mode %#o has bits beyond 0777", cas.ErrInvalid, h.Mode)
	}
	rest := b[14:]
	str := func(field string) (string, error) {
		if len(rest) < 2 {
			return "", fmt.Errorf("%w: HELLO: truncated before %s", cas.ErrInvalid, field)
		}
		n := int(binary.BigEndian.Uint16(rest))
		if len(rest)-2 < n {
			return "", fmt.Errorf("%w: HELLO: %s of %d bytes truncated", cas.ErrInvalid, field, n)
		}
		s := string(rest[2 : 2+n])
		rest = rest[2+n:]
		return s, nil
	}
	var err error
	if h.ID, err = str("transfer id"); err != nil {
		return h, err
	}
	if h.Name, err = str("name"); err != nil {
		return h, err
	}
	if len(rest) != 0 {
		return h, fmt.Errorf("%w: HELLO: %d trailing bytes", cas.ErrInvalid, len(rest))
	}
	return h, h.Validate()
}

// Validate checks the transfer id and name.
func (h Header) Validate() error {
	if err := cas.ValidName(h.ID); err != nil {
		return fmt.Errorf("transfer id: %w", err)
	}
	return ValidRelPath(h.Name)
}

// ValidRelPath accepts a relative slash-separated path that stays inside
// the directory it is joined to: no absolute path, no "..", no empty or "."
// element, no NUL, at most 4096 bytes.
func ValidRelPath(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: name is empty", cas.ErrInvalid)
	case len(name) > 4096:
		return fmt.Errorf("%w: name of %d bytes over limit 4096", cas.ErrInvalid, len(name))
	case strings.ContainsRune(name, 0):
		return fmt.Errorf("%w: name %q contains NUL", cas.ErrInvalid, name)
	case strings.HasPrefix(name, "/"):
		return fmt.Errorf("%w: name %q is absolute", cas.ErrInvalid, name)
	case !filepath.IsLocal(name) || filepath.Clean(name) != name:
		return fmt.Errorf("%w: name %q escapes its directory or is not clean (path traversal)", cas.ErrInvalid, name)
	}
	for _, el := range strings.Split(name, "/") {
		if el == "" || el == "." || el == ".." {
			return fmt.Errorf("%w: name %q has element %q (path traversal)", cas.ErrInvalid, name, el)
		}
	}
	return nil
}

// encodeWant lists wanted entry numbers: count u32, then each u32.
func encodeWant(want []uint32) []byte {
	b := make([]byte, 4, 4+4*len(want))
	binary.BigEndian.PutUint32(b, uint32(len(want)))
	for _, w := range want {
		b = binary.BigEndian.AppendUint32(b, w)
	}
	return b
}

// DecodeWant parses a WANT payload for an index of n entries: strictly
// increasing entry numbers below n, none a hole.
func DecodeWant(b []byte, x *cas.Index) ([]uint32, error) {
	if len(b) < 4 {
		return nil, fmt.Errorf("%w: WANT of %d bytes is too short", cas.ErrInvalid, len(b))
	}
	count := binary.BigEndian.Uint32(b)
	if uint64(count) > uint64(len(x.Entries)) {
		return nil, fmt.Errorf("%w: WANT asks for %d chunks, index has %d entries", cas.ErrInvalid, count, len(x.Entries))
	}
	if len(b) != 4+4*int(count) {
		return nil, fmt.Errorf("%w: WANT of %d bytes does not hold %d entries", cas.ErrInvalid, len(b), count)
	}
	want := make([]uint32, count)
	for i := range want {
		w := binary.BigEndian.Uint32(b[4+4*i:])
		if int(w) >= len(x.Entries) {
			return nil, fmt.Errorf("%w: WANT item %d: entry %d beyond the index's %d", cas.ErrInvalid, i, w, len(x.Entries))
		}
		if i > 0 && w <= want[i-1] {
			return nil, fmt.Errorf("%w: WANT item %d: entry %d not after %d", cas.ErrInvalid, i, w, want[i-1])
		}
		if x.Entries[w].Hole {
			return nil, fmt.Errorf("%w: WANT item %d: entry %d is a hole", cas.ErrInvalid, i, w)
		}
		want[i] = w
	}
	return want, nil
}

// result payload: status u8 (0 ok), then a reason for a failure.
func encodeResult(err error) []byte {
	if err == nil {
		return []byte{0}
	}
	msg := err.Error()
	if len(msg) > maxReasonLen {
		msg = msg[:maxReasonLen]
	}
	return append([]byte{1}, msg...)
}

// decodeResult reads a RESULT payload: nil for success, else ErrRemote
// with the receiver's reason (sanitized).
func decodeResult(b []byte) error {
	if len(b) > 0 && b[0] == 0 {
		return nil
	}
	reason := ""
	if len(b) > 1 {
		reason = sanitize(string(b[1:]))
	}
	return fmt.Errorf("%w: receiver: %s", ErrRemote, reason)
}
