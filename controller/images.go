package controller

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
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
	Logger *slog.Logger

	mu   sync.Mutex
	sent []ImageSent
	// The sends in progress: each runs on life (cancelled by Close) over a
	// hijacked connection, which http.Server.Close does not close, so
	// Close closes them itself and waits for the sends to end.
	life    context.Context
	end     context.CancelFunc
	conns   map[net.Conn]struct{}
	closed  bool
	sending sync.WaitGroup
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
	conn, err := transfer.AcceptUpgrade(w, r, transfer.GuestImageProtocol, nil)
	if err != nil {
		return
	}
	life, ok := s.track(conn)
	if !ok {
		conn.Close()
		return
	}
	defer s.untrack(conn)
	ctx, cancel := context.WithTimeout(life, 30*time.Minute)
	defer cancel()
	res, err := transfer.SendDir(ctx, conn, img.Dir, transfer.SendOptions{ID: "guest-image-" + id, Name: "image", Logger: s.Logger})
	s.mu.Lock()
	s.sent = append(s.sent, ImageSent{ID: id, Node: node, SendResult: res, Err: err})
	s.mu.Unlock()
	if err != nil {
		s.Logger.Warn("guest image not sent", "image", id, "node", node, "err", err)
		return
	}
	s.Logger.Info("guest image sent", "image", id, "node", node, "chunks", res.ChunksSent, "bytes", res.BytesSent, "of", res.Index.Size)
}

// track registers a send's connection; false once the server is closed.
// It returns the context the send runs on.
func (s *ImageServer) track(conn net.Conn) (context.Context, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, false
	}
	if s.life == nil {
		s.life, s.end = context.WithCancel(context.Background())
		s.conns = map[net.Conn]struct{}{}
	}
	s.conns[conn] = struct{}{}
	s.sending.Add(1)
	return s.life, true
}

// untrack closes a send's connection and forgets it.
func (s *ImageServer) untrack(conn net.Conn) {
	conn.Close()
	s.mu.Lock()
	delete(s.conns, conn)
	s.mu.Unlock()
	s.sending.Done()
}

// Close ends the sends in progress (their context is cancelled and their
// connections closed) and waits for them; later fetches are refused.
func (s *ImageServer) Close() {
	s.mu.Lock()
	s.closed = true
	if s.end != nil {
		s.end()
	}
	for conn := range s.conns {
		conn.Close()
	}
	s.mu.Unlock()
	s.sending.Wait()
}

// Sent lists the image fetches served so far.
func (s *ImageServer) Sent() []ImageSent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]ImageSent(nil), s.sent...)
}

// newImageServer serves DIR/images of the server's data dir.
func newImageServer(dataDir string, lg *slog.Logger) *ImageServer {
	return &ImageServer{Images: &image.Store{Dir: filepath.Join(dataDir, "images")},
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
