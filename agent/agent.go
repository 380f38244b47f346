// Package agent is ferry's node daemon: it runs tasks through drivers
// (driver/qemu, driver/process), guards each task with an owner epoch, and
// moves tasks to peer agents — live (libvirt's begin / prepare / perform /
// finish / confirm over an authenticated tunnel) or by checkpoint (suspend,
// move the image, resume).
//
// The API is HTTP/1.1 + JSON over mutual TLS (pki): curl-able with a
// certificate, no code generation, progress streamed as NDJSON, and the
// migration tunnel an HTTP Upgrade that turns the TLS connection into a raw
// byte pipe between the two QEMUs. docs/agent.md is the reference.
//
// Safety rules the agent enforces:
//
//  1. Epochs: every task carries an owner epoch, persisted in its record
//     (DATA/tasks/ID/record.json) before any transition is acted on. A
//     command with another epoch is refused (api.ErrStaleEpoch, HTTP 409)
//     and changes nothing. A committed move bumps the epoch at the
//     destination; the source keeps a tombstone (phase "moved").
//  2. One live copy: a destination runs only after its record holds the new
//     epoch (finish); the source ends only after that (confirm); any failure
//     before finish resumes the source and aborts the destination. When the
//     outcome is unknown the source stays paused (in doubt), never running
//     beside a possible second copy.
//  3. One move at a time per task: a second command on a task that is
//     moving gets driver.ErrBusy (409).
//  4. Restart: a new agent on the same data dir re-attaches to the driver's
//     tasks (Driver.List), settles moves that were in flight by asking the
//     peer, aborts incoming copies that never finished, and flags copies it
//     does not own as stale.
package agent

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/agent/client"
	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/pki"
)

// Config configures an agent.
type Config struct {
	// Name of the node (the agent's certificate name).
	Name string
	// DataDir holds records, images, driver state and sockets.
	DataDir string
	// Listen is the TCP address to serve on (e.g. 127.0.0.2:7400).
	Listen string
	// Advertise is the address peers use to reach this agent; default the
	// bound listen address.
	Advertise string
	// CPUs and MemoryBytes are the node's capacities; 0 means the machine's.
	CPUs        float64
	MemoryBytes int64
	// Identity is this agent's mutual-TLS identity (role agent).
	Identity *pki.Identity
	// Drivers run the tasks, one per kind.
	Drivers []driver.Driver
	// Accelerator is reported in NodeInfo (e.g. "kvm", "tcg"); empty asks
	// the drivers (any with an Accel() or Accelerator() string method).
	Accelerator string
	// IncomingTimeout bounds how long a prepared incoming copy waits for its
	// tunnel, and for finish after the tunnel closed (default 60s).
	IncomingTimeout time.Duration
	// ImageTransfer is how this agent fetches a suspended task's image
	// from a peer (resume from a peer, checkpoint migration to this node):
	// ImageTransferCAS (default) or ImageTransferTar.
	ImageTransfer string
	// FreeSpace returns the bytes available under a path (default statfs);
	// an image fetch that would not fit is refused before any byte moves.
	FreeSpace func(path string) (int64, error)
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Image transfers (Config.ImageTransfer).
const (
	// ImageTransferCAS moves images with the chunk transfer through the
	// node's chunk store: an image that comes back, or resembles one seen
	// before, sends only its changed chunks; every byte is hashed, and the
	// image is staged and extracted on the way.
	ImageTransferCAS = "cas"
	// ImageTransferTar moves an image as one tar stream over the TLS
	// connection, written with early writeback and fsynced: no staging,
	// hashing or extraction, several times faster for a fresh checkpoint
	// (docs/checkpointing.md), but every byte crosses every time.
	ImageTransferTar = "tar"
	// ImageTransferStream is ImageTransferCAS, except that a checkpoint
	// migration from this node of a driver that can (process) streams the
	// checkpoint to the destination while the job writes it
	// (api.ImageLiveProtocol; docs/checkpointing.md).
	ImageTransferStream = "stream"
)

// Validate checks the configuration.
func (c *Config) Validate() error {
	if err := pki.ValidName(c.Name); err != nil {
		return fmt.Errorf("agent name: %w", err)
	}
	if c.DataDir == "" {
		return errors.New("agent: data dir is required")
	}
	if c.Identity == nil {
		return errors.New("agent: a TLS identity is required")
	}
	if c.Identity.Role != pki.RoleAgent {
		return fmt.Errorf("agent: identity %q has role %q, want agent", c.Identity.Name, c.Identity.Role)
	}
	if len(c.Drivers) == 0 {
		return errors.New("agent: no drivers")
	}
	if c.CPUs < 0 || c.MemoryBytes < 0 {
		return errors.New("agent: negative capacity")
	}
	switch c.ImageTransfer {
	case "", ImageTransferCAS, ImageTransferTar, ImageTransferStream:
	default:
		return fmt.Errorf("agent: image transfer %q: want %s, %s or %s", c.ImageTransfer, ImageTransferCAS, ImageTransferTar, ImageTransferStream)
	}
	return nil
}

// Agent is a running node daemon.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	store   store
	drivers map[string]driver.Driver
	peerTLS *tls.Config

	ln     net.Listener
	srv    *http.Server
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// moving counts outbound moves in flight; Close waits for them to
	// finish their abort path.
	moving sync.WaitGroup
	closed bool

	mu       sync.Mutex
	records  map[string]*record
	busy     map[string]string             // task id → operation in flight
	moves    map[string]context.CancelFunc // outbound moves, for cancel
	liveOuts map[string]*liveOut           // streamed checkpoint moves awaiting their fetch
	incoming map[string]*incomingSession   // by task id
	conns    map[net.Conn]struct{}         // hijacked tunnel connections
	stale    map[string]string             // driver task id → reason (no usable record)

	// Replicas of periodic checkpoints (replica.go): kept for other
	// nodes, being received, and this node's pushes by task id.
	replicas  map[string]*replicaEntry
	receiving map[string]*receiveSlot
	pushes    map[string]*pushState
	peerDrops int // dropAtPeer calls in flight

	// afterSnapshot, if set (tests), is called between writing a
	// checkpoint's snapshot and queueing its push.
	afterSnapshot func(id string)
}

