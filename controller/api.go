package controller

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ferrycluster/ferry/pki"
	"github.com/ferrycluster/ferry/store"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Role is what an API token may do.
type Role string

// Token roles, each including the ones below it.
const (
	RoleAdmin    Role = "admin"     // everything: nodes, drains, migrations, cluster
	RoleSubmit   Role = "submit"    // submit, stop, suspend and resume jobs; read
	RoleReadOnly Role = "read-only" // read state, events, logs, metrics
)

func (r Role) allows(need Role) bool {
	rank := map[Role]int{RoleReadOnly: 1, RoleSubmit: 2, RoleAdmin: 3}
	return rank[r] >= rank[need] && rank[need] > 0
}

// Errors of the API.
var (
	ErrUnauthorized = errors.New("unauthorized")
	ErrForbidden    = errors.New("forbidden")
)

// Token is one API token as stored: only its SHA-256 is kept.
type Token struct {
	Name   string `json:"name"`
	Role   Role   `json:"role"`
	SHA256 string `json:"sha256"`
}

// Tokens checks bearer tokens. The secrets never appear in logs or files.
type Tokens struct{ list []Token }

// HashToken returns the hex SHA-256 of a token secret.
func HashToken(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// LoadTokens reads a tokens file (JSON list of Token). The file must not be
// readable by others (mode 0600 or stricter).
func LoadTokens(path string) (*Tokens, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s: mode %o, want 0600 (it holds token hashes)", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	list, err := ParseTokens(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &Tokens{list: list}, nil
}

// ParseTokens reads and checks a token list (the tokens file, or the list a
// joining server fetches): a JSON array of {name, role, sha256} and nothing
// after it, no unknown field, every name set and unique, every role one of
// admin, submit, read-only, every hash 64 lower-case hex digits and unique.
// Errors wrap store.ErrInvalid and name the token.
func ParseTokens(b []byte) ([]Token, error) {
	var list []Token
	if err := strictDecode(b, &list); err != nil {
		return nil, fmt.Errorf("%w: token list: %v", store.ErrInvalid, err)
	}
	if list == nil {
		return nil, fmt.Errorf("%w: token list: want a JSON array of tokens", store.ErrInvalid)
	}
	if err := checkTokens(list); err != nil {
		return nil, err
	}
	return list, nil
}

// checkTokens checks a token list's entries (see ParseTokens).
func checkTokens(list []Token) error {
	names, hashes := map[string]bool{}, map[string]bool{}
	for i, t := range list {
		switch {
		case t.Name == "":
			return fmt.Errorf("%w: token %d: no name", store.ErrInvalid, i)
		case names[t.Name]:
			return fmt.Errorf("%w: token %d: name %q used twice", store.ErrInvalid, i, t.Name)
		case t.Role != RoleAdmin && t.Role != RoleSubmit && t.Role != RoleReadOnly:
			return fmt.Errorf("%w: token %q: role %q (want admin, submit or read-only)", store.ErrInvalid, t.Name, t.Role)
		case !isSHA256Hex(t.SHA256):
			return fmt.Errorf("%w: token %q: sha256 %q is not 64 lower-case hex digits", store.ErrInvalid, t.Name, t.SHA256)
		case hashes[t.SHA256]:
			return fmt.Errorf("%w: token %q: its hash is another token's too", store.ErrInvalid, t.Name)
		}
		names[t.Name], hashes[t.SHA256] = true, true
	}
	return nil
}

func isSHA256Hex(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// AddToken appends a token (by its hash) to the file, creating it 0600.
func AddToken(path, name string, role Role, secret string) error {
	var list []Token
	if b, err := os.ReadFile(path); err == nil {
		if list, err = ParseTokens(b); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	list = append(list, Token{Name: name, Role: role, SHA256: HashToken(secret)})
	if err := checkTokens(list); err != nil {
		return err
	}
	return writeTokens(path, list)
}

// writeTokens replaces the tokens file (mode 0600) atomically: a temporary
// file in the same directory, synced, renamed over it, the directory
// synced. A failure leaves the old file (or none) and no temporary file.
func writeTokens(path string, list []Token) (err error) {
	b, _ := json.MarshalIndent(list, "", "  ")
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err = f.Chmod(0o600); err != nil {
		return err
	}
	if _, err = f.Write(b); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// check returns the role of a bearer token.
func (ts *Tokens) check(secret string) (Token, bool) {
	h := HashToken(secret)
	for _, t := range ts.list {
		if subtle.ConstantTimeCompare([]byte(h), []byte(t.SHA256)) == 1 {
			return t, true
		}
	}
	return Token{}, false
}

// API serves the controller's HTTP/JSON API.
type API struct {
	Store      *store.Store
	Controller *Controller
	Tokens     *Tokens
	// PeerTLS is the client TLS config for forwarding to the leader.
	PeerTLS *tls.Config
	// Insecure disables authentication (tests of the API's logic only).
	Insecure bool
}

// Handler returns the routes.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	h := func(pattern string, need Role, write bool, fn http.HandlerFunc) {
		mux.Handle(pattern, a.auth(need, write, fn))
	}
	h("GET /v1/health", RoleReadOnly, false, a.health)
	h("GET /v1/jobs", RoleReadOnly, false, a.listJobs)
	h("POST /v1/jobs", RoleSubmit, true, a.submit)
	h("GET /v1/jobs/{name}", RoleReadOnly, false, a.getJob)
	h("POST /v1/jobs/{name}/stop", RoleSubmit, true, a.want(store.WantStop))
	h("POST /v1/jobs/{name}/suspend", RoleSubmit, true, a.want(store.WantSleep))
	h("POST /v1/jobs/{name}/resume", RoleSubmit, true, a.want(store.WantRun))
	h("GET /v1/tasks", RoleReadOnly, false, a.listTasks)
	h("GET /v1/tasks/{name}/logs", RoleReadOnly, true, a.logs)
	h("POST /v1/tasks/{name}/migrate", RoleAdmin, true, a.migrate)
	h("GET /v1/nodes", RoleReadOnly, false, a.listNodes)
	h("POST /v1/nodes", RoleAdmin, true, a.addNode)
	h("POST /v1/nodes/{name}/drain", RoleAdmin, true, a.drain(true))
	h("POST /v1/nodes/{name}/undrain", RoleAdmin, true, a.drain(false))
	h("GET /v1/plans", RoleReadOnly, false, a.listPlans)
	h("GET /v1/plan/dry-run", RoleReadOnly, true, a.dryRun)
	h("GET /v1/events", RoleReadOnly, true, a.eventsHandler)
	h("POST /v1/heartbeat", RoleAdmin, true, a.heartbeat)
	h("GET /v1/cluster/servers", RoleReadOnly, false, a.servers)
	h("POST /v1/cluster/join", RoleAdmin, true, a.join)
	h("GET /v1/cluster/tokens", RoleAdmin, false, a.tokens)
	mux.Handle("GET /metrics", a.auth(RoleReadOnly, false, promhttp.HandlerFor(a.Controller.Metrics().Registry, promhttp.HandlerOpts{}).ServeHTTP))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, fmt.Errorf("%w: no endpoint %s %s", store.ErrNotFound, r.Method, r.URL.Path))
	})
	return mux
}

