package controller

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/pki"
	"github.com/ferrycluster/ferry/store"
)

// Three `ferry server`s on 127.0.0.1: writes sent to a follower are
// forwarded to the leader; when the leader dies the others elect a new one
// that has every write and accepts new ones through any survivor.
func TestHAThreeServersForwardAndFailOver(t *testing.T) {
	tlsDir := t.TempDir()
	if err := pki.Init(tlsDir, time.Now()); err != nil {
		t.Fatal(err)
	}
	issue(t, tlsDir, "cli", pki.RoleClient)
	var srvs []*Server
	defer func() {
		for _, s := range srvs {
			if s != nil {
				s.Close()
			}
		}
	}()
	var token string
	var dirs []string
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("s%d", i)
		issue(t, tlsDir, name, pki.RoleServer)
		cfg := ServerConfig{DataDir: t.TempDir(), Listen: "127.0.0.1:0", RaftListen: "127.0.0.1:0", TLSDir: tlsDir, Identity: name,
			Policy: Priority{}, Period: 200 * time.Millisecond, Fast: true, Logger: quietLog()}
		dirs = append(dirs, cfg.DataDir)
		if i == 0 {
			cfg.Bootstrap = true
		} else {
			// Nothing copied by hand: the joining server fetches the
			// token hashes over mutual TLS.
			cfg.Join = srvs[0].Addr()
		}
		s, err := StartServer(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		srvs = append(srvs, s)
		if i > 0 {
			want, _ := os.ReadFile(dirs[0] + "/tokens.json")
			got, err := os.ReadFile(cfg.DataDir + "/tokens.json")
			if err != nil || string(got) != string(want) {
				t.Fatalf("server %s's tokens %q (%v), want the bootstrap's %q", name, got, err, want)
			}
			if fi, _ := os.Stat(cfg.DataDir + "/tokens.json"); fi.Mode().Perm() != 0o600 {
				t.Fatalf("server %s's tokens.json has mode %o", name, fi.Mode().Perm())
			}
			if s.AdminTokenFile != "" {
				t.Fatalf("joining server %s minted its own admin token", name)
			}
		}
		if i == 0 {
			for !s.Store.IsLeader() {
				time.Sleep(20 * time.Millisecond)
			}
			b, _ := os.ReadFile(s.AdminTokenFile)
			token = strings.TrimSpace(string(b))
		}
	}
	id, _ := pki.Load(tlsDir, "cli")
	cli := func(s *Server) *Client { return NewClient(s.Addr(), id.ClientConfig(), token) }
	// The token hashes go to server certificates only, not to an operator
	// holding the admin token.
	if err := cli(srvs[0]).Call(ctx(t), "GET", "/v1/cluster/tokens", nil, nil); !errors.Is(err, ErrForbidden) {
		t.Fatalf("an operator's certificate with the admin token read the token list: %v", err)
	}
	submit := func(via *Server, name string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, err := cli(via).Submit(ctx(t), []byte(counterJob(name, 1, 1, 1, "")))
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("submit %s via %s: %v", name, via.Store.ID(), err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	has := func(s *Server, job string) bool {
		var ok bool
		s.Store.View(func(st *store.State) { ok = st.Jobs[job] != nil })
		return ok
	}
	waitAll := func(job string, among []*Server) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for _, s := range among {
			for !has(s, job) {
				if time.Now().After(deadline) {
					t.Fatalf("server %s never saw job %s", s.Store.ID(), job)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	// A write through a follower is forwarded to the leader.
	submit(srvs[2], "via-follower")
	waitAll("via-follower", srvs)
	if sv, err := cli(srvs[1]).Jobs(ctx(t)); err != nil || len(sv) != 1 {
		t.Fatalf("read from a follower: %v %v", sv, err)
	}

	// The leader dies; a survivor takes over with every write.
	srvs[0].Close()
	srvs[0] = nil
	rest := []*Server{srvs[1], srvs[2]}
	deadline := time.Now().Add(30 * time.Second)
	for !rest[0].Store.IsLeader() && !rest[1].Store.IsLeader() {
		if time.Now().After(deadline) {
			t.Fatal("no new leader")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, s := range rest {
		submit(s, "after-"+s.Store.ID())
	}
	waitAll("after-s1", rest)
	waitAll("after-s2", rest)
	waitAll("via-follower", rest)
}

// A joining server that cannot get the token list fails at once with an
// error that names the member and says what to do, and writes nothing.
func TestJoinTokenFetchRefusedSaysWhatToDo(t *testing.T) {
	c := newTestCluster(t, 0, 1)
	id, err := pki.Load(c.tlsDir, "cli") // role client, not server
	if err != nil {
		t.Fatal(err)
	}
	path := t.TempDir() + "/tokens.json"
	err = fetchTokens(ctx(t), c.srv.Addr(), id.ClientConfig(), path)
	if err == nil || !strings.Contains(err.Error(), "401 Unauthorized") || !strings.Contains(err.Error(), c.srv.Addr()) ||
		!strings.Contains(err.Error(), "copy tokens.json") {
		t.Fatalf("fetch with a client certificate: %v", err)
	}
	if _, serr := os.Stat(path); !errors.Is(serr, os.ErrNotExist) {
		t.Fatalf("a refused fetch wrote %s: %v", path, serr)
	}
}
