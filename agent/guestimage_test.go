package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/cas/transfer"
	"github.com/ferrycluster/ferry/driver"
)

// Bad guest image references are refused with a clear error, an
// unreachable controller is reported, and nothing lands in guest-images;
// a plain kernel path is left alone.
func TestResolveGuestImageRefusals(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n := startNode(t, newTestCA(t), "node-g", processDrivers(t), nil)
	id := strings.Repeat("c", 64)
	for _, c := range []struct {
		kernel string
		kind   error
	}{
		{"ferry-image://nohost/" + id, driver.ErrInvalidSpec},
		{"ferry-image://127.0.0.1:1/not-an-id", driver.ErrInvalidSpec},
		{transfer.GuestImageRef("127.0.0.1:1", id), driver.ErrNotFound}, // nothing listens there
	} {
		spec := driver.Spec{ID: "vm", VM: &driver.VMSpec{Kernel: c.kernel}}
		if err := n.agent.resolveGuestImage(ctx, &spec); !errors.Is(err, c.kind) {
			t.Errorf("%s: got %v, want %v", c.kernel, err, c.kind)
		}
		if spec.VM.Kernel != c.kernel {
			t.Errorf("%s: spec rewritten to %q after a failure", c.kernel, spec.VM.Kernel)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(n.dataDir, "guest-images")); len(ents) != 0 {
		t.Fatalf("guest-images holds %d entries after refusals", len(ents))
	}
	spec := driver.Spec{ID: "vm", VM: &driver.VMSpec{Kernel: "/boot/vmlinuz"}}
	if err := n.agent.resolveGuestImage(ctx, &spec); err != nil || spec.VM.Kernel != "/boot/vmlinuz" {
		t.Fatalf("plain path: %v, %q", err, spec.VM.Kernel)
	}
}

// A resolved spec's kernel path names its image and controller wherever
// it is read; other paths do not.
func TestGuestImageOfPath(t *testing.T) {
	id := strings.Repeat("d", 64)
	n := &Agent{cfg: Config{DataDir: "/data/a"}}
	addr, got, ok := guestImageOfPath(filepath.Join(n.guestImageLink("10.1.2.3:7000", id), "vmlinuz"))
	if !ok || addr != "10.1.2.3:7000" || got != id {
		t.Fatalf("link path: %q %q %v", addr, got, ok)
	}
	for _, p := range []string{
		"/boot/vmlinuz",
		"/data/a/guest-images/" + id + "/vmlinuz",                     // no address
		"/data/a/guest-images/" + id + "@zz/vmlinuz",                  // not hex
		"/data/a/guest-images/" + id + "@3132/vmlinuz",                // "12": no port
		"/data/a/guest-images/" + id[:10] + "@3a31/vmlinuz",           // not an id
		"/data/a/other/" + id + "@31302e302e302e313a31/vmlinuz",       // not guest-images
		"/data/a/guest-images/" + id + "@31302e302e302e313a31/initrd", // not the kernel
	} {
		if _, _, ok := guestImageOfPath(p); ok {
			t.Errorf("%s recognized", p)
		}
	}
}

func FuzzGuestImageOfPath(f *testing.F) {
	n := &Agent{cfg: Config{DataDir: "/d"}}
	f.Add(filepath.Join(n.guestImageLink("127.0.0.1:7000", strings.Repeat("a", 64)), "vmlinuz"))
	f.Add("/boot/vmlinuz")
	f.Fuzz(func(t *testing.T, p string) {
		addr, id, ok := guestImageOfPath(p)
		if !ok {
			return
		}
		if again, id2, ok := guestImageOfPath(filepath.Join(n.guestImageLink(addr, id), "vmlinuz")); !ok || again != addr || id2 != id {
			t.Fatalf("%q → %q %q does not round-trip", p, addr, id)
		}
	})
}
