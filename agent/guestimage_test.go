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
