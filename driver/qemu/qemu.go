// Package qemu is the driver that runs each task as a QEMU virtual machine.
//
// One QEMU process per task, started daemonized (its own session, parent
// init), so an agent that exits or restarts does not take its guests down;
// a new driver over the same data directory re-attaches to them through
// their pidfiles and QMP sockets. QEMU is driven over QMP (package qmp).
//
// Data directory layout (Config.DataDir):
//
//	<dir>/tasks/<id>/task.json    the task record: spec, machine shape, start time, role
//	<dir>/tasks/<id>/qemu.pid     QEMU's pidfile
//	<dir>/tasks/<id>/qmp.sock     QMP socket (in a short run dir when the path is too long)
//	<dir>/tasks/<id>/migrate.sock incoming live-migration socket (destination only)
//	<dir>/logs/<id>.log           the guest's serial console, appended across incarnations
//
// A suspend image directory holds:
//
//	vmstate     QEMU's migration stream (written as .vmstate.tmp, fsynced, renamed)
//	task.json   the machine shape the state needs (machine type, memory and RAM tail, cpus, kernel command line)
//
// The accelerator is KVM only when /dev/kvm exists and a probe guest boots
// on it in time (nested KVM can hang at boot); TCG otherwise. The QEMU
// version decides the RAM tail (see ramTailKiB); both are reported with the
// node's capabilities.
package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ferrycluster/ferry/driver"
)

// Kind is the driver's kind.
const Kind = "qemu"

// Config configures a Driver.
type Config struct {
	// DataDir holds tasks and logs (see the package comment).
	DataDir string
	// QEMU is the emulator binary (default qemu-system-x86_64 on PATH).
	QEMU string
	// Kernel and Initrd are the node's default guest image, used when a
	// spec names none.
	Kernel, Initrd string
	// Accel is "kvm", "tcg" or "" to probe (see Probe).
	Accel string
	// DefaultMemoryBytes is the guest RAM when a spec asks for none
	// (default 128 MiB); MaxMemoryBytes the most one guest may have
	// (default: 3/4 of the node's RAM).
	DefaultMemoryBytes int64
	MaxMemoryBytes     int64
	// MaxCPUs bounds a guest's vCPUs (default 16).
	MaxCPUs int
	// Logger (default slog.Default) gets component=driver/qemu.
	Logger *slog.Logger
}

// Driver runs QEMU guests. Safe for concurrent use.
type Driver struct {
	cfg   Config
	log   *slog.Logger
	accel string
	// version is QEMU's (zero when it could not be read: then the driver
	// acts as for a QEMU older than 9.0, see needsTail).
	version Version

	mu    sync.Mutex
	tasks map[string]*task
}

var _ driver.Driver = (*Driver)(nil)
var _ driver.LiveMigrator = (*Driver)(nil)
var _ driver.IncomingSpecer = (*Driver)(nil)
var _ driver.Pauser = (*Driver)(nil)
var _ driver.Checkpointer = (*Driver)(nil)

const mib = 1 << 20

// New returns a driver over cfg.DataDir, re-attaching to the QEMUs a
// previous driver left running there.
func New(ctx context.Context, cfg Config) (*Driver, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("qemu: no data dir")
	}
	abs, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	cfg.DataDir = abs
	if cfg.QEMU == "" {
		cfg.QEMU = "qemu-system-x86_64"
	}
	if cfg.DefaultMemoryBytes == 0 {
		cfg.DefaultMemoryBytes = 128 * mib
	}
	if cfg.MaxMemoryBytes == 0 {
		cfg.MaxMemoryBytes = nodeMemory() * 3 / 4
	}
	if cfg.MaxCPUs == 0 {
		cfg.MaxCPUs = 16
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	for _, p := range []*string{&cfg.Kernel, &cfg.Initrd} {
		if *p != "" {
			if *p, err = filepath.Abs(*p); err != nil {
				return nil, err
			}
		}
	}
	for _, d := range []string{"tasks", "logs"} {
		if err := os.MkdirAll(filepath.Join(cfg.DataDir, d), 0o755); err != nil {
			return nil, err
		}
	}
	d := &Driver{cfg: cfg, log: cfg.Logger.With("component", "driver/qemu"), tasks: map[string]*task{}}
	d.accel = cfg.Accel
	if d.accel == "" {
		d.accel = CachedProbe(ctx, cfg.QEMU, cfg.Kernel, cfg.Initrd, 60*time.Second)
		d.log.Info("accelerator probed", "accel", d.accel, "remembered_in", probeCacheDir)
	}
	if d.accel != "kvm" && d.accel != "tcg" {
		return nil, fmt.Errorf("qemu: accelerator %q: want kvm or tcg", d.accel)
	}
	if d.version, err = CachedVersion(ctx, cfg.QEMU); err != nil {
		d.log.Warn("QEMU version unknown: guests get the RAM tail and guests without it are refused, as for QEMU < 9.0", "err", err)
	} else {
		d.log.Info("QEMU version", "version", d.version, "ram_tail", d.needsTail())
	}
	d.recover(ctx)
	return d, nil
}

