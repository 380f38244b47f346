package controller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/cas/transfer"
	"github.com/ferrycluster/ferry/image"
	"github.com/ferrycluster/ferry/image/imagetest"
	"github.com/ferrycluster/ferry/pki"
	"github.com/ferrycluster/ferry/store"
)

// Images built on the server (ferry image build into its data dir) reach
// an agent that lacks them by content id: the job names the image id, the
// agent fetches it from the server over mutual TLS and boots it. A second
// image of the same family then crosses as the few chunks that differ.
func TestE2EAgentFetchesGuestImageFromServer(t *testing.T) {
	guest := imagetest.Counter(t)
	c := newTestCluster(t, 0, 4)
	c.guest = &guest
	c.startAgent("n1", "127.0.0.1:0", 4)
	if _, err := c.cli.AddNode(ctx(t), c.agents["n1"].addr, nil); err != nil {
		t.Fatal(err)
	}
	imgs := &image.Store{Dir: filepath.Join(c.dataDir, "images"), DefaultKernel: guest.Kernel}
	first, err := imgs.Build(context.Background(), image.Spec{Name: "served", Init: "counter"}, "")
	if err != nil {
		t.Fatal(err)
	}
	note := filepath.Join(t.TempDir(), "motd")
	if err := os.WriteFile(note, []byte("second image of the family\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	second, err := imgs.Build(context.Background(), image.Spec{Name: "served-2", Init: "counter",
		Files: []image.File{{Src: note, Dst: "/etc/motd", Mode: 0o644}}}, "")
	if err != nil {
		t.Fatal(err)
	}

	for i, img := range []image.Image{first, second} {
		job := fmt.Sprintf("served%d", i)
		spec := fmt.Sprintf("name: %s\ntasks:\n  - name: g\n    driver: qemu\n    image: %s\n    workload: counter\n    cpus: 1\n    memory: 128MiB\n"+
			"migration:\n  live: true\n  max_downtime: 300ms\n", job, img.ID)
		if _, err := c.cli.Submit(ctx(t), []byte(spec)); err != nil {
			t.Fatal(err)
		}
		task := job + ".g.0"
		c.waitFor(task+" counting", 3*time.Minute, func() bool {
			return c.phase(task) == store.TaskRunning && len(c.vmCounters(task)) >= 2
		})
		local := filepath.Join(c.agents["n1"].dir, "guest-images", img.ID)
		if got, err := os.ReadFile(filepath.Join(local, "initrd.gz")); err != nil || len(got) == 0 {
			t.Fatalf("image %s not on the agent: %v", img.ID[:12], err)
		}
	}
	sent := c.srv.Images.Sent()
	if len(sent) != 2 || sent[0].Err != nil || sent[1].Err != nil || sent[0].Node != "n1" {
		t.Fatalf("image fetches served: %+v", sent)
	}
	t.Logf("first image: %d of %d bytes sent; second: %d of %d", sent[0].BytesSent, sent[0].Index.Size, sent[1].BytesSent, sent[1].Index.Size)
	if sent[0].BytesSent < sent[0].Index.Size/2 || sent[1].BytesSent*10 > sent[1].Index.Size {
		t.Fatalf("first image sent %d of %d bytes, second %d of %d: want all of the first, under a tenth of the second",
			sent[0].BytesSent, sent[0].Index.Size, sent[1].BytesSent, sent[1].Index.Size)
	}
	// The first guest moves (live) to a node that has never seen its
	// image: n2 fetches it from the server before the guest arrives, and
	// the counter carries on.
	c.startAgent("n2", "127.0.0.1:0", 4)
	if _, err := c.cli.AddNode(ctx(t), c.agents["n2"].addr, nil); err != nil {
		t.Fatal(err)
	}
	before := c.vmCounters("served0.g.0")
	if _, err := c.cli.Migrate(ctx(t), "served0.g.0", "n2"); err != nil {
		t.Fatal(err)
	}
	c.waitFor("served0.g.0 running on n2", 3*time.Minute, func() bool {
		tk := c.task("served0.g.0")
		return tk.Phase == store.TaskRunning && tk.Node == "n2"
	})
	last := before[len(before)-1]
	c.waitFor("the counter carrying on at n2", 2*time.Minute, func() bool {
		cs := c.vmCounters("served0.g.0")
		return len(cs) > 0 && cs[len(cs)-1] > last+1
	})
	if _, err := os.Stat(filepath.Join(c.agents["n2"].dir, "guest-images", first.ID, "initrd.gz")); err != nil {
		t.Fatalf("n2 has no copy of the image: %v", err)
	}
	if sent = c.srv.Images.Sent(); len(sent) != 3 || sent[2].Node != "n2" || sent[2].Err != nil {
		t.Fatalf("image fetches served: %+v", sent)
	}
}