// New prepares an agent: it loads the records in the data dir and
// re-attaches to the drivers' tasks. Call Start to serve.
func New(cfg Config) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.FreeSpace == nil {
		cfg.FreeSpace = freeSpace
	}
	if cfg.IncomingTimeout <= 0 {
		cfg.IncomingTimeout = 60 * time.Second
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = float64(runtime.NumCPU())
	}
	if cfg.MemoryBytes == 0 {
		cfg.MemoryBytes = machineMemory()
	}
	for _, d := range []string{"tasks", "run"} {
		if err := os.MkdirAll(filepath.Join(cfg.DataDir, d), 0o700); err != nil {
			return nil, err
		}
	}
	a := &Agent{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "agent", "node", cfg.Name),
		store:    store{dir: filepath.Join(cfg.DataDir, "tasks")},
		drivers:  map[string]driver.Driver{},
		peerTLS:  cfg.Identity.ClientConfig(),
		busy:     map[string]string{},
		moves:    map[string]context.CancelFunc{},
		liveOuts: map[string]*liveOut{},
		incoming: map[string]*incomingSession{},
		conns:    map[net.Conn]struct{}{},
		stale:    map[string]string{},

		replicas:  map[string]*replicaEntry{},
		receiving: map[string]*receiveSlot{},
		pushes:    map[string]*pushState{},
	}
	for _, d := range cfg.Drivers {
		a.drivers[d.Kind()] = d
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	recs, errs := a.store.load()
	for _, err := range errs {
		a.log.Warn("skipping unreadable record", "err", err)
	}
	a.records = recs
	if err := a.openReplicas(); err != nil {
		return nil, fmt.Errorf("agent: replicas: %w", err)
	}
	return a, nil
}

// Start binds the listen address, re-attaches to running tasks and serves
// until Close.
func (a *Agent) Start() error {
	ln, err := net.Listen("tcp", a.cfg.Listen)
	if err != nil {
		return err
	}
	a.ln = ln
	if a.cfg.Advertise == "" {
		a.cfg.Advertise = ln.Addr().String()
	}
	a.srv = &http.Server{
		Handler:           a.routes(),
		TLSConfig:         a.cfg.Identity.ServerConfig(),
		ReadHeaderTimeout: 10 * time.Second,
		// HTTP/1.1 only: the tunnel is an Upgrade.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     slog.NewLogLogger(a.log.Handler(), slog.LevelDebug),
	}
	a.recover()
	// Open the chunk store now rather than at the first transfer, where
	// it held up a task's first move on both nodes (cas.Open of a new
	// store took 94–142 ms here).
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.chunkStore()
	}()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := a.srv.Serve(tls.NewListener(ln, a.srv.TLSConfig)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("serve", "err", err)
		}
	}()
	a.log.Info("agent serving", "addr", a.cfg.Advertise, "drivers", a.driverKinds())
	return nil
}

