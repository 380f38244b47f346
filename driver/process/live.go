package process

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/internal/writeback"
)

// The live image stream sends a checkpoint to another node while the job
// writes it (SuspendStreaming → ReceiveStreaming), so the move overlaps the
// job's write instead of following it:
//
//	sender → receiver   "FERRYLIV" u32(len) {"format":..,"task":..,"estimate":N}
//	receiver → sender   "OK <room>\n" | "ERR <kind> <reason>\n"   (nothing signalled yet)
//	sender → receiver   frames, in any number and order:
//	  'D' u16(len) path u64(offset) u32(n) <n bytes>   bytes of a file
//	  'R' u16(len) path              a file sent before is gone: drop it
//	                                 (before 'M' only)
//	  'M' u32(len) <manifest JSON>   the committed checkpoint's manifest (once)
//	  'P' u16(len) path u32(mode)    a listed file's permission bits, when
//	                                 not 0644 (after 'M' and its file's data)
//	  'E'                            end (after 'M')
//	  'A' u32(len) <kind> <reason>   abort: nothing is committed
//	receiver → sender   "DONE\n" once committed (fsynced, renamed) | "ERR <kind> <reason>\n"
//
// <kind> is one token naming the error's kind, so that the other side
// maps it back: "insufficient" (driver.ErrInsufficient, and a receiver's
// ENOSPC/EDQUOT) or "-".
//
// While the job writes, the sender follows the files growing in staging/
// and sends each complete block (liveBlock bytes, aligned) once, keeping
// the block's length and 64-bit sum (maphash under the stream's random
// seed) of the bytes it read and sent. A job may
// rewrite, truncate, remove or rename what it wrote, so once the driver has
// committed the checkpoint the sender sends its manifest and re-reads every
// committed file (the page cache), block by block: a block whose length
// and checksum equal those it sent is skipped, any other is sent (again).
// The receiver truncates its files to the manifest's sizes and deletes
// those the manifest does not list when 'M' arrives, so at 'E' its copy
// equals the committed checkpoint, which it seals (fsync, manifest) and
// renames into place as ReceiveImage does: dir never holds a partial copy.
//
// Room: the receiver checks the sender's estimate (the last checkpoint's
// size or the job's resident memory, whichever is larger) before the job is
// asked, answers the bytes it can take, and both sides stop when the
// checkpoint grows past them (the sender aborts as soon as the files in
// staging/ add up to more; the receiver refuses a frame that would). Both
// count a file at the larger of its size and the bytes sent of it (the
// receiver has only the latter), and a file the job removed or renamed
// away not at all: the sender sends 'R' for it and the receiver drops it.
const (
	liveMagic  = "FERRYLIV"
	liveFormat = "ferry-image-live/1"
	// liveBlock is the unit the sender follows, checksums and resends.
	liveBlock = 1 << 20
	// maxLiveData bounds one 'D' frame's bytes at the receiver.
	maxLiveData = 4 << 20
	// maxLiveEstimate bounds the estimate the receiver accepts (1 PiB).
	maxLiveEstimate = 1 << 50
	// liveEntryCost is what a file costs in a manifest beyond its path
	// (len(`{"path":"","size":0},`)): the files a stream creates before
	// its manifest must fit one (maxHeader), so a peer sending 1-byte
	// files under 4 KiB names cannot make the receiver hold, in memory
	// and inodes, millions of entries its room in bytes does not count.
	liveEntryCost = 20
)

type liveHello struct {
	Format   string `json:"format"`
	Task     string `json:"task"`
	Estimate int64  `json:"estimate"`
}

// StreamStats says what a streamed suspend sent.
type StreamStats struct {
	// Early: bytes sent while the job was writing; Late: bytes sent after
	// the commit (the tail, and blocks rewritten or never seen before).
	Early, Late int64
	// Resent: late bytes of blocks sent early whose committed content or
	// length differs (rewritten, truncated).
	Resent int64
	// Check: time spent re-reading and checksumming the committed files
	// (and sending what differs), after the commit.
	Check time.Duration
	// Estimate sent, and the receiver's room.
	Estimate, Room int64
}

