package agent

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/cas"
	"github.com/ferrycluster/ferry/cas/transfer"
	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/internal/writeback"
	"github.com/ferrycluster/ferry/pki"
)

// handleImage sends a task's image to the agent that may fetch it, the one
// the record binds (record.PeerName): the destination of a checkpoint move
// (bound by migrateCheckpoint), or, for a suspended image, the agent the
// controller granted it to (handleGrant). A suspended image's fetch locks
// the task against local resume and other fetchers (phase migrating-out,
// mode fetch) until that agent releases it (handleRelease).
func (a *Agent) handleImage(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	epoch, err := strconv.ParseUint(r.URL.Query().Get("epoch"), 10, 64)
	if err != nil {
		writeErr(w, fmt.Errorf("%w: epoch %q", driver.ErrInvalidSpec, r.URL.Query().Get("epoch")))
		return
	}
	_, caller, _ := pki.PeerRole(r.TLS)
	live := strings.EqualFold(r.Header.Get("Upgrade"), api.ImageLiveProtocol)
	a.mu.Lock()
	rec, slot, err := a.admitFetchLocked(id, epoch, caller, live)
	a.mu.Unlock()
	if err != nil {
		writeErr(w, err)
		return
	}
	switch {
	case live:
		a.sendImageLive(w, r, rec, slot)
		return
	case strings.EqualFold(r.Header.Get("Upgrade"), api.ImageTarProtocol):
		a.sendImageTar(w, r, rec)
		return
	case strings.EqualFold(r.Header.Get("Upgrade"), api.ImageProtocol):
		a.sendImageCAS(w, r, rec)
		return
	}
	w.Header().Set("Content-Type", "application/x-tar")
	w.WriteHeader(http.StatusOK)
	if err := writeImageTar(w, rec, a.store.imageDir(id)); err != nil {
		a.log.Warn("send image", "task", id, "err", err)
	}
}

// admitFetchLocked admits caller's fetch of the image of task id at epoch
// (live: the checkpoint a move in flight streams) and returns the record
// to send with it and, for a live fetch, the move's slot. The first fetch
// of a suspended image locks it (phase migrating-out, mode fetch). Caller
// holds mu.
func (a *Agent) admitFetchLocked(id string, epoch uint64, caller string, live bool) (*record, *liveOut, error) {
	rec, err := a.checkEpochLocked(id, epoch)
	if err != nil {
		return nil, nil, err
	}
	switch {
	case live:
		// Only while migrateCheckpoint waits for it (streamSuspend).
		slot := a.liveOuts[id]
		if slot == nil || rec.Phase != api.PhaseMigratingOut || rec.Mode != "checkpoint" {
			return nil, nil, fmt.Errorf("%w: no streamed move of task %q in progress on %s (phase %s)", driver.ErrNotFound, id, a.cfg.Name, rec.Phase)
		}
		return rec, slot, a.mayActLocked(rec, caller, "fetch its image")
	case rec.Image == nil:
		return nil, nil, fmt.Errorf("%w: task %q has no image on %s (phase %s)", driver.ErrNotFound, id, a.cfg.Name, rec.Phase)
	case rec.Phase == api.PhaseSuspended:
		if err := a.busyLocked(id); err != nil {
			return nil, nil, err
		}
		if err := a.mayActLocked(rec, caller, "fetch its image"); err != nil {
			return nil, nil, err
		}
		n := *rec
		n.Phase, n.Peer, n.Mode = api.PhaseMigratingOut, caller, "fetch"
		return &n, nil, a.putLocked(&n)
	case rec.Phase == api.PhaseMigratingOut && rec.Mode == "checkpoint":
		return rec, nil, a.mayActLocked(rec, caller, "fetch its image")
	case rec.Phase == api.PhaseMigratingOut && rec.Mode == "fetch":
		// Its granted agent again: its fetch was cut (its agent
		// restarted, the connection dropped) before it released the
		// image, and the controller retries the resume (the grant is
		// answered as done). It fetches only while it holds no copy
		// of the task (resumeFetched; one resume of a task at a time),
		// so this makes no second copy; refusing it stranded the image.
		return rec, nil, a.mayActLocked(rec, caller, "fetch its image")
	}
	return nil, nil, fmt.Errorf("%w: task %q is %s on %s", driver.ErrBusy, id, rec.Phase, a.cfg.Name)
}

