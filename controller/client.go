package controller

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/ferrycluster/ferry/store"
)

// Client calls the controller's API (the CLI uses it).
type Client struct {
	base  string
	token string
	hc    *http.Client
}

// NewClient returns a client of the API at addr (host:port) with tc (nil:
// plain HTTP, for tests of the API logic) and a bearer token.
func NewClient(addr string, tc *tls.Config, token string) *Client {
	scheme := "https"
	if tc == nil {
		scheme = "http"
	}
	return &Client{base: scheme + "://" + addr, token: token, hc: &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}}
}

// APIError is a non-2xx answer.
type APIError struct {
	Status int
	Msg    string
	Line   int
	Field  string
}

func (e *APIError) Error() string { return e.Msg }

// Unwrap maps the status back to the store's kinds.
func (e *APIError) Unwrap() error {
	switch e.Status {
	case 400:
		return store.ErrInvalid
	case 404:
		return store.ErrNotFound
	case 409:
		return store.ErrConflict
	case 401:
		return ErrUnauthorized
	case 403:
		return ErrForbidden
	case 503:
		return store.ErrNotLeader
	}
	return nil
}

func (c *Client) do(ctx context.Context, method, path string, body io.Reader, ctype string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		var e struct {
			Error string `json:"error"`
			Line  int    `json:"line"`
			Field string `json:"field"`
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
		}
		return nil, &APIError{Status: resp.StatusCode, Msg: e.Error, Line: e.Line, Field: e.Field}
	}
	return resp, nil
}

// Call sends a JSON body (nil: none) and decodes the JSON answer into out
// (nil: discard).
func (c *Client) Call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	resp, err := c.do(ctx, method, path, body, "application/json")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Submit sends a job spec (YAML or JSON).
func (c *Client) Submit(ctx context.Context, spec []byte) (JobView, error) {
	var out JobView
	resp, err := c.do(ctx, "POST", "/v1/jobs", bytes.NewReader(spec), "application/yaml")
	if err != nil {
		return out, err
	}
	defer resp.Body.Close()
	return out, json.NewDecoder(resp.Body).Decode(&out)
}

// Job returns one job.
func (c *Client) Job(ctx context.Context, name string) (JobView, error) {
	var out JobView
	return out, c.Call(ctx, "GET", "/v1/jobs/"+url.PathEscape(name), nil, &out)
}

// Jobs lists jobs.
func (c *Client) Jobs(ctx context.Context) ([]JobView, error) {
	var out []JobView
	return out, c.Call(ctx, "GET", "/v1/jobs", nil, &out)
}

// JobAction is stop, suspend or resume.
func (c *Client) JobAction(ctx context.Context, name, action string) (JobView, error) {
	var out JobView
	return out, c.Call(ctx, "POST", "/v1/jobs/"+url.PathEscape(name)+"/"+action, nil, &out)
}

// Tasks lists tasks (all: include terminated ones).
func (c *Client) Tasks(ctx context.Context, all bool) ([]store.Task, error) {
	var out []store.Task
	q := ""
	if all {
		q = "?all=1"
	}
	return out, c.Call(ctx, "GET", "/v1/tasks"+q, nil, &out)
}

// NodeView is a node with its usage.
type NodeView struct {
	store.Node
	Used  store.Resources `json:"used"`
	Tasks int             `json:"tasks"`
}

// Nodes lists nodes.
func (c *Client) Nodes(ctx context.Context) ([]NodeView, error) {
	var out []NodeView
	return out, c.Call(ctx, "GET", "/v1/nodes", nil, &out)
}

// AddNode registers an agent.
func (c *Client) AddNode(ctx context.Context, addr string, labels map[string]string) (string, error) {
	var out map[string]string
	err := c.Call(ctx, "POST", "/v1/nodes", AddNodeRequest{Addr: addr, Labels: labels}, &out)
	return out["name"], err
}

// Drain starts or ends a drain.
func (c *Client) Drain(ctx context.Context, node string, on bool, deadline time.Duration) error {
	if !on {
		return c.Call(ctx, "POST", "/v1/nodes/"+url.PathEscape(node)+"/undrain", nil, nil)
	}
	req := DrainRequest{}
	if deadline > 0 {
		req.Deadline = deadline.String()
	}
	return c.Call(ctx, "POST", "/v1/nodes/"+url.PathEscape(node)+"/drain", req, nil)
}

// Migrate asks for one task to move.
func (c *Client) Migrate(ctx context.Context, task, to string) (uint64, error) {
	var out struct {
		Plan uint64 `json:"plan"`
	}
	err := c.Call(ctx, "POST", "/v1/tasks/"+url.PathEscape(task)+"/migrate", MigrateRequest{To: to}, &out)
	return out.Plan, err
}

// Plans lists recent plans.
func (c *Client) Plans(ctx context.Context, limit int) ([]store.Plan, error) {
	var out []store.Plan
	return out, c.Call(ctx, "GET", fmt.Sprintf("/v1/plans?limit=%d", limit), nil, &out)
}

// DryRun returns the plan the loop would carry out now.
func (c *Client) DryRun(ctx context.Context) (PlanView, error) {
	var out PlanView
	return out, c.Call(ctx, "GET", "/v1/plan/dry-run", nil, &out)
}

// Logs streams a task's log.
func (c *Client) Logs(ctx context.Context, task string, tail int, follow bool) (io.ReadCloser, error) {
	q := url.Values{}
	if tail >= 0 {
		q.Set("tail", fmt.Sprint(tail))
	}
	if follow {
		q.Set("follow", "1")
	}
	resp, err := c.do(ctx, "GET", "/v1/tasks/"+url.PathEscape(task)+"/logs?"+q.Encode(), nil, "")
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// Events calls fn for each event (recent ones, then new ones with follow)
// until ctx ends or fn returns false.
func (c *Client) Events(ctx context.Context, follow bool, fn func(Event) bool) error {
	path := "/v1/events"
	if follow {
		path += "?follow=1"
	}
	resp, err := c.do(ctx, "GET", path, nil, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e Event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		if !fn(e) {
			return nil
		}
	}
	if ctx.Err() != nil || errors.Is(sc.Err(), io.ErrUnexpectedEOF) {
		return nil // the caller stopped, or the server went away
	}
	return sc.Err()
}

// Heartbeat pushes a heartbeat (agents that push instead of being polled).
func (c *Client) Heartbeat(ctx context.Context, hb Heartbeat) error {
	return c.Call(ctx, "POST", "/v1/heartbeat", hb, nil)
}