// SuspendStreaming is Suspend that also moves the checkpoint to a receiver
// (ReceiveStreaming) on conn while the job writes it. The receiver first
// checks the estimate against its free space; if it refuses, the job is
// not asked and the error wraps ErrRefused (and driver.ErrInsufficient if
// that was why): nothing changed. Otherwise the job is suspended as by
// Suspend — its checkpoint committed at dir here whatever happens to the
// stream — and the call returns when the receiver has committed its copy.
//
// The returned image is non-zero iff the job was suspended: with an error,
// either the suspend failed (zero image; the job keeps running, as after a
// failed Suspend) or the stream did (the image is here; the receiver
// committed nothing). st, if not nil, receives what was sent.
func (d *Driver) SuspendStreaming(ctx context.Context, id, dir string, conn io.ReadWriter, st *StreamStats) (driver.Image, error) {
	if st == nil {
		st = &StreamStats{}
	}
	t, err := d.lookup(id)
	if err != nil {
		return driver.Image{}, err
	}
	rec := t.snapshot()
	st.Estimate = rec.LastBytes
	if p := t.observe(); p.running {
		if rss, err := rssBytes(p.jr.PID); err == nil {
			st.Estimate = max(st.Estimate, rss)
		}
	}
	stopWatch := watchCtx(ctx, conn)
	defer stopWatch()
	s, err := startLive(conn, liveHello{Format: liveFormat, Task: id, Estimate: st.Estimate})
	if err != nil {
		return driver.Image{}, err
	}
	defer s.close()
	st.Room = s.room
	staging := filepath.Join(t.dir, stagingDir)
	signaled := make(chan struct{})
	done := make(chan struct{})
	followed := make(chan error, 1)
	go func() {
		select {
		case <-signaled:
		case <-done:
			followed <- nil
			return
		}
		err := s.follow(staging, done)
		if err != nil {
			// At once: the receiver drops its partial copy while the job
			// still writes (the suspend goes on here).
			s.abort(err)
		}
		followed <- err
	}()
	img, serr := d.suspend(ctx, t, dir, func() { close(signaled) })
	close(done)
	ferr := <-followed
	st.Early = s.sent
	if serr != nil {
		s.abort(fmt.Errorf("the checkpoint failed at the source: %w", serr))
		return driver.Image{}, serr
	}
	if ferr != nil {
		s.abort(ferr)
		return img, fmt.Errorf("process driver: task %q suspended at %s; streaming it failed: %w", id, img.Dir, ctxErr(ctx, ferr))
	}
	t0 := time.Now()
	err = s.finish(img.Dir)
	st.Check = time.Since(t0)
	st.Late, st.Resent = s.sent-st.Early, s.resent
	if err != nil {
		s.abort(err)
		return img, fmt.Errorf("process driver: task %q suspended at %s; streaming it failed: %w", id, img.Dir, ctxErr(ctx, err))
	}
	d.log.Info("checkpoint streamed", "task", id, "bytes", img.Bytes, "early", st.Early, "late", st.Late, "resent", st.Resent, "check", st.Check)
	return img, nil
}

// liveSender is the sending side of one live stream.
type liveSender struct {
	conn  io.ReadWriter
	w     *bufio.Writer
	room  int64
	files map[string]*liveFile
	buf   []byte
	// seed keys the block sums: random per stream, so a job cannot write
	// a changed block that keeps its sum on purpose (with CRC-32C four
	// chosen bytes would do).
	seed maphash.Seed
	// The receiver's last line, read as soon as it comes (an early ERR
	// stops the stream).
	replied  chan struct{}
	replyErr error
	sent     int64 // file bytes sent
	resent   int64
	aborted  bool
}

type liveFile struct {
	sums []blockSum // of the blocks sent, by index; n == 0: not sent
}

// extent is the bytes the receiver has of the file before the manifest
// (pass sends whole blocks only).
func (lf *liveFile) extent() int64 { return int64(len(lf.sums)) * liveBlock }

