package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ferrycluster/ferry/cas"
	"github.com/ferrycluster/ferry/cas/transfer"
	"github.com/ferrycluster/ferry/driver"
)

// Guest images served by the controller (controller.ImageServer): a VM spec
// whose kernel is a transfer.GuestImageRef names a built image by content
// id. Before the guest boots, the agent makes sure the image is in
// DataDir/guest-images/ID — fetching it from the controller over mutual TLS
// when missing, through the node's chunk store, so only the chunks the node
// lacks cross (an image of the same family shares most of them) — and
// points the spec at the local kernel and initramfs.

// guestImageFetches serializes fetches of one image on one node.
var guestImageFetches sync.Map // data dir + id → *sync.Mutex

func (a *Agent) guestImageDir(id string) string {
	return filepath.Join(a.cfg.DataDir, "guest-images", id)
}

// guestImageMeta is what the agent reads of the image's image.json.
type guestImageMeta struct {
	ID      string `json:"id"`
	Cmdline string `json:"cmdline"`
}

// resolveGuestImage rewrites spec.VM to use local files when its kernel
// names a controller-served image, fetching the image first if needed. A
// spec without such a reference is left alone.
func (a *Agent) resolveGuestImage(ctx context.Context, spec *driver.Spec) error {
	if spec.VM == nil {
		return nil
	}
	addr, id, ok, err := transfer.ParseGuestImageRef(spec.VM.Kernel)
	if !ok {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: task %q: %v", driver.ErrInvalidSpec, spec.ID, err)
	}
	dir := a.guestImageDir(id)
	v, _ := guestImageFetches.LoadOrStore(dir, &sync.Mutex{})
	mu := v.(*sync.Mutex)
	mu.Lock()
	defer mu.Unlock()
	meta, err := readGuestImageMeta(dir, id)
	if err != nil {
		if err := a.fetchGuestImage(ctx, addr, id, dir); err != nil {
			return err
		}
		if meta, err = readGuestImageMeta(dir, id); err != nil {
			os.RemoveAll(dir)
			return fmt.Errorf("%w: guest image %s from %s: %v", driver.ErrInvalidSpec, id, addr, err)
		}
	}
	spec.VM.Kernel, spec.VM.Initrd = filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.gz")
	if spec.VM.Cmdline == "" {
		spec.VM.Cmdline = meta.Cmdline
	}
	return nil
}

// readGuestImageMeta checks that dir holds image id: its image.json names
// id and the kernel and initramfs are regular files.
func readGuestImageMeta(dir, id string) (guestImageMeta, error) {
	var m guestImageMeta
	b, err := os.ReadFile(filepath.Join(dir, "image.json"))
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("image.json: %v", err)
	}
	if m.ID != id {
		return m, fmt.Errorf("image.json names image %q, want %s", m.ID, id)
	}
	for _, f := range []string{"vmlinuz", "initrd.gz"} {
		if fi, err := os.Lstat(filepath.Join(dir, f)); err != nil || !fi.Mode().IsRegular() {
			return m, fmt.Errorf("%s is missing or not a regular file", f)
		}
	}
	return m, nil
}

// fetchGuestImage receives image id from the controller at addr into dir
// (replacing whatever is there).
func (a *Agent) fetchGuestImage(ctx context.Context, addr, id, dir string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	start := time.Now()
	conn, _, err := transfer.DialUpgrade(ctx, a.cfg.Identity.ClientConfig(), addr, transfer.GuestImagePath(id), transfer.GuestImageProtocol)
	if err != nil {
		return fmt.Errorf("%w: guest image %s: %v", driver.ErrNotFound, id, err)
	}
	defer conn.Close()
	a.track(conn)
	defer a.untrack(conn)
	staging := filepath.Join(a.cfg.DataDir, "run", "cas-staging")
	if err := os.MkdirAll(staging, 0o700); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	rc := a.keepReceived(&transfer.Receiver{StagingDir: staging, Logger: a.log,
		Dest: func(transfer.Header, *cas.Index) (string, error) { return dir, nil }}, "guest-"+id[:32])
	res, err := rc.Serve(ctx, conn)
	if err != nil {
		return fmt.Errorf("guest image %s from %s: %w", id, addr, err)
	}
	a.log.Info("guest image fetched", "image", id, "from", addr, "chunks", res.Received, "bytes", res.ReceivedBytes,
		"from_store", res.FromStore, "size", res.Index.Size, "took", time.Since(start))
	return nil
}
