package process

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/driver"
)

// liveMove runs send on one end of a loopback TCP connection and
// ReceiveStreaming into dst on the other.
func liveMove(t *testing.T, dst string, opts ReceiveOptions, send func(conn net.Conn) error) (sendErr, recvErr error) {
	t.Helper()
	ctx := ctxT(t, 2*time.Minute)
	return loopback(func(c net.Conn) error {
		_, err := ReceiveStreaming(ctx, c, dst, opts)
		return err
	}, send)
}

// sameTree fails unless a and b hold the same regular files with the same
// bytes (the manifest included).
func sameTree(t *testing.T, a, b string) {
	t.Helper()
	files := func(root string) map[string][]byte {
		m := map[string][]byte{}
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			body, err := os.ReadFile(p)
			rel, _ := filepath.Rel(root, p)
			m[rel] = body
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	fa, fb := files(a), files(b)
	if len(fa) != len(fb) {
		t.Errorf("%s has %d files, %s has %d", a, len(fa), b, len(fb))
	}
	for name, body := range fa {
		if other, ok := fb[name]; !ok {
			t.Errorf("%s missing from %s", name, b)
		} else if !bytes.Equal(body, other) {
			t.Errorf("%s differs (%d and %d bytes)", name, len(body), len(other))
		}
	}
}

func fill(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i>>10) ^ seed ^ byte(i)
	}
	return b
}

