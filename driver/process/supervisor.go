package process

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// The supervisor is a few lines of this package that run in their own
// process between the driver and the job: the driver re-executes its own
// binary (os.Executable, or Config.SupervisorPath) with supervisorEnv set to
// the task directory; this package's init notices the variable and runs
// superviseMain instead of the program's main. Any binary that links
// driver/process — ferry itself, a test binary, an agent test — can
// therefore supervise jobs without further wiring.
//
// Why a supervisor: the job must survive an agent restart (it runs in its
// own session, Setsid), and a restarted agent cannot wait() for a process
// that is not its child, so it could never learn the exit code. The
// supervisor is the job's parent; it records the job's pid in job.json and,
// when the job ends, its exit code or signal in exit.json (both written
// atomically). The driver watches the supervisor with a pidfd (or /proc).
const supervisorEnv = "FERRY_PROCESS_SUPERVISOR"

func init() {
	if dir := os.Getenv(supervisorEnv); dir != "" {
		os.Exit(superviseMain(dir))
	}
}

// launch is what the driver asks the supervisor to run (launch.json).
type launch struct {
	Incarnation int      `json:"incarnation"`
	Argv        []string `json:"argv"`
	Env         []string `json:"env"`
	Dir         string   `json:"dir,omitempty"`
	// Cgroups are cgroup directories the supervisor joins before starting
	// the job (the job inherits them).
	Cgroups []string `json:"cgroups,omitempty"`
}

// jobRecord is written by the supervisor once the job runs (job.json).
type jobRecord struct {
	Incarnation     int    `json:"incarnation"`
	SupervisorPID   int    `json:"supervisor_pid"`
	SupervisorStart uint64 `json:"supervisor_start"`
	PID             int    `json:"pid"`
	Start           uint64 `json:"start"` // /proc/PID/stat starttime, against pid reuse
}

// exitRecord is written by the supervisor when the job ends (exit.json).
type exitRecord struct {
	Incarnation int       `json:"incarnation"`
	ExitCode    int       `json:"exit_code"`
	Signal      string    `json:"signal,omitempty"`
	StartError  string    `json:"start_error,omitempty"`
	ExitedAt    time.Time `json:"exited_at"`
}

func superviseMain(dir string) int {
	// Keep the signals the driver sends to the whole process group (stop)
	// from ending the supervisor before it has recorded the job's exit. A
	// handler, not SIG_IGN: ignored signals would be inherited by the job.
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT,
		syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGPIPE, syscall.SIGALRM, syscall.SIGWINCH)
	go func() {
		for range sigs {
		}
	}()
	var l launch
	b, err := os.ReadFile(filepath.Join(dir, launchFile))
	if err == nil {
		err = json.Unmarshal(b, &l)
	}
	if err == nil && len(l.Argv) == 0 {
		err = errors.New("empty argv")
	}
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "ferry: cannot start job: %v\n", err)
		_ = writeJSONAtomic(filepath.Join(dir, exitFile), exitRecord{
			Incarnation: l.Incarnation, ExitCode: 127, StartError: err.Error(), ExitedAt: time.Now().UTC(),
		})
		return 127
	}
	if err != nil {
		return fail(fmt.Errorf("read %s: %w", launchFile, err))
	}
	for _, cg := range l.Cgroups {
		if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte("0\n"), 0); err != nil {
			return fail(fmt.Errorf("join cgroup %s: %w", cg, err))
		}
	}
	// The supervisor itself runs with an empty environment; a bare command
	// name ("sh", "python3") is looked up in the job's PATH, as a shell
	// would for the job.
	for _, kv := range l.Env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			os.Setenv("PATH", v)
		}
	}
	cmd := exec.Command(l.Argv[0], l.Argv[1:]...)
	cmd.Env = l.Env
	cmd.Dir = l.Dir
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return fail(err)
	}
	self := os.Getpid()
	rec := jobRecord{Incarnation: l.Incarnation, SupervisorPID: self, PID: cmd.Process.Pid}
	if st, err := readProcStat(self); err == nil {
		rec.SupervisorStart = st.start
	}
	if st, err := readProcStat(cmd.Process.Pid); err == nil {
		rec.Start = st.start
	}
	if err := writeJSONAtomic(filepath.Join(dir, jobFile), rec); err != nil {
		fmt.Fprintf(os.Stderr, "ferry: record job pid: %v\n", err)
	}
	werr := cmd.Wait()
	ex := exitRecord{Incarnation: l.Incarnation, ExitedAt: time.Now().UTC()}
	var ee *exec.ExitError
	switch {
	case werr == nil:
	case errors.As(werr, &ee):
		ws, _ := ee.Sys().(syscall.WaitStatus)
		if ws.Signaled() {
			ex.ExitCode = 128 + int(ws.Signal())
			ex.Signal = signalName(ws.Signal())
		} else {
			ex.ExitCode = ws.ExitStatus()
		}
	default:
		ex.ExitCode = 1
		ex.StartError = werr.Error()
	}
	if err := writeJSONAtomic(filepath.Join(dir, exitFile), ex); err != nil {
		fmt.Fprintf(os.Stderr, "ferry: record job exit: %v\n", err)
		return 1
	}
	return 0
}

func signalName(s syscall.Signal) string {
	for n, v := range signals {
		if v == s {
			return n
		}
	}
	switch s {
	case syscall.SIGKILL:
		return "SIGKILL"
	case syscall.SIGSEGV:
		return "SIGSEGV"
	case syscall.SIGABRT:
		return "SIGABRT"
	case syscall.SIGBUS:
		return "SIGBUS"
	case syscall.SIGFPE:
		return "SIGFPE"
	case syscall.SIGPIPE:
		return "SIGPIPE"
	}
	return fmt.Sprintf("signal %d", int(s))
}
