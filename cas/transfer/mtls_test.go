package transfer

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/pki"
)

// The transfer over the cluster's mutual TLS (pki: TLS 1.3, both sides
// verified against a throwaway cluster CA), on a raw TLS connection as
// the agent gets after an HTTP Upgrade.
func TestOverClusterMTLS(t *testing.T) {
	ca := t.TempDir()
	now := time.Now()
	if err := pki.Init(ca, now); err != nil {
		t.Fatal(err)
	}
	ids := map[string]*pki.Identity{}
	for _, name := range []string{"node-a", "node-b"} {
		if err := pki.Issue(ca, pki.IssueRequest{Name: name, Role: pki.RoleAgent, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}, now); err != nil {
			t.Fatal(err)
		}
		id, err := pki.Load(ca, name)
		if err != nil {
			t.Fatal(err)
		}
		ids[name] = id
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", ids["node-b"].ServerConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	rc := newReceiver(t, openStore(t))
	out := make(chan received, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			out <- received{err: err}
			return
		}
		defer c.Close()
		res, err := rc.Serve(context.Background(), c)
		if err == nil {
			role, name, rerr := pki.PeerRole(ptr(c.(*tls.Conn).ConnectionState()))
			if rerr != nil || role != pki.RoleAgent || name != "node-a" {
				t.Errorf("peer %s %s %v", role, name, rerr)
			}
		}
		out <- received{res, err}
	}()
	conn, err := tls.Dial("tcp", ln.Addr().String(), ids["node-a"].ClientConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	src, data := image(t, 100, 80)
	if _, err := SendFile(context.Background(), conn, src, SendOptions{ID: "m", Name: "m.raw"}); err != nil {
		t.Fatal(err)
	}
	r := <-out
	if r.err != nil {
		t.Fatal(r.err)
	}
	if got, _ := os.ReadFile(filepath.Join(rc.DestDir, "m.raw")); !bytes.Equal(got, data) {
		t.Fatal("file differs")
	}
}

func ptr[T any](v T) *T { return &v }
