package store

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// Config configures one store server.
type Config struct {
	// ID names this server in the raft cluster (unique, stable).
	ID string
	// DataDir holds raft.db (log and stable store) and snapshots/.
	DataDir string
	// RaftAddr is the address raft listens on (host:port; port 0 picks one).
	RaftAddr string
	// APIAddr is this server's API address, recorded in the directory so
	// followers can forward writes to the leader's API.
	APIAddr string
	// Bootstrap a new one-server cluster when DataDir holds no state.
	Bootstrap bool
	// ServerTLS and ClientTLS, when set, wrap raft's connections in mutual
	// TLS (pki.Identity.ServerConfig and ClientConfig of a server identity).
	ServerTLS, ClientTLS *tls.Config
	// Fast shortens raft's timeouts (tests and `ferry dev`).
	Fast   bool
	Logger *slog.Logger
}

// Store is one server of the replicated state machine.
type Store struct {
	cfg       Config
	log       *slog.Logger
	raft      *raft.Raft
	bolt      *raftboltdb.BoltStore
	transport *raft.NetworkTransport
	fsm       *fsm
	done      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// fsm holds the state and implements raft.FSM.
type fsm struct {
	mu      sync.RWMutex
	state   *State
	version uint64
	changed chan struct{} // closed and replaced on every applied command
}

func (f *fsm) Apply(l *raft.Log) any {
	var c Command
	if err := json.Unmarshal(l.Data, &c); err != nil {
		return Result{Err: invalid("undecodable command at index %d: %v", l.Index, err)}
	}
	f.mu.Lock()
	r := f.state.Apply(&c)
	f.version++
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
	return r
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	b, err := json.Marshal(f.state)
	if err != nil {
		return nil, err
	}
	return snapshot(b), nil
}

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	st := NewState()
	if err := json.NewDecoder(rc).Decode(st); err != nil {
		return fmt.Errorf("store: restore snapshot: %w", err)
	}
	f.mu.Lock()
	f.state = st
	f.version++
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
	return nil
}

type snapshot []byte

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (snapshot) Release() {}

// Open starts a store server. With Bootstrap and an empty DataDir it forms a
// one-server cluster; otherwise it recovers its state from DataDir and waits
// to be contacted (or to be added with Join on the leader).
func Open(cfg Config) (*Store, error) {
	if cfg.ID == "" || cfg.DataDir == "" || cfg.RaftAddr == "" {
		return nil, fmt.Errorf("%w: store config needs ID, DataDir and RaftAddr", ErrInvalid)
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.Default()
	}
	lg = lg.With("component", "store", "server", cfg.ID)
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, err
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: slogWriter{lg}})
	rc.SnapshotThreshold = 4096
	rc.TrailingLogs = 2048
	if cfg.Fast {
		rc.HeartbeatTimeout = 300 * time.Millisecond
		rc.ElectionTimeout = 300 * time.Millisecond
		rc.LeaderLeaseTimeout = 150 * time.Millisecond
		rc.CommitTimeout = 5 * time.Millisecond
	}
	bolt, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.DataDir, "raft.db")})
	if err != nil {
		return nil, fmt.Errorf("store: open raft log: %w", err)
	}
	if err := os.Chmod(filepath.Join(cfg.DataDir, "raft.db"), 0o600); err != nil {
		bolt.Close()
		return nil, err
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, rc.Logger)
	if err != nil {
		bolt.Close()
		return nil, fmt.Errorf("store: snapshots: %w", err)
	}
	ln, err := net.Listen("tcp", cfg.RaftAddr)
	if err != nil {
		bolt.Close()
		return nil, fmt.Errorf("store: raft listen: %w", err)
	}
	stream := &streamLayer{Listener: ln, tls: cfg.ClientTLS}
	if cfg.ServerTLS != nil {
		stream.Listener = tls.NewListener(ln, cfg.ServerTLS)
	}
	trans := raft.NewNetworkTransportWithLogger(stream, 3, 10*time.Second, rc.Logger)
	f := &fsm{state: NewState(), changed: make(chan struct{})}
	r, err := raft.NewRaft(rc, f, bolt, bolt, snaps, trans)
	if err != nil {
		trans.Close()
		bolt.Close()
		return nil, fmt.Errorf("store: start raft: %w", err)
	}
	s := &Store{cfg: cfg, log: lg, raft: r, bolt: bolt, transport: trans, fsm: f, done: make(chan struct{})}
	if cfg.Bootstrap {
		has, err := raft.HasExistingState(bolt, bolt, snaps)
		if err != nil {
			s.Close()
			return nil, err
		}
		if !has {
			fut := r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{
				ID: rc.LocalID, Address: trans.LocalAddr(),
			}}})
			if err := fut.Error(); err != nil {
				s.Close()
				return nil, fmt.Errorf("store: bootstrap: %w", err)
			}
			lg.Info("bootstrapped a new cluster", "raft_addr", trans.LocalAddr())
		}
	}
	s.wg.Add(1)
	go s.registerSelf()
	return s, nil
}