// Kind implements driver.Driver.
func (d *Driver) Kind() string { return Kind }

// Accel is the accelerator guests run on ("kvm" or "tcg").
func (d *Driver) Accel() string { return d.accel }

// QEMUVersion is the QEMU release guests run on ("10.0.2"; "" when it
// could not be read), reported with the node's capabilities.
func (d *Driver) QEMUVersion() string {
	if d.version == (Version{}) {
		return ""
	}
	return d.version.String()
}

// needsTail reports whether this node's QEMU has the TCG dirty-bitmap bug
// (older than 9.0, or unknown): its new guests get the RAM tail, and it
// refuses guests without one (see refuseTailless).
func (d *Driver) needsTail() bool { return oldQEMU(d.version) }

// oldQEMU: releases before 9.0 have the TCG dirty-bitmap bug (the zero
// Version, unknown, counts as old).
func oldQEMU(v Version) bool { return !v.AtLeast(9, 0) }

// NeedsRAMTail reports whether a node whose agent reports this QEMU
// version (api.NodeInfo.QEMUVersion; "" when it could not read one) gives
// new guests the RAM tail and refuses guests without it, as needsTail and
// refuseTailless decide on that node. The controller places by it.
func NeedsRAMTail(version string) bool {
	v, err := ParseVersion(version)
	return err != nil || oldQEMU(v)
}

// refuseTailless refuses a guest without the RAM tail arriving (incoming
// migration, resume) on a node whose QEMU has the dirty-bitmap bug: its
// next live migration out of this node could lose the guest's stores
// (docs/vm.md, "Which QEMU").
func (d *Driver) refuseTailless(id string, m machine, how string) error {
	if m.TailKiB != 0 || !d.needsTail() {
		return nil
	}
	v := d.QEMUVersion()
	if v == "" {
		v = "of unknown version"
	}
	return fmt.Errorf("%w: qemu task %q: %s a guest without the %d KiB RAM tail: this node's QEMU %s is older than 9.0, "+
		"whose TCG dirty tracking would lose the guest's stores on its next live migration; run it on a node with QEMU 9.0 or later",
		driver.ErrUnsupported, id, how, ramTailKiB, v)
}

// LogPath implements driver.Driver: the guest's serial console.
func (d *Driver) LogPath(id string) string {
	if !idRE.MatchString(id) {
		return ""
	}
	return filepath.Join(d.cfg.DataDir, "logs", id+".log")
}

func (d *Driver) taskDir(id string) string { return filepath.Join(d.cfg.DataDir, "tasks", id) }

var (
	idRE       = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	workloadRE = regexp.MustCompile(`^[A-Za-z0-9_./=:+ -]*$`)
	cmdlineRE  = regexp.MustCompile(`^[ -~]*$`)
)

// machine is the shape of a guest: what a saved state needs to be loaded
// into (recorded with every task and every suspend image).
type machine struct {
	// Type is QEMU's -machine type (machineType); "" in records saved
	// before it was recorded, which all come from QEMU 7.2's plain "pc",
	// i.e. machineType.
	Type      string `json:"type,omitempty"`
	MemoryMiB int64  `json:"memory_mib"`
	// TailKiB is RAM beyond MemoryMiB (see ramTailKiB); 0 for guests
	// started on a QEMU 9.0 or later and in images saved before the tail
	// existed, which load with exactly MemoryMiB.
	TailKiB int64  `json:"tail_kib,omitempty"`
	CPUs    int    `json:"cpus"`
	Kernel  string `json:"kernel"`
	Initrd  string `json:"initrd"`
	Append  string `json:"append"`
}

// machineType is the -machine every guest gets: a versioned type, the same
// on every QEMU that has it (7.2 and 10.0 both do), so a state saved by
// one release loads on another. Plain "pc" is an alias for the newest
// i440fx type of each release (pc-i440fx-7.2 on 7.2, pc-i440fx-10.0 on
// 10.0): a 7.2 image did not load on 10.0 with it.
const machineType = "pc-i440fx-7.2"