// The follower's rounds are driven by hand here, so what was streamed
// before each change is known exactly.
// putter writes files into dir, with their directories, as a job does.
func putter(t *testing.T, dir string) func(name string, b []byte) {
	return func(name string, b []byte) {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// commitFinish seals staging and commits it at src, as the driver does
// once the job is done, and sends the rest with s.finish.
func commitFinish(t *testing.T, s *liveSender, staging, src string) error {
	t.Helper()
	if _, err := sealStaging(staging, Manifest{TaskID: "x", Epoch: 3, Mode: ModeStop, CreatedAt: time.Unix(5, 0).UTC()}); err != nil {
		t.Fatal(err)
	}
	if err := commitDir(staging, src); err != nil {
		t.Fatal(err)
	}
	return s.finish(src)
}

func TestLiveStreamResendsWhatChangedAfterItWasSent(t *testing.T) {
	staging := t.TempDir()
	put := putter(t, staging)
	put("state", append(make([]byte, 4096), fill(3<<20+100, 1)...)) // header last
	put("shrink", fill(5<<20, 2))
	put("gone", fill(2<<20, 3))
	put("c", fill(1<<20, 4)) // becomes a directory
	put(DoneMarker, nil)
	src := filepath.Join(t.TempDir(), "image")
	dst := filepath.Join(t.TempDir(), "moved")
	var s *liveSender
	se, re := liveMove(t, dst, ReceiveOptions{}, func(c net.Conn) error {
		var err error
		if s, err = startLive(c, liveHello{Format: liveFormat, Task: "x", Estimate: 1 << 20}); err != nil {
			return err
		}
		defer s.close()
		if n, err := s.pass(staging); err != nil || n != 11<<20 {
			t.Errorf("first pass sent %d bytes (%v), want the 11 complete MiB blocks", n, err)
		}
		// The job rewrites, truncates, removes, replaces and adds.
		f, err := os.OpenFile(filepath.Join(staging, "state"), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(bytes.Repeat([]byte("HEADER.."), 512), 0); err != nil || f.Close() != nil {
			t.Fatal(err)
		}
		sh, _ := os.ReadFile(filepath.Join(staging, "shrink"))
		sh = sh[:2<<20+1000]
		sh[1<<20+5] ^= 0xff // one byte of its second block
		put("shrink", sh)
		os.Remove(filepath.Join(staging, "gone"))
		os.Remove(filepath.Join(staging, "c"))
		put("c/d", fill(10, 5))
		if n, err := s.pass(staging); err != nil || n != 0 {
			t.Errorf("second pass sent %d bytes (%v), want 0 (no new complete block)", n, err)
		}
		put("late", fill(1<<20+7, 6))
		os.Remove(filepath.Join(staging, DoneMarker))
		return commitFinish(t, s, staging, src)
	})
	if se != nil || re != nil {
		t.Fatalf("send %v, receive %v", se, re)
	}
	sameTree(t, src, dst)
	if _, err := VerifyImage(dst); err != nil {
		t.Error(err)
	}
	// Resent: state's first block (the header), shrink's second (one
	// byte) and its third (1000 bytes left of a block sent whole). Sent
	// late besides: state's tail, c/d and late, never seen complete.
	if want := int64(2<<20 + 1000); s.resent != want {
		t.Errorf("resent %d bytes, want %d", s.resent, want)
	}
	if want := int64(11<<20 + s.resent + 4096 + 100 + 10 + 1<<20 + 7); s.sent != want {
		t.Errorf("sent %d bytes in all, want %d", s.sent, want)
	}
}

func TestLiveStreamRoom(t *testing.T) {
	space := func(string) (int64, error) { return 8 << 20, nil } // room: 7 MiB
	noTrace := func(dst string) {
		t.Helper()
		if ents, _ := os.ReadDir(filepath.Dir(dst)); len(ents) != 0 {
			t.Errorf("left in %s: %v", filepath.Dir(dst), ents)
		}
	}
	t.Run("estimate refused before anything", func(t *testing.T) {
		dst := filepath.Join(t.TempDir(), "moved")
		se, re := liveMove(t, dst, ReceiveOptions{Space: space}, func(c net.Conn) error {
			_, err := startLive(c, liveHello{Format: liveFormat, Task: "x", Estimate: 9 << 20})
			return err
		})
		if !errors.Is(se, ErrRefused) || !errors.Is(se, driver.ErrInsufficient) || !errors.Is(re, driver.ErrInsufficient) {
			t.Fatalf("send %v, receive %v; want both insufficient", se, re)
		}
		noTrace(dst)
	})
	// stream sends a staging directory holding one file of size bytes
	// (estimate 1 MiB) with body.
	stream := func(t *testing.T, size int, body func(s *liveSender, staging string) error) (se, re error) {
		staging := t.TempDir()
		if err := os.WriteFile(filepath.Join(staging, "a"), fill(size, 1), 0o644); err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(t.TempDir(), "moved")
		defer noTrace(dst)
		return liveMove(t, dst, ReceiveOptions{Space: space}, func(c net.Conn) error {
			s, err := startLive(c, liveHello{Format: liveFormat, Task: "x", Estimate: 1 << 20})
			if err != nil {
				return err
			}
			defer s.close()
			return body(s, staging)
		})
	}
	// growAndPass adds a 3 MiB file b to staging and sends a pass, aborting
	// the stream when the pass fails.
	growAndPass := func(t *testing.T, s *liveSender, staging string) error {
		if err := os.WriteFile(filepath.Join(staging, "b"), fill(3<<20, 2), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := s.pass(staging)
		if err != nil {
			s.abort(err)
		}
		return err
	}
	t.Run("sender stops when it grows past the room", func(t *testing.T) {
		se, re := stream(t, 5<<20, func(s *liveSender, staging string) error {
			if s.room != 7<<20 {
				t.Errorf("room %d, want %d", s.room, 7<<20)
			}
			if _, err := s.pass(staging); err != nil {
				return err
			}
			return growAndPass(t, s, staging)
		})
		if !errors.Is(se, driver.ErrInsufficient) || !errors.Is(re, driver.ErrInsufficient) || !strings.Contains(re.Error(), "aborted") {
			t.Fatalf("send %v, receive %v; want insufficient, aborted", se, re)
		}
	})
	t.Run("a file shrunk after it was sent still counts at the sender", func(t *testing.T) {
		se, re := stream(t, 5<<20, func(s *liveSender, staging string) error {
			if _, err := s.pass(staging); err != nil {
				return err
			}
			// The receiver still has a's 5 MiB: 3 more do not fit.
			if err := os.Truncate(filepath.Join(staging, "a"), 0); err != nil {
				t.Fatal(err)
			}
			return growAndPass(t, s, staging)
		})
		if !errors.Is(se, driver.ErrInsufficient) || !errors.Is(re, driver.ErrInsufficient) || !strings.Contains(re.Error(), "aborted") {
			t.Fatalf("send %v, receive %v; want the sender to stop first (insufficient, aborted)", se, re)
		}
	})
	t.Run("receiver refuses bytes past the room", func(t *testing.T) {
		se, re := stream(t, 9<<20, func(s *liveSender, staging string) error {
			s.room = 1 << 40 // a sender that ignores the room
			var err error
			for err == nil {
				_, err = s.pass(staging)
				if err == nil {
					err = s.ended()
				}
				if err == nil {
					time.Sleep(time.Millisecond)
				}
			}
			// A write can fail before the refusal is read: its answer
			// is the error SuspendStreaming reports (ended).
			<-s.replied
			return s.ended()
		})
		if !errors.Is(se, ErrRefused) || !errors.Is(se, driver.ErrInsufficient) || !errors.Is(re, driver.ErrInsufficient) {
			t.Fatalf("send %v, receive %v; want the receiver's insufficient on both sides", se, re)
		}
	})
}

// A job that writes its state aside and renames it into place, or writes
// a temporary file and removes it, takes the room of what is left, at
// both ends: 5 MiB renamed and 5 MiB more fit a room of 7 MiB.
func TestLiveStreamRoomCountsOnlyWhatIsLeft(t *testing.T) {
	staging := t.TempDir()
	put := putter(t, staging)
	put("d/state.tmp", fill(5<<20, 1))
	src := filepath.Join(t.TempDir(), "image")
	dst := filepath.Join(t.TempDir(), "moved")
	space := func(string) (int64, error) { return 8 << 20, nil } // room: 7 MiB
	se, re := liveMove(t, dst, ReceiveOptions{Space: space}, func(c net.Conn) error {
		s, err := startLive(c, liveHello{Format: liveFormat, Task: "x", Estimate: 1 << 20})
		if err != nil {
			return err
		}
		defer s.close()
		if _, err := s.pass(staging); err != nil {
			return err
		}
		// Renamed into place (its directory goes, a file takes its
		// name), then a temporary written and removed.
		if err := os.Rename(filepath.Join(staging, "d/state.tmp"), filepath.Join(staging, "state")); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(staging, "d")); err != nil {
			t.Fatal(err)
		}
		if _, err := s.pass(staging); err != nil {
			return err
		}
		put("scratch", fill(2<<20, 2))
		if _, err := s.pass(staging); err != nil {
			return err
		}
		if err := os.Remove(filepath.Join(staging, "scratch")); err != nil {
			t.Fatal(err)
		}
		put("d", fill(2<<20, 3))
		if _, err := s.pass(staging); err != nil {
			return err
		}
		if err := s.ended(); err != nil {
			return err
		}
		return commitFinish(t, s, staging, src)
	})
	if se != nil || re != nil {
		t.Fatalf("send %v, receive %v", se, re)
	}
	sameTree(t, src, dst)
}

// A real job that rewrites its header after its body, shrinks a file,
// renames one into place, removes one and adds one last is suspended on
// node A while its checkpoint streams to node B; B's copy equals A's byte
// for byte and the job resumes from it.
func TestSuspendStreamingARewritingJob(t *testing.T) {
	a, b := newTestDriver(t, Config{}), newTestDriver(t, Config{})
	ctx := ctxT(t, 2*time.Minute)
	spec := jobSpec("rw", "rewrite", nil)
	if err := a.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "ready", func() bool { return logHas(a, "rw", "ready") })
	src := filepath.Join(t.TempDir(), "image")
	dst := filepath.Join(t.TempDir(), "moved")
	var st StreamStats
	se, re := liveMove(t, dst, ReceiveOptions{}, func(c net.Conn) error {
		_, err := a.SuspendStreaming(ctx, "rw", src, c, &st)
		return err
	})
	if se != nil || re != nil {
		t.Fatalf("send %v, receive %v", se, re)
	}
	t.Logf("stats %+v", st)
	sameTree(t, src, dst)
	if _, err := a.Inspect(ctx, "rw"); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("source still has the task after the suspend: %v", err)
	}
	if st.Early+st.Late < 6<<20 || st.Estimate <= 0 || st.Room <= 0 {
		t.Errorf("stats %+v: want at least the 6 MiB of state sent, an estimate and a room", st)
	}
	spec.Epoch++
	if err := b.Resume(ctx, spec, dst); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "restored 6295552", func() bool { return logHas(b, "rw", "restored 6295552") })
}

