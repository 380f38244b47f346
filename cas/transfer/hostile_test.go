package transfer

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrycluster/ferry/cas"
)

// memConn replays a recorded sender stream and swallows the replies.
type memConn struct {
	r   io.Reader
	out bytes.Buffer
}

func (c *memConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *memConn) Write(p []byte) (int, error) { return c.out.Write(p) }

type chunkFrame struct {
	entry uint32
	enc   cas.Encoding
	data  []byte
}

// senderStream builds what a sender would write.
func senderStream(h Header, x *cas.Index, chunks []chunkFrame, done bool) []byte {
	if x == nil {
		return senderStreamBytes(h, nil, chunks, done)
	}
	var ib bytes.Buffer
	cas.EncodeIndex(&ib, x)
	return senderStreamBytes(h, ib.Bytes(), chunks, done)
}

// senderStreamBytes is senderStream with the INDEX payload as bytes.
func senderStreamBytes(h Header, index []byte, chunks []chunkFrame, done bool) []byte {
	var buf bytes.Buffer
	w := newFrameWriter(&buf, nil)
	w.frame(msgHello, encodeHello(h))
	if index != nil {
		w.frame(msgIndex, index)
	}
	for _, c := range chunks {
		var hdr [chunkHdrLen]byte
		binary.BigEndian.PutUint32(hdr[:], c.entry)
		hdr[4] = byte(c.enc)
		w.frame(msgChunk, hdr[:], c.data)
	}
	if done {
		w.frame(msgDone)
	}
	w.Flush()
	return buf.Bytes()
}

// runFrame is a RUN frame as a sender writes it: entries first …
// first+count-1, then their bytes.
type runFrame struct {
	first, count uint32
	data         []byte
}

// runStream is senderStream with RUN frames instead of CHUNK frames.
func runStream(h Header, x *cas.Index, runs []runFrame, done bool) []byte {
	var buf bytes.Buffer
	buf.Write(senderStream(h, x, nil, false))
	w := newFrameWriter(&buf, nil)
	for _, r := range runs {
		var hdr [runHdrLen]byte
		binary.BigEndian.PutUint32(hdr[:], r.first)
		binary.BigEndian.PutUint32(hdr[4:], r.count)
		w.frame(msgRun, hdr[:], r.data)
	}
	if done {
		w.frame(msgDone)
	}
	w.Flush()
	return buf.Bytes()
}

// indexOf indexes data with fixed blocks and returns the frames a correct
// sender sends to an empty receiver.
func indexOf(t testing.TB, data []byte) (*cas.Index, []chunkFrame) {
	x, err := cas.BuildIndex(bytes.NewReader(data), cas.IndexOptions{Chunking: cas.Fixed})
	if err != nil {
		t.Fatal(err)
	}
	var frames []chunkFrame
	seen := map[cas.ID]bool{}
	offs := x.Offsets()
	for i, e := range x.Entries {
		if !e.Hole && !seen[e.ID] {
			seen[e.ID] = true
			frames = append(frames, chunkFrame{uint32(i), cas.Raw, data[offs[i] : offs[i]+int64(e.Length)]})
		}
	}
	return x, frames
}

// onlyStaging checks that nothing but staging files exists under root.
func onlyStaging(t *testing.T, root string) {
	t.Helper()
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		rel, _ := filepath.Rel(root, p)
		if err != nil || rel == "." || rel == "staging" || rel == "dest" || strings.HasPrefix(rel, "staging/") {
			return nil
		}
		t.Errorf("unexpected file %s", rel)
		return nil
	})
}

