package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func newCA(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := Init(dir, time.Now()); err != nil {
		t.Fatal(err)
	}
	return dir
}

func issue(t *testing.T, dir, name string, role Role) *Identity {
	t.Helper()
	if err := Issue(dir, IssueRequest{Name: name, Role: role, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}, time.Now()); err != nil {
		t.Fatal(err)
	}
	id, err := Load(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestInitIssueLoad(t *testing.T) {
	dir := newCA(t)
	if err := Init(dir, time.Now()); !errors.Is(err, ErrExists) {
		t.Fatalf("second init: %v, want ErrExists", err)
	}
	id := issue(t, dir, "node-a", RoleAgent)
	if id.Role != RoleAgent || id.Name != "node-a" {
		t.Fatalf("identity %+v", id)
	}
	for _, f := range []string{filepath.Join(dir, CAKeyFile), KeyFile(dir, "node-a")} {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, st.Mode().Perm())
		}
	}
	if err := Issue(dir, IssueRequest{Name: "node-a", Role: RoleAgent}, time.Now()); !errors.Is(err, ErrExists) {
		t.Fatalf("reissue: %v", err)
	}
	for _, bad := range []IssueRequest{{Name: "../x", Role: RoleAgent}, {Name: "ca", Role: RoleAgent}, {Name: "ok", Role: "root"}, {Name: "", Role: RoleAgent}} {
		if err := Issue(dir, bad, time.Now()); !errors.Is(err, ErrInvalid) {
			t.Errorf("Issue(%+v) = %v, want ErrInvalid", bad, err)
		}
	}
	if err := Issue(t.TempDir(), IssueRequest{Name: "x", Role: RoleAgent}, time.Now()); err == nil {
		t.Fatal("issue without a CA succeeded")
	}
	r, n, err := RoleOf(id.Cert.Leaf)
	if err != nil || r != RoleAgent || n != "node-a" {
		t.Fatalf("RoleOf = %v %v %v", r, n, err)
	}
}

// handshake runs a TLS server with srv and dials it with cli; it returns the
// role the server saw, or the first error of either side.
func handshake(t *testing.T, srv, cli *tls.Config) (Role, error) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		role Role
		err  error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- res{err: err}
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			ch <- res{err: err}
			return
		}
		cs := tc.ConnectionState()
		r, _, err := PeerRole(&cs)
		c.Write([]byte("x"))
		ch <- res{r, err}
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), cli)
	if err == nil {
		// TLS 1.3 reports a rejected client certificate on first read.
		_, err = io.ReadFull(c, make([]byte, 1))
		c.Close()
	}
	r := <-ch
	if err != nil {
		return "", err
	}
	return r.role, r.err
}

func TestMutualTLS(t *testing.T) {
	dir := newCA(t)
	agent := issue(t, dir, "a", RoleAgent)
	ctl := issue(t, dir, "ctl", RoleServer)
	role, err := handshake(t, agent.ServerConfig(), ctl.ClientConfig())
	if err != nil || role != RoleServer {
		t.Fatalf("handshake: role %q err %v", role, err)
	}
	if cs := agent.ServerConfig(); cs.MinVersion != tls.VersionTLS13 || cs.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Fatal("server config is not TLS 1.3 with required client certs")
	}

	// A client from another cluster is refused.
	other := newCA(t)
	stranger := issue(t, other, "ctl", RoleServer)
	if _, err := handshake(t, agent.ServerConfig(), stranger.ClientConfig()); err == nil {
		t.Fatal("foreign client accepted")
	}
	// A client without a certificate is refused.
	noCert := ctl.ClientConfig()
	noCert.Certificates = nil
	if _, err := handshake(t, agent.ServerConfig(), noCert); err == nil {
		t.Fatal("client without certificate accepted")
	}
	// A server from another cluster is refused by the client.
	if _, err := handshake(t, stranger.ServerConfig(), ctl.ClientConfig()); err == nil {
		t.Fatal("foreign server accepted")
	}
}

func TestRoleOfRejectsInconsistentRole(t *testing.T) {
	dir := newCA(t)
	id := issue(t, dir, "a", RoleClient)
	c := *id.Cert.Leaf
	c.Subject.OrganizationalUnit = []string{"server"} // OU and URI disagree
	if _, _, err := RoleOf(&c); !errors.Is(err, ErrNoRole) {
		t.Fatalf("RoleOf = %v, want ErrNoRole", err)
	}
	c = *id.Cert.Leaf
	c.URIs = nil
	if _, _, err := RoleOf(&c); !errors.Is(err, ErrNoRole) {
		t.Fatalf("RoleOf without URI = %v, want ErrNoRole", err)
	}
}

func FuzzRoleOf(f *testing.F) {
	dir := f.TempDir()
	if err := Init(dir, time.Now()); err != nil {
		f.Fatal(err)
	}
	if err := Issue(dir, IssueRequest{Name: "a", Role: RoleAgent}, time.Now()); err != nil {
		f.Fatal(err)
	}
	id, err := Load(dir, "a")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(id.Cert.Certificate[0])
	f.Add([]byte("not a certificate"))
	f.Fuzz(func(t *testing.T, der []byte) {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return
		}
		r, _, err := RoleOf(c)
		if err == nil {
			if _, perr := ParseRole(string(r)); perr != nil {
				t.Fatalf("RoleOf returned invalid role %q", r)
			}
		}
	})
}