// auth admits a caller by bearer token (operators) or by certificate role
// (agents may push heartbeats; servers may forward). Writes — and reads
// that need the leader's controller — on a follower are forwarded.
func (a *API) auth(need Role, leader bool, next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !a.Insecure {
			role := Role("")
			if certRole, _, err := pki.PeerRole(r.TLS); err == nil {
				switch {
				case certRole == pki.RoleServer:
					role = RoleAdmin
				case certRole == pki.RoleAgent && r.URL.Path == "/v1/heartbeat":
					role = RoleAdmin
				}
			}
			if role == "" {
				secret, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
				if !ok {
					writeErr(w, fmt.Errorf("%w: send Authorization: Bearer TOKEN", ErrUnauthorized))
					return
				}
				t, ok := a.Tokens.check(strings.TrimSpace(secret))
				if !ok {
					writeErr(w, fmt.Errorf("%w: unknown token", ErrUnauthorized))
					return
				}
				role = t.Role
			}
			if !role.allows(need) {
				writeErr(w, fmt.Errorf("%w: %s %s needs role %s, the token has %s", ErrForbidden, r.Method, r.URL.Path, need, role))
				return
			}
		}
		if leader && !a.Store.IsLeader() {
			a.forward(w, r)
			return
		}
		next(w, r)
	})
}

