package process

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/internal/linktree"
)

// Kind is the driver kind this package implements.
const Kind = "process"

// Names inside a task directory (see the package documentation).
const (
	stateFile      = "state.json"
	launchFile     = "launch.json"
	jobFile        = "job.json"
	exitFile       = "exit.json"
	stagingDir     = "staging"
	checkpointsDir = "checkpoints"
	restoreDir     = "restore"
)

// Config configures a Driver.
type Config struct {
	// DataDir holds tasks/<id>/ and logs/<id>.log. Required.
	DataDir string
	// Logger gets the driver's events; nil means slog.Default().
	Logger *slog.Logger
	// SupervisorPath is the binary re-executed as the job's supervisor; it
	// must link this package. Empty means os.Executable().
	SupervisorPath string
	// OnCheckpoint, if set, is called after every committed periodic
	// checkpoint with the task's latest checkpoint directory. The directory
	// stays in place until the call returns (the next periodic checkpoint
	// waits for it), so the agent can copy it to another node from here.
	OnCheckpoint func(ctx context.Context, id string, img driver.Image)
	// NoCgroups disables cgroup limits even where the machine has them.
	NoCgroups bool
	// StopGrace is how long Stop waits after SIGTERM before SIGKILL when
	// the caller's ctx has no earlier deadline (default 10 s).
	StopGrace time.Duration
	// Env is the environment every job starts with, before the spec's Env
	// and the FERRY_* variables. Nil means PATH, HOME and TMPDIR of the
	// agent (PATH defaulting to /usr/local/bin:/usr/bin:/bin).
	Env []string
}

// Driver runs plain processes with cooperative checkpointing. It
// implements driver.Driver, driver.Checkpointer and driver.Pauser.
type Driver struct {
	cfg  Config
	log  *slog.Logger
	cg   *cgroupSet
	exe  string
	done chan struct{}
	wg   sync.WaitGroup

	mu    sync.Mutex
	tasks map[string]*task
}

var (
	_ driver.Driver       = (*Driver)(nil)
	_ driver.Checkpointer = (*Driver)(nil)
	_ driver.Pauser       = (*Driver)(nil)
)

// record is a task's state.json: everything a restarted driver needs.
type record struct {
	Spec        driver.Spec `json:"spec"`
	Incarnation int         `json:"incarnation"`
	// StartedAt is when this incarnation started (Stats.Age counts from it).
	StartedAt time.Time `json:"started_at"`
	Restored  bool      `json:"restored,omitempty"`
	Paused    bool      `json:"paused,omitempty"`
	Cgroups   []string  `json:"cgroups,omitempty"`
	LimitNote string    `json:"limit_note,omitempty"`
	// CheckpointSeq numbers periodic checkpoints (checkpoints/<seq>).
	CheckpointSeq int `json:"checkpoint_seq,omitempty"`
	// Latest is the last committed periodic checkpoint directory.
	Latest string `json:"latest,omitempty"`
	// Last checkpoint of any kind: size and duration (for Stats).
	LastBytes int64         `json:"last_bytes,omitempty"`
	LastTook  time.Duration `json:"last_took,omitempty"`
}

type task struct {
	id  string
	dir string
	job job
	// sem serialises operations (checkpoint, suspend, stop, pause).
	sem  chan struct{}
	stop chan struct{} // closes the periodic loop

	mu     sync.Mutex
	rec    record
	ioPrev procIO
	ioAt   time.Time
	gone   bool
	// restarting is set while the monitor commits a self-checkpoint and
	// restarts the job from it.
	restarting bool
	// spawning is set while spawn launches a new incarnation, and by
	// create from the task's registration until its spawn.
	spawning bool
	// cancelPeriodic interrupts a periodic checkpoint in flight (Stop does
	// not wait for one).
	cancelPeriodic context.CancelFunc
}