// registerSelf keeps this server's entry in the directory current while it
// leads, so followers know where to forward writes.
func (s *Store) registerSelf() {
	defer s.wg.Done()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		if !s.IsLeader() {
			continue
		}
		ok := false
		s.View(func(st *State) {
			sv := st.Servers[s.cfg.ID]
			ok = sv != nil && sv.APIAddr == s.cfg.APIAddr && sv.RaftAddr == s.RaftAddr()
		})
		if ok {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := s.Apply(ctx, Command{AddServer: &Server{ID: s.cfg.ID, RaftAddr: s.RaftAddr(), APIAddr: s.cfg.APIAddr}})
		cancel()
		if err != nil {
			s.log.Warn("cannot record this server in the directory", "err", err)
		}
	}
}

// slogWriter forwards raft's log lines to slog.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.log.Warn(strings.TrimSpace(string(p)), "from", "raft")
	return len(p), nil
}

// streamLayer is raft's network layer, optionally over mutual TLS.
type streamLayer struct {
	net.Listener
	tls *tls.Config
}

func (l *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	if l.tls != nil {
		return tls.DialWithDialer(d, "tcp", string(addr), l.tls)
	}
	return d.Dial("tcp", string(addr))
}

// RaftAddr is the address raft listens on.
func (s *Store) RaftAddr() string { return string(s.transport.LocalAddr()) }

// ID is this server's id.
func (s *Store) ID() string { return s.cfg.ID }

// IsLeader reports whether this server may commit.
func (s *Store) IsLeader() bool { return s.raft.State() == raft.Leader }

// Leader returns the leader's id and raft address ("" when unknown).
func (s *Store) Leader() (id, raftAddr string) {
	a, i := s.raft.LeaderWithID()
	return string(i), string(a)
}

// LeaderAPI returns the leader's API address from the directory ("" when
// unknown), for forwarding writes.
func (s *Store) LeaderAPI() string {
	id, _ := s.Leader()
	if id == "" {
		return ""
	}
	var addr string
	s.View(func(st *State) {
		if sv := st.Servers[id]; sv != nil {
			addr = sv.APIAddr
		}
	})
	return addr
}

