package controller

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/agent"
	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/driver/process"
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

// startImpostor starts an agent that calls itself name but holds cert's
// certificate.
func (c *testCluster) startImpostor(name, cert, listen string) *agent.Agent {
	t := c.t
	t.Helper()
	issue(t, c.tlsDir, cert, pki.RoleAgent)
	id, err := pki.Load(c.tlsDir, cert)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	d, err := process.New(process.Config{DataDir: filepath.Join(dir, "drivers", "process"), NoCgroups: true, StopGrace: 2 * time.Second, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	ag, err := agent.New(agent.Config{Name: name, DataDir: dir, Listen: listen, CPUs: 2, MemoryBytes: 4 << 30,
		Identity: id, Drivers: []driver.Driver{d}, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	if err := ag.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ag.Close(); d.Close() })
	return ag
}

// A polled agent is bound to its certificate too: registering an agent
// whose node name is not its certificate's is refused (403), and an agent
// answering on a registered node's address with another node's
// certificate is not taken as that node's heartbeat (the node goes down).
func TestE2EPolledAgentBoundToItsCertificate(t *testing.T) {
	c := newTestCluster(t, 1, 2)
	imp := c.startImpostor("n9", "x9", "127.0.0.1:0")
	if _, err := c.cli.AddNode(ctx(t), imp.Addr(), nil); !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), `reports node "n9" but its certificate is "x9"'s`) {
		t.Fatalf("registering n9 holding x9's certificate: got %v, want ErrForbidden naming both", err)
	}
	c.srv.Store.View(func(s *store.State) {
		if s.Nodes["n9"] != nil {
			t.Error("refused agent registered")
		}
	})
	addr := c.agents["n1"].addr
	c.stopAgent("n1", true)
	c.startImpostor("n1", "x1", addr)
	c.waitFor("n1 down: its address answers with x1's certificate", 30*time.Second, func() bool {
		var st store.NodeStatus
		c.srv.Store.View(func(s *store.State) { st = s.Nodes["n1"].Status })
		return st == store.NodeDown
	})
}
