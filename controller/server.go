package controller

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrycluster/ferry/agent/client"
	"github.com/ferrycluster/ferry/controller/executor"
	"github.com/ferrycluster/ferry/pki"
	"github.com/ferrycluster/ferry/policy"
	"github.com/ferrycluster/ferry/store"
)

// ServerConfig configures `ferry server`.
type ServerConfig struct {
	// ID of this server in the raft cluster (default: the identity name).
	ID      string
	DataDir string
	// Listen is the API address; RaftListen the raft address (default: the
	// API port + 1 on the same host; any free port when Listen's port is 0).
	Listen, RaftListen string
	Bootstrap          bool
	// Join is the API address of a member to join through.
	Join string
	// TLSDir holds ca.crt and the server identity NAME.crt/.key (role server).
	TLSDir, Identity string
	Policy           policy.Policy
	Limits           executor.Limits
	Period           time.Duration
	HeartbeatTimeout time.Duration
	// Fast shortens raft's timeouts (ferry dev, tests).
	Fast   bool
	Logger *slog.Logger
	// Dial overrides how the controller reaches agents (the benchmark's
	// in-process fake agents); nil means agent/client over mutual TLS.
	Dial func(addr string) AgentAPI
	// SolveTimeout bounds the planner (default 2s).
	SolveTimeout time.Duration
}

// Server is a running `ferry server`: store, controller and API.
type Server struct {
	Store      *store.Store
	Controller *Controller
	API        *API
	Images     *ImageServer
	// AdminTokenFile is where a bootstrap wrote the first admin token ("" if
	// none was created).
	AdminTokenFile string

	http   *http.Server
	ln     net.Listener
	cancel context.CancelFunc
	wg     sync.WaitGroup
	log    *slog.Logger
}

// StartServer opens the store, starts the loop and serves the API.
func StartServer(ctx context.Context, cfg ServerConfig) (*Server, error) {
	lg := cfg.Logger
	if lg == nil {
		lg = slog.Default()
	}
	if cfg.Identity == "" {
		cfg.Identity = "server"
	}
	if cfg.ID == "" {
		cfg.ID = cfg.Identity
	}
	if cfg.Policy == nil {
		return nil, errors.New("server: no policy")
	}
	id, err := pki.Load(cfg.TLSDir, cfg.Identity)
	if err != nil {
		return nil, fmt.Errorf("server identity: %w", err)
	}
	if id.Role != pki.RoleServer {
		return nil, fmt.Errorf("server identity %s has role %s, want server", cfg.Identity, id.Role)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, err
	}
	ln, err := tls.Listen("tcp", cfg.Listen, id.ServerConfig())
	if err != nil {
		return nil, err
	}
	apiAddr := ln.Addr().String()
	if cfg.RaftListen == "" {
		host, port, _ := net.SplitHostPort(apiAddr)
		if _, asked, _ := net.SplitHostPort(cfg.Listen); asked == "0" {
			port = "-1" // an ephemeral API port: let raft pick its own too
		}
		p, _ := strconv.Atoi(port)
		cfg.RaftListen = net.JoinHostPort(host, strconv.Itoa(p+1))
	}
	st, err := store.Open(store.Config{
		ID: cfg.ID, DataDir: filepath.Join(cfg.DataDir, "raft"), RaftAddr: cfg.RaftListen, APIAddr: apiAddr,
		Bootstrap: cfg.Bootstrap, ServerTLS: id.ServerConfig(), ClientTLS: id.ClientConfig(), Fast: cfg.Fast, Logger: lg,
	})
	if err != nil {
		ln.Close()
		return nil, err
	}
	s := &Server{Store: st, ln: ln, log: lg.With("component", "server")}
	tokPath := filepath.Join(cfg.DataDir, "tokens.json")
	_, err = os.Stat(tokPath)
	switch {
	case errors.Is(err, os.ErrNotExist) && cfg.Join != "":
		// A joining server checks the same tokens as the cluster: it
		// fetches their hashes from the member it joins through, over
		// mutual TLS with its server certificate.
		if err := fetchTokens(ctx, cfg.Join, id.ClientConfig(), tokPath); err != nil {
			st.Close()
			ln.Close()
			return nil, err
		}
		s.log.Info("fetched the cluster's API tokens", "from", cfg.Join, "file", tokPath)
	case errors.Is(err, os.ErrNotExist):
		secret, err := NewSecret()
		if err != nil {
			st.Close()
			ln.Close()
			return nil, err
		}
		if err := AddToken(tokPath, "admin", RoleAdmin, secret); err != nil {
			st.Close()
			ln.Close()
			return nil, err
		}
		s.AdminTokenFile = filepath.Join(cfg.DataDir, "admin.token")
		if err := os.WriteFile(s.AdminTokenFile, []byte(secret+"\n"), 0o600); err != nil {
			st.Close()
			ln.Close()
			return nil, err
		}
		s.log.Info("created the first admin token", "file", s.AdminTokenFile)
	}
	toks, err := LoadTokens(tokPath)
	if err != nil {
		st.Close()
		ln.Close()
		return nil, err
	}
	clientTLS := id.ClientConfig()
	dial := cfg.Dial
	if dial == nil {
		dial = func(addr string) AgentAPI { return dialAgent(addr, clientTLS) }
	}
	s.Controller = New(Config{
		Store: st, Policy: cfg.Policy, Limits: cfg.Limits, Period: cfg.Period, HeartbeatTimeout: cfg.HeartbeatTimeout, Logger: lg,
		Dial: dial, SolveTimeout: cfg.SolveTimeout,
	})
	s.API = &API{Store: st, Controller: s.Controller, Tokens: toks, PeerTLS: clientTLS}
	s.Images = newImageServer(cfg.DataDir, lg)
	s.http = &http.Server{Handler: withImages(s.API.Handler(), s.Images), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(lg.Handler(), slog.LevelWarn)}
	rctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		_ = s.http.Serve(ln)
	}()
	go func() {
		defer s.wg.Done()
		_ = s.Controller.Run(rctx)
	}()
	if cfg.Join != "" {
		if err := s.join(ctx, cfg.Join, store.Server{ID: cfg.ID, RaftAddr: st.RaftAddr(), APIAddr: apiAddr}, clientTLS); err != nil {
			s.Close()
			return nil, err
		}
	}
	s.log.Info("serving", "api", apiAddr, "raft", st.RaftAddr(), "id", cfg.ID)
	return s, nil
}