// forward proxies a request to the leader's API.
func (a *API) forward(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-Ferry-Forwarded") != "" {
		writeErr(w, fmt.Errorf("%w: forwarded request reached a follower", store.ErrNotLeader))
		return
	}
	addr := a.Store.LeaderAPI()
	if addr == "" {
		writeErr(w, fmt.Errorf("%w: no leader known yet, retry", store.ErrNotLeader))
		return
	}
	scheme := "https"
	if a.PeerTLS == nil {
		scheme = "http"
	}
	target := &url.URL{Scheme: scheme, Host: addr}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = &http.Transport{TLSClientConfig: a.PeerTLS}
	rp.FlushInterval = -1
	r.Header.Set("X-Ferry-Forwarded", "1")
	rp.ServeHTTP(w, r)
}

// writeErr maps an error's kind to an HTTP status.
func writeErr(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	var se *SpecError
	switch {
	case errors.As(err, &se), errors.Is(err, store.ErrInvalid):
		status = http.StatusBadRequest
	case errors.Is(err, store.ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, store.ErrConflict):
		status = http.StatusConflict
	case errors.Is(err, store.ErrNotLeader):
		status = http.StatusServiceUnavailable
	case errors.Is(err, ErrUnauthorized):
		status = http.StatusUnauthorized
	case errors.Is(err, ErrForbidden):
		status = http.StatusForbidden
	}
	body := map[string]any{"error": err.Error()}
	if se != nil {
		body["line"], body["field"] = se.Line, se.Field
	}
	writeJSON(w, status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (a *API) apply(r *http.Request, c store.Command) (store.Result, error) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	res, err := a.Store.Apply(ctx, c)
	if err != nil {
		return res, err
	}
	if a.Controller != nil {
		a.Controller.Trigger()
	}
	return res, res.Err
}

func (a *API) health(w http.ResponseWriter, r *http.Request) {
	id, _ := a.Store.Leader()
	writeJSON(w, 200, map[string]any{"ok": true, "server": a.Store.ID(), "leader": id, "is_leader": a.Store.IsLeader()})
}

// JobView is a job with its tasks and a summary status.
type JobView struct {
	store.Job
	Status string       `json:"status"`
	Tasks  []store.Task `json:"task_states"`
}

func jobView(s *store.State, j *store.Job) JobView {
	v := JobView{Job: *j}
	v.Job.Spec = nil
	count := map[store.TaskPhase]int{}
	for _, tn := range j.Tasks {
		if t := s.Tasks[tn]; t != nil {
			v.Tasks = append(v.Tasks, *t)
			count[t.Phase]++
		}
	}
	n := len(v.Tasks)
	switch {
	case count[store.TaskTerminated] == n && j.Want == store.WantStop:
		v.Status = "stopped"
	case count[store.TaskTerminated] == n:
		v.Status = "complete"
	case count[store.TaskRunning] == n:
		v.Status = "running"
	case count[store.TaskSleeping] == n:
		v.Status = "suspended"
	case count[store.TaskWaiting] == n:
		v.Status = "queued"
	default:
		v.Status = "changing"
	}
	return v
}

func (a *API) listJobs(w http.ResponseWriter, r *http.Request) {
	var out []JobView
	a.Store.View(func(s *store.State) {
		for _, j := range s.SortedJobs() {
			out = append(out, jobView(s, j))
		}
	})
	writeJSON(w, 200, out)
}

func (a *API) getJob(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var out *JobView
	var spec json.RawMessage
	a.Store.View(func(s *store.State) {
		if j := s.Jobs[name]; j != nil {
			v := jobView(s, j)
			out, spec = &v, j.Spec
		}
	})
	if out == nil {
		writeErr(w, fmt.Errorf("%w: job %q", store.ErrNotFound, name))
		return
	}
	out.Job.Spec = spec
	writeJSON(w, 200, out)
}

// SubmitCommand turns a parsed spec into the store command that submits it.
func SubmitCommand(spec *JobSpec) (store.Command, error) {
	raw, err := json.Marshal(spec)
	if err != nil {
		return store.Command{}, err
	}
	job := store.Job{Name: spec.Name, Priority: spec.Priority, Preemptible: spec.Preemptible, Migratable: spec.Migration.Live, Spec: raw, Want: store.WantRun}
	var tasks []store.Task
	for _, ts := range spec.Tasks {
		for i := 0; i < ts.Count; i++ {
			tasks = append(tasks, store.Task{
				Name: fmt.Sprintf("%s.%s.%d", spec.Name, ts.Name, i), Group: ts.Name, Index: i, Driver: ts.Driver,
				Demand: store.Resources{CPUMilli: ts.CPUMilli, MemoryBytes: ts.MemoryBytes},
			})
		}
	}
	return store.Command{SubmitJob: &store.SubmitJob{Job: job, Tasks: tasks}}, nil
}

func (a *API) submit(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxSpecBytes+1))
	if err != nil {
		writeErr(w, fmt.Errorf("%w: read body: %v", store.ErrInvalid, err))
		return
	}
	spec, err := ParseSpec(body)
	if err != nil {
		writeErr(w, err)
		return
	}
	cmd, err := SubmitCommand(spec)
	if err != nil {
		writeErr(w, err)
		return
	}
	if _, err := a.apply(r, cmd); err != nil {
		writeErr(w, err)
		return
	}
	if a.Controller != nil {
		a.Controller.event("job", spec.Name, "submitted", "priority", spec.Priority, "tasks", len(cmd.SubmitJob.Tasks))
	}
	var out JobView
	a.Store.View(func(s *store.State) { out = jobView(s, s.Jobs[spec.Name]) })
	writeJSON(w, 201, out)
}

