package qemu

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/qmp"
)

// op is the state-changing operation a task is in; at most one at a time.
type op string

const (
	opNone          op = ""
	opStarting      op = "starting"
	opPausing       op = "pausing"
	opSuspending    op = "suspending"
	opCheckpointing op = "checkpointing"
	opIncoming      op = "incoming"     // destination of a live migration, paused
	opOutgoing      op = "migrating"    // source, migration in flight
	opOutDone       op = "migrated-out" // source, completed and paused, awaiting confirm or abort
)

// role is how QEMU is started.
type role string

const (
	roleRun      role = "run"      // boot from scratch
	roleIncoming role = "incoming" // -S -incoming defer
)

// record is task.json.
type record struct {
	Spec      driver.Spec `json:"spec"`
	Machine   machine     `json:"machine"`
	Role      role        `json:"role"`
	StartedAt time.Time   `json:"started_at"`
	Accel     string      `json:"accel"`
}

type task struct {
	id  string
	dir string

	mu        sync.Mutex
	op        op
	spec      driver.Spec
	machine   machine
	pid       int
	startedAt time.Time
	qmp       *qmp.Client
	shutdown  string // reason from the SHUTDOWN event, if one came
	message   string // why the task failed, when it did
	lastIO    ioSample
	polling   bool // a MigrateOut call is polling the outgoing migration
	// userPaused: the guest is paused by Pause; operations that fail
	// leave it paused instead of resuming it.
	userPaused bool
	// eventsRead is closed once every event of the QMP connection has
	// been handled (the connection ended).
	eventsRead chan struct{}
	// warming is the warm-up migration in flight (nil: none); see warmUp
	// in migrate.go.
	warming *warmUpRun
}

// watched reports whether a MigrateOut call is polling the migration.
func (t *task) watched() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.polling
}

func (t *task) setWatched(v bool) {
	t.mu.Lock()
	t.polling = v
	t.mu.Unlock()
}

func (t *task) getOp() op {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.op
}

func (t *task) setOp(o op) {
	t.mu.Lock()
	t.op = o
	t.mu.Unlock()
}

// begin claims the task for o, or fails with ErrBusy.
func (t *task) begin(o op) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.op != opNone {
		return fmt.Errorf("%w: qemu task %q is %s", driver.ErrBusy, t.id, t.op)
	}
	if t.qmp == nil {
		return fmt.Errorf("%w: qemu task %q has no QEMU (%s)", driver.ErrTaskFailed, t.id, t.message)
	}
	select {
	case <-t.qmp.Done():
		return fmt.Errorf("%w: qemu task %q: QEMU is gone", driver.ErrTaskFailed, t.id)
	default:
	}
	t.op = o
	return nil
}

// execute runs a QMP command, mapping a dead QEMU to ErrTaskFailed.
func (t *task) execute(ctx context.Context, cmd string, args, result any) error {
	t.mu.Lock()
	c := t.qmp
	t.mu.Unlock()
	if c == nil {
		return fmt.Errorf("%w: qemu task %q has no QEMU", driver.ErrTaskFailed, t.id)
	}
	err := c.Execute(ctx, cmd, args, result)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, qmp.ErrDisconnected):
		return fmt.Errorf("%w: qemu task %q: %v", driver.ErrTaskFailed, t.id, err)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w: qemu task %q: %v", driver.ErrTimeout, t.id, err)
	default:
		return fmt.Errorf("qemu task %q: %w", t.id, err)
	}
}

// sockDir is where a task's sockets live: its own directory, or a short
// directory under the system temp dir (derived from the task dir, so a
// restarted driver finds it again) when unix socket paths would be too long.
func sockDir(taskDir string) string {
	if len(taskDir)+len("/migrate.sock") < 100 {
		return taskDir
	}
	sum := sha256.Sum256([]byte(taskDir))
	return filepath.Join(os.TempDir(), "ferry-qemu-"+hex.EncodeToString(sum[:8]))
}

func qmpSock(taskDir string) string     { return filepath.Join(sockDir(taskDir), "qmp.sock") }
func migrateSock(taskDir string) string { return filepath.Join(sockDir(taskDir), "migrate.sock") }

