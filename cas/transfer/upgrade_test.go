package transfer

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

// The agent's pattern: an HTTP/1.1 Upgrade turns the request's connection
// into a raw stream, and Hijacked keeps bytes either side had buffered.
func TestOverHTTPUpgrade(t *testing.T) {
	rc := newReceiver(t, nil)
	out := make(chan received, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ferry-cas/1\r\n\r\n")
		brw.Flush()
		res, err := rc.Serve(r.Context(), Hijacked(conn, brw.Reader))
		out <- received{res, err}
	}))
	defer srv.Close()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("POST /v1/cas/push HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: ferry-cas/1\r\n\r\n"))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	src, data := image(t, 60, 90)
	if _, err := SendFile(context.Background(), Hijacked(conn, br), src, SendOptions{ID: "u", Name: "u.raw"}); err != nil {
		t.Fatal(err)
	}
	if r := <-out; r.err != nil {
		t.Fatal(r.err)
	}
	if got, _ := os.ReadFile(filepath.Join(rc.DestDir, "u.raw")); !bytes.Equal(got, data) {
		t.Fatal("file differs")
	}
}