// New opens (or creates) a driver over cfg.DataDir and re-attaches to the
// tasks recorded there, which may still be running from a previous agent.
func New(cfg Config) (*Driver, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("process driver: data dir is empty")
	}
	abs, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	cfg.DataDir = abs
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 10 * time.Second
	}
	if cfg.Env == nil {
		path := os.Getenv("PATH")
		if path == "" {
			path = "/usr/local/bin:/usr/bin:/bin"
		}
		cfg.Env = []string{"PATH=" + path}
		for _, k := range []string{"HOME", "TMPDIR"} {
			if v, ok := os.LookupEnv(k); ok {
				cfg.Env = append(cfg.Env, k+"="+v)
			}
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	d := &Driver{cfg: cfg, log: log.With("component", "driver/process"), done: make(chan struct{}), tasks: map[string]*task{}}
	d.exe = cfg.SupervisorPath
	if d.exe == "" {
		if d.exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("process driver: find own binary for the supervisor: %w", err)
		}
	}
	for _, sub := range []string{"tasks", "logs"} {
		if err := os.MkdirAll(filepath.Join(abs, sub), 0o755); err != nil {
			return nil, fmt.Errorf("process driver: %w", err)
		}
	}
	if cfg.NoCgroups {
		d.cg = &cgroupSet{caps: Capabilities{Reason: "cgroups disabled by configuration"}}
	} else {
		d.cg = detectCgroups(abs)
	}
	if err := d.recover(); err != nil {
		return nil, err
	}
	return d, nil
}

// Close stops the driver's background work. Running jobs keep running; a
// new driver over the same data dir re-attaches to them.
func (d *Driver) Close() error {
	d.mu.Lock()
	select {
	case <-d.done:
	default:
		close(d.done)
	}
	d.mu.Unlock()
	d.wg.Wait()
	// A job that ended and was never stopped keeps its record, and its
	// cgroups, until now: its supervisor exits right after the job, then
	// they are empty.
	d.mu.Lock()
	tasks := make([]*task, 0, len(d.tasks))
	for _, t := range d.tasks {
		tasks = append(tasks, t)
	}
	d.mu.Unlock()
	for _, t := range tasks {
		rec := t.snapshot()
		if p := t.observe(); len(rec.Cgroups) > 0 && !p.running && waitGone(p.jr, 2*time.Second) {
			d.cg.remove(rec.Cgroups)
		}
	}
	d.cg.removeBases() // only when no task cgroup is left in them
	return nil
}

// SetOnCheckpoint replaces Config.OnCheckpoint. An agent installs its hook
// with it after the driver is built, while periodic loops may already run.
func (d *Driver) SetOnCheckpoint(fn func(ctx context.Context, id string, img driver.Image)) {
	d.mu.Lock()
	d.cfg.OnCheckpoint = fn
	d.mu.Unlock()
}

// onCheckpoint calls the hook, if any, with a committed periodic checkpoint.
func (d *Driver) onCheckpoint(ctx context.Context, id string, img driver.Image) {
	d.mu.Lock()
	fn := d.cfg.OnCheckpoint
	d.mu.Unlock()
	if fn != nil {
		fn(ctx, id, img)
	}
}

// Capabilities reports which limits are enforced on this machine.
func (d *Driver) Capabilities() Capabilities { return d.cg.caps }

// Kind implements driver.Driver.
func (d *Driver) Kind() string { return Kind }

// LogPath implements driver.Driver: <data-dir>/logs/<id>.log. It stays
// after Stop and Suspend; a resumed task appends to it.
func (d *Driver) LogPath(id string) string {
	if !idPattern.MatchString(id) {
		return ""
	}
	return filepath.Join(d.cfg.DataDir, "logs", id+".log")
}

func (d *Driver) taskDir(id string) string { return filepath.Join(d.cfg.DataDir, "tasks", id) }