// peerName is the name in the certificate of the agent at addr, as a
// call to addr verifies it (pki.PeerRole on the client side).
func (a *Agent) peerName(ctx context.Context, addr string) (string, error) {
	d := tls.Dialer{Config: a.peerTLS}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	cs := c.(*tls.Conn).ConnectionState()
	role, name, err := pki.PeerRole(&cs)
	if err != nil {
		return "", err
	}
	if role != pki.RoleAgent {
		return "", fmt.Errorf("%w: %s presents a %s certificate (%q), not an agent's", api.ErrForbidden, addr, role, name)
	}
	return name, nil
}

// sendImageCAS answers an image fetch upgraded to api.ImageProtocol: the
// record in a header, then the image directory with cas/transfer (chunks
// verified by hash, zero runs never sent, a cut transfer resumable).
func (a *Agent) sendImageCAS(w http.ResponseWriter, r *http.Request, rec *record) {
	conn, err := a.upgradeRecord(w, r, api.ImageProtocol, rec)
	if err != nil {
		return
	}
	defer conn.Close()
	defer a.untrack(conn)
	// The send keeps the image's chunks here after the transfer (so the
	// task coming back crosses as its changes), once the fetcher has
	// released the image (handleRelease), so that work does not compete
	// with the destination's commit and restart; a receive of the task
	// waits for it. A keep of the image this node received for the task,
	// still running, is abandoned: this newer image replaces it.
	a.supersedeKeeps(rec.ID)
	// In flight from now (the keep itself registers when the send hands it
	// over), so a waitKept after the fetch returned sees it.
	defer a.keeping(rec.ID, nil)()
	settle := a.holdKeeps(rec.ID)
	start := time.Now()
	res, err := transfer.SendDir(a.ctx, conn, a.store.imageDir(rec.ID),
		a.keepSent(transfer.SendOptions{ID: fmt.Sprintf("%s-e%d", rec.ID, rec.Epoch), Name: "image", Logger: a.log}, rec.ID))
	if err != nil {
		settle()
		a.log.Warn("send image", "task", rec.ID, "err", err)
		return
	}
	a.log.Info("image sent", "task", rec.ID, "chunks", res.ChunksSent, "bytes", res.BytesSent, "wire_bytes", res.WireBytes, "took", time.Since(start))
}

// streamDriver is a driver that can move a checkpoint while its job
// writes it (driver/process).
type streamDriver interface {
	// SuspendStream suspends task id into dir here, streaming the
	// checkpoint on conn as it is written; the image is non-zero iff the
	// task was suspended (with an error: the stream failed).
	SuspendStream(ctx context.Context, id, dir string, conn io.ReadWriter) (driver.Image, error)
	// ReceiveStream commits the streamed checkpoint at dir (missing or
	// empty), or nothing; space reports free bytes at a path.
	ReceiveStream(ctx context.Context, conn io.ReadWriter, dir string, space func(string) (int64, error)) error
}

// liveOut hands the destination's fetch of a streamed checkpoint
// (handleImage) to the migration waiting for it (streamSuspend).
type liveOut struct {
	conn chan io.ReadWriter
	done chan struct{} // the migration is done with the connection
}

// sendImageLive answers a fetch upgraded to api.ImageLiveProtocol: the
// record in a header, then the connection goes to the migration, which
// suspends the task streaming its checkpoint on it.
func (a *Agent) sendImageLive(w http.ResponseWriter, r *http.Request, rec *record, slot *liveOut) {
	conn, err := a.upgradeRecord(w, r, api.ImageLiveProtocol, rec)
	if err != nil {
		return
	}
	defer conn.Close()
	defer a.untrack(conn)
	select {
	case slot.conn <- conn:
		<-slot.done
	case <-slot.done:
	}
}