func (a *API) want(want store.JobWant) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if _, err := a.apply(r, store.Command{SetJobWant: &store.SetJobWant{Job: name, Want: want}}); err != nil {
			writeErr(w, err)
			return
		}
		if a.Controller != nil {
			a.Controller.event("job", name, "operator wants "+string(want))
		}
		var out JobView
		a.Store.View(func(s *store.State) { out = jobView(s, s.Jobs[name]) })
		writeJSON(w, 200, out)
	}
}

func (a *API) listTasks(w http.ResponseWriter, r *http.Request) {
	var out []store.Task
	a.Store.View(func(s *store.State) {
		for _, j := range s.SortedJobs() {
			for _, tn := range j.Tasks {
				if t := s.Tasks[tn]; t != nil && (r.URL.Query().Get("all") != "" || t.Phase != store.TaskTerminated) {
					out = append(out, *t)
				}
			}
		}
	})
	writeJSON(w, 200, out)
}

func (a *API) listNodes(w http.ResponseWriter, r *http.Request) {
	type nodeView struct {
		store.Node
		Used  store.Resources `json:"used"`
		Tasks int             `json:"tasks"`
	}
	var out []nodeView
	a.Store.View(func(s *store.State) {
		idx := map[string]int{}
		for _, n := range s.SortedNodes() {
			idx[n] = len(out)
			out = append(out, nodeView{Node: *s.Nodes[n]})
		}
		for _, t := range s.Tasks {
			if i, ok := idx[t.Node]; ok && t.Phase == store.TaskRunning {
				out[i].Used.CPUMilli += t.Demand.CPUMilli
				out[i].Used.MemoryBytes += t.Demand.MemoryBytes
				out[i].Tasks++
			}
		}
	})
	writeJSON(w, 200, out)
}

// AddNodeRequest registers an agent by address.
type AddNodeRequest struct {
	Addr   string            `json:"addr"`
	Labels map[string]string `json:"labels,omitempty"`
}

func decodeBody(r *http.Request, v any) error {
	d := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("%w: body: %v", store.ErrInvalid, err)
	}
	return nil
}

func (a *API) addNode(w http.ResponseWriter, r *http.Request) {
	var req AddNodeRequest
	if err := decodeBody(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	if req.Addr == "" {
		writeErr(w, fmt.Errorf("%w: addr is required", store.ErrInvalid))
		return
	}
	name, err := a.Controller.AddNode(r.Context(), req.Addr, req.Labels)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, 201, map[string]string{"name": name, "addr": req.Addr})
}