func (d *Driver) recover() error {
	ents, err := os.ReadDir(filepath.Join(d.cfg.DataDir, "tasks"))
	if err != nil {
		return fmt.Errorf("process driver: %w", err)
	}
	for _, e := range ents {
		if !e.IsDir() || !idPattern.MatchString(e.Name()) {
			continue
		}
		dir := d.taskDir(e.Name())
		var rec record
		if err := readJSON(filepath.Join(dir, stateFile), &rec); err != nil {
			// Never launched (state.json is written before the job
			// starts) or corrupt: nothing runs from here.
			d.log.Warn("dropping task directory without a valid state", "dir", dir, "err", err)
			os.RemoveAll(dir)
			continue
		}
		j, err := validate(rec.Spec)
		if err != nil || rec.Spec.ID != e.Name() {
			d.log.Warn("dropping task with an invalid recorded spec", "dir", dir, "err", err)
			os.RemoveAll(dir)
			continue
		}
		t := d.newTask(j, dir)
		t.rec = rec
		d.tasks[t.id] = t
		d.log.Info("re-attached task", "task", t.id, "incarnation", rec.Incarnation)
		d.startPeriodic(t)
		d.startMonitor(t)
	}
	return nil
}

func (d *Driver) newTask(j job, dir string) *task {
	return &task{id: j.spec.ID, dir: dir, job: j, sem: make(chan struct{}, 1), stop: make(chan struct{})}
}

func (d *Driver) lookup(id string) (*task, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	t, ok := d.tasks[id]
	if !ok {
		return nil, fmt.Errorf("process driver: task %q: %w", id, driver.ErrNotFound)
	}
	return t, nil
}

// acquire takes the task's operation lock, waiting for a running one (a
// periodic checkpoint, say) until ctx ends. It fails with ErrNotFound when
// the task went away while waiting.
func (t *task) acquire(ctx context.Context) error {
	select {
	case t.sem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("task %q: waiting for another operation: %w (%w)", t.id, driver.ErrBusy, ctx.Err())
	}
	t.mu.Lock()
	gone := t.gone
	t.mu.Unlock()
	if gone {
		<-t.sem
		return fmt.Errorf("process driver: task %q: %w", t.id, driver.ErrNotFound)
	}
	return nil
}

func (t *task) release() { <-t.sem }

func (t *task) saveLocked() error { return writeJSONAtomic(filepath.Join(t.dir, stateFile), t.rec) }

func (t *task) snapshot() record {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.rec
}

// Start implements driver.Driver.
func (d *Driver) Start(ctx context.Context, spec driver.Spec) error {
	return d.create(ctx, spec, "")
}

// Resume implements driver.Driver: it starts the task with FERRY_RESTORE=1
// from a committed checkpoint directory (from this node or another). The
// checkpoint is hard-linked (or copied) into the task's restore directory,
// so the caller may delete dir once Resume returns.
func (d *Driver) Resume(ctx context.Context, spec driver.Spec, dir string) error {
	return d.create(ctx, spec, dir)
}

