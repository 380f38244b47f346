package process

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/driver"
)

// The examples in examples/ are moved between two nodes (two drivers over
// two data dirs) several times mid-run, each move a real suspend, a real
// transfer over loopback TCP (SendImage/ReceiveImage) and a resume; the
// final result must equal that of a run never moved.

type example struct {
	name    string
	command []string
	// progress matches the lines that show the job advanced.
	progress *regexp.Regexp
}

func buildGoExample(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "checkpoint-go")
	cmd := exec.Command("go", "build", "-o", bin, "../../examples/checkpoint-go")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build example: %v\n%s", err, out)
	}
	return bin
}

func TestExamplesMoveBetweenNodes(t *testing.T) {
	goBin := buildGoExample(t)
	sh, _ := filepath.Abs("../../examples/checkpoint-sh/checkpoint.sh")
	py, _ := filepath.Abs("../../examples/checkpoint-py/checkpoint.py")
	examples := []example{
		{"go", []string{goBin, "-steps", "3000", "-delay", "1ms"}, regexp.MustCompile(`(?m)^step \d+$`)},
		{"sh", []string{"/bin/sh", sh, "200", "0.01"}, regexp.MustCompile(`(?m)^step \d+$`)},
	}
	if python, err := exec.LookPath("python3"); err == nil {
		examples = append(examples, example{"py", []string{python, py, "800", "0.002"}, regexp.MustCompile(`(?m)^step \d+$`)})
	} else {
		t.Logf("python3 not installed: the Python example is not run")
	}
	for _, ex := range examples {
		t.Run(ex.name, func(t *testing.T) {
			t.Parallel()
			want := runUnmoved(t, ex)
			got := runMoved(t, ex, 4)
			if got != want {
				t.Fatalf("moved run result %s, unmoved %s", got, want)
			}
			t.Logf("result %s after 4 moves = unmoved result", got)
		})
	}
}

var resultLine = regexp.MustCompile(`(?m)^result (\d+)$`)

func waitResult(t *testing.T, d *Driver, id string) string {
	t.Helper()
	var res string
	waitFor(t, id+" result", func() bool {
		b, _ := os.ReadFile(d.LogPath(id))
		if m := resultLine.FindSubmatch(b); m != nil {
			res = string(m[1])
			return true
		}
		if st, err := d.Inspect(context.Background(), id); err == nil && st.State == driver.StateFailed {
			t.Fatalf("%s failed: %s", id, st.Message)
		}
		return false
	})
	var st driver.Status
	waitFor(t, id+" exit", func() bool {
		st, _ = d.Inspect(context.Background(), id)
		return st.State == driver.StateExited || st.State == driver.StateFailed
	})
	if st.State != driver.StateExited {
		t.Fatalf("%s: %+v", id, st)
	}
	return res
}

func runUnmoved(t *testing.T, ex example) string {
	d := newTestDriver(t, Config{})
	spec := driver.Spec{ID: "still-" + ex.name, Epoch: 1, Process: &driver.ProcessSpec{Command: ex.command}}
	if err := d.Start(ctxT(t, time.Minute), spec); err != nil {
		t.Fatal(err)
	}
	return waitResult(t, d, spec.ID)
}

