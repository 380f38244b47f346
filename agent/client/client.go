// Package client is the Go client of the ferry agent's API, for the
// controller, the CLI and peer agents. Every call takes ctx first; errors
// returned by an agent are *api.RemoteError values that errors.Is the
// sentinel of their kind (driver.ErrNotFound, driver.ErrBusy,
// api.ErrStaleEpoch, ...), so callers branch on kinds, not on strings or
// HTTP codes.
//
//	id, _ := pki.Load(tlsDir, "controller")
//	c := client.New("127.0.0.2:7400", id.ClientConfig())
//	t, err := c.Run(ctx, api.RunRequest{Spec: spec})
//	ev, err := c.Migrate(ctx, "t1", api.MigrateRequest{Epoch: t.Epoch, To: "127.0.0.3:7400"}, progress)
//	if errors.Is(err, api.ErrStaleEpoch) { ... }
package client

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/cas/transfer"
	"github.com/ferrycluster/ferry/driver"
)

// Client calls one agent. It is safe for concurrent use.
type Client struct {
	addr string
	tls  *tls.Config
	hc   *http.Client
}

// New returns a client of the agent at addr (host:port) using tlsConf (a
// pki.Identity's ClientConfig).
func New(addr string, tlsConf *tls.Config) *Client {
	tr := &http.Transport{
		TLSClientConfig:     tlsConf,
		ForceAttemptHTTP2:   false,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 15 * time.Second}).DialContext,
	}
	return &Client{addr: addr, tls: tlsConf, hc: &http.Client{Transport: tr}}
}

// Addr is the agent's address.
func (c *Client) Addr() string { return c.addr }

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

func (c *Client) url(path string, q url.Values) string {
	u := url.URL{Scheme: "https", Host: c.addr, Path: path}
	if q != nil {
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// do sends a request and returns the response when its status is 2xx.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url(path, q), rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("agent %s: %s %s: %w", c.addr, method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp, nil
}

func decodeError(resp *http.Response) error {
	var e api.Error
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err := json.Unmarshal(b, &e); err != nil || e.Kind == "" {
		e = api.Error{Kind: "internal", Message: fmt.Sprintf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(b))}
	}
	err := e.Err()
	var re *api.RemoteError
	if errors.As(err, &re) {
		re.Status = resp.StatusCode
	}
	return err
}

// call does a request and decodes a JSON response into out (may be nil).
func (c *Client) call(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.do(ctx, method, path, nil, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("agent %s: %s %s: decode response: %w", c.addr, method, path, err)
	}
	return nil
}

func taskPath(id string, op string) string {
	p := "/v1/tasks/" + url.PathEscape(id)
	if op != "" {
		p += "/" + op
	}
	return p
}

// Health checks the agent answers.
func (c *Client) Health(ctx context.Context) (api.Health, error) {
	var h api.Health
	return h, c.call(ctx, http.MethodGet, "/v1/health", nil, &h)
}

// Node returns the node's capacities, accelerator, drivers and usage.
func (c *Client) Node(ctx context.Context) (api.NodeInfo, error) {
	var n api.NodeInfo
	return n, c.call(ctx, http.MethodGet, "/v1/node", nil, &n)
}

// List returns the node's tasks, stale copies flagged.
func (c *Client) List(ctx context.Context) ([]api.Task, error) {
	var ts []api.Task
	return ts, c.call(ctx, http.MethodGet, "/v1/tasks", nil, &ts)
}

// Inspect returns one task.
func (c *Client) Inspect(ctx context.Context, id string) (api.Task, error) {
	var t api.Task
	return t, c.call(ctx, http.MethodGet, taskPath(id, ""), nil, &t)
}

// Stats returns a running task's resource readings.
func (c *Client) Stats(ctx context.Context, id string) (driver.Stats, error) {
	var s driver.Stats
	return s, c.call(ctx, http.MethodGet, taskPath(id, "stats"), nil, &s)
}

// Run starts a new task.
func (c *Client) Run(ctx context.Context, req api.RunRequest) (api.Task, error) {
	var t api.Task
	return t, c.call(ctx, http.MethodPost, "/v1/tasks", req, &t)
}

// Stop ends a task (running or suspended) at epoch and forgets it.
func (c *Client) Stop(ctx context.Context, id string, epoch uint64) error {
	return c.call(ctx, http.MethodPost, taskPath(id, "stop"), api.EpochRequest{Epoch: epoch}, nil)
}

// Suspend saves a running task to an image on the agent's disk.
func (c *Client) Suspend(ctx context.Context, id string, epoch uint64) (api.Task, error) {
	var t api.Task
	return t, c.call(ctx, http.MethodPost, taskPath(id, "suspend"), api.EpochRequest{Epoch: epoch}, &t)
}

// Resume runs a suspended task from the agent's image, or (req.From set)
// fetches the image from that agent first and runs it at epoch+1.
func (c *Client) Resume(ctx context.Context, id string, req api.ResumeRequest) (api.Task, error) {
	var t api.Task
	return t, c.call(ctx, http.MethodPost, taskPath(id, "resume"), req, &t)
}

