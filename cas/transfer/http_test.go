package transfer

import (
	"bytes"
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

// The protocol over HTTPS (httptest's throwaway self-signed certificate),
// HTTP/2 and HTTP/1.1 full duplex, as the agent mounts it.
func TestOverHTTPS(t *testing.T) {
	for _, h2 := range []bool{true, false} {
		name := "http1"
		if h2 {
			name = "http2"
		}
		t.Run(name, func(t *testing.T) {
			rc := newReceiver(t, openStore(t))
			results := make(chan received, 1)
			srv := httptest.NewUnstartedServer(Handler(rc, func(r ReceiveResult, err error) { results <- received{r, err} }))
			srv.EnableHTTP2 = h2
			srv.StartTLS()
			defer srv.Close()
			src, data := image(t, 120, 70)
			conn, err := Dial(context.Background(), srv.Client(), srv.URL+"/v1/cas/push")
			if err != nil {
				t.Fatal(err)
			}
			res, err := SendFile(context.Background(), conn, src, SendOptions{ID: "h", Name: "img", Compress: true})
			conn.Close()
			if err != nil {
				t.Fatal(err)
			}
			r := <-results
			if r.err != nil {
				t.Fatal(r.err)
			}
			got, _ := os.ReadFile(filepath.Join(rc.DestDir, "img"))
			if !bytes.Equal(got, data) || res.ChunksSent != res.Index.Stats().UniqueChunks {
				t.Fatalf("rebuilt file differs or wrong count: %d", res.ChunksSent)
			}
		})
	}
}