// typeOf is m's machine type.
func (m machine) typeOf() string {
	if m.Type == "" {
		return machineType
	}
	return m.Type
}

// ramTailKiB is added to a guest's RAM, on a QEMU older than 9.0 (the
// node's version, see needsTail), so that its size is not a
// multiple of 256 KiB (64 pages). QEMU 7.2 syncs the dirty bitmap of such a
// RAM block a word (64 pages) at a time and, on that path, forgets to mark
// the pages clean again in TCG's TLB: the guest's later stores through TLB
// entries it already holds are not logged, the migration never resends
// those pages, and the destination runs with stale memory (a fast-dirtying
// guest crashed on the destination; fixed upstream in QEMU 9.0 by commit
// 03bfc2188f, "physmem: Fix migration dirty bitmap coherency with TCG
// memory access"). Any other size takes the page-at-a-time path, which
// does reset the TLB. QEMU rounds RAM to 8 KiB, so 8 KiB is the least tail.
// A guest keeps the tail it was started with (it is part of the saved
// state's shape), on any node.
const ramTailKiB = 8

// shape validates spec and derives the machine for it.
func (d *Driver) shape(spec driver.Spec) (machine, error) {
	bad := func(format string, a ...any) (machine, error) {
		return machine{}, fmt.Errorf("%w: task %q: %s", driver.ErrInvalidSpec, spec.ID, fmt.Sprintf(format, a...))
	}
	if !idRE.MatchString(spec.ID) {
		return bad("id: want 1-63 letters, digits, '.', '_', '-' starting with a letter or digit")
	}
	if spec.VM == nil || spec.Process != nil {
		return bad("a qemu task needs a vm section and no process section")
	}
	if spec.MemoryBytes < 0 {
		return bad("memory_bytes %d is negative", spec.MemoryBytes)
	}
	if spec.CPUs < 0 {
		return bad("cpus %g is negative", spec.CPUs)
	}
	if tail := spec.VM.RAMTailKiB; tail != nil && *tail != 0 && *tail != ramTailKiB {
		return bad("ram_tail_kib %d: want 0 (a guest without the RAM tail) or %d", *tail, ramTailKiB)
	}
	m := machine{Type: machineType, MemoryMiB: (spec.MemoryBytes + mib - 1) / mib, CPUs: int(spec.CPUs + 0.999)}
	if d.needsTail() {
		m.TailKiB = ramTailKiB
	}
	if spec.MemoryBytes == 0 {
		m.MemoryMiB = d.cfg.DefaultMemoryBytes / mib
	}
	if m.MemoryMiB < 48 {
		return bad("memory %d MiB: the guest needs at least 48 MiB", m.MemoryMiB)
	}
	if m.MemoryMiB*mib > d.cfg.MaxMemoryBytes {
		return machine{}, fmt.Errorf("%w: task %q: memory %d MiB is more than the %d MiB a guest may have on this node",
			driver.ErrInsufficient, spec.ID, m.MemoryMiB, d.cfg.MaxMemoryBytes/mib)
	}
	if m.CPUs < 1 {
		m.CPUs = 1
	}
	if m.CPUs > d.cfg.MaxCPUs {
		return machine{}, fmt.Errorf("%w: task %q: %d cpus, at most %d", driver.ErrInsufficient, spec.ID, m.CPUs, d.cfg.MaxCPUs)
	}
	vm := spec.VM
	m.Kernel, m.Initrd = vm.Kernel, vm.Initrd
	if m.Kernel == "" {
		m.Kernel = d.cfg.Kernel
	}
	if m.Initrd == "" && vm.Kernel == "" {
		m.Initrd = d.cfg.Initrd
	}
	if m.Kernel == "" {
		return bad("no kernel given and the node has no default guest image")
	}
	for _, p := range []string{m.Kernel, m.Initrd} {
		if p == "" {
			continue
		}
		if !filepath.IsAbs(p) {
			return bad("guest image path %q is not absolute", p)
		}
		if fi, err := os.Stat(p); err != nil || !fi.Mode().IsRegular() {
			return bad("guest image file %q: not a readable file", p)
		}
	}
	if !workloadRE.MatchString(vm.Workload) || len(vm.Workload) > 256 {
		return bad("workload %q: letters, digits, spaces and _./=:+- only, at most 256 bytes", vm.Workload)
	}
	if !cmdlineRE.MatchString(vm.Cmdline) || len(vm.Cmdline) > 1024 || strings.Contains(vm.Cmdline, "ferry_run") {
		return bad("cmdline %q: printable ASCII, at most 1024 bytes, without ferry_run", vm.Cmdline)
	}
	parts := []string{"console=ttyS0", "quiet", "panic=-1", "init_on_free=1"}
	if w := strings.Join(strings.Fields(vm.Workload), ","); w != "" {
		parts = append(parts, "ferry_run="+w)
	}
	if c := strings.TrimSpace(vm.Cmdline); c != "" {
		parts = append(parts, c)
	}
	m.Append = strings.Join(parts, " ")
	return m, nil
}