// grown is a file pass found in staging.
type grown struct {
	rel  string
	path string
	size int64
}

type blockSum struct {
	n   uint32
	sum uint64 // maphash under the stream's seed
}

// startLive sends the hello and reads the receiver's answer.
func startLive(conn io.ReadWriter, h liveHello) (*liveSender, error) {
	hb, err := json.Marshal(h)
	if err != nil {
		return nil, err
	}
	pre := make([]byte, len(liveMagic)+4)
	copy(pre, liveMagic)
	binary.BigEndian.PutUint32(pre[len(liveMagic):], uint32(len(hb)))
	if _, err := conn.Write(append(pre, hb...)); err != nil {
		return nil, fmt.Errorf("send live stream header: %w", err)
	}
	br := bufio.NewReader(conn)
	line, err := liveReply(br)
	if err != nil {
		return nil, err
	}
	rs, ok := strings.CutPrefix(line, "OK ")
	room, err := strconv.ParseInt(rs, 10, 64)
	if !ok || err != nil || room < 0 {
		return nil, fmt.Errorf("receiver said %q, want OK <room>", line)
	}
	s := &liveSender{conn: conn, w: bufio.NewWriterSize(conn, 64<<10), room: room, files: map[string]*liveFile{},
		buf: make([]byte, liveBlock), seed: maphash.MakeSeed(), replied: make(chan struct{})}
	go func() {
		defer close(s.replied)
		s.replyErr = readReply(br, "DONE")
	}()
	return s, nil
}

// liveReply reads the receiver's next line: its text, or the error its
// "ERR <kind> <reason>" names (ErrRefused, and the kind: liveErr). A line
// longer than br's buffer (4 KiB by default) is refused, not accumulated:
// the receiver is another node.
func liveReply(br *bufio.Reader) (string, error) {
	b, err := br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return "", fmt.Errorf("read receiver reply: no end of line in its first %d bytes", len(b))
	}
	if err != nil {
		return "", fmt.Errorf("read receiver reply: %w", err)
	}
	line := string(b[:len(b)-1])
	if msg, ok := strings.CutPrefix(line, "ERR "); ok {
		return "", fmt.Errorf("%w: %w", ErrRefused, liveErr(msg))
	}
	return line, nil
}

// Kinds of error a live stream's refusal or abort names.
const (
	liveKindInsufficient = "insufficient"
	liveKindOther        = "-"
)

// maxLiveReason bounds a refusal's or abort's reason: a reply line fits
// the sender's 4 KiB reader with "ERR " and the newline.
const maxLiveReason = 4000

// liveReason is err as a refusal or abort carries it: its kind, a space,
// its text on one line (at most maxLiveReason bytes in all). A write or
// fsync that found the disk full or the quota spent (ENOSPC, EDQUOT) is
// of the insufficient kind, like a refusal for room: the destination is
// full, whatever the estimate said.
func liveReason(err error) string {
	kind := liveKindOther
	if errors.Is(err, driver.ErrInsufficient) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		kind = liveKindInsufficient
	}
	r := kind + " " + strings.ReplaceAll(err.Error(), "\n", " ")
	if len(r) > maxLiveReason {
		r = strings.ToValidUTF8(r[:maxLiveReason], "")
	}
	return r
}

// liveErr is the error a peer's liveReason names: driver.ErrInsufficient
// when its kind token says so (not its free text).
func liveErr(msg string) error {
	kind, reason, ok := strings.Cut(msg, " ")
	switch {
	case ok && kind == liveKindInsufficient:
		return fmt.Errorf("%w: %s", driver.ErrInsufficient, strings.TrimPrefix(reason, driver.ErrInsufficient.Error()+": "))
	case ok && kind == liveKindOther:
		return errors.New(reason)
	}
	return errors.New(msg)
}

// ended reports the receiver's early answer, if any.
func (s *liveSender) ended() error {
	select {
	case <-s.replied:
		if s.replyErr != nil {
			return fmt.Errorf("receiver: %w", s.replyErr)
		}
		return errors.New("receiver ended the stream early")
	default:
		return nil
	}
}

