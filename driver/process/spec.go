package process

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ferrycluster/ferry/driver"
)

// Protocol defaults (docs/checkpointing.md).
const (
	DefaultCheckpointSignal   = syscall.SIGUSR2
	DefaultCheckpointExitCode = 85
	DefaultCheckpointTimeout  = 30 * time.Second
	// MinCheckpointInterval bounds periodic checkpoints from below so a typo
	// ("1" meaning one nanosecond) cannot turn into a checkpoint storm.
	MinCheckpointInterval = 100 * time.Millisecond
)

// Environment variables the job sees (docs/checkpointing.md).
const (
	EnvCheckpointDir    = "FERRY_CHECKPOINT_DIR"
	EnvRestore          = "FERRY_RESTORE"
	EnvRestoreDir       = "FERRY_RESTORE_DIR"
	EnvCheckpointSignal = "FERRY_CHECKPOINT_SIGNAL"
	EnvCheckpointCode   = "FERRY_CHECKPOINT_EXIT_CODE"
	EnvTaskID           = "FERRY_TASK_ID"
	// DoneMarker is the file a job creates in FERRY_CHECKPOINT_DIR, after
	// its state files are written and closed, to say "checkpoint complete,
	// I keep running" (checkpoint-and-continue).
	DoneMarker = "FERRY_CHECKPOINT_DONE"
	// ContinueRequest is the file the driver creates in FERRY_CHECKPOINT_DIR
	// before the signal when it asks for checkpoint-and-continue. A job that
	// finds it may answer with DoneMarker and keep running; without it (a
	// suspend) the job must exit with the checkpoint code. A job that always
	// exits is always right: the driver then restarts it from the
	// checkpoint it just wrote.
	ContinueRequest = "FERRY_CHECKPOINT_CONTINUE"
)

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// signals a job may be asked to checkpoint with: catchable, and not ones the
// driver itself uses for stop and pause.
var signals = map[string]syscall.Signal{
	"SIGUSR1":  syscall.SIGUSR1,
	"SIGUSR2":  syscall.SIGUSR2,
	"SIGHUP":   syscall.SIGHUP,
	"SIGINT":   syscall.SIGINT,
	"SIGQUIT":  syscall.SIGQUIT,
	"SIGTERM":  syscall.SIGTERM,
	"SIGALRM":  syscall.SIGALRM,
	"SIGWINCH": syscall.SIGWINCH,
	"SIGPWR":   syscall.SIGPWR,
	"SIGXCPU":  syscall.SIGXCPU,
}

const sigrtmin, sigrtmax = 34, 64

// ParseSignal parses a checkpoint signal name: "SIGUSR2", "USR2", "usr2",
// "SIGRTMIN+3" or a number such as "12". The empty string means the default
// (SIGUSR2). Uncatchable signals and the ones the driver uses itself
// (SIGKILL, SIGSTOP, SIGCONT) are refused.
func ParseSignal(name string) (syscall.Signal, error) {
	if name == "" {
		return DefaultCheckpointSignal, nil
	}
	if len(name) > 32 {
		return 0, fmt.Errorf("%w: checkpoint_signal %.32q...: too long", driver.ErrInvalidSpec, name)
	}
	n := strings.ToUpper(strings.TrimSpace(name))
	if !strings.HasPrefix(n, "SIG") {
		if v, err := strconv.Atoi(n); err == nil {
			for _, s := range signals {
				if int(s) == v {
					return s, nil
				}
			}
			if v >= sigrtmin && v <= sigrtmax {
				return syscall.Signal(v), nil
			}
			return 0, fmt.Errorf("%w: checkpoint_signal %q: signal %d cannot be used (catchable signals only, not KILL/STOP/CONT)", driver.ErrInvalidSpec, name, v)
		}
		n = "SIG" + n
	}
	if s, ok := signals[n]; ok {
		return s, nil
	}
	if strings.HasPrefix(n, "SIGRTMIN") {
		off := 0
		if rest := strings.TrimPrefix(n, "SIGRTMIN"); rest != "" {
			v, err := strconv.Atoi(strings.TrimPrefix(rest, "+"))
			if err != nil || !strings.HasPrefix(rest, "+") || v < 0 || v > sigrtmax-sigrtmin {
				return 0, fmt.Errorf("%w: checkpoint_signal %q: want SIGRTMIN+N with N in 0..%d", driver.ErrInvalidSpec, name, sigrtmax-sigrtmin)
			}
			off = v
		}
		return syscall.Signal(sigrtmin + off), nil
	}
	return 0, fmt.Errorf("%w: checkpoint_signal %q: unknown or unusable signal (use e.g. SIGUSR2, SIGUSR1, SIGHUP, SIGRTMIN+N)", driver.ErrInvalidSpec, name)
}