// args builds QEMU's command line.
func (d *Driver) args(t *task, m machine, r role) []string {
	a := []string{
		"-name", "ferry-" + t.id,
		"-nodefaults", "-display", "none", "-no-user-config",
		"-machine", m.typeOf() + ",accel=" + d.accel,
		"-m", strconv.FormatInt(m.MemoryMiB<<10+m.TailKiB, 10) + "K",
		"-smp", strconv.Itoa(m.CPUs),
		"-kernel", m.Kernel,
		"-append", m.Append,
		"-chardev", "file,id=console0,path=" + escapeOpt(d.LogPath(t.id)) + ",append=on",
		"-serial", "chardev:console0",
		"-qmp", "unix:" + escapeOpt(qmpSock(t.dir)) + ",server=on,wait=off",
		"-pidfile", filepath.Join(t.dir, "qemu.pid"),
		"-no-reboot",
		"-daemonize",
	}
	if m.Initrd != "" {
		a = append(a, "-initrd", m.Initrd)
	}
	if r == roleIncoming {
		a = append(a, "-S", "-incoming", "defer")
	}
	return a
}

// escapeOpt escapes commas for QEMU's option syntax.
func escapeOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// launch starts QEMU for t and connects QMP. On error the caller discards t.
func (d *Driver) launch(ctx context.Context, t *task, spec driver.Spec, m machine, r role) error {
	os.RemoveAll(t.dir)
	if err := os.MkdirAll(t.dir, 0o755); err != nil {
		return err
	}
	if sd := sockDir(t.dir); sd != t.dir {
		os.RemoveAll(sd)
		if err := os.MkdirAll(sd, 0o700); err != nil {
			return err
		}
	}
	now := time.Now()
	rec := record{Spec: spec, Machine: m, Role: r, StartedAt: now.UTC(), Accel: d.accel}
	if err := writeJSON(filepath.Join(t.dir, "task.json"), rec); err != nil {
		return err
	}
	cmd := exec.Command(d.cfg.QEMU, d.args(t, m, r)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Dir = t.dir
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("qemu task %q: start %s: %w", t.id, d.cfg.QEMU, err)
	}
	// With -daemonize the parent returns once QEMU is set up (sockets
	// listening) or has failed; the guest itself runs in the daemon.
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err := <-waited:
		if err != nil {
			return fmt.Errorf("%w: qemu task %q: QEMU did not start: %v: %s", driver.ErrTaskFailed, t.id, err, strings.TrimSpace(out.String()))
		}
	case <-ctx.Done():
		cmd.Process.Kill()
		<-waited
		return fmt.Errorf("%w: qemu task %q: starting QEMU: %v", driver.ErrTimeout, t.id, ctx.Err())
	}
	pid, err := readPid(filepath.Join(t.dir, "qemu.pid"))
	if err != nil {
		return fmt.Errorf("%w: qemu task %q: %v", driver.ErrTaskFailed, t.id, err)
	}
	t.mu.Lock()
	t.pid, t.spec, t.machine, t.startedAt = pid, spec, m, now
	t.mu.Unlock()
	c, err := qmp.Dial(ctx, qmpSock(t.dir))
	if err != nil {
		return fmt.Errorf("%w: qemu task %q: QMP: %v", driver.ErrTaskFailed, t.id, err)
	}
	d.attach(t, c)
	return nil
}

// attach makes c the task's QMP connection and watches its events.
func (d *Driver) attach(t *task, c *qmp.Client) {
	events, _ := c.Subscribe(64)
	read := make(chan struct{})
	t.mu.Lock()
	t.qmp = c
	t.eventsRead = read
	t.mu.Unlock()
	go func() {
		defer close(read)
		for ev := range events {
			if ev.Name == "SHUTDOWN" {
				var data struct {
					Guest  bool   `json:"guest"`
					Reason string `json:"reason"`
				}
				json.Unmarshal(ev.Data, &data)
				t.mu.Lock()
				t.shutdown = data.Reason
				if t.shutdown == "" {
					t.shutdown = "shutdown"
				}
				t.mu.Unlock()
			}
		}
		d.log.Debug("QMP connection ended", "task", t.id, "err", c.Err())
	}()
}

func readPid(path string) (int, error) {
	var b []byte
	var err error
	for i := 0; i < 50; i++ { // QEMU writes it before the parent returns; be lenient
		if b, err = os.ReadFile(path); err == nil && len(bytes.TrimSpace(b)) > 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return 0, fmt.Errorf("pidfile: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pidfile %s: %q is not a pid", path, b)
	}
	return pid, nil
}

