package controller

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ferrycluster/ferry/cas/transfer"
	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/image"
	"github.com/ferrycluster/ferry/pki"
	"github.com/ferrycluster/ferry/store"
)

// ImageServer serves the guest images built on this server (`ferry image
// build --data-dir DIR`, kept in DIR/images by content id) to agents:
// GET /v1/images/{id} upgraded to transfer.GuestImageProtocol, then the
// image directory (kernel, initramfs, image.json) goes out with
// transfer.SendDir — chunked, each chunk verified by the agent, and only the
// chunks the agent's store lacks (an image of the same family shares most
// of them). Only agents and servers (their mTLS certificates) may fetch.
//
// A job's qemu task names such an image by its id (image: ID); the
// controller puts a transfer.GuestImageRef to itself in the VM spec and the
// agent fetches the image before it boots the guest.
type ImageServer struct {
	Images *image.Store
	// TmpDir stages the packed image while it is sent.
	TmpDir string
	Logger *slog.Logger

	mu   sync.Mutex
	sent []ImageSent
}

// ImageSent records one image fetch served.
type ImageSent struct {
	ID, Node string
	transfer.SendResult
	Err error
}

func (s *ImageServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	role, node, err := pki.PeerRole(r.TLS)
	if err != nil || (role != pki.RoleAgent && role != pki.RoleServer) {
		writeErr(w, fmt.Errorf("%w: guest images are served to agents and servers (mutual TLS), not to %q", ErrForbidden, role))
		return
	}
	if !transfer.IsImageID(id) {
		writeErr(w, fmt.Errorf("%w: %q is not an image id (64 hex digits)", store.ErrInvalid, id))
		return
	}
	img, err := s.Images.Get(id)
	if err != nil {
		writeErr(w, fmt.Errorf("%w: image %s is not on this server: %v", store.ErrNotFound, id, err))
		return
	}
	if err := os.MkdirAll(s.TmpDir, 0o700); err != nil {
		writeErr(w, err)
		return
	}
	conn, err := transfer.AcceptUpgrade(w, r, transfer.GuestImageProtocol, nil)
	if err != nil {
		return
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	res, err := transfer.SendDir(ctx, conn, img.Dir, s.TmpDir, transfer.SendOptions{ID: "guest-image-" + id, Name: "image", Logger: s.Logger})
	s.mu.Lock()
	s.sent = append(s.sent, ImageSent{ID: id, Node: node, SendResult: res, Err: err})
	s.mu.Unlock()
	if err != nil {
		s.Logger.Warn("guest image not sent", "image", id, "node", node, "err", err)
		return
	}
	s.Logger.Info("guest image sent", "image", id, "node", node, "chunks", res.ChunksSent, "bytes", res.BytesSent, "of", res.Index.Size)
}

// Sent lists the image fetches served so far.
func (s *ImageServer) Sent() []ImageSent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]ImageSent(nil), s.sent...)
}

// newImageServer serves DIR/images of the server's data dir.
func newImageServer(dataDir string, lg *slog.Logger) *ImageServer {
	return &ImageServer{Images: &image.Store{Dir: filepath.Join(dataDir, "images")}, TmpDir: filepath.Join(dataDir, "run"),
		Logger: lg.With("component", "images")}
}

// withImages routes GET /v1/images/{id} to imgs and everything else to
// api.
func withImages(api http.Handler, imgs *ImageServer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /v1/images/{id}", imgs)
	mux.Handle("/", api)
	return mux
}

// resolveGuestImage turns a VM spec naming a built image by id into a
// reference to this server (the leader, which runs the plan), from which
// the agent fetches it.
func (c *Controller) resolveGuestImage(ds *driver.Spec) {
	if ds.VM == nil || !transfer.IsImageID(ds.VM.Kernel) {
		return
	}
	if addr := c.st.LeaderAPI(); addr != "" {
		ds.VM.Kernel, ds.VM.Initrd = transfer.GuestImageRef(addr, ds.VM.Kernel), ""
	}
}