// WaitLeader waits until the cluster has a leader this server knows of.
func (s *Store) WaitLeader(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if id, _ := s.Leader(); id != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("store: no leader: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// LeaderCh signals leadership changes of this server.
func (s *Store) LeaderCh() <-chan bool { return s.raft.LeaderCh() }

// Apply validates c against the current state, proposes it and waits until
// it is committed and applied here. The returned error is the proposal's
// failure (ErrNotLeader, timeout); Result.Err is the command's own.
func (s *Store) Apply(ctx context.Context, c Command) (Result, error) {
	if s.raft.State() != raft.Leader {
		return Result{}, ErrNotLeader
	}
	if c.At == 0 {
		c.At = time.Now().UnixNano()
	}
	if c.Batch == nil {
		var err error
		s.View(func(st *State) { err = st.Check(&c) })
		if err != nil {
			return Result{Err: err}, nil
		}
	}
	b, err := json.Marshal(&c)
	if err != nil {
		return Result{}, fmt.Errorf("store: encode command: %w", err)
	}
	return s.ApplyRaw(ctx, b)
}

// ApplyRaw proposes an encoded command (forwarded from a follower).
func (s *Store) ApplyRaw(ctx context.Context, b []byte) (Result, error) {
	timeout := 10 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	fut := s.raft.Apply(b, timeout)
	if err := fut.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return Result{}, fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
		return Result{}, fmt.Errorf("store: apply: %w", err)
	}
	r, _ := fut.Response().(Result)
	return r, nil
}

// View runs fn with the state under a read lock. fn must not keep
// references past its return nor modify anything.
func (s *Store) View(fn func(*State)) {
	s.fsm.mu.RLock()
	defer s.fsm.mu.RUnlock()
	fn(s.fsm.state)
}

// Changed returns a channel closed at the next applied command, and the
// state's version now.
func (s *Store) Changed() (<-chan struct{}, uint64) {
	s.fsm.mu.RLock()
	defer s.fsm.mu.RUnlock()
	return s.fsm.changed, s.fsm.version
}

// Join adds a voter (on the leader only).
func (s *Store) Join(ctx context.Context, sv Server) error {
	if !s.IsLeader() {
		return ErrNotLeader
	}
	cf := s.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return err
	}
	member := false
	for _, x := range cf.Configuration().Servers {
		if x.ID == raft.ServerID(sv.ID) && x.Address == raft.ServerAddress(sv.RaftAddr) {
			member = true
			continue
		}
		if x.ID == raft.ServerID(sv.ID) || x.Address == raft.ServerAddress(sv.RaftAddr) {
			if err := s.raft.RemoveServer(x.ID, 0, 0).Error(); err != nil {
				return err
			}
		}
	}
	if !member {
		if err := s.raft.AddVoter(raft.ServerID(sv.ID), raft.ServerAddress(sv.RaftAddr), 0, 0).Error(); err != nil {
			return fmt.Errorf("store: add voter %s: %w", sv.ID, err)
		}
		s.log.Info("server joined", "id", sv.ID, "raft_addr", sv.RaftAddr)
	}
	r, err := s.Apply(ctx, Command{AddServer: &sv})
	if err != nil {
		return err
	}
	return r.Err
}

// Leave removes a server from the cluster (on the leader only).
func (s *Store) Leave(ctx context.Context, id string) error {
	if !s.IsLeader() {
		return ErrNotLeader
	}
	if err := s.raft.RemoveServer(raft.ServerID(id), 0, 0).Error(); err != nil {
		return err
	}
	r, err := s.Apply(ctx, Command{RemoveServer: &RemoveServer{ID: id}})
	if err != nil {
		return err
	}
	return r.Err
}

// Servers lists the raft configuration's members.
func (s *Store) Servers() ([]Server, error) {
	cf := s.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return nil, err
	}
	var out []Server
	for _, x := range cf.Configuration().Servers {
		sv := Server{ID: string(x.ID), RaftAddr: string(x.Address)}
		s.View(func(st *State) {
			if d := st.Servers[sv.ID]; d != nil {
				sv.APIAddr = d.APIAddr
			}
		})
		out = append(out, sv)
	}
	return out, nil
}

// Snapshot forces a raft snapshot (tests and operators).
func (s *Store) Snapshot() error { return s.raft.Snapshot().Error() }

// Close stops raft and closes the log.
func (s *Store) Close() error {
	s.closeOnce.Do(func() { close(s.done) })
	s.wg.Wait()
	err := s.raft.Shutdown().Error()
	if e := s.transport.Close(); err == nil {
		err = e
	}
	if e := s.bolt.Close(); err == nil {
		err = e
	}
	return err
}
