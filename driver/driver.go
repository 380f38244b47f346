// Package driver defines how an agent runs a task: the Driver interface that
// both the qemu and the process drivers implement, the optional capabilities
// some drivers add (live migration, pause), and the conformance suite every
// driver passes (driver/drivertest).
//
// Vocabulary and life cycle: a driver instance belongs to one agent and owns
// the tasks it started under its state directory. A task is identified by its
// ID and carries an owner Epoch; the agent, not the driver, enforces epochs.
//
//	Start ──▶ running ──Stop──▶ gone
//	             │ Suspend(dir)          Resume(dir) (same or another node)
//	             └────────────▶ image ───────────────▶ running
//
// Every blocking method takes ctx first and returns when the transition is
// complete or has failed; on failure the task is left as it was before the
// call whenever the driver can (a failed Suspend leaves the task running).
package driver

import (
	"context"
	"errors"
	"time"
)

// Errors with kinds; drivers wrap them with %w and a message naming the task.
var (
	ErrNotFound     = errors.New("task not found")
	ErrExists       = errors.New("task already exists")
	ErrInvalidSpec  = errors.New("invalid task spec")
	ErrUnsupported  = errors.New("operation not supported by driver")
	ErrBusy         = errors.New("task busy with another operation")
	ErrTimeout      = errors.New("operation timed out")
	ErrTaskFailed   = errors.New("task failed")
	ErrInsufficient = errors.New("insufficient resources")
)

// Spec is what a driver needs to run one task. Exactly one of VM and Process
// is set, matching the driver's Kind.
type Spec struct {
	ID    string `json:"id"`
	Epoch uint64 `json:"epoch"`
	// CPUs and MemoryBytes are the task's demand (limits where enforced).
	CPUs        float64 `json:"cpus"`
	MemoryBytes int64   `json:"memory_bytes"`

	VM      *VMSpec      `json:"vm,omitempty"`
	Process *ProcessSpec `json:"process,omitempty"`
}

// VMSpec describes a QEMU guest.
type VMSpec struct {
	// Kernel and Initrd paths on the node; empty means the node's default
	// guest image.
	Kernel  string `json:"kernel,omitempty"`
	Initrd  string `json:"initrd,omitempty"`
	Cmdline string `json:"cmdline,omitempty"`
	// Workload is the command the guest's init runs (e.g. "counter").
	Workload string `json:"workload,omitempty"`
	// RAMTailKiB is the RAM, beyond MemoryBytes' whole MiB, of the guest a
	// live migration moves: set by the source (IncomingSpecer) for the
	// destination's PrepareIncoming, which must start a machine of exactly
	// the source's size. Nil means the driver's current shape. Start and
	// Resume check it but do not use it (a new guest gets the driver's
	// shape, a resumed one its image's).
	RAMTailKiB *int64 `json:"ram_tail_kib,omitempty"`
}

// ProcessSpec describes a plain process using cooperative checkpointing.
type ProcessSpec struct {
	Command []string          `json:"command"`
	Env     map[string]string `json:"env,omitempty"`
	Dir     string            `json:"dir,omitempty"`
	// CheckpointSignal (default "SIGUSR2") asks the job to checkpoint.
	CheckpointSignal string `json:"checkpoint_signal,omitempty"`
	// CheckpointExitCode (default 85) means "checkpointed and stopped".
	CheckpointExitCode int `json:"checkpoint_exit_code,omitempty"`
	// CheckpointInterval, if set, takes periodic checkpoints.
	CheckpointInterval time.Duration `json:"checkpoint_interval,omitempty"`
	// CheckpointTimeout bounds how long the job may take to checkpoint.
	CheckpointTimeout time.Duration `json:"checkpoint_timeout,omitempty"`
}

// State of a task as a driver sees it.
type State string

const (
	StateStarting  State = "starting"
	StateRunning   State = "running"
	StatePaused    State = "paused"    // frozen in memory (SIGSTOP, QEMU stop)
	StateMigrating State = "migrating" // outbound or inbound move in flight
	StateExited    State = "exited"    // ended on its own (see ExitCode)
	StateFailed    State = "failed"
)

// Status is a snapshot of one task.
type Status struct {
	ID        string    `json:"id"`
	Epoch     uint64    `json:"epoch"`
	Kind      string    `json:"kind"`
	State     State     `json:"state"`
	PID       int       `json:"pid,omitempty"`
	StartedAt time.Time `json:"started_at"`
	ExitCode  int       `json:"exit_code,omitempty"`
	Message   string    `json:"message,omitempty"`
}