// streamSuspend suspends rec's task with sd while the destination (asked
// to resume it with Stream) fetches the checkpoint as the job writes it.
// It returns the image, kept here as after suspendLocal, and the channel
// that delivers the destination's answer to the resume. An error means
// the task was not suspended (it keeps running) and the destination
// committed nothing; it has answered by then.
func (a *Agent) streamSuspend(ctx context.Context, rec *record, sd streamDriver, req api.MigrateRequest) (driver.Image, <-chan error, error) {
	id := rec.ID
	dir := a.store.imageDir(id)
	if err := os.RemoveAll(dir); err != nil {
		return driver.Image{}, nil, err
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return driver.Image{}, nil, err
	}
	slot := &liveOut{conn: make(chan io.ReadWriter), done: make(chan struct{})}
	a.mu.Lock()
	a.liveOuts[id] = slot
	a.mu.Unlock()
	finished := func() {
		a.mu.Lock()
		delete(a.liveOuts, id)
		a.mu.Unlock()
		close(slot.done)
	}
	resumed := make(chan error, 1)
	go func() {
		_, err := a.peer(req.To).Resume(ctx, id, api.ResumeRequest{Epoch: rec.Epoch, From: a.cfg.Advertise, CheckpointPeer: req.CheckpointPeer, Stream: true})
		resumed <- err
	}()
	var img driver.Image
	var err error
	select {
	case conn := <-slot.conn:
		img, err = sd.SuspendStream(ctx, id, dir, conn)
		finished() // closes the connection: a receiver still reading fails
	case rerr := <-resumed:
		finished()
		if rerr == nil {
			rerr = errors.New("it answered the resume without fetching the checkpoint")
		}
		return driver.Image{}, nil, fmt.Errorf("destination %s: %w", req.To, rerr)
	case <-ctx.Done():
		finished()
		<-resumed
		return driver.Image{}, nil, ctx.Err()
	}
	if img.Dir == "" {
		os.RemoveAll(dir)
		<-resumed // failed too: it had no manifest
		return driver.Image{}, nil, err
	}
	if err != nil {
		// Suspended here; the destination's answer says whether its copy
		// was committed (a DONE lost on the way) or not.
		a.log.Warn("streamed checkpoint", "task", id, "to", req.To, "err", err)
	}
	if img.Bytes == 0 {
		img.Bytes = dirSize(dir)
	}
	a.log.Info("checkpoint suspended, streamed as it was written", "task", id, "to", req.To, "bytes", img.Bytes, "took", img.Took)
	return img, resumed, nil
}

// receiveImageLive fetches the checkpoint of a task that the peer is
// suspending and streams as its job writes it (ResumeRequest.Stream) into
// dir (which must not exist), and returns the peer's record.
func (a *Agent) receiveImageLive(ctx context.Context, peerAddr, id string, epoch uint64, dir string) (*record, error) {
	conn, meta, err := a.peer(peerAddr).FetchImageLive(ctx, id, epoch)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	a.track(conn)
	defer a.untrack(conn)
	prec, err := peerRecord(meta, id, peerAddr)
	if err != nil {
		return nil, err
	}
	sd, ok := a.drivers[prec.Driver].(streamDriver)
	if !ok {
		return nil, fmt.Errorf("%w: driver %q on node %s cannot receive a streamed checkpoint", driver.ErrUnsupported, prec.Driver, a.cfg.Name)
	}
	if err := sd.ReceiveStream(ctx, conn, dir, a.cfg.FreeSpace); err != nil {
		return nil, err
	}
	return prec, nil
}

// peerRecord decodes the record a peer sends with an image of task id
// (api.RecordHeader).
func peerRecord(meta []byte, id, peerAddr string) (*record, error) {
	var rec record
	if err := json.Unmarshal(meta, &rec); err != nil {
		return nil, fmt.Errorf("%w: record of %q from %s: %v", driver.ErrInvalidSpec, id, peerAddr, err)
	}
	return &rec, nil
}

// upgradeRecord is upgradeConn with the task's record in api.RecordHeader.
func (a *Agent) upgradeRecord(w http.ResponseWriter, r *http.Request, proto string, rec *record) (net.Conn, error) {
	meta, err := json.Marshal(rec)
	if err != nil {
		writeErr(w, err)
		return nil, err
	}
	return a.upgradeConn(w, r, proto, http.Header{api.RecordHeader: {base64.StdEncoding.EncodeToString(meta)}})
}