// follow sends the complete blocks of the files growing in staging until
// stop closes.
func (s *liveSender) follow(staging string, stop <-chan struct{}) error {
	delay := time.Millisecond
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		n, err := s.pass(staging)
		if err != nil {
			return err
		}
		if err := s.ended(); err != nil {
			return err
		}
		if n > 0 {
			delay = time.Millisecond
			continue
		}
		select {
		case <-stop:
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, 10*time.Millisecond)
	}
}

// pass sends, once, every complete block the files in staging have that
// was not sent yet, and returns the bytes sent. A file that goes away or
// shrinks meanwhile is skipped: the final check sends what is committed.
func (s *liveSender) pass(staging string) (int64, error) {
	var files []grown
	var total int64
	err := filepath.WalkDir(staging, func(p string, de fs.DirEntry, err error) error {
		if err != nil || !de.Type().IsRegular() {
			return nil
		}
		rel, rerr := filepath.Rel(staging, p)
		if rerr != nil {
			return nil
		}
		rel = filepath.ToSlash(rel)
		if rel == DoneMarker || rel == ContinueRequest || rel == ManifestName {
			return nil
		}
		fi, ierr := de.Info()
		if ierr != nil {
			return nil
		}
		size := fi.Size()
		if lf := s.files[rel]; lf != nil {
			size = max(size, lf.extent())
		}
		total += size
		files = append(files, grown{rel, p, fi.Size()})
		return nil
	})
	if err != nil {
		return 0, err
	}
	if err := s.dropGone(files); err != nil {
		return 0, err
	}
	if total > s.room {
		return 0, fmt.Errorf("%w: the checkpoint grew to %d bytes, more than the %d the receiver has room for", driver.ErrInsufficient, total, s.room)
	}
	var sent int64
	for _, g := range files {
		lf := s.files[g.rel]
		if lf == nil {
			if checkRelPath(g.rel) != nil {
				continue // sealing refuses it; the final check reports it
			}
			lf = &liveFile{}
			s.files[g.rel] = lf
		}
		if int64(len(lf.sums)+1)*liveBlock > g.size {
			continue
		}
		f, err := os.Open(g.path)
		if err != nil {
			continue
		}
		for k := int64(len(lf.sums)); (k+1)*liveBlock <= g.size; k++ {
			n, err := f.ReadAt(s.buf, k*liveBlock)
			if n < liveBlock {
				_ = err // shrank meanwhile: later
				break
			}
			if err := s.data(g.rel, k*liveBlock, s.buf); err != nil {
				f.Close()
				return sent, err
			}
			lf.sums = append(lf.sums, blockSum{n: liveBlock, sum: maphash.Bytes(s.seed, s.buf)})
			sent += liveBlock
		}
		f.Close()
	}
	if err := s.w.Flush(); err != nil {
		return sent, err
	}
	return sent, nil
}

// dropGone sends 'R' for the files sent before that are not in staging
// now (removed, renamed away), so that the receiver drops them and their
// room, and forgets what it sent of them.
func (s *liveSender) dropGone(now []grown) error {
	seen := make(map[string]bool, len(now))
	for _, g := range now {
		seen[g.rel] = true
	}
	var gone []string
	for rel, lf := range s.files {
		if !seen[rel] {
			if len(lf.sums) > 0 {
				gone = append(gone, rel)
			}
			delete(s.files, rel)
		}
	}
	sort.Strings(gone)
	for _, rel := range gone {
		h := binary.BigEndian.AppendUint16([]byte{'R'}, uint16(len(rel)))
		if _, err := s.w.Write(append(h, rel...)); err != nil {
			return err
		}
	}
	return nil
}

// data writes one 'D' frame.
func (s *liveSender) data(rel string, off int64, b []byte) error {
	h := make([]byte, 0, 1+2+len(rel)+8+4)
	h = append(h, 'D')
	h = binary.BigEndian.AppendUint16(h, uint16(len(rel)))
	h = append(h, rel...)
	h = binary.BigEndian.AppendUint64(h, uint64(off))
	h = binary.BigEndian.AppendUint32(h, uint32(len(b)))
	if _, err := s.w.Write(h); err != nil {
		return err
	}
	if _, err := s.w.Write(b); err != nil {
		return err
	}
	s.sent += int64(len(b))
	return nil
}

