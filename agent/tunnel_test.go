package agent

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"io"
	"net"
	"path/filepath"
	"testing"

	"github.com/ferrycluster/ferry/pki"
)

// The tunnel's byte path without QEMU: a writer on a unix socket → agent
// pipe → mutual TLS → agent pipe → a reader on another unix socket, with
// half-close carried end to end and an answer coming back.
func TestPipeCarriesStreamBothWaysWithHalfClose(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	srcID, dstID := ca.identity("node-a", pki.RoleAgent), ca.identity("node-b", pki.RoleAgent)
	dir := t.TempDir()

	// Destination "QEMU": reads everything, answers with its digest.
	dstSock := filepath.Join(dir, "dst.sock")
	dstLn, err := net.Listen("unix", dstSock)
	if err != nil {
		t.Fatal(err)
	}
	defer dstLn.Close()
	digest := make(chan []byte, 1)
	go func() {
		c, err := dstLn.Accept()
		if err != nil {
			digest <- nil
			return
		}
		defer c.Close()
		h := sha256.New()
		io.Copy(h, c)
		sum := h.Sum(nil)
		c.Write(sum)
		digest <- sum
	}()

	// Destination agent: TLS server piping to the destination socket.
	tln, err := tls.Listen("tcp", "127.0.0.1:0", dstID.ServerConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer tln.Close()
	go func() {
		c, err := tln.Accept()
		if err != nil {
			return
		}
		q, err := net.Dial("unix", dstSock)
		if err != nil {
			c.Close()
			return
		}
		pipe(c, q)
	}()

	// Source agent: accepts the source "QEMU" on a unix socket and pipes
	// it into TLS.
	srcSock := filepath.Join(dir, "src.sock")
	srcLn, err := net.Listen("unix", srcSock)
	if err != nil {
		t.Fatal(err)
	}
	defer srcLn.Close()
	tc, err := tls.Dial("tcp", tln.Addr().String(), srcID.ClientConfig())
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		c, err := srcLn.Accept()
		if err != nil {
			tc.Close()
			return
		}
		pipe(c, tc)
	}()

	// Source "QEMU": writes 24 MiB, half-closes, reads the answer.
	payload := make([]byte, 24<<20)
	rand.Read(payload)
	want := sha256.Sum256(payload)
	c, err := net.Dial("unix", srcSock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	c.(*net.UnixConn).CloseWrite()
	answer, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if got := <-digest; !bytes.Equal(got, want[:]) {
		t.Fatal("destination received different bytes")
	}
	if !bytes.Equal(answer, want[:]) {
		t.Fatalf("answer %x, want %x", answer, want)
	}
}