// upgradeConn answers r's Upgrade to proto with 101 and the headers h
// (transfer.AcceptUpgrade) and hands over the connection, tracked (the
// caller closes and untracks it), reading through what the server had
// buffered. An error means the connection is unusable (already answered
// when possible).
func (a *Agent) upgradeConn(w http.ResponseWriter, r *http.Request, proto string, h http.Header) (net.Conn, error) {
	conn, err := transfer.AcceptUpgrade(w, r, proto, h)
	if err != nil {
		a.log.Warn("upgrade", "path", r.URL.Path, "protocol", proto, "err", err)
		return nil, err
	}
	a.track(conn)
	return conn, nil
}

// sendImageTar answers an image fetch upgraded to api.ImageTarProtocol:
// the record in a header; once the fetcher says OK (it has the room), the
// record and the image's files as one tar stream.
func (a *Agent) sendImageTar(w http.ResponseWriter, r *http.Request, rec *record) {
	conn, err := a.upgradeRecord(w, r, api.ImageTarProtocol, rec)
	if err != nil {
		return
	}
	defer conn.Close()
	defer a.untrack(conn)
	stop := context.AfterFunc(a.ctx, func() { conn.Close() })
	defer stop()
	conn.SetReadDeadline(time.Now().Add(cleanupTimeout))
	line, err := bufio.NewReader(io.LimitReader(conn, 4096)).ReadString('\n')
	if err != nil || line != "OK\n" {
		a.log.Warn("image fetch refused by the fetcher", "task", rec.ID, "answer", strings.TrimSpace(line), "err", err)
		return
	}
	conn.SetReadDeadline(time.Time{})
	start := time.Now()
	bw := bufio.NewWriterSize(conn, 1<<20)
	err = writeImageTar(bw, rec, a.store.imageDir(rec.ID))
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		a.log.Warn("send image", "task", rec.ID, "err", err)
		return
	}
	a.log.Info("image sent", "task", rec.ID, "protocol", api.ImageTarProtocol, "took", time.Since(start))
}

