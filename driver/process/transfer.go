package process

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/ferrycluster/ferry/internal/writeback"
)

// The image stream moves one committed checkpoint over a byte stream (a
// TCP or TLS connection), refusing it before any file byte travels when the
// receiver lacks the space:
//
//	sender → receiver   "FERRYIMG" u32(len) {"format":..,"manifest":{..}}
//	receiver → sender   "OK\n" | "ERR <kind> <reason>\n"
//	sender → receiver   the files' bytes, in manifest order, sizes from it
//	receiver → sender   "DONE\n" once the image is committed (fsynced,
//	                    renamed) | "ERR <kind> <reason>\n"
//
// <kind> names the error's kind as in the live stream (live.go,
// liveReason): "insufficient" (driver.ErrInsufficient, and a receiver's
// ENOSPC/EDQUOT) or "-".
//
// It is what the benchmark and the two-node tests use; an agent may move
// images its own way (chunked, content-addressed) as long as it delivers a
// directory that VerifyImage accepts and calls CheckFreeSpace first.
const (
	streamMagic  = "FERRYIMG"
	streamFormat = "ferry-image-stream/1"
	// maxHeader bounds the header the receiver accepts.
	maxHeader = 16 << 20
)

// ErrRefused is returned by SendImage when the receiver refuses the image.
var ErrRefused = errors.New("image refused by receiver")

type streamHeader struct {
	Format   string   `json:"format"`
	Manifest Manifest `json:"manifest"`
}

// SendImage streams the committed checkpoint in dir to conn and returns
// when the receiver has committed it. A receiver that refuses while the
// files travel closes under the sender's writes: its refusal, read after
// the failed write, is the error (ErrRefused and its kind).
func SendImage(ctx context.Context, conn io.ReadWriter, dir string) error {
	m, err := VerifyImage(dir)
	if err != nil {
		return err
	}
	stopWatch := watchCtx(ctx, conn)
	defer stopWatch()
	hb, err := json.Marshal(streamHeader{Format: streamFormat, Manifest: m})
	if err != nil {
		return err
	}
	pre := make([]byte, len(streamMagic)+4)
	copy(pre, streamMagic)
	binary.BigEndian.PutUint32(pre[len(streamMagic):], uint32(len(hb)))
	if _, err := conn.Write(append(pre, hb...)); err != nil {
		return fmt.Errorf("send image header: %w", err)
	}
	br := bufio.NewReader(conn)
	if err := readReply(br, "OK"); err != nil {
		return err
	}
	for _, f := range m.Files {
		if err := sendFile(conn, filepath.Join(dir, filepath.FromSlash(f.Path)), f.Size); err != nil {
			if rerr := refusalAfter(ctx, conn, br); rerr != nil {
				return fmt.Errorf("send %s: %w (the write: %v)", f.Path, rerr, err)
			}
			return fmt.Errorf("send %s: %w", f.Path, ctxErr(ctx, err))
		}
	}
	if err := readReply(br, "DONE"); err != nil {
		return ctxErr(ctx, err)
	}
	return nil
}

// replyWait bounds the wait for a refusal after a failed write.
const replyWait = 2 * time.Second

// refusalAfter is the refusal a receiver sent before it closed the
// connection under a write ("ERR <kind> <reason>", read with readReply
// within replyWait), or nil if conn cannot be given a deadline or no
// refusal came: the write's own error ("broken pipe") says less. A
// cancelled ctx is not waited on.
func refusalAfter(ctx context.Context, conn io.ReadWriter, br *bufio.Reader) error {
	c, ok := conn.(interface{ SetReadDeadline(time.Time) error })
	if !ok || ctx.Err() != nil || c.SetReadDeadline(time.Now().Add(replyWait)) != nil {
		return nil
	}
	if err := readReply(br, "DONE"); errors.Is(err, ErrRefused) {
		return err
	}
	return nil
}

func sendFile(w io.Writer, path string, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(w, io.LimitReader(f, size))
	if err == nil && n != size {
		err = fmt.Errorf("file shrank: sent %d of %d bytes", n, size)
	}
	return err
}

// readReply reads the receiver's next line, wanting want; a refusal
// ("ERR <kind> <reason>") is ErrRefused and the error its kind names
// (liveErr), as in the live stream.
func readReply(br *bufio.Reader, want string) error {
	line, err := liveReply(br)
	if err == nil && line != want {
		err = fmt.Errorf("receiver said %q, want %q", line, want)
	}
	return err
}

// ReceiveOptions tune ReceiveImage.
type ReceiveOptions struct {
	// Space reports free bytes at a path; nil means FreeSpace (statfs).
	Space SpaceFunc
}