// job is a validated spec with defaults filled in.
type job struct {
	spec     driver.Spec
	signal   syscall.Signal
	exitCode int
	timeout  time.Duration
	interval time.Duration
}

// reservedEnv are names the driver sets; a spec may not override them.
var reservedEnv = []string{EnvCheckpointDir, EnvRestore, EnvRestoreDir, EnvCheckpointSignal, EnvCheckpointCode, EnvTaskID, supervisorEnv}

// Validate checks a spec for the process driver and fills in defaults. Every
// error wraps driver.ErrInvalidSpec and names the field.
func Validate(spec driver.Spec) error {
	_, err := validate(spec)
	return err
}

func validate(spec driver.Spec) (job, error) {
	bad := func(format string, a ...any) (job, error) {
		return job{}, fmt.Errorf("%w: task %q: %s", driver.ErrInvalidSpec, spec.ID, fmt.Sprintf(format, a...))
	}
	if spec.ID == "" {
		return bad("id is empty")
	}
	if !idPattern.MatchString(spec.ID) {
		return bad("id must be 1-128 of [A-Za-z0-9._-], starting with a letter or digit")
	}
	if spec.VM != nil {
		return bad("vm spec given to the process driver")
	}
	if spec.Process == nil {
		return bad("process spec missing")
	}
	if spec.CPUs < 0 || spec.CPUs != spec.CPUs || spec.CPUs > 1<<20 {
		return bad("cpus %v: want >= 0", spec.CPUs)
	}
	if spec.MemoryBytes < 0 {
		return bad("memory_bytes %d: want >= 0", spec.MemoryBytes)
	}
	p := spec.Process
	if len(p.Command) == 0 || p.Command[0] == "" {
		return bad("process.command is empty")
	}
	for i, a := range p.Command {
		if strings.IndexByte(a, 0) >= 0 {
			return bad("process.command[%d] contains a NUL byte", i)
		}
	}
	for k, v := range p.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return bad("process.env name %q: must be non-empty without '=' or NUL", k)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return bad("process.env %s: value contains a NUL byte", k)
		}
		for _, r := range reservedEnv {
			if k == r {
				return bad("process.env %s is set by the driver", k)
			}
		}
	}
	if p.Dir != "" && (!strings.HasPrefix(p.Dir, "/") || strings.IndexByte(p.Dir, 0) >= 0) {
		return bad("process.dir %q: want an absolute path", p.Dir)
	}
	sig, err := ParseSignal(p.CheckpointSignal)
	if err != nil {
		return job{}, fmt.Errorf("task %q: %w", spec.ID, err)
	}
	code := p.CheckpointExitCode
	if code == 0 {
		code = DefaultCheckpointExitCode
	}
	if code < 1 || code > 125 {
		return bad("process.checkpoint_exit_code %d: want 1..125 (0 means %d)", p.CheckpointExitCode, DefaultCheckpointExitCode)
	}
	if p.CheckpointInterval < 0 {
		return bad("process.checkpoint_interval %v is negative", p.CheckpointInterval)
	}
	if p.CheckpointInterval > 0 && p.CheckpointInterval < MinCheckpointInterval {
		return bad("process.checkpoint_interval %v: want 0 (off) or >= %v", p.CheckpointInterval, MinCheckpointInterval)
	}
	if p.CheckpointTimeout < 0 {
		return bad("process.checkpoint_timeout %v is negative", p.CheckpointTimeout)
	}
	timeout := p.CheckpointTimeout
	if timeout == 0 {
		timeout = DefaultCheckpointTimeout
	}
	return job{spec: spec, signal: sig, exitCode: code, timeout: timeout, interval: p.CheckpointInterval}, nil
}
