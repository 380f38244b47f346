package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/pki"
	"github.com/ferrycluster/ferry/store"
	dto "github.com/prometheus/client_model/go"
)

type dtoMetric = dto.Metric

// fakeAgent is an in-process agent for the benchmark: it acknowledges
// commands at once and reports the tasks it was told to run. (5,000 real
// agents cannot exist on this machine; the controller's side — API,
// journal, policy, planner, executor — is the real one.)
type fakeAgent struct {
	name string
	mu   sync.Mutex
	ts   map[string]api.Task
}

type fakeFleet struct {
	mu     sync.Mutex
	agents map[string]*fakeAgent
}

func (f *fakeFleet) dial(addr string) AgentAPI {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.agents[addr]
	if a == nil {
		a = &fakeAgent{name: addr[len("fake:"):], ts: map[string]api.Task{}}
		f.agents[addr] = a
	}
	return a
}

func (a *fakeAgent) Node(context.Context) (api.NodeInfo, error) {
	return api.NodeInfo{Name: a.name, CPUs: 64, MemoryBytes: 256 << 30}, nil
}

func (a *fakeAgent) List(context.Context) ([]api.Task, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]api.Task, 0, len(a.ts))
	for _, t := range a.ts {
		out = append(out, t)
	}
	return out, nil
}

func (a *fakeAgent) run(id string, epoch uint64) api.Task {
	t := api.Task{ID: id, Driver: "process", Epoch: epoch, Phase: api.PhaseRunning, Status: &driver.Status{ID: id, Epoch: epoch, State: driver.StateRunning}}
	a.mu.Lock()
	a.ts[id] = t
	a.mu.Unlock()
	return t
}

func (a *fakeAgent) Run(_ context.Context, req api.RunRequest) (api.Task, error) {
	return a.run(req.Spec.ID, req.Spec.Epoch), nil
}

func (a *fakeAgent) Stop(_ context.Context, id string, _ uint64) error {
	a.mu.Lock()
	delete(a.ts, id)
	a.mu.Unlock()
	return nil
}

func (a *fakeAgent) Suspend(_ context.Context, id string, epoch uint64) (api.Task, error) {
	t := api.Task{ID: id, Epoch: epoch, Phase: api.PhaseSuspended, Image: &driver.Image{Dir: "/img/" + id}}
	a.mu.Lock()
	a.ts[id] = t
	a.mu.Unlock()
	return t, nil
}

func (a *fakeAgent) Resume(_ context.Context, id string, req api.ResumeRequest) (api.Task, error) {
	ep := req.Epoch
	if req.From != "" {
		ep++
	}
	return a.run(id, ep), nil
}

func (a *fakeAgent) Migrate(_ context.Context, id string, req api.MigrateRequest, _ func(api.MigrateEvent)) (api.MigrateEvent, error) {
	return api.MigrateEvent{Done: true, Epoch: req.Epoch + 1}, fmt.Errorf("%w: the benchmark does not migrate", driver.ErrUnsupported)
}

func (a *fakeAgent) Cancel(context.Context, string, uint64) error { return nil }

func (a *fakeAgent) Grant(context.Context, string, api.GrantRequest) error { return nil }

func (a *fakeAgent) Replicas(context.Context) ([]api.Replica, error) { return nil, nil }

func (a *fakeAgent) Logs(context.Context, string, int, bool) (io.ReadCloser, error) {
	return nil, driver.ErrUnsupported
}

// The heartbeat generator runs in a child process (so the server's CPU can
// be measured alone): FERRY_BENCH_HEARTBEATS=FILE holds its parameters.
func init() {
	if f := os.Getenv("FERRY_BENCH_HEARTBEATS"); f != "" {
		os.Exit(heartbeater(f))
	}
}

type hbParams struct {
	Addr, TLSDir, Cert string
	Seconds            int
	Nodes              map[string][]api.Task
	// Changing makes every heartbeat's task list differ from the node's
	// previous one (the first task's pid changes), so the server decodes
	// each list in full: the worst case (FERRY_BENCH_HB_CHANGING=1).
	Changing bool
}

// hbWorkers is how many connections the generator keeps open; each sends
// its share of the nodes' heartbeats one after the other.
const hbWorkers = 32