// alive reports whether pid is a live (not zombie) QEMU whose command line
// names the given QMP socket (so a recycled pid is not taken for it).
func alive(pid int, sock string) bool {
	if pid <= 0 {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(stat, ')'); i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' || stat[i+2] == 'X' {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	return bytes.Contains(cmdline, []byte(escapeOpt(sock)))
}

// terminate ends t's QEMU: quit over QMP, then SIGKILL when ctx expires or
// QMP is gone, and waits for the process to go away.
func (d *Driver) terminate(ctx context.Context, t *task) {
	t.mu.Lock()
	pid, c := t.pid, t.qmp
	t.mu.Unlock()
	sock := qmpSock(t.dir)
	if !alive(pid, sock) {
		return
	}
	// However patient the caller, a QEMU that ignores quit for 30 s is
	// killed.
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if c != nil {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c.Execute(qctx, "quit", nil, nil)
		cancel()
	}
	for alive(pid, sock) {
		select {
		case <-ctx.Done():
			syscall.Kill(pid, syscall.SIGKILL)
			for i := 0; i < 100 && alive(pid, sock); i++ {
				time.Sleep(20 * time.Millisecond)
			}
			return
		case <-time.After(20 * time.Millisecond):
		}
		if c == nil || c.Err() != nil {
			// Nobody to ask politely (or QMP closed as QEMU quits): give it
			// up to 2 s to exit, then kill. (Sleeping the whole 2 s made
			// every migration's confirm step take 2 s.)
			grace := time.Now().Add(2 * time.Second)
			for alive(pid, sock) && ctx.Err() == nil && time.Now().Before(grace) {
				time.Sleep(20 * time.Millisecond)
			}
			if alive(pid, sock) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
}

// status reads the task's state from its op and QEMU's run state.
func (t *task) status(ctx context.Context) driver.Status {
	t.mu.Lock()
	st := driver.Status{ID: t.id, Epoch: t.spec.Epoch, Kind: Kind, PID: t.pid, StartedAt: t.startedAt, Message: t.message}
	o, c, read := t.op, t.qmp, t.eventsRead
	t.mu.Unlock()
	gone := c == nil || c.Err() != nil
	if gone && read != nil {
		// QEMU's last events (SHUTDOWN) may still be on their way to the
		// handler: a guest that powered off is exited, not failed.
		select {
		case <-read:
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
		}
	}
	t.mu.Lock()
	shutdown := t.shutdown
	t.mu.Unlock()
	switch {
	case gone && shutdown != "" && shutdown != "host-qmp-quit":
		st.State = driver.StateExited
		st.Message = "guest " + shutdown
	case gone:
		st.State = driver.StateFailed
		if st.Message == "" {
			st.Message = "QEMU exited unexpectedly"
		}
	case o == opIncoming || o == opOutgoing || o == opOutDone:
		st.State = driver.StateMigrating
		st.Message = string(o)
	case o == opStarting:
		st.State = driver.StateStarting
	default:
		var qs struct {
			Status string `json:"status"`
		}
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := c.Execute(qctx, "query-status", nil, &qs)
		cancel()
		switch {
		case err != nil && c.Err() != nil:
			// QEMU went away while we asked (a guest that powers off
			// makes it exit): judge it gone, as above, once its last
			// events (SHUTDOWN) are read — exited, not failed.
			return t.status(ctx)
		case err != nil:
			st.State = driver.StateRunning // unknown for a moment; QEMU is there
			st.Message = "query-status: " + err.Error()
		default:
			st.State = runState(qs.Status)
			if st.State != driver.StateRunning {
				st.Message = "qemu " + qs.Status
			}
		}
	}
	return st
}

func runState(s string) driver.State {
	switch s {
	case "running":
		return driver.StateRunning
	case "paused", "suspended":
		return driver.StatePaused
	case "inmigrate", "postmigrate", "finish-migrate":
		return driver.StateMigrating
	case "prelaunch", "restore-vm", "save-vm":
		return driver.StateStarting
	case "shutdown":
		return driver.StateExited
	default: // internal-error, io-error, guest-panicked, watchdog, debug, colo
		return driver.StateFailed
	}
}

type ioSample struct {
	at          time.Time
	read, write int64
}

// stats reads /proc/PID/{stat,statm,io}.
func (t *task) stats(now time.Time) (driver.Stats, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := driver.Stats{Age: now.Sub(t.startedAt), ReadBytesPerSec: -1, WriteBytesPerSec: -1}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", t.pid))
	if err != nil {
		return s, fmt.Errorf("%w: qemu task %q: QEMU process %d is gone", driver.ErrTaskFailed, t.id, t.pid)
	}
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 {
		f := strings.Fields(string(stat[i+1:]))
		if len(f) > 13 {
			ut, _ := strconv.ParseInt(f[11], 10, 64)
			st, _ := strconv.ParseInt(f[12], 10, 64)
			s.CPUTime = time.Duration(ut+st) * time.Second / clockTicks
		}
	}
	if statm, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", t.pid)); err == nil {
		f := strings.Fields(string(statm))
		if len(f) > 1 {
			rss, _ := strconv.ParseInt(f[1], 10, 64)
			s.MemoryBytes = rss * int64(os.Getpagesize())
		}
	}
	if io, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", t.pid)); err == nil {
		var cur ioSample
		cur.at = now
		for _, l := range strings.Split(string(io), "\n") {
			k, v, ok := strings.Cut(l, ":")
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			switch {
			case ok && k == "read_bytes":
				cur.read = n
			case ok && k == "write_bytes":
				cur.write = n
			}
		}
		if prev := t.lastIO; !prev.at.IsZero() && now.After(prev.at) {
			dt := now.Sub(prev.at).Seconds()
			s.ReadBytesPerSec = float64(cur.read-prev.read) / dt
			s.WriteBytesPerSec = float64(cur.write-prev.write) / dt
		}
		t.lastIO = cur
	}
	return s, nil
}

// clockTicks is USER_HZ, 100 on every Linux we run on.
const clockTicks = 100

// recover re-attaches to the QEMUs a previous driver left in the data dir.
func (d *Driver) recover(ctx context.Context) {
	ents, err := os.ReadDir(filepath.Join(d.cfg.DataDir, "tasks"))
	if err != nil {
		return
	}
	for _, e := range ents {
		if !e.IsDir() || !idRE.MatchString(e.Name()) {
			continue
		}
		dir := d.taskDir(e.Name())
		b, err := os.ReadFile(filepath.Join(dir, "task.json"))
		var rec record
		if err != nil || json.Unmarshal(b, &rec) != nil || rec.Spec.ID != e.Name() {
			d.log.Warn("removing unreadable task record", "dir", dir)
			os.RemoveAll(dir)
			continue
		}
		t := &task{id: rec.Spec.ID, dir: dir, spec: rec.Spec, machine: rec.Machine, startedAt: rec.StartedAt}
		t.pid, _ = readPid(filepath.Join(dir, "qemu.pid"))
		d.tasks[t.id] = t
		if !alive(t.pid, qmpSock(dir)) {
			t.message = "QEMU exited while no driver watched it"
			d.log.Warn("recovered task has no QEMU", "task", t.id, "pid", t.pid)
			continue
		}
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		c, err := qmp.Dial(dctx, qmpSock(dir))
		cancel()
		if err != nil {
			t.message = "cannot reach QEMU's QMP socket: " + err.Error()
			d.log.Warn("recovered task: QMP unreachable", "task", t.id, "err", err)
			continue
		}
		d.attach(t, c)
		var qs struct {
			Status string `json:"status"`
		}
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c.Execute(qctx, "query-status", nil, &qs)
		cancel()
		var mi migrateInfo
		qctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		c.Execute(qctx, "query-migrate", nil, &mi)
		cancel()
		t.userPaused = rec.Role == roleRun && qs.Status == "paused"
		switch {
		case qs.Status == "inmigrate":
			t.op = opIncoming
		case qs.Status == "postmigrate":
			t.op = opOutDone // completed outgoing: awaiting ConfirmOut or AbortOut
		case rec.Role == roleIncoming && (qs.Status == "prelaunch" || qs.Status == "paused"):
			t.op = opIncoming // incoming, maybe completed, not yet finished
		case mi.Status == "setup" || mi.Status == "active" || strings.HasPrefix(mi.Status, "postcopy") ||
			mi.Status == "pre-switchover" || mi.Status == "device" || mi.Status == "cancelling":
			// An outgoing migration nobody watches: CancelOut or AbortOut ends it.
			t.op = opOutgoing
		}
		d.log.Info("re-attached", "task", t.id, "pid", t.pid, "qemu", qs.Status)
	}
}

// Probe chooses the accelerator: "kvm" only when /dev/kvm exists and a
// probe guest (kernel and initrd, when given) boots on it and prints to its
// console within timeout; "tcg" otherwise.
func Probe(ctx context.Context, qemuBin, kernel, initrd string, timeout time.Duration) string {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return "tcg"
	}
	if kernel == "" {
		return "tcg" // cannot prove KVM boots a guest
	}
	dir, err := os.MkdirTemp("", "ferry-kvm-probe-")
	if err != nil {
		return "tcg"
	}
	defer os.RemoveAll(dir)
	log := filepath.Join(dir, "console.log")
	args := []string{"-nodefaults", "-display", "none", "-machine", "pc,accel=kvm", "-m", "128",
		"-kernel", kernel, "-append", "console=ttyS0 panic=-1", "-serial", "file:" + log, "-no-reboot"}
	if initrd != "" {
		args = append(args, "-initrd", initrd)
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(pctx, qemuBin, args...)
	if err := cmd.Start(); err != nil {
		return "tcg"
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	for pctx.Err() == nil {
		if b, err := os.ReadFile(log); err == nil && (bytes.Contains(b, []byte("counter ")) || bytes.Contains(b, []byte("ferry: running"))) {
			return "kvm"
		}
		time.Sleep(100 * time.Millisecond)
	}
	return "tcg"
}