// finish sends the committed checkpoint at dir: its manifest, then every
// block not sent or sent with other content, then 'E'; it waits for the
// receiver's DONE.
func (s *liveSender) finish(dir string) error {
	m, err := VerifyImage(dir)
	if err != nil {
		return err
	}
	mb, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := s.ended(); err != nil {
		return err
	}
	h := binary.BigEndian.AppendUint32([]byte{'M'}, uint32(len(mb)))
	if _, err := s.w.Write(append(h, mb...)); err != nil {
		return err
	}
	for _, mf := range m.Files {
		if err := s.check(dir, mf); err != nil {
			return fmt.Errorf("send %s: %w", mf.Path, err)
		}
	}
	// Modes last: a file made read-only takes no more data.
	for _, mf := range m.Files {
		fi, err := os.Stat(filepath.Join(dir, filepath.FromSlash(mf.Path)))
		if err != nil {
			return err
		}
		if perm := fi.Mode().Perm(); perm != liveFileMode {
			h := binary.BigEndian.AppendUint16([]byte{'P'}, uint16(len(mf.Path)))
			h = binary.BigEndian.AppendUint32(append(h, mf.Path...), uint32(perm))
			if _, err := s.w.Write(h); err != nil {
				return err
			}
		}
	}
	if err := s.w.WriteByte('E'); err != nil {
		return err
	}
	if err := s.w.Flush(); err != nil {
		return err
	}
	<-s.replied
	return s.replyErr
}

// check sends the blocks of one committed file that the receiver does not
// have as they are.
func (s *liveSender) check(dir string, mf ManifestFile) error {
	f, err := os.Open(filepath.Join(dir, filepath.FromSlash(mf.Path)))
	if err != nil {
		return err
	}
	defer f.Close()
	lf := s.files[mf.Path]
	for off := int64(0); off < mf.Size; off += liveBlock {
		n := min(liveBlock, mf.Size-off)
		b := s.buf[:n]
		if _, err := f.ReadAt(b, off); err != nil {
			return err
		}
		k := off / liveBlock
		if lf != nil && k < int64(len(lf.sums)) {
			if lf.sums[k] == (blockSum{n: uint32(n), sum: maphash.Bytes(s.seed, b)}) {
				continue
			}
			s.resent += n
		}
		if err := s.data(mf.Path, off, b); err != nil {
			return err
		}
	}
	return nil
}

// abort tells the receiver to drop the stream (best effort).
func (s *liveSender) abort(err error) {
	if s.aborted {
		return
	}
	s.aborted = true
	reason := liveReason(err)
	h := binary.BigEndian.AppendUint32([]byte{'A'}, uint32(len(reason)))
	_, _ = s.w.Write(append(h, reason...))
	_ = s.w.Flush()
}

// close stops the reply reader: it ends when the receiver answers or the
// connection closes; a receiver that does neither gets 5 s.
func (s *liveSender) close() {
	if c, ok := s.conn.(net.Conn); ok {
		select {
		case <-s.replied:
		default:
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		}
	}
}