// heartbeater pushes one heartbeat per node per second over the real API
// (mutual TLS, one keep-alive connection per worker), each node at its own
// fixed offset within the second. Bodies are encoded once: the generator
// must cost far less than the server it loads, on the same two cores.
// Each heartbeat still carries the node's usage, which changes every
// beat (a counter in used_memory_bytes), so the server decodes every
// report in full, as it would from real agents.
func heartbeater(file string) int {
	b, err := os.ReadFile(file)
	if err != nil {
		return 2
	}
	var p hbParams
	if json.Unmarshal(b, &p) != nil {
		return 2
	}
	id, err := pki.Load(p.TLSDir, p.Cert)
	if err != nil {
		return 2
	}
	names := make([]string, 0, len(p.Nodes))
	for n := range p.Nodes {
		names = append(names, n)
	}
	sort.Strings(names)
	// Each body is split around the figures that change every beat (the
	// usage; with Changing also the first task's pid), printed in at send
	// time.
	const mark = "987654321"
	bodies := make([][][]byte, len(names))
	for i, n := range names {
		tasks := append([]api.Task(nil), p.Nodes[n]...)
		if p.Changing && len(tasks) > 0 {
			st := *tasks[0].Status
			st.PID = 987654321
			tasks[0].Status = &st
		}
		hb := Heartbeat{Node: n, Addr: "fake:" + n, Info: api.NodeInfo{Name: n, CPUs: 64, MemoryBytes: 256 << 30, UsedMemoryBytes: 987654321}, Tasks: tasks}
		raw, err := json.Marshal(hb)
		if err != nil {
			return 2
		}
		bodies[i] = bytes.Split(raw, []byte(mark))
	}
	url := "https://" + p.Addr + "/v1/heartbeat"
	start := time.Now()
	end := start.Add(time.Duration(p.Seconds) * time.Second)
	var sent, errs atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < hbWorkers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: id.ClientConfig(), MaxIdleConnsPerHost: 1}}
			buf := make([]byte, 0, 64<<10)
			for beat := 0; ; beat++ {
				for i := w; i < len(names); i += hbWorkers {
					due := start.Add(time.Duration(beat)*time.Second + time.Duration(i)*time.Second/time.Duration(len(names)))
					if due.After(end) {
						return
					}
					if d := time.Until(due); d > 0 {
						time.Sleep(d)
					}
					buf = append(buf[:0], bodies[i][0]...)
					for _, part := range bodies[i][1:] {
						buf = strconv.AppendInt(buf, int64(beat)<<20+int64(i), 10)
						buf = append(buf, part...)
					}
					resp, err := hc.Post(url, "application/json", bytes.NewReader(buf))
					if err == nil {
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode != http.StatusNoContent {
							err = fmt.Errorf("status %s", resp.Status)
						}
					}
					if err != nil {
						errs.Add(1)
						continue
					}
					sent.Add(1)
				}
			}
		}(w)
	}
	wg.Wait()
	fmt.Fprintf(os.Stderr, "heartbeater: %d sent, %d errors in %s\n", sent.Load(), errs.Load(), time.Since(start).Round(time.Millisecond))
	return 0
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkControl places 50,000 tasks on 1,000 and 5,000 nodes through the
// real server (raft journal on disk, policy, planner, executor) with
// in-process fake agents, then has a child process push one heartbeat per
// node per second over the real mutual-TLS API and measures the server's
// CPU. `make bench-control` runs it once.
func BenchmarkControl(b *testing.B) {
	for _, nodes := range benchNodes() {
		b.Run(fmt.Sprintf("nodes=%d/tasks=%d", nodes, benchTasks()), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				benchControl(b, nodes, benchTasks())
			}
		})
	}
}