// receiveImageTar fetches a peer's image into dir (which must not exist)
// as one tar stream, after checking the room for it, and returns the
// peer's record.
func (a *Agent) receiveImageTar(ctx context.Context, peerAddr, id string, epoch uint64, dir string) (*record, error) {
	conn, meta, err := a.peer(peerAddr).FetchImageTar(ctx, id, epoch)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	a.track(conn)
	defer a.untrack(conn)
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	hrec, err := peerRecord(meta, id, peerAddr)
	if err != nil {
		fmt.Fprintf(conn, "ERR bad record\n")
		return nil, err
	}
	if hrec.Image != nil {
		if err := a.checkRoom("image", id, hrec.Image.Bytes, 1); err != nil {
			fmt.Fprintf(conn, "ERR %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
			return nil, err
		}
	}
	if _, err := io.WriteString(conn, "OK\n"); err != nil {
		return nil, ctxErr(ctx, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	start := time.Now()
	prec, err := readImageTar(conn, dir)
	if err != nil {
		return nil, ctxErr(ctx, err)
	}
	if prec.ID != hrec.ID || prec.Epoch != hrec.Epoch {
		return nil, fmt.Errorf("%w: image stream from %s holds task %q epoch %d, its header %q epoch %d", driver.ErrInvalidSpec, peerAddr, prec.ID, prec.Epoch, hrec.ID, hrec.Epoch)
	}
	a.log.Info("image received", "task", id, "from", peerAddr, "protocol", api.ImageTarProtocol, "bytes", dirSize(dir), "took", time.Since(start))
	return prec, nil
}

// maxImageBytes bounds the size an image or replica may claim (1 TiB), so
// the room and time computed from a peer's claim cannot overflow.
const maxImageBytes = 1 << 40

// roomReserve is what a transfer of size bytes needs on top of its copies:
// the packing's headers and the filesystem's slack.
func roomReserve(size int64) int64 { return max(size/100, 1<<20) }

// checkRoom refuses what (an image or a replica) of task id when its size
// is not within 0..maxImageBytes, or when the data dir lacks copies times
// its size plus a reserve.
func (a *Agent) checkRoom(what, id string, size int64, copies int64) error {
	if size < 0 || size > maxImageBytes {
		return fmt.Errorf("%w: %s of %q claims %d bytes, outside 0..%d", driver.ErrInvalidSpec, what, id, size, int64(maxImageBytes))
	}
	need := copies*size + roomReserve(size)
	free, err := a.cfg.FreeSpace(a.cfg.DataDir)
	if err != nil {
		return err
	}
	if free < need {
		return fmt.Errorf("%w: %s of %q is %d bytes; node %s needs %d free in %s and has %d", driver.ErrInsufficient, what, id, size, a.cfg.Name, need, a.cfg.DataDir, free)
	}
	return nil
}

// checkPacked refuses a transfer whose packed size (its index) exceeds the
// size claimed for it plus the reserve for the packing: the room was
// checked for the claim.
func checkPacked(what, id string, claimed int64, x *cas.Index) error {
	if limit := claimed + roomReserve(claimed); x.Size > limit {
		return fmt.Errorf("%w: %s of %q claimed %d bytes but sends %d (more than %d)", driver.ErrInvalidSpec, what, id, claimed, x.Size, limit)
	}
	return nil
}

func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}

// receiveImageCAS fetches a peer's image into dir (which must not exist)
// with the chunk transfer and returns the peer's record.
func (a *Agent) receiveImageCAS(ctx context.Context, peerAddr, id string, epoch uint64, dir string) (*record, error) {
	conn, meta, err := a.peer(peerAddr).FetchImageStream(ctx, id, epoch)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	prec, err := peerRecord(meta, id, peerAddr)
	if err != nil {
		return nil, err
	}
	var size int64
	if prec.Image != nil {
		size = prec.Image.Bytes
	}
	if err := a.receiveDir(ctx, conn, peerAddr, "image", id, size, false, dir); err != nil {
		return nil, err
	}
	return prec, nil
}

// receiveDir receives what (an image or replica of task id), a directory
// of about size bytes sent with transfer.SendDir on conn, into dir (which
// must not exist), after checking the free space. With exact, a transfer
// larger than size (plus the reserve) is refused when its list of files
// arrives, before any of their bytes (a replica's size counts all its
// files; an image's only its main file).
func (a *Agent) receiveDir(ctx context.Context, conn net.Conn, peerAddr, what, id string, size int64, exact bool, dir string) error {
	a.track(conn)
	defer a.untrack(conn)
	// The directory's files (written in place), then their chunks in the
	// node's store unless linked there (receiveCopies), plus a reserve.
	if err := a.checkRoom(what, id, size, a.receiveCopies()); err != nil {
		return err
	}
	staging := a.stagingDir()
	if err := os.MkdirAll(staging, 0o700); err != nil {
		return err
	}
	rc := a.keepReceivedCheckpoint(&transfer.Receiver{StagingDir: staging, Logger: a.log,
		Dest: func(_ transfer.Header, x *cas.Index) (string, error) {
			if exact {
				if err := checkPacked(what, id, size, x); err != nil {
					return "", err
				}
			}
			return dir, nil
		}}, id)
	res, err := rc.Serve(ctx, conn)
	if err != nil {
		return err
	}
	a.log.Info("image received", "task", id, "from", peerAddr, "chunks", res.Received, "bytes", res.ReceivedBytes)
	return nil
}

func writeImageTar(w io.Writer, rec *record, dir string) error {
	tw := tar.NewWriter(w)
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: "record.json", Mode: 0o600, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	if _, err := tw.Write(b); err != nil {
		return err
	}
	err = filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if rel == "." {
			return nil
		}
		hdr, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(filepath.Join("image", rel))
		if fi.IsDir() {
			hdr.Name += "/"
			return tw.WriteHeader(hdr)
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// readImageTar unpacks a tar from writeImageTar into dir (its image files)
// and returns the record. Paths are confined to dir.
func readImageTar(r io.Reader, dir string) (*record, error) {
	tr := tar.NewReader(r)
	var rec *record
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("image stream: %w", err)
		}
		switch {
		case hdr.Name == "record.json":
			var rc record
			if err := json.NewDecoder(io.LimitReader(tr, maxBody)).Decode(&rc); err != nil {
				return nil, fmt.Errorf("%w: image stream record: %v", driver.ErrInvalidSpec, err)
			}
			rec = &rc
		case strings.HasPrefix(hdr.Name, "image/"):
			rel := filepath.Clean(filepath.FromSlash(strings.TrimPrefix(hdr.Name, "image/")))
			if rel == "." {
				continue
			}
			if filepath.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
				return nil, fmt.Errorf("%w: image stream path %q escapes the image", driver.ErrInvalidSpec, hdr.Name)
			}
			p := filepath.Join(dir, rel)
			switch hdr.Typeflag {
			case tar.TypeDir:
				if err := os.MkdirAll(p, 0o700); err != nil {
					return nil, err
				}
			case tar.TypeReg:
				if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
					return nil, err
				}
				f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
				if err != nil {
					return nil, err
				}
				if _, err := writeback.Copy(f, tr, -1); err != nil {
					f.Close()
					return nil, fmt.Errorf("image stream: %w", err)
				}
				if err := f.Sync(); err != nil {
					f.Close()
					return nil, err
				}
				if err := f.Close(); err != nil {
					return nil, err
				}
			}
		default:
			return nil, fmt.Errorf("%w: image stream holds unexpected %q", driver.ErrInvalidSpec, hdr.Name)
		}
	}
	if rec == nil {
		return nil, fmt.Errorf("%w: image stream has no record.json", driver.ErrInvalidSpec)
	}
	// The files are fsynced; their names too, deepest directory first.
	var dirs []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := syncDir(dirs[i]); err != nil {
			return nil, err
		}
	}
	return rec, nil
}