// A job that does not answer: the stream is aborted, nothing is committed
// on either side and the job keeps running.
func TestSuspendStreamingTimeoutKeepsRunning(t *testing.T) {
	a := newTestDriver(t, Config{})
	ctx := ctxT(t, time.Minute)
	spec := jobSpec("ig", "ignore", nil)
	spec.Process.CheckpointTimeout = 300 * time.Millisecond
	if err := a.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "counter 2", func() bool { return logHas(a, "ig", "counter 2") })
	src := filepath.Join(t.TempDir(), "image")
	dst := filepath.Join(t.TempDir(), "moved")
	var img driver.Image
	se, re := liveMove(t, dst, ReceiveOptions{}, func(c net.Conn) error {
		var err error
		img, err = a.SuspendStreaming(ctx, "ig", src, c, nil)
		return err
	})
	if !errors.Is(se, driver.ErrTimeout) || re == nil || img.Dir != "" {
		t.Fatalf("send %v (image %+v), receive %v; want a timeout and an abort", se, img, re)
	}
	for _, d := range []string{src, dst} {
		if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s exists after a failed suspend", d)
		}
	}
	if st, err := a.Inspect(ctx, "ig"); err != nil || st.State != "running" {
		t.Errorf("job after the failed streamed suspend: %+v, %v; want running", st, err)
	}
}

