package controller

import (
	"errors"
	"strings"
	"testing"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/pki"
	"github.com/ferrycluster/ferry/store"
)

// An agent's certificate may push heartbeats only for its own node: n2's
// certificate reporting for n1 is refused with 403 and changes nothing;
// n1's own certificate is accepted.
func TestE2EHeartbeatBoundToNodeCertificate(t *testing.T) {
	c := newTestCluster(t, 2, 2)
	client := func(name string) *Client {
		id, err := pki.Load(c.tlsDir, name)
		if err != nil {
			t.Fatal(err)
		}
		return NewClient(c.srv.Addr(), id.ClientConfig(), "")
	}
	nodeAddr := func(name string) string {
		var addr string
		c.srv.Store.View(func(s *store.State) { addr = s.Nodes[name].Addr })
		return addr
	}
	before := nodeAddr("n1")
	forged := Heartbeat{Node: "n1", Addr: "127.0.0.1:1", Info: api.NodeInfo{Name: "n1", CPUs: 64, MemoryBytes: 1 << 40}}
	err := client("n2").Heartbeat(ctx(t), forged)
	if !errors.Is(err, ErrForbidden) {
		t.Fatalf("n2's certificate reporting for n1: got %v, want ErrForbidden (403)", err)
	}
	if !strings.Contains(err.Error(), `"n2" may report only for node "n2"`) {
		t.Fatalf("error does not say what is wrong: %v", err)
	}
	if got := nodeAddr("n1"); got != before {
		t.Fatalf("refused heartbeat changed n1's address: %q -> %q", before, got)
	}
	c.srv.Controller.mu.Lock()
	o := c.srv.Controller.obs["n1"]
	pushed := o != nil && o.pushed
	c.srv.Controller.mu.Unlock()
	if pushed {
		t.Fatal("refused heartbeat was recorded as n1's observation")
	}
	// A heartbeat for a node the cluster does not know is refused too (no
	// registration under a borrowed name).
	if err := client("n2").Heartbeat(ctx(t), Heartbeat{Node: "n9", Addr: "127.0.0.1:1"}); !errors.Is(err, ErrForbidden) {
		t.Fatalf("n2's certificate reporting for n9: got %v, want ErrForbidden", err)
	}
	c.srv.Store.View(func(s *store.State) {
		if s.Nodes["n9"] != nil {
			t.Error("refused heartbeat registered n9")
		}
	})
	// The node's own certificate is accepted.
	own := Heartbeat{Node: "n1", Addr: before, Info: api.NodeInfo{Name: "n1", CPUs: 2, MemoryBytes: 4 << 30}}
	if err := client("n1").Heartbeat(ctx(t), own); err != nil {
		t.Fatalf("n1's own heartbeat: %v", err)
	}
}