func TestReceiverRejectsHostileStreams(t *testing.T) {
	data := append(randBytes(5*4096, 40), make([]byte, 8192)...)
	x, frames := indexOf(t, data)
	ok := Header{ID: "h", Name: "f.raw", Kind: KindFile, Mode: 0o600}
	// v2: a digest that is not the root of the entries.
	var ib bytes.Buffer
	cas.EncodeIndex(&ib, x)
	badRoot := ib.Bytes()
	badRoot[17] ^= 1
	// v1: a whole-file digest the rebuilt file does not have.
	badDigest := *x
	badDigest.Version, badDigest.Digest = cas.IndexV1, cas.Sum(data)
	badDigest.Digest[0] ^= 1
	wrongData := append([]chunkFrame(nil), frames...)
	wrongData[1].data = randBytes(4096, 41)
	huge := func() []byte {
		var ib bytes.Buffer
		cas.EncodeIndex(&ib, x)
		b := ib.Bytes()
		binary.BigEndian.PutUint64(b[49:], 1<<40)
		var buf bytes.Buffer
		w := newFrameWriter(&buf, nil)
		w.frame(msgHello, encodeHello(ok))
		w.frame(msgIndex, b)
		w.Flush()
		return buf.Bytes()
	}()
	oversized := append(senderStream(ok, x, nil, false), byte(msgChunk), 0xff, 0xff, 0xff, 0xff)
	// RUN frames: entries 0-4 are data, 5 is the hole.
	blocks := data[:5*4096]
	wrongRun := append([]byte(nil), blocks...)
	wrongRun[3*4096] ^= 1
	goodRun := runStream(ok, x, []runFrame{{0, 5, blocks}}, true)
	oversizedRun := append(senderStream(ok, x, nil, false), byte(msgRun), 0, 0x40, 0, 9)
	cases := []struct {
		name   string
		stream []byte
		kind   error
	}{
		{"traversal name", senderStream(Header{ID: "h", Name: "../../etc/passwd", Kind: KindFile}, x, frames, true), cas.ErrInvalid},
		{"absolute name", senderStream(Header{ID: "h", Name: "/etc/passwd", Kind: KindFile}, x, frames, true), cas.ErrInvalid},
		{"dotted name", senderStream(Header{ID: "h", Name: "a/./b", Kind: KindFile}, x, frames, true), cas.ErrInvalid},
		{"traversal id", senderStream(Header{ID: "../h", Name: "f", Kind: KindFile}, x, frames, true), cas.ErrInvalid},
		{"bad kind", senderStream(Header{ID: "h", Name: "f", Kind: 9}, x, frames, true), cas.ErrInvalid},
		{"huge count", huge, cas.ErrInvalid},
		{"wrong root (v2)", senderStreamBytes(ok, badRoot, frames, true), cas.ErrCorrupt},
		{"wrong whole-file digest (v1)", senderStream(ok, &badDigest, frames, true), cas.ErrCorrupt},
		{"wrong chunk data", senderStream(ok, x, wrongData, true), cas.ErrCorrupt},
		{"truncated after index", senderStream(ok, x, nil, false), ErrTruncated},
		{"truncated mid chunk", senderStream(ok, x, frames, true)[:len(senderStream(ok, x, nil, false))+3000], ErrTruncated},
		{"missing chunks", senderStream(ok, x, frames[:1], true), ErrProtocol},
		{"unrequested chunk", senderStream(ok, x, []chunkFrame{{uint32(len(x.Entries) - 1), cas.Raw, make([]byte, 4096)}}, true), cas.ErrInvalid},
		{"duplicate chunk", senderStream(ok, x, append([]chunkFrame{frames[0]}, frames...), true), cas.ErrInvalid},
		{"oversized frame", oversized, ErrProtocol},
		{"bad encoding", senderStream(ok, x, []chunkFrame{{frames[0].entry, 7, frames[0].data}}, true), cas.ErrInvalid},
		{"zstd bomb", senderStream(ok, x, []chunkFrame{{frames[0].entry, cas.Zstd, bomb()}}, true), cas.ErrCorrupt},
		{"wrong message", senderStream(ok, nil, nil, true), ErrProtocol},
		{"RUN of no entries", runStream(ok, x, []runFrame{{0, 0, nil}}, true), cas.ErrInvalid},
		{"RUN beyond the index", runStream(ok, x, []runFrame{{3, 1 << 31, blocks}}, true), cas.ErrInvalid},
		{"RUN over a hole", runStream(ok, x, []runFrame{{4, 2, append(blocks[4*4096:], make([]byte, 8192)...)}}, true), cas.ErrInvalid},
		{"RUN shorter than its entries", runStream(ok, x, []runFrame{{0, 5, blocks[:len(blocks)-1]}}, true), cas.ErrInvalid},
		{"RUN longer than its entries", runStream(ok, x, []runFrame{{0, 2, blocks[:3*4096]}}, true), cas.ErrInvalid},
		{"RUN twice", runStream(ok, x, []runFrame{{0, 2, blocks[:8192]}, {1, 1, blocks[4096:8192]}}, true), cas.ErrInvalid},
		{"RUN shorter than its header", append(senderStream(ok, x, nil, false), byte(msgRun), 0, 0, 0, 4, 0, 0, 0, 0), cas.ErrInvalid},
		{"RUN with wrong data", runStream(ok, x, []runFrame{{0, 5, wrongRun}}, true), cas.ErrCorrupt},
		{"RUN truncated", goodRun[:len(goodRun)-5000], ErrTruncated},
		{"RUN frame over limit", oversizedRun, ErrProtocol},
		{"RUN missing chunks", runStream(ok, x, []runFrame{{0, 4, blocks[:4*4096]}}, true), ErrProtocol},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			rc := &Receiver{StagingDir: filepath.Join(root, "staging"), DestDir: filepath.Join(root, "dest")}
			conn := &memConn{r: bytes.NewReader(c.stream)}
			_, err := rc.Serve(context.Background(), conn)
			if !errors.Is(err, c.kind) {
				t.Fatalf("got %v, want %v", err, c.kind)
			}
			onlyStaging(t, root)
			if c.kind != ErrTruncated && !bytes.Contains(conn.out.Bytes(), []byte{byte(msgError)}) {
				t.Error("the sender was not told why")
			}
		})
	}
	// The correct stream is accepted.
	root := t.TempDir()
	rc := &Receiver{StagingDir: filepath.Join(root, "staging"), DestDir: filepath.Join(root, "dest")}
	if _, err := rc.Serve(context.Background(), &memConn{r: bytes.NewReader(senderStream(ok, x, frames, true))}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "dest", "f.raw")); !bytes.Equal(got, data) {
		t.Fatal("good stream not rebuilt")
	}
	// So is the same as one RUN frame.
	root = t.TempDir()
	rc = &Receiver{StagingDir: filepath.Join(root, "staging"), DestDir: filepath.Join(root, "dest")}
	if res, err := rc.Serve(context.Background(), &memConn{r: bytes.NewReader(goodRun)}); err != nil || res.Received != 5 {
		t.Fatalf("RUN stream: %v, %d chunks received", err, res.Received)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "dest", "f.raw")); !bytes.Equal(got, data) {
		t.Fatal("good RUN stream not rebuilt")
	}
}