// DrainRequest is the body of a drain.
type DrainRequest struct {
	// Deadline (Go duration from now): until then, what cannot move off the
	// node keeps running there; at the deadline it is suspended to disk.
	// "" none: what cannot move is suspended at once.
	Deadline string `json:"deadline,omitempty"`
}

func (a *API) drain(on bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		d := &store.Drain{Name: name, Drain: on}
		if on && r.ContentLength != 0 {
			var req DrainRequest
			if err := decodeBody(r, &req); err != nil {
				writeErr(w, err)
				return
			}
			if req.Deadline != "" {
				dd, err := time.ParseDuration(req.Deadline)
				if err != nil || dd <= 0 {
					writeErr(w, fmt.Errorf("%w: deadline %q: want a duration such as 10m", store.ErrInvalid, req.Deadline))
					return
				}
				d.Deadline = time.Now().Add(dd).UnixNano()
			}
		}
		if _, err := a.apply(r, store.Command{Drain: d}); err != nil {
			writeErr(w, err)
			return
		}
		what := "drain"
		if !on {
			what = "undrain"
		}
		if a.Controller != nil {
			a.Controller.event("node", name, what)
		}
		writeJSON(w, 200, map[string]any{"name": name, "drain": on})
	}
}

// MigrateRequest is an operator's move of one task.
type MigrateRequest struct {
	To string `json:"to"`
}

func (a *API) migrate(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var req MigrateRequest
	if err := decodeBody(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	var act store.Action
	var err error
	a.Store.View(func(s *store.State) {
		t := s.Tasks[name]
		switch {
		case t == nil:
			err = fmt.Errorf("%w: task %q", store.ErrNotFound, name)
		case s.Nodes[req.To] == nil:
			err = fmt.Errorf("%w: node %q", store.ErrNotFound, req.To)
		case s.Nodes[req.To].Status != store.NodeOnline:
			err = fmt.Errorf("%w: node %q is %s", store.ErrConflict, req.To, s.Nodes[req.To].Status)
		case t.Phase == store.TaskRunning && t.Node != req.To:
			act = store.Action{Kind: "migrate", Task: name, From: t.Node, To: req.To, Bytes: t.Demand.MemoryBytes}
		case t.Phase == store.TaskSleeping:
			act = store.Action{Kind: "resume", Task: name, From: t.Node, To: req.To, Bytes: t.Demand.MemoryBytes}
		default:
			err = fmt.Errorf("%w: task %q is %s on %q; only a running task can migrate (or a sleeping one resume elsewhere)", store.ErrConflict, name, t.Phase, t.Node)
		}
	})
	if err != nil {
		writeErr(w, err)
		return
	}
	res, err := a.apply(r, store.Command{CreatePlan: &store.CreatePlan{Plan: store.Plan{Reason: "operator: migrate " + name + " to " + req.To, Actions: []store.Action{act}}}})
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, 202, map[string]any{"plan": res.PlanID, "action": act})
}

func (a *API) listPlans(w http.ResponseWriter, r *http.Request) {
	var out []store.Plan
	a.Store.View(func(s *store.State) {
		for _, p := range s.Plans {
			out = append(out, *p)
		}
	})
	sort.Slice(out, func(i, j int) bool { return out[i].ID > out[j].ID })
	if n, err := strconv.Atoi(r.URL.Query().Get("limit")); err == nil && n > 0 && n < len(out) {
		out = out[:n]
	}
	writeJSON(w, 200, out)
}

func (a *API) dryRun(w http.ResponseWriter, r *http.Request) {
	pv, err := a.Controller.DryRun(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, 200, pv)
}

func (a *API) logs(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var addr string
	var err error
	a.Store.View(func(s *store.State) {
		t := s.Tasks[name]
		if t == nil {
			err = fmt.Errorf("%w: task %q", store.ErrNotFound, name)
			return
		}
		node := t.Node
		if node == "" {
			node = t.ImageNode
		}
		if n := s.Nodes[node]; n != nil {
			addr = n.Addr
		} else {
			err = fmt.Errorf("%w: task %q is on no node", store.ErrConflict, name)
		}
	})
	if err != nil {
		writeErr(w, err)
		return
	}
	tail, _ := strconv.Atoi(r.URL.Query().Get("tail"))
	if r.URL.Query().Get("tail") == "" {
		tail = -1
	}
	follow := r.URL.Query().Get("follow") != ""
	rc, err := a.Controller.client(addr).Logs(r.Context(), name, tail, follow)
	if err != nil {
		writeErr(w, fmt.Errorf("%w: logs from %s: %v", store.ErrConflict, addr, err))
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "text/plain")
	fl, _ := w.(http.Flusher)
	buf := make([]byte, 32<<10)
	for {
		n, err := rc.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if fl != nil {
				fl.Flush()
			}
		}
		if err != nil {
			return
		}
	}
}