// Stats are resource readings of one task.
type Stats struct {
	CPUTime     time.Duration `json:"cpu_time"`
	MemoryBytes int64         `json:"memory_bytes"`
	// Age since the task (this incarnation) started.
	Age time.Duration `json:"age"`
	// IO rates in bytes per second over the last sampling interval, where
	// the driver can read them (/proc/PID/io); -1 when unknown.
	ReadBytesPerSec  float64 `json:"read_bytes_per_sec"`
	WriteBytesPerSec float64 `json:"write_bytes_per_sec"`
	// Last checkpoint or suspend image, where one exists.
	CheckpointBytes    int64         `json:"checkpoint_bytes,omitempty"`
	CheckpointDuration time.Duration `json:"checkpoint_duration,omitempty"`
}

// Image is the on-disk result of Suspend: a directory holding the task's
// saved state, complete and committed (never partial) when Suspend returns.
type Image struct {
	Dir   string `json:"dir"`
	Bytes int64  `json:"bytes"`
	// Took is how long the task was stopped to produce it.
	Took time.Duration `json:"took"`
}

// Driver runs tasks of one kind on this node.
type Driver interface {
	// Kind is "qemu" or "process".
	Kind() string
	// Start runs a new task from scratch.
	Start(ctx context.Context, spec Spec) error
	// Stop ends the task (graceful, then forced when ctx expires) and
	// forgets it; its logs stay.
	Stop(ctx context.Context, id string) error
	// Suspend saves the task's state into dir (created by the caller, empty)
	// and ends the task. On error the task keeps running.
	Suspend(ctx context.Context, id, dir string) (Image, error)
	// Resume starts the task from an image directory produced by Suspend on
	// this or another node.
	Resume(ctx context.Context, spec Spec, dir string) error
	// Inspect returns the task's status.
	Inspect(ctx context.Context, id string) (Status, error)
	// Stats returns resource readings.
	Stats(ctx context.Context, id string) (Stats, error)
	// List returns every task the driver knows, including ones recovered
	// after an agent restart.
	List(ctx context.Context) ([]Status, error)
	// LogPath is the file holding the task's console or stdout/stderr.
	LogPath(id string) string
}

// Pauser freezes and thaws a task in memory (cheap local preemption).
type Pauser interface {
	Pause(ctx context.Context, id string) error
	Unpause(ctx context.Context, id string) error
}

// Checkpointer takes a checkpoint while the task keeps running.
type Checkpointer interface {
	Checkpoint(ctx context.Context, id, dir string) (Image, error)
}

// MigrationOptions tune a live migration.
type MigrationOptions struct {
	// MaxDowntime is the longest pause tolerated at switch-over.
	MaxDowntime time.Duration `json:"max_downtime,omitempty"`
	// Bandwidth limit in bytes per second; 0 means unlimited.
	Bandwidth    int64 `json:"bandwidth,omitempty"`
	AutoConverge bool  `json:"auto_converge,omitempty"`
	PostCopy     bool  `json:"post_copy,omitempty"`
}

// Progress of a live migration.
type Progress struct {
	Status           string        `json:"status"`
	TransferredBytes int64         `json:"transferred_bytes"`
	RemainingBytes   int64         `json:"remaining_bytes"`
	TotalBytes       int64         `json:"total_bytes"`
	DirtyRate        int64         `json:"dirty_rate"` // pages/s as QEMU reports
	ExpectedDowntime time.Duration `json:"expected_downtime"`
	Downtime         time.Duration `json:"downtime,omitempty"` // final, when completed
	TotalTime        time.Duration `json:"total_time,omitempty"`
}

// LiveMigrator moves a running task without stopping it for long
// (libvirt's begin / prepare / perform / finish / confirm):
//
//  1. destination: PrepareIncoming starts the task paused, listening on a
//     local unix socket (the agent tunnels bytes to it);
//  2. source: MigrateOut streams state to a local unix socket (the agent's
//     end of the tunnel) and returns when the source has completed and is
//     paused; the source task is not yet gone;
//  3. destination: FinishIncoming waits for the incoming state and runs the
//     task — only after the move is committed (the new epoch is recorded);
//  4. source: ConfirmOut ends the paused source; or, on any failure before
//     step 3, AbortOut resumes it and the destination calls AbortIncoming.
type LiveMigrator interface {
	PrepareIncoming(ctx context.Context, spec Spec) (socket string, err error)
	MigrateOut(ctx context.Context, id, socket string, opts MigrationOptions, progress func(Progress)) (Progress, error)
	FinishIncoming(ctx context.Context, id string) error
	AbortIncoming(ctx context.Context, id string) error
	ConfirmOut(ctx context.Context, id string) error
	AbortOut(ctx context.Context, id string) error
	CancelOut(ctx context.Context, id string) error
}

// IncomingSpecer is a LiveMigrator whose destination needs details of the
// running task that only the source knows (the qemu driver: the guest's
// exact RAM size). The source's agent sends IncomingSpec's result, not the
// task's recorded spec, with the prepare step.
type IncomingSpecer interface {
	IncomingSpec(id string, spec Spec) (Spec, error)
}