// bomb is a small zstd frame that decodes to far more than a chunk.
func bomb() []byte {
	_, out := cas.Compress(nil, make([]byte, cas.MaxChunkLen))
	return out
}

type tarEntry struct {
	hdr  tar.Header
	body string
}

func tarOf(entries ...tarEntry) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		tw.WriteHeader(&h)
		tw.Write([]byte(e.body))
	}
	tw.Close()
	return buf.Bytes()
}

func TestExtractRejectsHostileTars(t *testing.T) {
	reg := func(name string) tarEntry { return tarEntry{tar.Header{Name: name, Typeflag: tar.TypeReg}, "evil"} }
	link := func(name, target string) tarEntry {
		return tarEntry{tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target}, ""}
	}
	cases := map[string][]byte{
		"dotdot":            tarOf(reg("../evil")),
		"nested dotdot":     tarOf(reg("a/../../evil")),
		"absolute":          tarOf(reg("/tmp/evil")),
		"symlink escape":    tarOf(link("l", "../../..")),
		"symlink absolute":  tarOf(link("l", "/etc")),
		"symlink then file": tarOf(link("l", "sub/../.."), reg("l/evil")),
		"hardlink":          tarOf(tarEntry{tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: "/etc/passwd"}, ""}),
		"device":            tarOf(tarEntry{tar.Header{Name: "d", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3}, ""}),
		"fifo":              tarOf(tarEntry{tar.Header{Name: "p", Typeflag: tar.TypeFifo}, ""}),
		"duplicate file":    tarOf(reg("x"), reg("x")),
		"garbage":           []byte("this is not a tar archive, not at all, and it goes on for a while ...................................................................................................................................................................................................................................................................................................................................................................................................................................................................................................................."),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			dest := filepath.Join(root, "out")
			err := Extract(bytes.NewReader(b), dest, ExtractLimits{})
			if !errors.Is(err, cas.ErrInvalid) {
				t.Fatalf("got %v, want ErrInvalid", err)
			}
			filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
				if d != nil && d.Name() == "evil" {
					t.Errorf("evil file written at %s", p)
				}
				if rel, _ := filepath.Rel(dest, p); strings.HasPrefix(rel, "..") && p != root {
					t.Errorf("file outside the destination: %s", p)
				}
				return nil
			})
		})
	}
	// Too many entries.
	if err := Extract(bytes.NewReader(tarOf(reg("a"), reg("b"), reg("c"))), filepath.Join(t.TempDir(), "o"), ExtractLimits{MaxEntries: 2}); !errors.Is(err, cas.ErrInvalid) {
		t.Fatalf("entry limit: %v", err)
	}
	// Inside-pointing symlinks are fine, even through a directory link.
	dest := filepath.Join(t.TempDir(), "o")
	ok := tarOf(tarEntry{tar.Header{Name: "sub/", Typeflag: tar.TypeDir, Mode: 0o755}, ""}, link("l", "sub"), reg("l/file"))
	if err := Extract(bytes.NewReader(ok), dest, ExtractLimits{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "sub", "file")); string(b) != "evil" {
		t.Fatal("file through an inside symlink not written")
	}
}