// Grant lets only the agent at req.To fetch the suspended image of task id
// held by this agent (the controller's call before a resume from a peer).
func (c *Client) Grant(ctx context.Context, id string, req api.GrantRequest) error {
	return c.call(ctx, http.MethodPost, taskPath(id, "grant"), req, nil)
}

// Replicas lists the replicas of other nodes' periodic checkpoints this
// agent keeps. Start a task from one with Resume and
// api.ResumeRequest{Replica: true}.
func (c *Client) Replicas(ctx context.Context) ([]api.Replica, error) {
	var rs []api.Replica
	return rs, c.call(ctx, http.MethodGet, "/v1/replicas", nil, &rs)
}

// DropReplica makes the agent forget its replica of task id, if the
// replica's epoch is not ahead of epoch (a stopped task's leftover).
func (c *Client) DropReplica(ctx context.Context, id string, epoch uint64) error {
	return c.call(ctx, http.MethodPost, "/v1/replicas/"+url.PathEscape(id)+"/drop", api.EpochRequest{Epoch: epoch}, nil)
}

// Pause freezes a running task in memory.
func (c *Client) Pause(ctx context.Context, id string, epoch uint64) (api.Task, error) {
	var t api.Task
	return t, c.call(ctx, http.MethodPost, taskPath(id, "pause"), api.EpochRequest{Epoch: epoch}, &t)
}

// Unpause thaws a paused task.
func (c *Client) Unpause(ctx context.Context, id string, epoch uint64) (api.Task, error) {
	var t api.Task
	return t, c.call(ctx, http.MethodPost, taskPath(id, "unpause"), api.EpochRequest{Epoch: epoch}, &t)
}

// Cancel stops an outbound migration in flight; the source keeps running.
func (c *Client) Cancel(ctx context.Context, id string, epoch uint64) error {
	return c.call(ctx, http.MethodPost, taskPath(id, "cancel"), api.EpochRequest{Epoch: epoch}, nil)
}

// Migrate moves a running task to req.To and returns the final event.
// progress (may be nil) sees every event as it arrives. A failed move
// returns an error of the kind the agent reported; the source then runs
// (or, for api.ErrInDoubt, stays paused).
func (c *Client) Migrate(ctx context.Context, id string, req api.MigrateRequest, progress func(api.MigrateEvent)) (api.MigrateEvent, error) {
	resp, err := c.do(ctx, http.MethodPost, taskPath(id, "migrate"), nil, req)
	if err != nil {
		return api.MigrateEvent{}, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var ev api.MigrateEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return api.MigrateEvent{}, fmt.Errorf("agent %s: migrate %q: bad event %q: %w", c.addr, id, sc.Text(), err)
		}
		if progress != nil {
			progress(ev)
		}
		if ev.Done {
			if ev.Error != nil {
				return ev, ev.Error.Err()
			}
			return ev, nil
		}
	}
	if err := sc.Err(); err != nil {
		return api.MigrateEvent{}, fmt.Errorf("agent %s: migrate %q: stream broken: %w", c.addr, id, err)
	}
	return api.MigrateEvent{}, fmt.Errorf("agent %s: migrate %q: stream ended without a result", c.addr, id)
}