// The estimate (the job's resident memory here) is checked before the job
// is asked: refused, nothing changed, the job keeps running.
func TestSuspendStreamingRefusedBeforeTheJobIsAsked(t *testing.T) {
	a := newTestDriver(t, Config{})
	ctx := ctxT(t, time.Minute)
	if err := a.Start(ctx, jobSpec("c", "counter", nil)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "counter 2", func() bool { return logHas(a, "c", "counter 2") })
	src := filepath.Join(t.TempDir(), "image")
	dst := filepath.Join(t.TempDir(), "moved")
	space := func(string) (int64, error) { return 1 << 20, nil }
	se, re := liveMove(t, dst, ReceiveOptions{Space: space}, func(c net.Conn) error {
		_, err := a.SuspendStreaming(ctx, "c", src, c, nil)
		return err
	})
	if !errors.Is(se, driver.ErrInsufficient) || !errors.Is(re, driver.ErrInsufficient) {
		t.Fatalf("send %v, receive %v; want both insufficient", se, re)
	}
	for _, d := range []string{src, dst} {
		if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s exists after a refusal", d)
		}
	}
	if st, err := a.Inspect(ctx, "c"); err != nil || st.State != "running" {
		t.Errorf("job after the refusal: %+v, %v; want running", st, err)
	}
	log, _ := os.ReadFile(a.LogPath("c"))
	if strings.Contains(string(log), "restored") {
		t.Errorf("job was checkpointed and restarted:\n%s", log)
	}
}