func runMoved(t *testing.T, ex example, moves int) string {
	nodes := []*Driver{newTestDriver(t, Config{}), newTestDriver(t, Config{})}
	spec := driver.Spec{ID: "moved-" + ex.name, Epoch: 1, Process: &driver.ProcessSpec{Command: ex.command}}
	ctx := ctxT(t, 3*time.Minute)
	if err := nodes[0].Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	var lastStep int64 = -1
	for i := 0; i < moves; i++ {
		src, dst := nodes[i%2], nodes[(i+1)%2]
		// Let it make progress on this node first.
		off := logLen(src, spec.ID)
		waitFor(t, "progress before move", func() bool {
			b, _ := os.ReadFile(src.LogPath(spec.ID))
			return int64(len(b)) > off && ex.progress.Match(b[off:])
		})
		img, err := src.Suspend(ctx, spec.ID, filepath.Join(t.TempDir(), "image"))
		if err != nil {
			t.Fatalf("move %d: suspend: %v", i, err)
		}
		step := imageStep(t, img.Dir)
		if step <= lastStep {
			t.Fatalf("move %d: checkpoint at step %d, not after %d", i, step, lastStep)
		}
		lastStep = step
		inbox := filepath.Join(t.TempDir(), "inbox")
		if err := moveOverTCP(ctx, img.Dir, inbox); err != nil {
			t.Fatalf("move %d: transfer: %v", i, err)
		}
		spec.Epoch++
		if err := dst.Resume(ctx, spec, inbox); err != nil {
			t.Fatalf("move %d: resume: %v", i, err)
		}
	}
	return waitResult(t, nodes[moves%2], spec.ID)
}

func logLen(d *Driver, id string) int64 {
	fi, err := os.Stat(d.LogPath(id))
	if err != nil {
		return 0
	}
	return fi.Size()
}

// imageStep reads the step an example checkpointed at (state.json for Go,
// "step x sum" for sh and Python).
func imageStep(t *testing.T, dir string) int64 {
	t.Helper()
	if b, err := os.ReadFile(filepath.Join(dir, "state.json")); err == nil {
		m := regexp.MustCompile(`"step":(\d+)`).FindSubmatch(b)
		if m == nil {
			t.Fatalf("state.json %s", b)
		}
		n, _ := strconv.ParseInt(string(m[1]), 10, 64)
		return n
	}
	b, err := os.ReadFile(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseInt(strings.Fields(string(b))[0], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// moveOverTCP sends a committed image to dst over a loopback connection.
func moveOverTCP(ctx context.Context, src, dst string) error {
	serr, rerr := loopback(func(c net.Conn) error {
		_, err := ReceiveImage(ctx, c, dst, ReceiveOptions{})
		return err
	}, func(c net.Conn) error { return SendImage(ctx, c, src) })
	if rerr != nil {
		return rerr
	}
	return serr
}

// The Go example also survives periodic checkpoint-and-continue: a node
// "dies" (its task is killed), and the job resumes elsewhere from the last
// periodic checkpoint with the same final result.
func TestExampleResumesFromPeriodicCheckpointAfterNodeLoss(t *testing.T) {
	goBin := buildGoExample(t)
	cmd := []string{goBin, "-steps", "3000", "-delay", "1ms"}
	want := runUnmoved(t, example{name: "go-periodic", command: cmd})
	copies := make(chan driver.Image, 16)
	safe := t.TempDir()
	a := newTestDriver(t, Config{OnCheckpoint: func(ctx context.Context, id string, img driver.Image) {
		dst := filepath.Join(safe, filepath.Base(img.Dir))
		if err := copyTree(img.Dir, dst, true); err == nil {
			copies <- driver.Image{Dir: dst, Bytes: img.Bytes}
		}
	}})
	b := newTestDriver(t, Config{})
	spec := driver.Spec{ID: "seg", Epoch: 1, Process: &driver.ProcessSpec{Command: cmd, CheckpointInterval: 300 * time.Millisecond, CheckpointTimeout: 2 * time.Second}}
	ctx := ctxT(t, 3*time.Minute)
	if err := a.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	var last driver.Image
	for i := 0; i < 2; i++ {
		select {
		case last = <-copies:
		case <-ctx.Done():
			t.Fatal("no periodic checkpoint")
		}
	}
	// Node loss: the job dies without a checkpoint.
	if err := a.Stop(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	step := imageStep(t, last.Dir)
	if step <= 0 || step >= 3000 {
		t.Fatalf("periodic checkpoint at step %d", step)
	}
	spec.Epoch++
	if err := b.Resume(ctx, spec, last.Dir); err != nil {
		t.Fatal(err)
	}
	if got := waitResult(t, b, spec.ID); got != want {
		t.Fatalf("result after node loss %s, want %s", got, want)
	}
}