func (d *Driver) create(ctx context.Context, spec driver.Spec, from string) error {
	j, err := validate(spec)
	if err != nil {
		return err
	}
	if j.spec.Process.Dir != "" {
		if fi, err := os.Stat(j.spec.Process.Dir); err != nil || !fi.IsDir() {
			return fmt.Errorf("%w: task %q: process.dir %s is not a directory on this node", driver.ErrInvalidSpec, spec.ID, j.spec.Process.Dir)
		}
	}
	d.mu.Lock()
	if _, ok := d.tasks[spec.ID]; ok {
		d.mu.Unlock()
		return fmt.Errorf("process driver: task %q: %w", spec.ID, driver.ErrExists)
	}
	dir := d.taskDir(spec.ID)
	if err := os.Mkdir(dir, 0o755); err != nil {
		d.mu.Unlock()
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("process driver: task %q: %w (directory %s)", spec.ID, driver.ErrExists, dir)
		}
		return fmt.Errorf("process driver: task %q: %w", spec.ID, err)
	}
	t := d.newTask(j, dir)
	t.sem <- struct{}{} // held until started
	// List sees the task from here on: it shows the spec's epoch and
	// "starting" (not a job that never ran) until spawn has started it.
	t.rec.Spec, t.spawning = spec, true
	d.tasks[spec.ID] = t
	d.mu.Unlock()

	fail := func(err error) error {
		d.mu.Lock()
		delete(d.tasks, spec.ID)
		d.mu.Unlock()
		d.cg.remove(t.snapshot().Cgroups)
		os.RemoveAll(dir)
		return err
	}
	if from != "" {
		m, err := VerifyImage(from)
		if err != nil {
			return fail(fmt.Errorf("process driver: resume task %q: %w", spec.ID, err))
		}
		if m.TaskID != spec.ID {
			return fail(fmt.Errorf("process driver: resume task %q: %w: %s holds a checkpoint of task %q", spec.ID, ErrBadImage, from, m.TaskID))
		}
		if err := linktree.Tree(from, filepath.Join(dir, restoreDir)); err != nil {
			return fail(fmt.Errorf("process driver: resume task %q: take checkpoint %s: %w", spec.ID, from, err))
		}
		t.mu.Lock()
		t.rec.LastBytes, t.rec.LastTook = m.Bytes, m.Took
		t.mu.Unlock()
	}
	// The task is already visible to List (d.tasks), so its record is
	// written under t.mu like everywhere else.
	cgs, note, err := d.cg.create(filepath.Base(dir), spec.CPUs, spec.MemoryBytes)
	t.mu.Lock()
	t.rec.Cgroups, t.rec.LimitNote = cgs, note
	t.mu.Unlock()
	if err != nil {
		return fail(fmt.Errorf("process driver: task %q: set up cgroup limits: %w", spec.ID, err))
	}
	if err := d.spawn(ctx, t, from != ""); err != nil {
		return fail(err)
	}
	d.log.Info("task started", "task", spec.ID, "epoch", spec.Epoch, "restored", from != "", "pid", t.jobPID())
	d.startPeriodic(t)
	d.startMonitor(t)
	t.release()
	return nil
}

// spawn launches a new incarnation of the task's job through the
// supervisor and waits until the job runs. The caller holds the task's
// operation lock.
func (d *Driver) spawn(ctx context.Context, t *task, restore bool) error {
	t.mu.Lock()
	t.spawning = true
	defer func() { t.mu.Lock(); t.spawning = false; t.mu.Unlock() }()
	t.rec.Incarnation++
	t.rec.Restored = restore
	t.rec.Paused = false
	t.rec.StartedAt = time.Now().UTC()
	inc := t.rec.Incarnation
	err := t.saveLocked()
	t.ioPrev, t.ioAt = procIO{}, time.Time{}
	t.mu.Unlock()
	if err != nil {
		return fmt.Errorf("process driver: task %q: %w", t.id, err)
	}
	os.Remove(filepath.Join(t.dir, jobFile))
	os.Remove(filepath.Join(t.dir, exitFile))
	staging := filepath.Join(t.dir, stagingDir)
	if err := resetDir(staging); err != nil {
		return fmt.Errorf("process driver: task %q: %w", t.id, err)
	}
	p := t.job.spec.Process
	env := append([]string(nil), d.cfg.Env...)
	keys := make([]string, 0, len(p.Env))
	for k := range p.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+p.Env[k])
	}
	env = append(env,
		EnvTaskID+"="+t.id,
		EnvCheckpointDir+"="+staging,
		EnvCheckpointSignal+"="+signalName(t.job.signal),
		EnvCheckpointCode+"="+strconv.Itoa(t.job.exitCode),
	)
	if restore {
		env = append(env, EnvRestore+"=1", EnvRestoreDir+"="+filepath.Join(t.dir, restoreDir))
	}
	l := launch{Incarnation: inc, Argv: p.Command, Env: env, Dir: p.Dir, Cgroups: t.rec.Cgroups}
	if err := writeJSONAtomic(filepath.Join(t.dir, launchFile), l); err != nil {
		return fmt.Errorf("process driver: task %q: %w", t.id, err)
	}
	logf, err := os.OpenFile(d.LogPath(t.id), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("process driver: task %q: open log: %w", t.id, err)
	}
	cmd := exec.Command(d.exe)
	cmd.Env = []string{supervisorEnv + "=" + t.dir}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return fmt.Errorf("process driver: task %q: start supervisor %s: %w", t.id, d.exe, err)
	}
	reaped := make(chan struct{})
	go func() { cmd.Wait(); close(reaped) }() // reap; exit.json is the record
	// Wait for the supervisor to report the job running (or not).
	deadline := time.Now().Add(30 * time.Second)
	for delay := time.Millisecond; ; delay = min(delay*2, 20*time.Millisecond) {
		var jr jobRecord
		if err := readJSON(filepath.Join(t.dir, jobFile), &jr); err == nil && jr.Incarnation == inc {
			return nil
		}
		var ex exitRecord
		if err := readJSON(filepath.Join(t.dir, exitFile), &ex); err == nil && ex.Incarnation == inc && ex.StartError != "" {
			return fmt.Errorf("process driver: task %q: %w: cannot start %q: %s", t.id, driver.ErrTaskFailed, p.Command[0], ex.StartError)
		}
		ended := false
		select {
		case <-reaped:
			ended = true
		default:
			ended = !alive(cmd.Process.Pid, 0)
		}
		if ended {
			// Re-check the records once: the supervisor may have written
			// them just before ending.
			if err := readJSON(filepath.Join(t.dir, jobFile), &jr); err == nil && jr.Incarnation == inc {
				return nil
			}
			if err := readJSON(filepath.Join(t.dir, exitFile), &ex); err == nil && ex.Incarnation == inc {
				if ex.StartError != "" {
					return fmt.Errorf("process driver: task %q: %w: cannot start %q: %s", t.id, driver.ErrTaskFailed, p.Command[0], ex.StartError)
				}
				return nil // started and already ended; Inspect reports it
			}
			return fmt.Errorf("process driver: task %q: %w: supervisor ended before starting the job (see %s)", t.id, driver.ErrTaskFailed, d.LogPath(t.id))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			return fmt.Errorf("process driver: task %q: %w: job did not start within 30s", t.id, driver.ErrTimeout)
		}
		time.Sleep(delay)
	}
}