// join asks a member (forwarded to the leader) to add this server.
func (s *Server) join(ctx context.Context, addr string, me store.Server, tc *tls.Config) error {
	body, _ := json.Marshal(me)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 30 * time.Second}
	var last error
	for attempt := 0; attempt < 30; attempt++ {
		req, _ := http.NewRequestWithContext(ctx, "POST", "https://"+addr+"/v1/cluster/join", bytes.NewReader(body))
		resp, err := hc.Do(req)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			err = fmt.Errorf("join through %s: %s: %s", addr, resp.Status, bytes.TrimSpace(b))
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	return last
}

// fetchTokens copies the cluster's token hashes from the member at addr
// (GET /v1/cluster/tokens, answered only to server certificates) into path,
// mode 0600. It retries for about 30 s (the member may be starting). The
// list is checked (ParseTokens, not empty) before path is written, and
// written atomically: a bad list leaves no file, so the next start fetches
// again.
func fetchTokens(ctx context.Context, addr string, tc *tls.Config, path string) error {
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	var last error
	for attempt := 0; attempt < 30; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Second):
			}
		}
		req, _ := http.NewRequestWithContext(ctx, "GET", "https://"+addr+"/v1/cluster/tokens", nil)
		resp, err := hc.Do(req)
		if err != nil {
			last = err
			continue
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b))
			if resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusUnauthorized {
				attempt = 30 // a refusal will not change
			}
		}
		if err != nil {
			last = err
			continue
		}
		// Checked in memory before anything is written: a bad list must
		// not stay on disk (a later start would take it instead of
		// fetching again).
		list, err := ParseTokens(b)
		if err == nil && len(list) == 0 {
			err = fmt.Errorf("%w: no token (this server's API would refuse everyone)", store.ErrInvalid)
		}
		if err != nil {
			return fmt.Errorf("join: tokens from %s: %w; nothing written to %s", addr, err, path)
		}
		return writeTokens(path, list)
	}
	return fmt.Errorf("join: cannot fetch the cluster's API tokens from %s (%v); this server's certificate must have role server and be signed by the cluster CA, "+
		"and %s must be a reachable member; or copy tokens.json (mode 0600) from a member's --data-dir into this one and start again", addr, last, addr)
}

// Addr is the API address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the API, the loop and the store.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.http.Shutdown(ctx)
	s.http.Close()
	// Image sends run on hijacked connections, which neither Shutdown nor
	// Close ends.
	s.Images.Close()
	s.cancel()
	s.wg.Wait()
	return s.Store.Close()
}

// NewSecret returns a random token secret.
func NewSecret() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return "fry_" + hex.EncodeToString(b), nil
}

// certBoundAgent is an agent client that remembers the pki name of the
// agent certificate its connections were verified against, so the
// controller can check that an agent's reported node name is the one its
// certificate carries (see checkAgentName).
type certBoundAgent struct {
	AgentAPI
	name atomic.Pointer[string]
}

// CertName returns the name in the agent's verified certificate, "" before
// the first connection.
func (b *certBoundAgent) CertName() string {
	if p := b.name.Load(); p != nil {
		return *p
	}
	return ""
}

// dialAgent returns the client of the agent at addr; every connection must
// present a certificate with role agent, whose name is recorded.
func dialAgent(addr string, base *tls.Config) AgentAPI {
	b := &certBoundAgent{}
	tc := base.Clone()
	tc.VerifyConnection = func(cs tls.ConnectionState) error {
		role, name, err := pki.PeerRole(&cs)
		if err != nil {
			return fmt.Errorf("agent %s: %w", addr, err)
		}
		if role != pki.RoleAgent {
			return fmt.Errorf("%w: %s presents a %s certificate (%q), want an agent's", ErrForbidden, addr, role, name)
		}
		b.name.Store(&name)
		return nil
	}
	b.AgentAPI = client.New(addr, tc)
	return b
}