// lookup returns the task or ErrNotFound.
func (d *Driver) lookup(id string) (*task, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	t, ok := d.tasks[id]
	if !ok {
		return nil, fmt.Errorf("%w: qemu task %q", driver.ErrNotFound, id)
	}
	return t, nil
}

// reserve claims id for a new task, or fails with ErrExists.
func (d *Driver) reserve(id string) (*task, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.tasks[id]; ok {
		return nil, fmt.Errorf("%w: qemu task %q", driver.ErrExists, id)
	}
	t := &task{id: id, dir: d.taskDir(id), op: opStarting}
	d.tasks[id] = t
	return t, nil
}

func (d *Driver) forget(t *task) {
	d.mu.Lock()
	if d.tasks[t.id] == t {
		delete(d.tasks, t.id)
	}
	d.mu.Unlock()
}

// Start implements driver.Driver.
func (d *Driver) Start(ctx context.Context, spec driver.Spec) error {
	m, err := d.shape(spec)
	if err != nil {
		return err
	}
	t, err := d.reserve(spec.ID)
	if err != nil {
		return err
	}
	if err := d.launch(ctx, t, spec, m, roleRun); err != nil {
		d.discard(t)
		return err
	}
	t.setOp(opNone)
	d.warmUpLater(t)
	d.log.Info("started", "task", spec.ID, "pid", t.pid, "memory_mib", m.MemoryMiB, "accel", d.accel)
	return nil
}

// Stop implements driver.Driver: quit over QMP, SIGKILL when ctx expires.
func (d *Driver) Stop(ctx context.Context, id string) error {
	t, err := d.lookup(id)
	if err != nil {
		return err
	}
	d.terminate(ctx, t)
	d.discard(t)
	d.log.Info("stopped", "task", id)
	return nil
}

// discard kills what is left of t and removes its record (not its log).
func (d *Driver) discard(t *task) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d.terminate(ctx, t)
	if t.qmp != nil {
		t.qmp.Close()
	}
	os.RemoveAll(t.dir)
	if sd := sockDir(t.dir); sd != t.dir {
		os.RemoveAll(sd)
	}
	d.forget(t)
}

// Inspect implements driver.Driver.
func (d *Driver) Inspect(ctx context.Context, id string) (driver.Status, error) {
	t, err := d.lookup(id)
	if err != nil {
		return driver.Status{}, err
	}
	return t.status(ctx), nil
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
		if t.getOp() == opStarting {
			continue // not yet a task
		}
		out = append(out, t.status(ctx))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Stats implements driver.Driver: CPU time and resident memory of the QEMU
// process (/proc/PID), IO rates since the previous call.
func (d *Driver) Stats(ctx context.Context, id string) (driver.Stats, error) {
	t, err := d.lookup(id)
	if err != nil {
		return driver.Stats{}, err
	}
	return t.stats(time.Now())
}

// Pause implements driver.Pauser (QMP stop).
func (d *Driver) Pause(ctx context.Context, id string) error {
	t, err := d.lookup(id)
	if err != nil {
		return err
	}
	if err := t.begin(opPausing); err != nil {
		return err
	}
	defer t.setOp(opNone)
	if err := t.execute(ctx, "stop", nil, nil); err != nil {
		return err
	}
	t.mu.Lock()
	t.userPaused = true
	t.mu.Unlock()
	return nil
}

// Unpause implements driver.Pauser (QMP cont).
func (d *Driver) Unpause(ctx context.Context, id string) error {
	t, err := d.lookup(id)
	if err != nil {
		return err
	}
	if err := t.begin(opPausing); err != nil {
		return err
	}
	defer t.setOp(opNone)
	if err := t.execute(ctx, "cont", nil, nil); err != nil {
		return err
	}
	t.mu.Lock()
	t.userPaused = false
	t.mu.Unlock()
	return nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func nodeMemory() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err == nil {
		var kb int64
		for _, l := range strings.Split(string(b), "\n") {
			if _, err := fmt.Sscanf(l, "MemTotal: %d kB", &kb); err == nil {
				return kb * 1024
			}
		}
	}
	return 4 << 30
}