// eventsHandler streams events as NDJSON: recent ones, then (follow=1) new
// ones as they happen.
func (a *API) eventsHandler(w http.ResponseWriter, r *http.Request) {
	es := a.Controller.Events()
	after, _ := strconv.ParseUint(r.URL.Query().Get("after"), 10, 64)
	follow := r.URL.Query().Get("follow") != ""
	var ch <-chan Event
	if follow {
		var cancel func()
		ch, cancel = es.Subscribe()
		defer cancel()
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	fl, _ := w.(http.Flusher)
	flush := func() {
		_ = bw.Flush()
		if fl != nil {
			fl.Flush()
		}
	}
	var last uint64 = after
	for _, e := range es.Recent(after) {
		_ = enc.Encode(e)
		last = e.Seq
	}
	flush()
	if !follow {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case e := <-ch:
			if e.Seq <= last {
				continue
			}
			last = e.Seq
			if enc.Encode(e) != nil {
				return
			}
			flush()
		}
	}
}

// heartbeat takes a pushed heartbeat. An agent certificate may report only
// for the node it names (its pki name is the node's name): a heartbeat for
// another node is refused with 403 and changes nothing. A server
// certificate (a follower forwarding an agent's heartbeat it has already
// checked) and an admin token may report for any node.
//
// The body is decoded in two steps: the envelope here, the task list (the
// bulk of it) only when it differs from the node's previous report.
func (a *API) heartbeat(w http.ResponseWriter, r *http.Request) {
	hb, err := readHeartbeat(r.Body)
	if err != nil {
		writeErr(w, err)
		return
	}
	if err := heartbeatAllowed(a.Insecure, r, hb.Node); err != nil {
		writeErr(w, err)
		return
	}
	if err := a.Controller.ObserveEncoded(r.Context(), Heartbeat{Node: hb.Node, Addr: hb.Addr, Info: hb.Info}, hb.Tasks); err != nil {
		writeErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) servers(w http.ResponseWriter, r *http.Request) {
	sv, err := a.Store.Servers()
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, 200, sv)
}

func (a *API) join(w http.ResponseWriter, r *http.Request) {
	var sv store.Server
	if err := decodeBody(r, &sv); err != nil {
		writeErr(w, err)
		return
	}
	if sv.ID == "" || sv.RaftAddr == "" || sv.APIAddr == "" {
		writeErr(w, fmt.Errorf("%w: id, raft_addr and api_addr are required", store.ErrInvalid))
		return
	}
	if err := a.Store.Join(r.Context(), sv); err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, 200, sv)
}

// tokens gives a joining server the token hashes this server checks
// (never the secrets). Only a server certificate gets them: an admin token
// alone does not.
func (a *API) tokens(w http.ResponseWriter, r *http.Request) {
	if !a.Insecure {
		if role, name, err := pki.PeerRole(r.TLS); err != nil || role != pki.RoleServer {
			writeErr(w, fmt.Errorf("%w: the token list is given only to servers (a certificate with role server), not to %s %q", ErrForbidden, role, name))
			return
		}
	}
	writeJSON(w, 200, a.Tokens.list)
}

// heartbeatAllowed binds a pushed heartbeat to the caller's identity: a
// caller presenting an agent certificate must be the node it reports for.
func heartbeatAllowed(insecure bool, r *http.Request, node string) error {
	if insecure {
		return nil
	}
	role, name, err := pki.PeerRole(r.TLS)
	if err != nil || role != pki.RoleAgent {
		return nil // admitted by auth as a server or by an admin token
	}
	if name != node {
		return fmt.Errorf("%w: agent certificate %q may report only for node %q, not %q", ErrForbidden, name, name, node)
	}
	return nil
}