// resumeFromPeer fetches a suspended task's image from the agent at
// req.From, commits epoch+1 here and resumes it, then releases the image at
// the peer.
func (a *Agent) resumeFromPeer(ctx context.Context, id string, req api.ResumeRequest) (api.Task, error) {
	peer := a.peer(req.From)
	release := func(epoch uint64, committed bool) {
		cctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if err := peer.Release(cctx, id, api.ReleaseRequest{Epoch: epoch, Peer: a.cfg.Advertise, Committed: committed}); err != nil {
			a.log.Warn("release image at peer", "task", id, "peer", req.From, "committed", committed, "err", err)
		}
	}
	return a.resumeFetched(ctx, id, req, imageSource{
		from: req.From,
		what: "image",
		fetch: func(ctx context.Context, dir string) (*record, error) {
			if req.Stream {
				return a.receiveImageLive(ctx, req.From, id, req.Epoch, dir)
			}
			if a.cfg.ImageTransfer == ImageTransferTar {
				return a.receiveImageTar(ctx, req.From, id, req.Epoch, dir)
			}
			return a.receiveImageCAS(ctx, req.From, id, req.Epoch, dir)
		},
		check: func(prec *record) error {
			if prec.Epoch != req.Epoch {
				return fmt.Errorf("%w: image from %s is task %q epoch %d, want epoch %d", api.ErrStaleEpoch, req.From, prec.ID, prec.Epoch, req.Epoch)
			}
			return nil
		},
		giveBack:  func() { release(req.Epoch, false) },
		committed: func(newEpoch uint64) { release(newEpoch, true) },
	})
}

// imageSource is where resumeFetched gets a task's image.
type imageSource struct {
	from, what string
	// fetch writes the image into dir (which does not exist) and returns
	// the record it belongs to; an *api.RemoteError means the holder refused
	// before anything moved (nothing to give back).
	fetch func(ctx context.Context, dir string) (*record, error)
	// check vets the fetched record's epoch against the request.
	check func(prec *record) error
	// giveBack (after a failure) and committed (after the resume) tell the
	// holder; either may be nil.
	giveBack  func()
	committed func(newEpoch uint64)
}