// Logs returns the task's log: the last tail lines (tail < 0: all), and
// with follow new output until ctx ends. The caller closes the reader.
func (c *Client) Logs(ctx context.Context, id string, tail int, follow bool) (io.ReadCloser, error) {
	q := url.Values{}
	if tail >= 0 {
		q.Set("tail", strconv.Itoa(tail))
	}
	if follow {
		q.Set("follow", "1")
	}
	resp, err := c.do(ctx, http.MethodGet, taskPath(id, "logs"), q, nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// --- peer calls (agent role only) ---------------------------------------

// Prepare asks a destination agent to start an incoming copy paused.
func (c *Client) Prepare(ctx context.Context, req api.PrepareRequest) (api.PrepareResponse, error) {
	var r api.PrepareResponse
	return r, c.call(ctx, http.MethodPost, "/v1/peer/prepare", req, &r)
}

// Finish commits an incoming copy at the destination and runs it.
func (c *Client) Finish(ctx context.Context, s api.SessionRequest) error {
	return c.call(ctx, http.MethodPost, "/v1/peer/finish", s, nil)
}

// Abort drops an incoming copy at the destination.
func (c *Client) Abort(ctx context.Context, s api.SessionRequest) error {
	return c.call(ctx, http.MethodPost, "/v1/peer/abort", s, nil)
}

// FetchImage streams a suspended task's image (a tar) from the agent.
func (c *Client) FetchImage(ctx context.Context, id string, epoch uint64) (io.ReadCloser, error) {
	q := url.Values{"epoch": {strconv.FormatUint(epoch, 10)}}
	resp, err := c.do(ctx, http.MethodGet, "/v1/peer/tasks/"+url.PathEscape(id)+"/image", q, nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// Release ends an image fetch at the agent that held the image.
func (c *Client) Release(ctx context.Context, id string, req api.ReleaseRequest) error {
	return c.call(ctx, http.MethodPost, "/v1/peer/tasks/"+url.PathEscape(id)+"/release", req, nil)
}

// Tunnel opens the byte pipe to an incoming copy's socket at the
// destination: a TLS connection upgraded to api.TunnelProtocol.
func (c *Client) Tunnel(ctx context.Context, id, token string) (net.Conn, error) {
	conn, _, err := c.upgrade(ctx, http.MethodGet, "/v1/peer/tunnel/"+url.PathEscape(id), url.Values{"token": {token}}, nil, api.TunnelProtocol)
	return conn, err
}

// FetchImageStream asks the agent holding a suspended task's image to send
// it with the CAS chunk-transfer protocol (cas/transfer) over an upgraded
// connection (api.ImageProtocol). It returns the connection, on which the
// caller runs a transfer.Receiver, and the holder's task record (JSON, from
// the api.RecordHeader header).
func (c *Client) FetchImageStream(ctx context.Context, id string, epoch uint64) (net.Conn, []byte, error) {
	return c.fetchStream(ctx, "/v1/peer/tasks/"+url.PathEscape(id)+"/image", id, epoch, api.ImageProtocol, api.RecordHeader)
}

// FetchImageTar asks the agent holding a suspended task's image to send it
// as one tar stream (api.ImageTarProtocol). It returns the connection, on
// which the caller answers "OK\n" or "ERR <reason>\n" and then reads the
// tar, and the holder's task record (JSON).
func (c *Client) FetchImageTar(ctx context.Context, id string, epoch uint64) (net.Conn, []byte, error) {
	return c.fetchStream(ctx, "/v1/peer/tasks/"+url.PathEscape(id)+"/image", id, epoch, api.ImageTarProtocol, api.RecordHeader)
}

// FetchImageLive opens the fetch of a checkpoint the agent streams while
// its job writes it (api.ImageLiveProtocol, ResumeRequest.Stream); it
// returns the connection and the holder's task record (JSON).
func (c *Client) FetchImageLive(ctx context.Context, id string, epoch uint64) (net.Conn, []byte, error) {
	return c.fetchStream(ctx, "/v1/peer/tasks/"+url.PathEscape(id)+"/image", id, epoch, api.ImageLiveProtocol, api.RecordHeader)
}

// FetchReplicaStream asks the agent keeping a replica of a task's periodic
// checkpoint to send it (as FetchImageStream does an image). The replica's
// epoch must not be ahead of epoch. It returns the connection and the
// replica's description (JSON, from the api.ReplicaHeader header).
func (c *Client) FetchReplicaStream(ctx context.Context, id string, epoch uint64) (net.Conn, []byte, error) {
	return c.fetchStream(ctx, "/v1/peer/replicas/"+url.PathEscape(id)+"/image", id, epoch, api.ImageProtocol, api.ReplicaHeader)
}

// PushReplica opens a replica push to the agent: meta (JSON) describes the
// replica; on the returned connection the caller sends the checkpoint
// directory with transfer.SendDir. The agent refuses (before any byte
// moves) a replica older than the one it keeps.
func (c *Client) PushReplica(ctx context.Context, id string, meta []byte) (net.Conn, error) {
	h := http.Header{api.ReplicaHeader: {base64.StdEncoding.EncodeToString(meta)}}
	conn, _, err := c.upgrade(ctx, http.MethodPost, "/v1/peer/replicas/"+url.PathEscape(id), nil, h, api.ImageProtocol)
	return conn, err
}

// fetchStream upgrades a GET of path to proto and returns the connection
// and the decoded header named metaHeader.
func (c *Client) fetchStream(ctx context.Context, path, id string, epoch uint64, proto, metaHeader string) (net.Conn, []byte, error) {
	conn, h, err := c.upgrade(ctx, http.MethodGet, path, url.Values{"epoch": {strconv.FormatUint(epoch, 10)}}, nil, proto)
	if err != nil {
		return nil, nil, err
	}
	meta, err := base64.StdEncoding.DecodeString(h.Get(metaHeader))
	if err != nil || len(meta) == 0 {
		conn.Close()
		return nil, nil, fmt.Errorf("agent %s: %s of %q: missing or bad %s header", c.addr, path, id, metaHeader)
	}
	return conn, meta, nil
}

// upgrade sends a request (no body, extra headers h) with Upgrade: proto
// and returns the raw connection after the agent's 101 answer.
func (c *Client) upgrade(ctx context.Context, method, path string, q url.Values, h http.Header, proto string) (net.Conn, http.Header, error) {
	req, _ := http.NewRequest(method, c.url(path, q), nil)
	for k, vs := range h {
		req.Header[k] = vs
	}
	return transfer.Upgrade(ctx, c.tls, c.addr, req, proto, decodeError)
}