// ReceiveStreaming reads one live stream (SuspendStreaming) from conn and
// commits the checkpoint at dir (missing or empty). It refuses before the
// job is asked when the estimate does not fit, and while the stream runs
// as soon as the checkpoint grows past the room it answered; a refused,
// aborted or cut stream leaves dir as it was. The copy is written next to
// dir, fsynced and renamed into place.
func ReceiveStreaming(ctx context.Context, conn io.ReadWriter, dir string, opts ReceiveOptions) (Manifest, error) {
	defer watchCtx(ctx, conn)()
	refuse := refuser(conn)
	h, err := readLiveHello(conn)
	if err != nil {
		return refuse(err)
	}
	if err := checkEmptyDir(dir); err != nil {
		return refuse(err)
	}
	parent := filepath.Dir(dir)
	space := opts.Space
	if space == nil {
		space = FreeSpace
	}
	if err := CheckFreeSpace(parent, h.Estimate, space); err != nil {
		return refuse(fmt.Errorf("task %q (estimated): %w", h.Task, err))
	}
	free, err := space(parent)
	if err != nil {
		return refuse(err)
	}
	// The most bytes with CheckFreeSpace's reserve still free.
	room := max(min(free-(1<<20), free/101*100), 0)
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".partial-")
	if err != nil {
		return refuse(err)
	}
	defer os.RemoveAll(tmp) // gone after the rename anyway
	root, err := os.OpenRoot(tmp)
	if err != nil {
		return refuse(err)
	}
	defer root.Close()
	if _, err := fmt.Fprintf(conn, "OK %d\n", room); err != nil {
		return Manifest{}, err
	}
	rx := &liveReceiver{root: root, room: room, files: map[string]*rxLiveFile{}}
	m, err := rx.run(bufio.NewReaderSize(conn, 256<<10))
	if err != nil {
		return refuse(ctxErr(ctx, err))
	}
	if err := commitReceived(tmp, m, dir); err != nil {
		return refuse(err)
	}
	if _, err := io.WriteString(conn, "DONE\n"); err != nil {
		return m, err
	}
	return m, nil
}

func readLiveHello(r io.Reader) (liveHello, error) {
	b, err := readHeader(r, "live stream", liveMagic, 64<<10)
	if err != nil {
		return liveHello{}, err
	}
	return parseLiveHello(b)
}

func parseLiveHello(b []byte) (liveHello, error) {
	var h liveHello
	if err := json.Unmarshal(b, &h); err != nil {
		return liveHello{}, fmt.Errorf("live stream: header: %w", err)
	}
	if h.Format != liveFormat {
		return liveHello{}, fmt.Errorf("live stream: format %q, want %q", h.Format, liveFormat)
	}
	if h.Estimate < 0 || h.Estimate > maxLiveEstimate {
		return liveHello{}, fmt.Errorf("live stream: estimate %d out of range 0..%d", h.Estimate, int64(maxLiveEstimate))
	}
	return h, nil
}

type liveReceiver struct {
	root  *os.Root
	room  int64
	total int64 // sum of the files' extents
	names int64 // what the files' entries would take in a manifest
	files map[string]*rxLiveFile
	m     *Manifest
	sizes map[string]int64 // the manifest's, once it came
	buf   []byte
}

type rxLiveFile struct {
	extent int64 // bytes the file spans
	queued int64 // queued for writeback up to here
}

