package transfer

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
)

// Handler serves the receiving side over HTTP: the request body carries
// the sender's frames and the response body the receiver's, full duplex
// (HTTP/2, or HTTP/1.1 with http.ResponseController.EnableFullDuplex). Mount
// it on the agent's authenticated (mTLS) server, e.g. at POST /v1/cas/push;
// authorization is the mount point's business. done, if set, gets each
// transfer's outcome.
func Handler(rc *Receiver, done func(ReceiveResult, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodPost {
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		ctl := http.NewResponseController(w)
		ctl.EnableFullDuplex() // not supported on HTTP/2, which is duplex anyway
		w.Header().Set("Content-Type", "application/x-ferry-cas")
		w.WriteHeader(http.StatusOK)
		if err := ctl.Flush(); err != nil {
			return
		}
		res, err := rc.Serve(req.Context(), &serverConn{r: req.Body, w: w, ctl: ctl})
		// Wait for the sender to close its side: an HTTP/1.1 server must not
		// go back to reading requests while the body is still open.
		io.Copy(io.Discard, io.LimitReader(req.Body, maxChunkFrame))
		if done != nil {
			done(res, err)
		}
	})
}

type serverConn struct {
	r   io.Reader
	w   io.Writer
	ctl *http.ResponseController
}

func (c *serverConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *serverConn) Write(p []byte) (int, error) { return c.w.Write(p) }
func (c *serverConn) Flush() error                { return c.ctl.Flush() }

// Dial opens a duplex stream to a Handler at url with client (which carries
// the mTLS configuration). Pass the result to SendFile or SendDir, then
// Close it.
func Dial(ctx context.Context, client *http.Client, url string) (io.ReadWriteCloser, error) {
	pr, pw := io.Pipe()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, pr)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-ferry-cas")
	c := &clientConn{pw: pw, ready: make(chan struct{})}
	go func() {
		resp, err := client.Do(req)
		if err == nil && resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			resp.Body.Close()
			err = fmt.Errorf("%w: %s: HTTP %s: %s", ErrRemote, url, resp.Status, sanitize(string(b)))
		}
		c.resp, c.err = resp, err
		if err != nil {
			pr.CloseWithError(err)
		}
		close(c.ready)
	}()
	return c, nil
}

type clientConn struct {
	pw    *io.PipeWriter
	ready chan struct{}
	resp  *http.Response
	err   error
	once  sync.Once
}

func (c *clientConn) Write(p []byte) (int, error) { return c.pw.Write(p) }

func (c *clientConn) Read(p []byte) (int, error) {
	<-c.ready
	if c.err != nil {
		return 0, c.err
	}
	return c.resp.Body.Read(p)
}

// Close ends the request body and releases the response.
func (c *clientConn) Close() error {
	c.once.Do(func() {
		c.pw.Close()
		go func() {
			<-c.ready
			if c.resp != nil {
				c.resp.Body.Close()
			}
		}()
	})
	return nil
}

// Hijacked wraps a connection taken over from an HTTP server (an Upgrade
// handler's Hijack) so that bytes the server had already buffered in r are
// read first. Pass the result to Receiver.Serve or SendFile.
func Hijacked(conn net.Conn, r *bufio.Reader) net.Conn {
	if r == nil || r.Buffered() == 0 {
		return conn
	}
	return &hijackedConn{Conn: conn, r: r}
}

type hijackedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *hijackedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// CloseWrite half-closes the connection when it can (TLS 1.3: close_notify).
func (c *hijackedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
