package process_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/agent"
	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/agent/client"
	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/driver/process"
	"github.com/ferrycluster/ferry/pki"
)

// The Go example moved mid-run 4 times between two real agents (mutual TLS
// on 127.0.0.1, checkpoint migrations: suspend, image fetched by the peer,
// resume, owner epoch bumped) prints the same result as a run never moved.
func TestExampleMovesThroughTwoAgents(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "checkpoint-go")
	build := exec.Command("go", "build", "-o", bin, "../../examples/checkpoint-go")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build example: %v\n%s", err, out)
	}
	caDir := t.TempDir()
	if err := pki.Init(caDir, time.Now()); err != nil {
		t.Fatal(err)
	}
	identity := func(name string, role pki.Role) *pki.Identity {
		req := pki.IssueRequest{Name: name, Role: role, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}
		if err := pki.Issue(caDir, req, time.Now()); err != nil {
			t.Fatal(err)
		}
		id, err := pki.Load(caDir, name)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	ctl := identity("controller", pki.RoleServer)
	type node struct {
		drv  *process.Driver
		addr string
		c    *client.Client
	}
	start := func(name string) node {
		dir := t.TempDir()
		d, err := process.New(process.Config{DataDir: filepath.Join(dir, "process"), NoCgroups: true,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		a, err := agent.New(agent.Config{Name: name, DataDir: dir, Listen: "127.0.0.1:0", CPUs: 8, MemoryBytes: 4 << 30,
			Identity: identity(name, pki.RoleAgent), Drivers: []driver.Driver{d},
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Start(); err != nil {
			t.Fatal(err)
		}
		c := client.New(a.Addr(), ctl.ClientConfig())
		t.Cleanup(func() {
			a.Close()
			c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			list, _ := d.List(ctx)
			for _, st := range list {
				_ = d.Stop(ctx, st.ID)
			}
			d.Close()
		})
		return node{d, a.Addr(), c}
	}
	nodes := []node{start("node-a"), start("node-b")}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	spec := func(id string) driver.Spec {
		return driver.Spec{ID: id, Epoch: 1, CPUs: 0.5, MemoryBytes: 64 << 20,
			Process: &driver.ProcessSpec{Command: []string{bin, "-steps", "3000", "-delay", "1ms"}}}
	}
	result := regexp.MustCompile(`(?m)^result (\d+)$`)
	waitLog := func(d *process.Driver, id string, re *regexp.Regexp, from int) []byte {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for {
			b, _ := os.ReadFile(d.LogPath(id))
			if len(b) > from {
				if m := re.FindSubmatch(b[from:]); m != nil {
					return m[len(m)-1]
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %v in %s: %s", re, d.LogPath(id), b)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	if _, err := nodes[0].c.Run(ctx, api.RunRequest{Spec: spec("still")}); err != nil {
		t.Fatal(err)
	}
	want := string(waitLog(nodes[0].drv, "still", result, 0))

	if _, err := nodes[0].c.Run(ctx, api.RunRequest{Spec: spec("moved")}); err != nil {
		t.Fatal(err)
	}
	epoch := uint64(1)
	progress := regexp.MustCompile(`(?m)^(step \d+)$`)
	for i := 0; i < 4; i++ {
		src, dst := nodes[i%2], nodes[(i+1)%2]
		off := 0
		if fi, err := os.Stat(src.drv.LogPath("moved")); err == nil && i >= 2 {
			off = int(fi.Size())
		}
		waitLog(src.drv, "moved", progress, off) // it runs here before moving on
		ev, err := src.c.Migrate(ctx, "moved", api.MigrateRequest{Epoch: epoch, To: dst.addr, Mode: "checkpoint"}, nil)
		if err != nil {
			t.Fatalf("move %d: %v", i, err)
		}
		if ev.Epoch != epoch+1 {
			t.Fatalf("move %d: epoch %d, want %d", i, ev.Epoch, epoch+1)
		}
		epoch = ev.Epoch
	}
	final := nodes[0] // 4 moves: back on node-a
	got := string(waitLog(final.drv, "moved", result, 0))
	if got != want {
		t.Fatalf("moved through agents: result %s, unmoved %s", got, want)
	}
	b, _ := os.ReadFile(final.drv.LogPath("moved"))
	if n := len(regexp.MustCompile(`(?m)^restored at step`).FindAll(b, -1)); n < 2 {
		t.Errorf("node-a's log shows %d restores, want 2 (moves 2 and 4)", n)
	}
}