// resumeFetched fetches a task's image from src, commits req.Epoch+1 here
// and resumes the task from it (with req.CheckpointPeer).
func (a *Agent) resumeFetched(ctx context.Context, id string, req api.ResumeRequest, src imageSource) (api.Task, error) {
	if err := api.ValidID(id); err != nil {
		return api.Task{}, err
	}
	if req.Epoch == 0 {
		return api.Task{}, fmt.Errorf("%w: resume %q: epoch is required", driver.ErrInvalidSpec, id)
	}
	if err := a.validPeer(id, req.CheckpointPeer); err != nil {
		return api.Task{}, err
	}
	newEpoch := req.Epoch + 1
	a.mu.Lock()
	prev, had := a.records[id]
	if had && prev.Phase != api.PhaseMoved {
		a.mu.Unlock()
		return api.Task{}, fmt.Errorf("%w: task %q is already %s on %s (epoch %d)", driver.ErrExists, id, prev.Phase, a.cfg.Name, prev.Epoch)
	}
	if had && newEpoch <= prev.Epoch {
		a.mu.Unlock()
		return api.Task{}, fmt.Errorf("%w: task %q: resume at epoch %d, but %s saw it move away at epoch %d", api.ErrStaleEpoch, id, newEpoch, a.cfg.Name, prev.Epoch)
	}
	if err := a.acquireLocked(id, "resume"); err != nil {
		a.mu.Unlock()
		return api.Task{}, err
	}
	a.mu.Unlock()
	defer a.release(id)
	// The received image's chunks are kept once the task runs (or the
	// resume failed): not while the fetch, commit and restart need the
	// machine.
	defer a.holdKeeps(id)()
	giveBack := func() {
		if src.giveBack != nil {
			src.giveBack()
		}
	}
	tmp := filepath.Join(a.store.taskDir(id), "image.incoming")
	os.RemoveAll(tmp)
	if err := os.MkdirAll(a.store.taskDir(id), 0o700); err != nil {
		return api.Task{}, err
	}
	fail := func(err error) (api.Task, error) {
		os.RemoveAll(tmp)
		giveBack()
		return api.Task{}, err
	}
	start := time.Now()
	prec, err := src.fetch(ctx, tmp)
	if err != nil {
		var re *api.RemoteError
		if errors.As(err, &re) {
			// Refused before anything moved (stale epoch, busy...): the
			// holder's image was not locked for us.
			os.RemoveAll(tmp)
			return api.Task{}, fmt.Errorf("fetch %s of %q from %s: %w", src.what, id, src.from, err)
		}
		return fail(fmt.Errorf("fetch %s of %q from %s: %w", src.what, id, src.from, err))
	}
	if prec.ID != id {
		return fail(fmt.Errorf("%w: %s from %s is task %q, want %q", api.ErrStaleEpoch, src.what, src.from, prec.ID, id))
	}
	if err := src.check(prec); err != nil {
		return fail(err)
	}
	d, ok := a.drivers[prec.Driver]
	if !ok {
		return fail(fmt.Errorf("%w: driver %q not on node %s", driver.ErrUnsupported, prec.Driver, a.cfg.Name))
	}
	spec := prec.Spec
	if err := a.resolveGuestImage(ctx, &spec); err != nil { // guestimage.go
		return fail(err)
	}
	spec.Epoch = newEpoch
	a.mu.Lock()
	err = a.fitsLocked(&spec)
	if err == nil {
		os.RemoveAll(a.store.imageDir(id))
		err = os.Rename(tmp, a.store.imageDir(id))
	}
	rec := &record{ID: id, Driver: d.Kind(), Epoch: newEpoch, Phase: api.PhaseRunning, Spec: spec, CheckpointPeer: req.CheckpointPeer}
	if err == nil {
		if had {
			p := *prev
			rec.Prev = &p
		}
		err = a.putLocked(rec)
	}
	a.mu.Unlock()
	if err != nil {
		return fail(err)
	}
	a.log.Info(src.what+" fetched", "task", id, "from", src.from, "bytes", dirSize(a.store.imageDir(id)), "took", time.Since(start))
	if err := d.Resume(ctx, spec, a.store.imageDir(id)); err != nil {
		a.dropIncoming(rec)
		os.RemoveAll(a.store.imageDir(id))
		giveBack()
		return api.Task{}, err
	}
	a.mu.Lock()
	rec.Prev = nil
	a.putLocked(rec)
	a.mu.Unlock()
	os.RemoveAll(a.store.imageDir(id))
	if src.committed != nil {
		src.committed(newEpoch)
	}
	a.log.Info("task resumed from "+src.what, "task", id, "from", src.from, "epoch", newEpoch, "checkpoint_peer", req.CheckpointPeer)
	return a.Inspect(ctx, id)
}

