package agent

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
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
//
// The local paths carry the reference: they go through a symlink named
// ID@HEX(controller address) to the image directory. A spec that moves to
// another node (resume from a peer's image, incoming live migration) names
// files under the source node's data dir; the destination recognizes the
// link name in the path, fetches the image from the same controller if it
// lacks it, and points the spec at its own copy.

// guestImageFetches serializes fetches of one image on one node.
var guestImageFetches sync.Map // image dir → *sync.Mutex

func (a *Agent) guestImageDir(id string) string {
	return filepath.Join(a.cfg.DataDir, "guest-images", id)
}

// guestImageLink is the directory (a symlink to the image's) whose name
// carries the controller's address.
func (a *Agent) guestImageLink(addr, id string) string {
	return filepath.Join(a.cfg.DataDir, "guest-images", id+"@"+hex.EncodeToString([]byte(addr)))
}

// guestImageOfPath recognizes a kernel path of a resolved spec (on any
// node): .../guest-images/ID@HEXADDR/vmlinuz.
func guestImageOfPath(p string) (addr, id string, ok bool) {
	if filepath.Base(p) != "vmlinuz" || filepath.Base(filepath.Dir(filepath.Dir(p))) != "guest-images" {
		return "", "", false
	}
	id, hexAddr, found := strings.Cut(filepath.Base(filepath.Dir(p)), "@")
	b, err := hex.DecodeString(hexAddr)
	if !found || err != nil || !transfer.IsImageID(id) {
		return "", "", false
	}
	if _, _, err := net.SplitHostPort(string(b)); err != nil {
		return "", "", false
	}
	return string(b), id, true
}

// guestImageMeta is what the agent reads of the image's image.json.
type guestImageMeta struct {
	ID      string `json:"id"`
	Cmdline string `json:"cmdline"`
}

// resolveGuestImage rewrites spec.VM to use this node's files when its
// kernel names a controller-served image (a reference, or another node's
// resolved path), fetching the image first if needed. Other specs are left
// alone.
func (a *Agent) resolveGuestImage(ctx context.Context, spec *driver.Spec) error {
	if spec.VM == nil {
		return nil
	}
	addr, id, ok, err := transfer.ParseGuestImageRef(spec.VM.Kernel)
	if err != nil {
		return fmt.Errorf("%w: task %q: %v", driver.ErrInvalidSpec, spec.ID, err)
	}
	if !ok {
		if addr, id, ok = guestImageOfPath(spec.VM.Kernel); !ok || spec.VM.Kernel == filepath.Join(a.guestImageLink(addr, id), "vmlinuz") {
			return nil // not a served image, or already this node's
		}
	}
	dir, link := a.guestImageDir(id), a.guestImageLink(addr, id)
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
	if err := os.Symlink(id, link); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("guest image %s: %w", id, err)
	}
	spec.VM.Kernel, spec.VM.Initrd = filepath.Join(link, "vmlinuz"), filepath.Join(link, "initrd.gz")
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
	staging := a.stagingDir()
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