// run reads frames until 'E' and returns the manifest.
func (rx *liveReceiver) run(r *bufio.Reader) (Manifest, error) {
	for {
		typ, err := r.ReadByte()
		if err != nil {
			return Manifest{}, fmt.Errorf("live stream: %w", noEOF(err))
		}
		switch typ {
		case 'D':
			if err := rx.data(r); err != nil {
				return Manifest{}, err
			}
		case 'M':
			b, err := readLen32(r, maxHeader)
			if err != nil {
				return Manifest{}, fmt.Errorf("live stream: manifest: %w", err)
			}
			if err := rx.manifest(b); err != nil {
				return Manifest{}, err
			}
		case 'R':
			if err := rx.remove(r); err != nil {
				return Manifest{}, err
			}
		case 'P':
			if err := rx.mode(r); err != nil {
				return Manifest{}, err
			}
		case 'E':
			if rx.m == nil {
				return Manifest{}, errors.New("live stream: end before the manifest")
			}
			return *rx.m, nil
		case 'A':
			b, err := readLen32(r, 4096)
			if err != nil {
				return Manifest{}, fmt.Errorf("live stream: abort: %w", err)
			}
			return Manifest{}, fmt.Errorf("live stream aborted by the sender: %w", liveErr(string(b)))
		default:
			return Manifest{}, fmt.Errorf("live stream: unknown frame type %#x", typ)
		}
	}
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

func readLen32(r io.Reader, limit uint32) ([]byte, error) {
	var nb [4]byte
	if _, err := io.ReadFull(r, nb[:]); err != nil {
		return nil, noEOF(err)
	}
	n := binary.BigEndian.Uint32(nb[:])
	if n > limit {
		return nil, fmt.Errorf("length %d over %d", n, limit)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, noEOF(err)
	}
	return b, nil
}

// readPath16 reads the u16(len) path that starts a 'D', 'R' or 'P' frame.
func readPath16(r io.Reader) (string, error) {
	var lb [2]byte
	if _, err := io.ReadFull(r, lb[:]); err != nil {
		return "", err
	}
	pb := make([]byte, binary.BigEndian.Uint16(lb[:]))
	if _, err := io.ReadFull(r, pb); err != nil {
		return "", err
	}
	return string(pb), nil
}

// data reads one 'D' frame and writes its bytes in place.
func (rx *liveReceiver) data(r *bufio.Reader) error {
	rel, err := readPath16(r)
	var hb [12]byte
	if err == nil {
		_, err = io.ReadFull(r, hb[:])
	}
	if err != nil {
		return fmt.Errorf("live stream: data: %w", noEOF(err))
	}
	off := binary.BigEndian.Uint64(hb[:8])
	n := int64(binary.BigEndian.Uint32(hb[8:]))
	if err := checkRelPath(rel); err != nil {
		return fmt.Errorf("live stream: data: %w", err)
	}
	if n == 0 || n > maxLiveData || off > maxLiveEstimate {
		return fmt.Errorf("live stream: data for %s: %d bytes at %d out of range", rel, n, off)
	}
	end := int64(off) + n
	if rx.m != nil {
		size, ok := rx.sizes[rel]
		if !ok {
			return fmt.Errorf("live stream: data for %s, which the manifest does not list", rel)
		}
		if end > size {
			return fmt.Errorf("live stream: data for %s up to %d, past its size %d", rel, end, size)
		}
	}
	lf := rx.files[rel]
	if lf == nil {
		// Only before the manifest: after it every listed file has one.
		c := int64(len(rel)) + liveEntryCost
		if rx.names+c > maxHeader {
			return fmt.Errorf("live stream: data for %s: the %d files sent before the manifest could not all be listed in one (names over %d bytes)", rel, len(rx.files)+1, maxHeader)
		}
		rx.names += c
		lf = &rxLiveFile{}
		rx.files[rel] = lf
	}
	if end > lf.extent {
		if rx.total+end-lf.extent > rx.room {
			return fmt.Errorf("%w: the checkpoint grew past the %d bytes there is room for here", driver.ErrInsufficient, rx.room)
		}
		rx.total += end - lf.extent
		lf.extent = end
	}
	if int64(cap(rx.buf)) < n {
		rx.buf = make([]byte, max(n, liveBlock))
	}
	b := rx.buf[:n]
	if _, err := io.ReadFull(r, b); err != nil {
		return fmt.Errorf("live stream: data: %w", noEOF(err))
	}
	f, err := rx.open(rel)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(b, int64(off))
	if err == nil && lf.extent-lf.queued >= writeback.Step {
		writeback.Start(f, lf.queued, lf.extent-lf.queued)
		lf.queued = lf.extent
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// remove reads one 'R' frame: a file sent before the manifest is gone at
// the sender; it is dropped here with its room and its entry.
func (rx *liveReceiver) remove(r *bufio.Reader) error {
	rel, err := readPath16(r)
	if err != nil {
		return fmt.Errorf("live stream: removal: %w", noEOF(err))
	}
	lf := rx.files[rel]
	if rx.m != nil || lf == nil {
		return fmt.Errorf("live stream: removal of %q: want a file sent before the manifest", rel)
	}
	if err := rx.drop(rel); err != nil {
		return err
	}
	rx.total -= lf.extent
	rx.names -= int64(len(rel)) + liveEntryCost
	return nil
}

// drop removes a file of the copy and its directories once empty (a
// file may take a directory's name later), and forgets it.
func (rx *liveReceiver) drop(rel string) error {
	name := filepath.FromSlash(rel)
	if err := rx.root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	delete(rx.files, rel)
	for d := filepath.Dir(name); d != "."; d = filepath.Dir(d) {
		if rx.root.Remove(d) != nil {
			break
		}
	}
	return nil
}

// mode reads one 'P' frame and sets a listed file's permission bits.
func (rx *liveReceiver) mode(r *bufio.Reader) error {
	rel, err := readPath16(r)
	var pb [4]byte
	if err == nil {
		_, err = io.ReadFull(r, pb[:])
	}
	if err != nil {
		return fmt.Errorf("live stream: mode: %w", noEOF(err))
	}
	perm := binary.BigEndian.Uint32(pb[:])
	if _, ok := rx.sizes[rel]; !ok || perm&^0o777 != 0 {
		return fmt.Errorf("live stream: mode %#o for %q: want permission bits of a file the manifest lists", perm, rel)
	}
	return rx.root.Chmod(filepath.FromSlash(rel), fs.FileMode(perm))
}

// liveFileMode is the mode the receiver creates files with; others cross
// in 'P' frames (the image keeps its files' permission bits, as the chunk
// transfer does).
const liveFileMode = 0o644

// open opens (creating it and its directories) a file of the copy.
func (rx *liveReceiver) open(rel string) (*os.File, error) {
	name := filepath.FromSlash(rel)
	if d := filepath.Dir(name); d != "." {
		if err := rx.root.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	f, err := rx.root.OpenFile(name, os.O_CREATE|os.O_WRONLY, liveFileMode)
	if err == nil && rx.m == nil {
		// Exactly liveFileMode whatever the umask: the sender sends
		// only the modes that differ.
		err = f.Chmod(liveFileMode)
		if err != nil {
			f.Close()
			return nil, err
		}
	}
	return f, err
}

// manifest applies the committed checkpoint's file list: files sized as
// it says, the others removed.
func (rx *liveReceiver) manifest(b []byte) error {
	if rx.m != nil {
		return errors.New("live stream: second manifest")
	}
	m, err := parseFileSet(b)
	if err != nil {
		return fmt.Errorf("live stream: %w", err)
	}
	if m.Bytes > rx.room {
		return fmt.Errorf("%w: the checkpoint is %d bytes, there is room for %d here", driver.ErrInsufficient, m.Bytes, rx.room)
	}
	rx.sizes = map[string]int64{}
	for _, f := range m.Files {
		rx.sizes[f.Path] = f.Size
	}
	var stale []string
	for rel := range rx.files {
		if _, ok := rx.sizes[rel]; !ok {
			stale = append(stale, rel)
		}
	}
	sort.Strings(stale)
	for _, rel := range stale {
		if err := rx.drop(rel); err != nil {
			return err
		}
	}
	for _, mf := range m.Files {
		f, err := rx.open(mf.Path)
		if err != nil {
			return err
		}
		err = f.Truncate(mf.Size)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		lf := rx.files[mf.Path]
		if lf == nil {
			lf = &rxLiveFile{}
			rx.files[mf.Path] = lf
		}
		lf.extent = mf.Size
		lf.queued = min(lf.queued, mf.Size)
	}
	rx.total = m.Bytes
	rx.m = &m
	return nil
}

// SuspendStream is SuspendStreaming for an agent (which moves a task
// without knowing its driver's types).
func (d *Driver) SuspendStream(ctx context.Context, id, dir string, conn io.ReadWriter) (driver.Image, error) {
	return d.SuspendStreaming(ctx, id, dir, conn, nil)
}

// ReceiveStream is ReceiveStreaming for an agent; space reports free bytes
// at a path (nil: statfs).
func (d *Driver) ReceiveStream(ctx context.Context, conn io.ReadWriter, dir string, space func(string) (int64, error)) error {
	_, err := ReceiveStreaming(ctx, conn, dir, ReceiveOptions{Space: space})
	return err
}