func benchControl(b *testing.B, nodes, tasks int) {
	tlsDir, dataDir := b.TempDir(), b.TempDir()
	if err := pki.Init(tlsDir, time.Now()); err != nil {
		b.Fatal(err)
	}
	// The heartbeat generator speaks for every fake node, so it holds a
	// server identity: an agent certificate may report only for its own node.
	for name, role := range map[string]pki.Role{"server": pki.RoleServer, "hb": pki.RoleServer} {
		if err := pki.Issue(tlsDir, pki.IssueRequest{Name: name, Role: role}, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
	fleet := &fakeFleet{agents: map[string]*fakeAgent{}}
	srv, err := StartServer(context.Background(), ServerConfig{
		DataDir: dataDir, Listen: "127.0.0.1:0", Bootstrap: true, TLSDir: tlsDir, Policy: Priority{},
		Period: time.Second, HeartbeatTimeout: 30 * time.Second, Fast: true, SolveTimeout: 10 * time.Second,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})), Dial: fleet.dial,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	for !srv.Store.IsLeader() {
		time.Sleep(10 * time.Millisecond)
	}
	ctx := context.Background()
	// Register the nodes (as their first heartbeat would).
	var reg []store.Command
	for i := 0; i < nodes; i++ {
		n := fmt.Sprintf("node%05d", i)
		reg = append(reg, store.Command{RegisterNode: &store.RegisterNode{Name: n, Addr: "fake:" + n, Capacity: store.Resources{CPUMilli: 64000, MemoryBytes: 256 << 30}}})
	}
	if _, err := srv.Store.Apply(ctx, store.Command{Batch: reg}); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < nodes; i++ {
		n := fmt.Sprintf("node%05d", i)
		_ = srv.Controller.Observe(ctx, Heartbeat{Node: n, Addr: "fake:" + n}, false)
	}
	// Submit 50 jobs of 1,000 tasks in one batch, then wait for every task
	// to run.
	perJob := 1000
	var subs []store.Command
	for j := 0; j < tasks/perJob; j++ {
		spec := &JobSpec{Name: fmt.Sprintf("job%03d", j), Priority: j % 3, Preemptible: true,
			Tasks: []TaskSpec{{Name: "t", Driver: "process", Command: []string{"true"}, CPUMilli: 100 + int64(j%4)*100, MemoryBytes: 256 << 20, Count: perJob}}}
		cmd, err := SubmitCommand(spec)
		if err != nil {
			b.Fatal(err)
		}
		subs = append(subs, cmd)
	}
	evs, stopEvs := srv.Controller.Events().Subscribe()
	defer stopEvs()
	var evMu sync.Mutex
	var planEvents []Event
	var doneCount int
	go func() {
		for e := range evs {
			evMu.Lock()
			if e.Kind == "plan" {
				planEvents = append(planEvents, e)
			}
			if e.What == "done" {
				doneCount++
				if doneCount%(tasks/10) == 0 {
					planEvents = append(planEvents, Event{Time: e.Time, Kind: "progress", What: fmt.Sprintf("%d actions done", doneCount)})
				}
			}
			evMu.Unlock()
		}
	}()
	b.ResetTimer()
	t0, cpu0 := time.Now(), cpuTime()
	if _, err := srv.Store.Apply(ctx, store.Command{Batch: subs}); err != nil {
		b.Fatal(err)
	}
	srv.Controller.Trigger()
	deadline := time.Now().Add(20 * time.Minute)
	for {
		running := 0
		srv.Store.View(func(s *store.State) {
			for _, t := range s.Tasks {
				if t.Phase == store.TaskRunning {
					running++
				}
			}
		})
		if running == tasks {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d tasks running after 20 minutes", running, tasks)
		}
		time.Sleep(50 * time.Millisecond)
	}
	placeTook, placeCPU := time.Since(t0), cpuTime()-cpu0
	b.StopTimer()
	evMu.Lock()
	for _, e := range planEvents {
		if strings.HasSuffix(e.What, "actions ended") {
			continue
		}
		b.Logf("%s after submission: %s", e.Time.Sub(t0).Round(time.Millisecond), e)
	}
	evMu.Unlock()
	m := srv.Controller.Metrics()
	pd := histogram(m.PlanDuration)
	pe := histogram(m.PlanExecution)
	b.ReportMetric(float64(tasks)/placeTook.Seconds(), "placements/s")
	b.ReportMetric(pd.mean*1000, "plan-ms")
	b.ReportMetric(float64(pd.count), "plans")
	b.ReportMetric(float64(tasks)/placeCPU.Seconds(), "placements/cpu-s")
	b.Logf("%d nodes, %d tasks: all running %.2fs after submission (%.0f placements/s wall; the server used %.1f CPU-s: %.0f placements per CPU-second); %d plans, policy+planner %.0f ms mean, plan execution %.0f ms mean",
		nodes, tasks, placeTook.Seconds(), float64(tasks)/placeTook.Seconds(), placeCPU.Seconds(), float64(tasks)/placeCPU.Seconds(), pd.count, pd.mean*1000, pe.mean*1000)

	// Heartbeats: a child process pushes one per node per second with the
	// node's tasks; the server's own CPU is measured over the window.
	p := hbParams{Addr: srv.Addr(), TLSDir: tlsDir, Cert: "hb", Seconds: 14, Nodes: map[string][]api.Task{}, Changing: os.Getenv("FERRY_BENCH_HB_CHANGING") != ""}
	srv.Store.View(func(s *store.State) {
		for n := range s.Nodes {
			p.Nodes[n] = []api.Task{}
		}
		for _, t := range s.Tasks {
			p.Nodes[t.Node] = append(p.Nodes[t.Node], api.Task{ID: t.Name, Driver: "process", Epoch: t.Epoch, Phase: api.PhaseRunning,
				Status: &driver.Status{ID: t.Name, Epoch: t.Epoch, State: driver.StateRunning}})
		}
	})
	pf := dataDir + "/hb.json"
	pb, _ := json.Marshal(p)
	if err := os.WriteFile(pf, pb, 0o600); err != nil {
		b.Fatal(err)
	}
	before := histogramCount(m.Heartbeats)
	child := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	child.Env = append(os.Environ(), "FERRY_BENCH_HEARTBEATS="+pf)
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		b.Fatal(err)
	}
	time.Sleep(3 * time.Second) // warm up: connections, first round
	if f := os.Getenv("FERRY_BENCH_CPUPROFILE"); f != "" {
		pf, err := os.Create(f)
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.StartCPUProfile(pf); err != nil {
			b.Fatal(err)
		}
		defer pf.Close()
		defer pprof.StopCPUProfile()
	}
	c0, g0, w0, h0 := cpuTime(), procCPU(child.Process.Pid), time.Now(), histogramCount(m.Heartbeats)
	time.Sleep(10 * time.Second)
	c1, g1, w1, h1 := cpuTime(), procCPU(child.Process.Pid), time.Now(), histogramCount(m.Heartbeats)
	_ = child.Wait()
	wall := w1.Sub(w0).Seconds()
	share := (c1 - c0).Seconds() / wall / 2 * 100
	gshare := (g1 - g0).Seconds() / wall / 2 * 100
	rate := (h1 - h0) / wall
	b.ReportMetric(share, "%cpu-of-2-cores")
	b.ReportMetric(rate, "heartbeats/s")
	b.ReportMetric(gshare, "generator-%cpu-of-2-cores")
	b.Logf("heartbeats: %.0f/s received (%d total) with %d tasks reported; server process CPU %.1f%% of 2 cores (includes the loop's reconcile of every report), %.0f µs per heartbeat; the generator (another process) %.1f%%",
		rate, int(h1-before), tasks, share, (c1-c0).Seconds()/(h1-h0)*1e6, gshare)
}