// Addr is the address peers reach this agent on.
func (a *Agent) Addr() string { return a.cfg.Advertise }

// Close stops serving and drops in-flight tunnels, without stopping the
// tasks: they keep running and a new agent on the same data dir re-attaches
// to them. An outbound move in flight fails (its source is resumed by the
// abort path, or by the next agent's recovery).
func (a *Agent) Close() error {
	a.cancel()
	var err error
	if a.srv != nil {
		err = a.srv.Close()
	}
	a.mu.Lock()
	a.closed = true
	for c := range a.conns {
		c.Close()
	}
	for _, s := range a.incoming {
		s.stopTimer()
	}
	a.mu.Unlock()
	a.moving.Wait()
	a.wg.Wait()
	return err
}

func (a *Agent) driverKinds() []string {
	var ks []string
	for k := range a.drivers {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// peer returns a client for another agent.
func (a *Agent) peer(addr string) *client.Client {
	return client.New(addr, a.peerTLS)
}

// driverFor picks the driver of a run request.
func (a *Agent) driverFor(kind string, spec *driver.Spec) (driver.Driver, error) {
	if kind == "" {
		switch {
		case spec.VM != nil && spec.Process == nil:
			kind = "qemu"
		case spec.Process != nil && spec.VM == nil:
			kind = "process"
		default:
			return nil, fmt.Errorf("%w: task %q: exactly one of vm and process must be set", driver.ErrInvalidSpec, spec.ID)
		}
	}
	d, ok := a.drivers[kind]
	if !ok {
		return nil, fmt.Errorf("%w: driver %q not on node %s (have %v)", driver.ErrUnsupported, kind, a.cfg.Name, a.driverKinds())
	}
	return d, nil
}

// validateSpec checks what the agent itself relies on; drivers check the rest.
func validateSpec(spec *driver.Spec) error {
	if err := api.ValidID(spec.ID); err != nil {
		return err
	}
	if spec.CPUs < 0 || spec.MemoryBytes < 0 {
		return fmt.Errorf("%w: task %q: negative demand (cpus %v, memory %d)", driver.ErrInvalidSpec, spec.ID, spec.CPUs, spec.MemoryBytes)
	}
	if (spec.VM == nil) == (spec.Process == nil) {
		return fmt.Errorf("%w: task %q: exactly one of vm and process must be set", driver.ErrInvalidSpec, spec.ID)
	}
	return nil
}

// occupies reports whether a record's task holds node resources.
func occupies(p api.Phase) bool {
	return p == api.PhaseRunning || p == api.PhaseIncoming || p == api.PhaseMigratingOut
}

// usedLocked sums the demands of tasks holding resources. Caller holds mu.
func (a *Agent) usedLocked() (float64, int64) {
	var cpu float64
	var mem int64
	for _, r := range a.records {
		if occupies(r.Phase) {
			cpu += r.Spec.CPUs
			mem += r.Spec.MemoryBytes
		}
	}
	return cpu, mem
}

// fitsLocked refuses a demand the node cannot hold. Caller holds mu.
func (a *Agent) fitsLocked(spec *driver.Spec) error {
	cpu, mem := a.usedLocked()
	if spec.MemoryBytes > a.cfg.MemoryBytes-mem {
		return fmt.Errorf("%w: task %q needs %d bytes of memory; node %s has %d of %d free", driver.ErrInsufficient, spec.ID, spec.MemoryBytes, a.cfg.Name, a.cfg.MemoryBytes-mem, a.cfg.MemoryBytes)
	}
	if spec.CPUs > a.cfg.CPUs-cpu+1e-9 {
		return fmt.Errorf("%w: task %q needs %.2f cpus; node %s has %.2f of %.2f free", driver.ErrInsufficient, spec.ID, spec.CPUs, a.cfg.Name, a.cfg.CPUs-cpu, a.cfg.CPUs)
	}
	return nil
}

// acquireLocked marks id busy with op, or fails with ErrBusy.
func (a *Agent) acquireLocked(id, op string) error {
	if err := a.busyLocked(id); err != nil {
		return err
	}
	a.busy[id] = op
	return nil
}

// busyLocked is ErrBusy naming the operation id is marked busy with, or
// nil when it is not marked. Caller holds mu.
func (a *Agent) busyLocked(id string) error {
	if cur, ok := a.busy[id]; ok {
		return fmt.Errorf("%w: task %q is busy with %s", driver.ErrBusy, id, cur)
	}
	return nil
}

func (a *Agent) release(id string) {
	a.mu.Lock()
	delete(a.busy, id)
	a.mu.Unlock()
}

// checkEpochLocked returns the task's record if epoch matches it.
func (a *Agent) checkEpochLocked(id string, epoch uint64) (*record, error) {
	if err := api.ValidID(id); err != nil {
		return nil, err
	}
	r, ok := a.records[id]
	if !ok || r.Phase == api.PhaseMoved && epoch > r.Epoch {
		return nil, fmt.Errorf("%w: task %q on node %s", driver.ErrNotFound, id, a.cfg.Name)
	}
	if epoch == 0 {
		return nil, fmt.Errorf("%w: task %q: epoch is required (node %s holds epoch %d)", driver.ErrInvalidSpec, id, a.cfg.Name, r.Epoch)
	}
	if epoch != r.Epoch {
		return nil, fmt.Errorf("%w: task %q: request has epoch %d, node %s holds epoch %d", api.ErrStaleEpoch, id, epoch, a.cfg.Name, r.Epoch)
	}
	if r.Phase == api.PhaseMoved {
		return nil, fmt.Errorf("%w: task %q moved to %s at epoch %d; this node no longer owns it", api.ErrStaleEpoch, id, r.Peer, r.Epoch)
	}
	return r, nil
}

// mayActLocked admits caller, the name in an agent's certificate, to act
// on the image of rec (act: "fetch its image", "release it"): only the
// agent the record binds (record.PeerName) may — the destination of a
// checkpoint move, the agent the controller granted a suspended image to
// (handleGrant). A record that binds no agent admits none. Caller holds mu.
func (a *Agent) mayActLocked(rec *record, caller, act string) error {
	if rec.PeerName == "" {
		return fmt.Errorf("%w: task %q on %s is %s and bound to no peer; node %q may not %s", api.ErrForbidden, rec.ID, a.cfg.Name, rec.Phase, caller, act)
	}
	if caller != rec.PeerName {
		return fmt.Errorf("%w: task %q on %s (%s) is bound to node %q; node %q may not %s", api.ErrForbidden, rec.ID, a.cfg.Name, rec.Phase, rec.PeerName, caller, act)
	}
	return nil
}

// mayAskResume admits a resume asked by a caller of role with the name
// caller: the controller may ask any; another agent only the resume of a
// task from its own image — the source of a checkpoint move asks its
// destination — so the certificate at req.From must be the caller's.
// Otherwise any agent could move any suspended task to any node.
func (a *Agent) mayAskResume(ctx context.Context, role pki.Role, caller string, req api.ResumeRequest) error {
	if role != pki.RoleAgent {
		return nil
	}
	if req.From == "" || req.Replica {
		return fmt.Errorf("%w: node %q may ask node %s only to resume a task from its own image (from %q, replica %t)", api.ErrForbidden, caller, a.cfg.Name, req.From, req.Replica)
	}
	name, err := a.peerName(ctx, req.From)
	if err != nil {
		// Its kind, not forbidden: a network error says nothing of the
		// caller (a non-agent certificate there is forbidden already).
		return fmt.Errorf("node %q asks node %s to resume a task from %s, whose certificate cannot be checked: %w", caller, a.cfg.Name, req.From, err)
	}
	if name != caller {
		return fmt.Errorf("%w: node %q asks node %s to resume a task from %s, which is node %q; an agent may ask only from its own image", api.ErrForbidden, caller, a.cfg.Name, req.From, name)
	}
	return nil
}

// put persists r and installs it in the map. Caller holds mu.
func (a *Agent) putLocked(r *record) error {
	if err := a.store.put(r); err != nil {
		return fmt.Errorf("persist record of task %q: %w", r.ID, err)
	}
	a.records[r.ID] = r
	return nil
}

// freeSpace is statfs's available bytes under path.
func freeSpace(path string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// machineMemory reads MemTotal from /proc/meminfo.
func machineMemory() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 2 && fs[0] == "MemTotal:" {
			kb, _ := strconv.ParseInt(fs[1], 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// writeJSON writes v with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, err error) {
	e, status := api.ErrorFor(err)
	writeJSON(w, status, e)
}
