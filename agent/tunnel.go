package agent

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/cas/transfer"
	"github.com/ferrycluster/ferry/driver"
)

// handleTunnel turns the connection into a byte pipe to the incoming QEMU's
// socket (HTTP Upgrade: ferry-tunnel/1).
func (a *Agent) handleTunnel(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), api.TunnelProtocol) {
		writeErr(w, fmt.Errorf("%w: tunnel needs Upgrade: %s", driver.ErrInvalidSpec, api.TunnelProtocol))
		return
	}
	s, err := a.session(r.PathValue("id"), r.URL.Query().Get("token"))
	if err != nil {
		writeErr(w, err)
		return
	}
	s.mu.Lock()
	if s.tunnel || s.finishing {
		s.mu.Unlock()
		writeErr(w, fmt.Errorf("%w: incoming %q already has a tunnel", driver.ErrBusy, s.id))
		return
	}
	s.tunnel = true
	s.timer.Stop()
	s.mu.Unlock()
	var d net.Dialer
	qc, err := d.DialContext(r.Context(), "unix", s.socket)
	if err != nil {
		a.abortIncoming(s, "cannot reach incoming socket")
		writeErr(w, fmt.Errorf("connect to incoming socket of %q: %w", s.id, err))
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		qc.Close()
		writeErr(w, errors.New("connection cannot be hijacked"))
		return
	}
	w.Header().Set("Connection", "Upgrade")
	w.Header().Set("Upgrade", api.TunnelProtocol)
	w.WriteHeader(http.StatusSwitchingProtocols)
	conn, brw, err := hj.Hijack()
	if err != nil {
		qc.Close()
		a.abortIncoming(s, "hijack failed")
		return
	}
	if err := brw.Flush(); err != nil {
		conn.Close()
		qc.Close()
		a.abortIncoming(s, "tunnel write failed")
		return
	}
	tc := transfer.Hijacked(conn, brw.Reader)
	s.mu.Lock()
	s.tunnelConn = conn
	s.mu.Unlock()
	a.track(conn)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer a.untrack(conn)
		pipe(tc, qc)
		// The stream ended: finish must come soon, else abort.
		s.mu.Lock()
		if !s.finishing {
			s.timer = time.AfterFunc(a.cfg.IncomingTimeout, func() { a.abortIncoming(s, "no finish after the tunnel closed") })
		}
		s.mu.Unlock()
	}()
}

func (a *Agent) track(c net.Conn) {
	a.mu.Lock()
	a.conns[c] = struct{}{}
	a.mu.Unlock()
}

func (a *Agent) untrack(c net.Conn) {
	a.mu.Lock()
	delete(a.conns, c)
	a.mu.Unlock()
}

// pipe copies both ways between x and y, half-closing each side when its
// source ends, and closes both when done or on the first error.
func pipe(x, y net.Conn) {
	var wg sync.WaitGroup
	var once sync.Once
	closeBoth := func() { once.Do(func() { x.Close(); y.Close() }) }
	cp := func(dst, src net.Conn) {
		defer wg.Done()
		buf := make([]byte, 256<<10)
		_, err := io.CopyBuffer(dst, src, buf)
		if err != nil {
			closeBoth()
			return
		}
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			if cw.CloseWrite() == nil {
				return
			}
		}
		closeBoth()
	}
	wg.Add(2)
	go cp(x, y)
	go cp(y, x)
	wg.Wait()
	closeBoth()
}

// --- images between agents ------------------------------------------------