// handleRelease ends the fetch of a task's image: the fetcher committed
// the task at the next epoch (the image here becomes a tombstone) or gave
// the image back. Only the agent the record binds may (mayActLocked: any
// other agent could otherwise make this node drop a task it still owns);
// another is refused with api.ErrForbidden and nothing changes.
func (a *Agent) handleRelease(w http.ResponseWriter, r *http.Request) {
	var req api.ReleaseRequest
	id, err := decodeTask(r, &req)
	if err != nil {
		writeErr(w, err)
		return
	}
	_, caller, _ := pki.PeerRole(r.TLS)
	a.mu.Lock()
	rec, ok := a.records[id]
	if !ok {
		err = fmt.Errorf("%w: task %q on %s", driver.ErrNotFound, id, a.cfg.Name)
	} else if err = a.mayActLocked(rec, caller, "release it"); err == nil && rec.Phase == api.PhaseSuspended {
		// Bound by a grant (handleGrant) or since a restart cut the fetch
		// (recover): until applyRelease has written it, no fetch, grant
		// or local resume may begin (each honours busy), else a late
		// give-back could unbind an image being fetched again, or a commit
		// tombstone one being resumed here.
		if err = a.acquireLocked(id, "release"); err == nil {
			defer a.release(id)
		}
	}
	a.mu.Unlock()
	if err != nil {
		writeErr(w, err)
		return
	}
	// The fetcher is done with the image sent from here: keep its chunks.
	a.releaseKeeps(id)
	if err := a.applyRelease(rec, req); err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// applyRelease writes the release req of rec, admitted by handleRelease:
// a commit at exactly rec's epoch plus one makes the image a tombstone, a
// give-back at its epoch suspends it again, bound to nobody; a release
// repeated after it took effect is answered; any other is stale.
func (a *Agent) applyRelease(rec *record, req api.ReleaseRequest) error {
	moving := rec.Phase == api.PhaseMigratingOut
	switch {
	case req.Committed && req.Epoch == rec.Epoch+1 && (moving || rec.Phase == api.PhaseSuspended):
		// Suspended: the fetch was cut by a restart of this agent
		// (recover), after the fetcher had the whole image; or the
		// agent granted the image (handleGrant) commits it.
		return a.markMoved(rec, req.Peer, req.Epoch)
	case !req.Committed && req.Epoch == rec.Epoch && moving && rec.Mode == "fetch":
		return a.setPhase(rec, api.PhaseSuspended, rec.Epoch)
	case req.Committed && req.Epoch <= rec.Epoch && rec.Phase == api.PhaseMoved:
		// Already released.
		return nil
	case !req.Committed && req.Epoch == rec.Epoch && moving && rec.Mode == "checkpoint":
		// A streamed move's fetch failed: the migration in progress here
		// learns it from the resume's answer and acts on it.
		return nil
	case !req.Committed && req.Epoch == rec.Epoch && rec.Phase == api.PhaseSuspended:
		// Given back already by a restart of this agent (recover), or
		// granted and not fetched: the binding goes.
		return a.setPhase(rec, api.PhaseSuspended, rec.Epoch)
	}
	return fmt.Errorf("%w: release of %q at epoch %d (committed %t): node %s holds epoch %d (%s)", api.ErrStaleEpoch, rec.ID, req.Epoch, req.Committed, a.cfg.Name, rec.Epoch, rec.Phase)
}
