package transfer

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// GuestImageProtocol is the Upgrade token of a guest image fetch: the
// agent asks a controller for a built image by its content id, the
// controller answers 101 and sends the image directory with SendDir.
const GuestImageProtocol = "ferry-guest-image/1"

// GuestImagePath is where a controller serves guest images by id.
func GuestImagePath(id string) string { return "/v1/images/" + id }

const guestImageScheme = "ferry-image://"

// GuestImageRef names guest image id (64 hex digits, image.Store's id) as
// served by the controller at addr (host:port). It travels in a VM spec's
// kernel field; the agent resolves it to local files before the driver
// sees it.
func GuestImageRef(addr, id string) string { return guestImageScheme + addr + "/" + id }

// IsImageID reports whether s is a guest image id: 64 lowercase hex digits.
func IsImageID(s string) bool {
	if len(s) != 64 || strings.ToLower(s) != s {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// ParseGuestImageRef splits a GuestImageRef. ok is false for anything that
// is not one (a plain path); err is set for one that is malformed.
func ParseGuestImageRef(s string) (addr, id string, ok bool, err error) {
	rest, ok := strings.CutPrefix(s, guestImageScheme)
	if !ok {
		return "", "", false, nil
	}
	addr, id, found := strings.Cut(rest, "/")
	if !found || !IsImageID(id) {
		return "", "", true, fmt.Errorf("guest image reference %q: want %sHOST:PORT/ID with a 64-hex-digit id", s, guestImageScheme)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", "", true, fmt.Errorf("guest image reference %q: address: %v", s, err)
	}
	return addr, id, true, nil
}

// DialUpgrade sends GET path to addr over TLS with Upgrade: proto and
// returns the connection after a 101 answer (see Upgrade). Any other answer
// is an error carrying the status and the start of the body.
func DialUpgrade(ctx context.Context, tc *tls.Config, addr, path, proto string) (net.Conn, http.Header, error) {
	req, err := http.NewRequest(http.MethodGet, "https://"+addr+path, nil)
	if err != nil {
		return nil, nil, err
	}
	return Upgrade(ctx, tc, addr, req, proto, func(resp *http.Response) error {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("%w: %s %s: HTTP %s: %s", ErrRemote, addr, path, resp.Status, sanitize(strings.TrimSpace(string(b))))
	})
}

// Upgrade sends req (its method, URL and headers; no body) on a new TLS
// connection to addr with Upgrade: proto, and returns the connection after
// a 101 answer — reading first what the response reader buffered, and
// half-closable (CloseWrite) — with the answer's headers. ctx bounds the
// dial and the exchange (its deadline is the connection's until the
// answer). Any other answer is given to refused, whose error is returned.
func Upgrade(ctx context.Context, tc *tls.Config, addr string, req *http.Request, proto string, refused func(*http.Response) error) (net.Conn, http.Header, error) {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: tc}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: %w", addr, proto, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", proto)
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("%s %s: %w", addr, proto, err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("%s %s: %w", addr, proto, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer conn.Close()
		return nil, nil, refused(resp)
	}
	// The connection is the caller's only if ctx did not close it first.
	if !stop() {
		conn.Close()
		return nil, nil, fmt.Errorf("%s %s: %w", addr, proto, ctx.Err())
	}
	conn.SetDeadline(time.Time{})
	return Hijacked(conn, br), resp.Header, nil
}

// AcceptUpgrade answers a request asking for Upgrade: proto with 101 and
// the headers h and returns the hijacked connection (the caller closes it).
// A request that does not ask for proto gets 426 Upgrade Required.
func AcceptUpgrade(w http.ResponseWriter, r *http.Request, proto string, h http.Header) (net.Conn, error) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), proto) {
		w.Header().Set("Upgrade", proto)
		http.Error(w, "this endpoint needs Upgrade: "+proto, http.StatusUpgradeRequired)
		return nil, fmt.Errorf("%w: request without Upgrade: %s", ErrProtocol, proto)
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "connection cannot be hijacked", http.StatusInternalServerError)
		return nil, errors.New("transfer: connection cannot be hijacked")
	}
	for k, vs := range h {
		w.Header()[k] = vs
	}
	w.Header().Set("Connection", "Upgrade")
	w.Header().Set("Upgrade", proto)
	w.WriteHeader(http.StatusSwitchingProtocols)
	conn, brw, err := hj.Hijack()
	if err != nil {
		return nil, err
	}
	if err := brw.Flush(); err != nil {
		conn.Close()
		return nil, err
	}
	return Hijacked(conn, brw.Reader), nil
}