// procCPU reads the user+system CPU time of process pid from
// /proc/PID/stat (fields 14 and 15, in clock ticks of 1/100 s on Linux).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces: count from its ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

type histStats struct {
	count uint64
	mean  float64
}

func histogram(h interface{ Write(*dtoMetric) error }) histStats {
	var d dtoMetric
	if h.Write(&d) != nil || d.Histogram == nil || d.Histogram.GetSampleCount() == 0 {
		return histStats{}
	}
	return histStats{count: d.Histogram.GetSampleCount(), mean: d.Histogram.GetSampleSum() / float64(d.Histogram.GetSampleCount())}
}

func histogramCount(c interface{ Write(*dtoMetric) error }) float64 {
	var d dtoMetric
	if c.Write(&d) != nil || d.Counter == nil {
		return 0
	}
	return d.Counter.GetValue()
}

// benchNodes and benchTasks default to the issue's sizes; FERRY_BENCH_SMALL
// shrinks them for a quick look.
func benchNodes() []int {
	if os.Getenv("FERRY_BENCH_SMALL") != "" {
		return []int{100}
	}
	if n, err := strconv.Atoi(os.Getenv("FERRY_BENCH_NODES")); err == nil && n > 0 {
		return []int{n}
	}
	return []int{1000, 5000}
}

func benchTasks() int {
	if os.Getenv("FERRY_BENCH_SMALL") != "" {
		return 5000
	}
	return 50000
}