func FuzzParseLiveHello(f *testing.F) {
	f.Add([]byte(`{"format":"ferry-image-live/1","task":"x","estimate":5}`))
	f.Add([]byte(`{"format":"ferry-image-live/1","estimate":-1}`))
	f.Add([]byte(`{"format":"other"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseLiveHello(b)
		if err == nil && (h.Format != liveFormat || h.Estimate < 0 || h.Estimate > maxLiveEstimate) {
			t.Fatalf("accepted %+v", h)
		}
	})
}

// The receiver's reply line comes from another node: the sender never
// panics on it nor reads past 4 KiB for it, takes a refusal's kind only
// from its token, and keeps every other line's text.
func FuzzLiveReply(f *testing.F) {
	for _, s := range []string{"OK\n", "OK 123\n", "DONE\n", "ERR insufficient insufficient resources: x\n",
		"ERR - no\n", "ERR insufficient\n", "ERR other kind\n", "ERR \n", "OK", "", strings.Repeat("x", 5000) + "\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r := &countReader{r: bytes.NewReader(b)}
		line, err := liveReply(bufio.NewReader(r))
		if r.n > 4096 {
			t.Fatalf("read %d bytes for one reply", r.n)
		}
		first, _, ended := bytes.Cut(b, []byte("\n"))
		ended = ended && len(first) < 4096
		refusal := bytes.HasPrefix(first, []byte("ERR "))
		insufficient := bytes.HasPrefix(first, []byte("ERR "+liveKindInsufficient+" "))
		switch {
		case !ended:
			if err == nil {
				t.Fatalf("accepted %q without its end of line", line)
			}
		case refusal:
			if !errors.Is(err, ErrRefused) || errors.Is(err, driver.ErrInsufficient) != insufficient {
				t.Fatalf("%q: err %v (insufficient %v)", first, err, insufficient)
			}
		case err != nil || line != string(first):
			t.Fatalf("%q: got %q, %v", first, line, err)
		}
	})
}

type countReader struct {
	r io.Reader
	n int
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// A refusal's kind survives the trip whatever the error's text, and a
// long reason is cut to fit the sender's reply reader.
func TestLiveReasonRoundTrip(t *testing.T) {
	for _, err := range []error{
		fmt.Errorf("%w: need 5, have 1", driver.ErrInsufficient),
		fmt.Errorf("task %q: %w", "x", fmt.Errorf("%w: line\nbreak", driver.ErrInsufficient)),
		errors.New("insufficient resources: free text only"),
		errors.New(strings.Repeat("é", 5000)),
	} {
		var buf bytes.Buffer
		refuser(&buf)(err)
		got := readReply(bufio.NewReader(&buf), "OK")
		if !errors.Is(got, ErrRefused) || errors.Is(got, driver.ErrInsufficient) != errors.Is(err, driver.ErrInsufficient) {
			t.Errorf("%.60q: sender got %v", err.Error(), got)
		}
		if errors.Is(err, driver.ErrInsufficient) && !strings.Contains(got.Error(), "need 5, have 1") && !strings.Contains(got.Error(), "line break") {
			t.Errorf("%.60q: sender lost the text: %v", err.Error(), got)
		}
	}
}

// Garbage frames are refused with a reason, and nothing is committed.
func TestLiveStreamRejectsGarbage(t *testing.T) {
	for name, frames := range map[string][]byte{
		"unknown frame":     []byte("Z"),
		"end before M":      []byte("E"),
		"escaping path":     append([]byte("D\x00\x05../ab"), make([]byte, 12)...),
		"manifest path":     append([]byte("D\x00\x15"+ManifestName), make([]byte, 12)...),
		"huge data":         append([]byte("D\x00\x01a"), 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 0, 0, 0),
		"bad manifest":      []byte("M\x00\x00\x00\x02{}E"),
		"empty data":        append([]byte("D\x00\x01a"), make([]byte, 12)...),
		"cut in data bytes": append([]byte("D\x00\x01a"), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 1, 2),
	} {
		t.Run(name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "moved")
			se, re := liveMove(t, dst, ReceiveOptions{}, func(c net.Conn) error {
				s, err := startLive(c, liveHello{Format: liveFormat, Task: "x"})
				if err != nil {
					return err
				}
				defer s.close()
				if _, err := c.Write(frames); err != nil {
					return err
				}
				c.(*net.TCPConn).CloseWrite()
				<-s.replied
				return s.replyErr
			})
			if se == nil || re == nil {
				t.Fatalf("send %v, receive %v: want both to fail", se, re)
			}
			if ents, _ := os.ReadDir(filepath.Dir(dst)); len(ents) != 0 {
				t.Errorf("left: %v", ents)
			}
		})
	}
}

// The receiver's frames come from another node: whatever they say, it
// never panics, never writes past its room or outside its directory, and
// when it accepts a stream every file of the manifest has its size.
func FuzzLiveFrames(f *testing.F) {
	f.Add([]byte("E"))
	f.Add(append([]byte("D\x00\x01a"), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 'x', 'y', 'z'))
	m := `{"format":"ferry-checkpoint/1","task_id":"x","mode":"stop","bytes":3,"files":[{"path":"a","size":3}]}`
	f.Add(append(append([]byte("D\x00\x03b/c\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02hiM\x00\x00\x00"), byte(len(m))), append([]byte(m), 'E')...))
	f.Add(append(append([]byte("M\x00\x00\x00"), byte(len(m))), append([]byte(m), "D\x00\x01a\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x02zzE"...)...))
	f.Add(append(append([]byte("M\x00\x00\x00"), byte(len(m))), append([]byte(m), "P\x00\x01a\x00\x00\x01\xedE"...)...))
	f.Add([]byte("A\x00\x00\x00\x0einsufficient x"))
	f.Add(append(append([]byte("D\x00\x03b/c\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02hiR\x00\x03b/cM\x00\x00\x00"), byte(len(m))), append([]byte(m), 'E')...))
	f.Add([]byte("R\x00\x01a"))
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		root, err := os.OpenRoot(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer root.Close()
		const room = 1 << 16
		rx := &liveReceiver{root: root, room: room, files: map[string]*rxLiveFile{}}
		m, err := rx.run(bufio.NewReader(bytes.NewReader(b)))
		if err == nil {
			for _, mf := range m.Files {
				fi, err := root.Stat(mf.Path)
				if err != nil || fi.Size() != mf.Size {
					t.Fatalf("accepted, but %s: %v (want %d bytes)", mf.Path, err, mf.Size)
				}
			}
		}
		var total int64
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				if fi, err := d.Info(); err == nil {
					total += fi.Size()
				}
			}
			return nil
		})
		if total > room {
			t.Fatalf("%d bytes written, room %d", total, room)
		}
	})
}

// Before the manifest a peer names the files: 1-byte files under 4 KiB
// names cost the receiver an entry and an inode each that its room, in
// bytes, does not count. It stops once they could not all be listed in a
// manifest it accepts (maxHeader).
func TestLiveStreamBoundsFilesBeforeTheManifest(t *testing.T) {
	dir := t.TempDir()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	// A 4000-byte directory chain (components under NAME_MAX), one file
	// per frame in it.
	chain := strings.Repeat(strings.Repeat("d", 199)+"/", 20)
	var b bytes.Buffer
	limit := maxHeader / (len(chain) + 8 + liveEntryCost)
	for i := range limit + 10 {
		rel := fmt.Sprintf("%sf%07d", chain, i)
		b.WriteByte('D')
		b.Write(binary.BigEndian.AppendUint16(nil, uint16(len(rel))))
		b.WriteString(rel)
		b.Write(binary.BigEndian.AppendUint64(nil, 0))
		b.Write(binary.BigEndian.AppendUint32(nil, 1))
		b.WriteByte('x')
	}
	b.WriteByte('E')
	rx := &liveReceiver{root: root, room: 1 << 40, files: map[string]*rxLiveFile{}}
	_, err = rx.run(bufio.NewReader(&b))
	if err == nil || !strings.Contains(err.Error(), "before the manifest") || !strings.Contains(err.Error(), "could not all be listed") {
		t.Fatalf("run: %v, want the names bound", err)
	}
	ents, err := root.FS().(fs.ReadDirFS).ReadDir(filepath.ToSlash(filepath.Clean(chain)))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) > limit || len(rx.files) > limit {
		t.Fatalf("%d files created, %d entries kept, want at most %d", len(ents), len(rx.files), limit)
	}
}

// The copy keeps its files' permission bits (an executable stays one, a
// private file private), as the chunk transfer does, whatever the
// receiver's umask.
func TestLiveStreamKeepsModes(t *testing.T) {
	staging := t.TempDir()
	modes := map[string]fs.FileMode{"exe": 0o755, "private": 0o600, "ro": 0o444, "plain": 0o644, "d/big": 0o700}
	for name, mode := range modes {
		p := filepath.Join(staging, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, fill(1<<20+int(mode), byte(mode)), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	src := filepath.Join(t.TempDir(), "image")
	dst := filepath.Join(t.TempDir(), "moved")
	se, re := liveMove(t, dst, ReceiveOptions{}, func(c net.Conn) error {
		s, err := startLive(c, liveHello{Format: liveFormat, Task: "x", Estimate: 1 << 20})
		if err != nil {
			return err
		}
		defer s.close()
		if n, err := s.pass(staging); err != nil || n != 5<<20 {
			t.Errorf("pass sent %d bytes (%v), want 5 blocks", n, err)
		}
		if _, err := sealStaging(staging, Manifest{TaskID: "x", Epoch: 1, Mode: ModeStop}); err != nil {
			t.Fatal(err)
		}
		if err := commitDir(staging, src); err != nil {
			t.Fatal(err)
		}
		return s.finish(src)
	})
	if se != nil || re != nil {
		t.Fatalf("send %v, receive %v", se, re)
	}
	sameTree(t, src, dst)
	for name, mode := range modes {
		fi, err := os.Stat(filepath.Join(dst, name))
		if err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v (%v), want %v", name, fi.Mode(), err, mode)
		}
	}
}

// A 'P' frame names a listed file and carries permission bits only.
func TestLiveStreamRejectsBadModes(t *testing.T) {
	m := `{"format":"ferry-checkpoint/1","task_id":"x","mode":"stop","bytes":0,"files":[{"path":"a","size":0}]}`
	man := append(binary.BigEndian.AppendUint32([]byte("M"), uint32(len(m))), m...)
	for name, frames := range map[string][]byte{
		"before the manifest": append([]byte("P\x00\x01a"), 0, 0, 1, 0xed),
		"unlisted file":       append(append(man, "P\x00\x01b"...), 0, 0, 1, 0xed),
		"setuid":              append(append(man, "P\x00\x01a"...), 0, 0, 0x09, 0xed),
		"cut":                 append(append(man, "P\x00\x01a"...), 0, 0),
	} {
		t.Run(name, func(t *testing.T) {
			root, err := os.OpenRoot(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			defer root.Close()
			rx := &liveReceiver{root: root, room: 1 << 20, files: map[string]*rxLiveFile{}}
			if _, err := rx.run(bufio.NewReader(bytes.NewReader(append(frames, 'E')))); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

// A refusal or abort names its kind in a token: "insufficient" maps to
// driver.ErrInsufficient, free text that merely says so does not.
func TestLiveErrorKinds(t *testing.T) {
	full := fmt.Errorf("%w: the checkpoint grew past the 7 bytes there is room for here", driver.ErrInsufficient)
	for _, c := range []struct {
		err  error
		kind bool
		text string
	}{
		{full, true, "insufficient resources: the checkpoint grew past the 7 bytes there is room for here"},
		{fmt.Errorf("the checkpoint failed at the source: %w", full), true, "insufficient resources: the checkpoint failed at the source: insufficient resources: the checkpoint grew"},
		{errors.New("insufficient resources: made up by the job's own message"), false, "insufficient resources: made up"},
		{errors.New("a\nb"), false, "a b"},
	} {
		got := liveErr(liveReason(c.err))
		if errors.Is(got, driver.ErrInsufficient) != c.kind || !strings.HasPrefix(got.Error(), c.text) {
			t.Errorf("%q: got %q (insufficient %v), want %q (insufficient %v)", c.err, got, errors.Is(got, driver.ErrInsufficient), c.text, c.kind)
		}
	}
	// From an older or unknown peer: the whole line is the reason.
	if got := liveErr("insufficient"); errors.Is(got, driver.ErrInsufficient) || got.Error() != "insufficient" {
		t.Errorf("no token: %v", got)
	}
}

// A receiver whose disk is full (a write or fsync failing with ENOSPC or
// EDQUOT) refuses with the insufficient kind, as it does when its room
// check fails: the sender sees driver.ErrInsufficient, not a generic
// failure. The errors as the receiver's writes return them are checked
// everywhere; as root the stream also runs into a 1 MiB tmpfs whose
// statfs answer is replaced by 1 GiB, so only the writes can find it full.
func TestLiveReceiverOutOfSpaceIsInsufficient(t *testing.T) {
	for _, err := range []error{
		fmt.Errorf("live stream: %w", &fs.PathError{Op: "write", Path: "/x/state", Err: syscall.ENOSPC}),
		fmt.Errorf("fsync state: %w", &fs.PathError{Op: "sync", Path: "/x/state", Err: syscall.EDQUOT}),
		fmt.Errorf("receive state: %w", &os.SyscallError{Syscall: "splice", Err: syscall.ENOSPC}),
	} {
		var buf bytes.Buffer
		refuser(&buf)(err)
		got := readReply(bufio.NewReader(&buf), "OK")
		if !errors.Is(got, ErrRefused) || !errors.Is(got, driver.ErrInsufficient) || !strings.Contains(got.Error(), err.Error()) {
			t.Errorf("%q: sender got %v, want ErrRefused, ErrInsufficient and the receiver's text", err, got)
		}
	}
	if got := liveErr(liveReason(&fs.PathError{Op: "write", Path: "/x", Err: syscall.EIO})); errors.Is(got, driver.ErrInsufficient) {
		t.Errorf("EIO: %v, want no insufficient kind", got)
	}

	if os.Geteuid() != 0 {
		t.Log("not root: no tmpfs mounted, the stream into a full filesystem is not run")
		return
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("root, but mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
	plenty := func(string) (int64, error) { return 1 << 30, nil }
	block := bytes.Repeat([]byte{7}, 64<<10)
	se, re := liveMove(t, filepath.Join(mnt, "moved"), ReceiveOptions{Space: plenty}, func(c net.Conn) error {
		s, err := startLive(c, liveHello{Format: liveFormat, Task: "x", Estimate: 1 << 20})
		if err != nil {
			return err
		}
		defer s.close()
		// 4 MiB into 1 MiB: the receiver fails a write and refuses; a
		// write here may fail once it has closed.
		for off := int64(0); off < 4<<20; off += int64(len(block)) {
			if s.data("state", off, block) != nil || s.w.Flush() != nil {
				break
			}
		}
		<-s.replied
		return s.replyErr
	})
	if !errors.Is(re, syscall.ENOSPC) {
		t.Fatalf("receiver: %v, want ENOSPC", re)
	}
	if !errors.Is(se, ErrRefused) || !errors.Is(se, driver.ErrInsufficient) || !strings.Contains(se.Error(), "no space left on device") {
		t.Errorf("sender: %v, want ErrRefused and ErrInsufficient naming ENOSPC", se)
	}
	if ents, _ := os.ReadDir(mnt); len(ents) != 0 {
		t.Errorf("refused stream left files on the tmpfs: %v", ents)
	}
}