func resetDir(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return os.Mkdir(dir, 0o755)
}

// proc is what the driver knows about the current incarnation's processes.
type proc struct {
	jr      jobRecord
	ex      *exitRecord
	running bool // supervisor and job alive
}

func (t *task) observe() proc {
	inc := t.snapshot().Incarnation
	var p proc
	var ex exitRecord
	if err := readJSON(filepath.Join(t.dir, exitFile), &ex); err == nil && ex.Incarnation == inc {
		p.ex = &ex
	}
	if err := readJSON(filepath.Join(t.dir, jobFile), &p.jr); err != nil || p.jr.Incarnation != inc {
		p.jr = jobRecord{}
	}
	if p.ex == nil && p.jr.PID > 0 && alive(p.jr.SupervisorPID, p.jr.SupervisorStart) {
		p.running = true
		return p
	}
	if p.ex == nil { // the supervisor may have just written it
		if err := readJSON(filepath.Join(t.dir, exitFile), &ex); err == nil && ex.Incarnation == inc {
			p.ex = &ex
		}
	}
	return p
}

func (t *task) jobPID() int { return t.observe().jr.PID }

// signalGroup sends sig to the job's process group (supervisor and job),
// after checking the supervisor is still the process recorded (pid reuse).
func signalGroup(jr jobRecord, sig syscall.Signal) error {
	if !alive(jr.SupervisorPID, jr.SupervisorStart) {
		return errors.New("process group is gone")
	}
	return syscall.Kill(-jr.SupervisorPID, sig)
}

// Inspect implements driver.Driver.
func (d *Driver) Inspect(ctx context.Context, id string) (driver.Status, error) {
	t, err := d.lookup(id)
	if err != nil {
		return driver.Status{}, err
	}
	return d.status(t), nil
}