// ReceiveImage reads one image from conn and commits it at dir (missing or
// empty), after checking there is room for it. The image is written next to
// dir, fsynced and renamed into place: dir never holds a partial image.
func ReceiveImage(ctx context.Context, conn io.ReadWriter, dir string, opts ReceiveOptions) (Manifest, error) {
	defer watchCtx(ctx, conn)()
	refuse := refuser(conn)
	h, err := readStreamHeader(conn)
	if err != nil {
		return refuse(err)
	}
	m := h.Manifest
	if err := checkEmptyDir(dir); err != nil {
		return refuse(err)
	}
	parent := filepath.Dir(dir)
	if err := CheckFreeSpace(parent, m.Bytes, opts.Space); err != nil {
		return refuse(err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".partial-")
	if err != nil {
		return refuse(err)
	}
	defer os.RemoveAll(tmp) // gone after the rename anyway
	if _, err := io.WriteString(conn, "OK\n"); err != nil {
		return Manifest{}, err
	}
	for _, f := range m.Files {
		p := filepath.Join(tmp, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return refuse(err)
		}
		if err := recvFile(conn, p, f.Size); err != nil {
			return refuse(fmt.Errorf("receive %s: %w", f.Path, ctxErr(ctx, err)))
		}
	}
	if err := commitReceived(tmp, m, dir); err != nil {
		return refuse(err)
	}
	if _, err := io.WriteString(conn, "DONE\n"); err != nil {
		return m, err
	}
	return m, nil
}

// commitReceived seals the copy received into tmp, checks it holds the
// files of m with their sizes, and renames it to dir.
func commitReceived(tmp string, m Manifest, dir string) error {
	// Sealing rewrites the manifest from what is on disk: it must agree.
	got, err := sealStaging(tmp, m)
	if err != nil {
		return err
	}
	if got.Bytes != m.Bytes || len(got.Files) != len(m.Files) {
		return fmt.Errorf("received %d bytes in %d files, manifest says %d in %d", got.Bytes, len(got.Files), m.Bytes, len(m.Files))
	}
	for i := range got.Files {
		if got.Files[i] != m.Files[i] {
			return fmt.Errorf("received %s of %d bytes, manifest says %s of %d", got.Files[i].Path, got.Files[i].Size, m.Files[i].Path, m.Files[i].Size)
		}
	}
	return commitDir(tmp, dir)
}

// refuser answers a refusal on conn ("ERR <kind> <reason>", liveReason)
// and returns the error.
func refuser(conn io.Writer) func(error) (Manifest, error) {
	return func(err error) (Manifest, error) {
		fmt.Fprintf(conn, "ERR %s\n", liveReason(err))
		return Manifest{}, err
	}
}

func recvFile(r io.Reader, path string, size int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	n, err := writeback.Copy(f, r, size)
	if errors.Is(err, io.EOF) || err == nil && n != size {
		err = fmt.Errorf("stream ended after %d of %d bytes", n, size)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// readStreamHeader reads and checks the stream's header.
func readStreamHeader(r io.Reader) (streamHeader, error) {
	b, err := readHeader(r, "image stream", streamMagic, maxHeader)
	if err != nil {
		return streamHeader{}, err
	}
	return parseStreamHeader(b)
}

// readHeader reads magic, a big-endian u32 length (1..limit) and that
// many bytes; what names the stream in errors.
func readHeader(r io.Reader, what, magic string, limit uint32) ([]byte, error) {
	pre := make([]byte, len(magic)+4)
	if _, err := io.ReadFull(r, pre); err != nil {
		return nil, fmt.Errorf("%s: read header: %w", what, err)
	}
	if string(pre[:len(magic)]) != magic {
		return nil, fmt.Errorf("%s: bad magic %q", what, pre[:len(magic)])
	}
	n := binary.BigEndian.Uint32(pre[len(magic):])
	if n == 0 || n > limit {
		return nil, fmt.Errorf("%s: header length %d out of range 1..%d", what, n, limit)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("%s: read header: %w", what, err)
	}
	return b, nil
}

func parseStreamHeader(b []byte) (streamHeader, error) {
	var raw struct {
		Format   string          `json:"format"`
		Manifest json.RawMessage `json:"manifest"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return streamHeader{}, fmt.Errorf("image stream: header: %w", err)
	}
	if raw.Format != streamFormat {
		return streamHeader{}, fmt.Errorf("image stream: format %q, want %q", raw.Format, streamFormat)
	}
	m, err := parseFileSet(raw.Manifest)
	if err != nil {
		return streamHeader{}, fmt.Errorf("image stream: %w", err)
	}
	return streamHeader{Format: raw.Format, Manifest: m}, nil
}

// parseFileSet is ParseManifest for a manifest that comes from another
// node, whose files are then created: no file twice, none also a
// directory of another.
func parseFileSet(b []byte) (Manifest, error) {
	m, err := ParseManifest(b)
	if err != nil {
		return Manifest{}, err
	}
	seen := map[string]bool{}
	for _, f := range m.Files {
		if seen[f.Path] {
			return Manifest{}, fmt.Errorf("file %s listed twice", f.Path)
		}
		seen[f.Path] = true
	}
	for p := range seen { // a file may not also be a directory of another
		for d := filepath.Dir(p); d != "."; d = filepath.Dir(d) {
			if seen[d] {
				return Manifest{}, fmt.Errorf("%s is both a file and a directory", d)
			}
		}
	}
	return m, nil
}

// watchCtx unblocks I/O on conn when ctx ends (net.Conn deadlines).
func watchCtx(ctx context.Context, conn io.ReadWriter) func() {
	c, ok := conn.(net.Conn)
	if !ok || ctx.Done() == nil {
		return func() {}
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-ctx.Done():
			_ = c.SetDeadline(time.Unix(1, 0))
		case <-stop:
		}
	}()
	return func() { close(stop); <-done }
}

func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}