func FuzzDecodeHello(f *testing.F) {
	f.Add(encodeHello(Header{ID: "t", Name: "a/b", Kind: KindFile, Mode: 0o644}))
	f.Add(encodeHello(Header{ID: "t", Name: "../x", Kind: KindDir}))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := DecodeHello(b)
		if err != nil {
			if !errors.Is(err, cas.ErrInvalid) {
				t.Fatalf("error without kind: %v", err)
			}
			return
		}
		if !bytes.Equal(encodeHello(h), b) {
			t.Fatal("re-encoding differs")
		}
		if !filepath.IsLocal(h.Name) {
			t.Fatalf("accepted non-local name %q", h.Name)
		}
	})
}

func FuzzDecodeWant(f *testing.F) {
	x, _ := indexOf(f, append(randBytes(3*4096, 50), make([]byte, 4096)...))
	f.Add(encodeWant([]uint32{0, 1, 2}))
	f.Add(encodeWant([]uint32{3}))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		want, err := DecodeWant(b, x)
		if err != nil {
			if !errors.Is(err, cas.ErrInvalid) {
				t.Fatalf("error without kind: %v", err)
			}
			return
		}
		for i, w := range want {
			if int(w) >= len(x.Entries) || x.Entries[w].Hole || (i > 0 && w <= want[i-1]) {
				t.Fatalf("accepted bad want %v", want)
			}
		}
	})
}

func FuzzExtract(f *testing.F) {
	f.Add(tarOf(tarEntry{tar.Header{Name: "a/", Typeflag: tar.TypeDir, Mode: 0o755}, ""}, tarEntry{tar.Header{Name: "a/f", Typeflag: tar.TypeReg}, "x"}))
	f.Add(tarOf(tarEntry{tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "../x"}, ""}))
	f.Add(tarOf(tarEntry{tar.Header{Name: "../x", Typeflag: tar.TypeReg}, "x"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		root := t.TempDir()
		dest := filepath.Join(root, "out")
		Extract(bytes.NewReader(b), dest, ExtractLimits{MaxEntries: 100, MaxBytes: 1 << 20})
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if p != root && p != dest && !strings.HasPrefix(p, dest+string(filepath.Separator)) {
				t.Fatalf("wrote outside the destination: %s", p)
			}
			return nil
		})
	})
}

// FuzzReceiverStream feeds arbitrary bytes to a receiver as the sender's
// side of the conversation (every message decoder at once).
func FuzzReceiverStream(f *testing.F) {
	data := append(randBytes(2*4096, 60), make([]byte, 4096)...)
	x, frames := indexOf(f, data)
	f.Add(senderStream(Header{ID: "f", Name: "f", Kind: KindFile}, x, frames, true))
	f.Add(senderStream(Header{ID: "f", Name: "f", Kind: KindFile}, x, frames[:1], false))
	f.Add(runStream(Header{ID: "f", Name: "f", Kind: KindFile}, x, []runFrame{{0, 2, data[:8192]}}, true))
	dx, _ := cas.BuildIndex(bytes.NewReader(tarOf(tarEntry{tar.Header{Name: "a", Typeflag: tar.TypeReg}, "x"})), cas.IndexOptions{Chunking: cas.CDC})
	f.Add(senderStream(Header{ID: "d", Name: "d", Kind: KindDir}, dx, nil, true))
	f.Fuzz(func(t *testing.T, b []byte) {
		root := t.TempDir()
		rc := &Receiver{StagingDir: filepath.Join(root, "staging"), DestDir: filepath.Join(root, "dest"),
			Limits: cas.DecodeLimits{MaxEntries: 1 << 12, MaxFileSize: 1 << 24},
			Logger: slog.New(slog.DiscardHandler)}
		res, err := rc.Serve(context.Background(), &memConn{r: bytes.NewReader(b)})
		if err == nil && !strings.HasPrefix(res.Path, filepath.Join(root, "dest")+string(filepath.Separator)) {
			t.Fatalf("committed outside the destination: %s", res.Path)
		}
	})
}