func (d *Driver) status(t *task) driver.Status {
	rec := t.snapshot()
	// Read before observing the job: a spawn that ends between the two
	// would otherwise leave a job not yet seen running and no spawn.
	starting := t.isRestarting() || t.isSpawning()
	p := t.observe()
	st := driver.Status{ID: t.id, Epoch: rec.Spec.Epoch, Kind: Kind, StartedAt: rec.StartedAt, PID: p.jr.PID}
	switch {
	case p.running && rec.Paused:
		st.State = driver.StatePaused
	case p.running:
		st.State = driver.StateRunning
		st.Message = rec.LimitNote
	case p.ex != nil && p.ex.ExitCode == t.job.exitCode && p.ex.Signal == "" && (t.isRestarting() || hasFiles(filepath.Join(t.dir, stagingDir))):
		st.State = driver.StateStarting
		st.Message = "the job checkpointed itself; restarting it from that checkpoint"
	case p.ex == nil && p.jr.PID == 0 && starting:
		st.State = driver.StateStarting
	case p.ex == nil && p.jr.PID == 0:
		st.State = driver.StateFailed
		st.Message = "job never reported running (supervisor gone)"
	case p.ex == nil:
		st.State = driver.StateFailed
		st.Message = "supervisor ended without recording the job's exit (killed?); " + lastLines(d.LogPath(t.id), 10)
	case p.ex.StartError != "":
		st.State, st.ExitCode = driver.StateFailed, p.ex.ExitCode
		st.Message = "cannot start: " + p.ex.StartError
	case p.ex.ExitCode == 0:
		st.State = driver.StateExited
	default:
		st.State, st.ExitCode = driver.StateFailed, p.ex.ExitCode
		how := fmt.Sprintf("exited with code %d", p.ex.ExitCode)
		if p.ex.Signal != "" {
			how = "killed by " + p.ex.Signal
		}
		if p.ex.ExitCode == t.job.exitCode {
			how += " (the checkpoint exit code, without a checkpoint request)"
		}
		st.Message = how + "; last log lines:\n" + lastLines(d.LogPath(t.id), 10)
	}
	if !p.running {
		st.PID = 0
	}
	return st
}

func (t *task) isRestarting() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.restarting
}

func (t *task) isSpawning() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.spawning
}

func hasFiles(dir string) bool {
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer f.Close()
	names, _ := f.Readdirnames(1)
	return len(names) > 0
}