// The image endpoint serves agents and servers only, names what is wrong,
// and sends nothing for a bad or unknown id.
func TestImageEndpointRefusals(t *testing.T) {
	c := newTestCluster(t, 0, 4)
	issue(t, c.tlsDir, "n9", pki.RoleAgent)
	agentID, err := pki.Load(c.tlsDir, "n9")
	if err != nil {
		t.Fatal(err)
	}
	cliID, err := pki.Load(c.tlsDir, "cli")
	if err != nil {
		t.Fatal(err)
	}
	unknown := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, tc := range []struct {
		name string
		id   *pki.Identity
		path string
		want string
	}{
		{"operator certificate", cliID, transfer.GuestImagePath(unknown), "403"},
		{"unknown image", agentID, transfer.GuestImagePath(unknown), "404"},
		{"not an id", agentID, transfer.GuestImagePath("..%2f..%2fetc"), "400"},
		{"upper-case id", agentID, transfer.GuestImagePath("ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789"), "400"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, _, err := transfer.DialUpgrade(ctx(t), tc.id.ClientConfig(), c.srv.Addr(), tc.path, transfer.GuestImageProtocol)
			if err == nil {
				conn.Close()
				t.Fatal("upgrade accepted")
			}
			if !errors.Is(err, transfer.ErrRemote) || !strings.Contains(err.Error(), "HTTP "+tc.want) {
				t.Fatalf("got %v, want HTTP %s", err, tc.want)
			}
		})
	}
	if len(c.srv.Images.Sent()) != 0 {
		t.Fatal("something was sent")
	}
}

// Closing the server ends an image send in progress: the send (here to a
// fetcher that upgrades and then never answers) runs on a hijacked
// connection, which http.Server.Close leaves open, so the image server
// cancels it and closes the connection itself; Close returns after the
// send ended, with its error recorded, and the fetcher sees its connection
// closed.
func TestServerCloseEndsImageSends(t *testing.T) {
	guest := imagetest.Counter(t)
	c := newTestCluster(t, 0, 4)
	imgs := &image.Store{Dir: filepath.Join(c.dataDir, "images"), DefaultKernel: guest.Kernel}
	img, err := imgs.Build(context.Background(), image.Spec{Name: "served", Init: "counter"}, "")
	if err != nil {
		t.Fatal(err)
	}
	issue(t, c.tlsDir, "n9", pki.RoleAgent)
	agentID, err := pki.Load(c.tlsDir, "n9")
	if err != nil {
		t.Fatal(err)
	}
	conn, _, err := transfer.DialUpgrade(ctx(t), agentID.ClientConfig(), c.srv.Addr(), transfer.GuestImagePath(img.ID), transfer.GuestImageProtocol)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	is := c.srv.Images
	c.waitFor("the send under way", 30*time.Second, func() bool {
		is.mu.Lock()
		defer is.mu.Unlock()
		return len(is.conns) == 1
	})
	srv := c.srv
	c.srv = nil
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	sent := is.Sent()
	if len(sent) != 1 || sent[0].Err == nil {
		t.Fatalf("after Close, the sends recorded are %+v; want the one in progress, ended with an error", sent)
	}
	// The fetcher's connection is closed (whatever the send wrote before
	// is drained first); the deadline only bounds a failure.
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.Copy(io.Discard, conn); err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the fetcher's connection is still open after Close: %v", err)
	}
	// A fetch after Close finds no server.
	if c2, _, err := transfer.DialUpgrade(ctx(t), agentID.ClientConfig(), srv.Addr(), transfer.GuestImagePath(img.ID), transfer.GuestImageProtocol); err == nil {
		c2.Close()
		t.Fatal("an image fetch was accepted after Close")
	}
}