// lastLines returns up to n last lines of the file (from its last 8 KiB).
func lastLines(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(fi.Size()-8192, 0)
	b := make([]byte, fi.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil && err != io.EOF {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if off > 0 && len(lines) > 1 {
		lines = lines[1:] // first one is probably cut
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// List implements driver.Driver.
func (d *Driver) List(ctx context.Context) ([]driver.Status, error) {
	d.mu.Lock()
	ts := make([]*task, 0, len(d.tasks))
	for _, t := range d.tasks {
		ts = append(ts, t)
	}
	d.mu.Unlock()
	out := make([]driver.Status, 0, len(ts))
	for _, t := range ts {
		out = append(out, d.status(t))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Stats implements driver.Driver. CPU time is the job's user+system time
// including its reaped children; memory is the job's resident set; I/O
// rates come from /proc/PID/io rchar and wchar (bytes through read and
// write calls, page-cache hits included: "reading 3 MB/s out of a local
// file" counts even when the file is cached), as the delta since the
// previous Stats call, or the average since start on the first call.
func (d *Driver) Stats(ctx context.Context, id string) (driver.Stats, error) {
	t, err := d.lookup(id)
	if err != nil {
		return driver.Stats{}, err
	}
	rec := t.snapshot()
	s := driver.Stats{ReadBytesPerSec: -1, WriteBytesPerSec: -1, CheckpointBytes: rec.LastBytes, CheckpointDuration: rec.LastTook}
	p := t.observe()
	if !p.running {
		return s, nil
	}
	now := time.Now()
	s.Age = now.Sub(rec.StartedAt)
	if ps, err := readProcStat(p.jr.PID); err == nil {
		s.CPUTime = ps.cpu
	}
	if rss, err := rssBytes(p.jr.PID); err == nil {
		s.MemoryBytes = rss
	}
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(p.jr.PID) + "/io"); err == nil {
		if cur, err := parseProcIO(b); err == nil {
			t.mu.Lock()
			prev, at := t.ioPrev, t.ioAt
			if at.IsZero() {
				prev, at = procIO{}, rec.StartedAt
			}
			if dt := now.Sub(at).Seconds(); dt > 0 {
				s.ReadBytesPerSec = float64(max(cur.rchar-prev.rchar, 0)) / dt
				s.WriteBytesPerSec = float64(max(cur.wchar-prev.wchar, 0)) / dt
			}
			t.ioPrev, t.ioAt = cur, now
			t.mu.Unlock()
		}
	}
	return s, nil
}

// Pause implements driver.Pauser: SIGSTOP to the job's process group.
func (d *Driver) Pause(ctx context.Context, id string) error { return d.setPaused(ctx, id, true) }

// Unpause implements driver.Pauser: SIGCONT to the job's process group.
func (d *Driver) Unpause(ctx context.Context, id string) error { return d.setPaused(ctx, id, false) }

func (d *Driver) setPaused(ctx context.Context, id string, pause bool) error {
	t, err := d.lookup(id)
	if err != nil {
		return err
	}
	if err := t.acquire(ctx); err != nil {
		return err
	}
	defer t.release()
	p := t.observe()
	if !p.running {
		return fmt.Errorf("process driver: task %q: %w: not running", id, driver.ErrTaskFailed)
	}
	sig := syscall.SIGCONT
	if pause {
		sig = syscall.SIGSTOP
	}
	if err := signalGroup(p.jr, sig); err != nil {
		return fmt.Errorf("process driver: task %q: %w: %v", id, driver.ErrTaskFailed, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.rec.Paused = pause
	return t.saveLocked()
}

// Stop implements driver.Driver: SIGTERM to the process group, SIGKILL when
// ctx ends (or after Config.StopGrace), then the task is forgotten. Its log
// stays.
func (d *Driver) Stop(ctx context.Context, id string) error {
	t, err := d.lookup(id)
	if err != nil {
		return err
	}
	t.mu.Lock()
	if t.cancelPeriodic != nil {
		t.cancelPeriodic()
	}
	t.mu.Unlock()
	if err := t.acquire(ctx); err != nil {
		return err
	}
	defer t.release()
	d.terminate(ctx, t)
	d.forget(t)
	d.log.Info("task stopped", "task", id)
	return nil
}

// terminate ends the job's process group: SIGTERM (and SIGCONT, in case it
// is paused), SIGKILL after the grace period.
func (d *Driver) terminate(ctx context.Context, t *task) {
	p := t.observe()
	if !p.running && !alive(p.jr.SupervisorPID, p.jr.SupervisorStart) {
		return
	}
	_ = signalGroup(p.jr, syscall.SIGTERM)
	_ = signalGroup(p.jr, syscall.SIGCONT)
	grace := d.cfg.StopGrace
	if dl, ok := ctx.Deadline(); ok {
		grace = min(grace, time.Until(dl)-time.Second)
	}
	if waitGone(p.jr, grace) {
		return
	}
	_ = signalGroup(p.jr, syscall.SIGKILL)
	waitGone(p.jr, 10*time.Second)
}

// waitGone waits up to d for the supervisor to end.
func waitGone(jr jobRecord, d time.Duration) bool {
	if d <= 0 {
		return !alive(jr.SupervisorPID, jr.SupervisorStart)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { waitExit(jr.SupervisorPID, jr.SupervisorStart, stop); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		close(stop)
		<-done
		return !alive(jr.SupervisorPID, jr.SupervisorStart)
	}
}

// forget drops a task that has ended: periodic loop, cgroups, directory.
// The caller holds the operation lock.
func (d *Driver) forget(t *task) {
	t.mu.Lock()
	if !t.gone {
		t.gone = true
		close(t.stop)
	}
	cgs := t.rec.Cgroups
	t.mu.Unlock()
	d.mu.Lock()
	if d.tasks[t.id] == t {
		delete(d.tasks, t.id)
	}
	d.mu.Unlock()
	d.cg.remove(cgs)
	if err := os.RemoveAll(t.dir); err != nil {
		d.log.Warn("remove task directory", "task", t.id, "err", err)
	}
}
