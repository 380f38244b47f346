// Package api holds the wire types of the ferry agent's HTTP/JSON API,
// shared by the agent (agent/) and its Go client (agent/client), and the
// mapping between error kinds on the wire and the driver package's sentinel
// errors. docs/agent.md is the reference for the endpoints.
package api

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/ferrycluster/ferry/driver"
)

// ErrStaleEpoch: a command carried an epoch other than the one the agent
// holds for the task (the caller or this copy is out of date).
var ErrStaleEpoch = errors.New("stale epoch")

// ErrForbidden: the caller's role may not call this endpoint, or this
// caller may not act on this task (an image bound to another agent, an
// agent's resume not from its own image, another pusher's replica).
var ErrForbidden = errors.New("forbidden for this role")

// ErrInDoubt: the agent cannot tell whether a move committed (the peer was
// unreachable at the decisive step); the task is left paused, never running
// twice, until an operator or the controller resolves it.
var ErrInDoubt = errors.New("move outcome in doubt")

// Error is the body of every non-2xx response.
type Error struct {
	Kind    string `json:"kind"`
	Message string `json:"error"`
}

// Error kinds on the wire, one per sentinel.
var kinds = []struct {
	kind   string
	err    error
	status int
}{
	{"not_found", driver.ErrNotFound, http.StatusNotFound},
	{"exists", driver.ErrExists, http.StatusConflict},
	{"invalid", driver.ErrInvalidSpec, http.StatusBadRequest},
	{"unsupported", driver.ErrUnsupported, http.StatusNotImplemented},
	{"busy", driver.ErrBusy, http.StatusConflict},
	{"stale_epoch", ErrStaleEpoch, http.StatusConflict},
	{"timeout", driver.ErrTimeout, http.StatusGatewayTimeout},
	{"task_failed", driver.ErrTaskFailed, http.StatusUnprocessableEntity},
	{"insufficient", driver.ErrInsufficient, http.StatusInsufficientStorage},
	{"forbidden", ErrForbidden, http.StatusForbidden},
	{"in_doubt", ErrInDoubt, http.StatusConflict},
}

// ErrorFor maps err to its wire kind and HTTP status ("internal", 500 for
// errors of no known kind).
func ErrorFor(err error) (Error, int) {
	for _, k := range kinds {
		if errors.Is(err, k.err) {
			return Error{Kind: k.kind, Message: err.Error()}, k.status
		}
	}
	return Error{Kind: "internal", Message: err.Error()}, http.StatusInternalServerError
}

// Err turns a wire error back into a Go error that errors.Is the sentinel
// of its kind.
func (e Error) Err() error {
	for _, k := range kinds {
		if k.kind == e.Kind {
			return &RemoteError{Kind: e.Kind, Message: e.Message, sentinel: k.err}
		}
	}
	return &RemoteError{Kind: e.Kind, Message: e.Message}
}

// RemoteError is an error returned by an agent.
type RemoteError struct {
	Kind    string
	Message string
	// Status is the HTTP status, when known.
	Status   int
	sentinel error
}

func (e *RemoteError) Error() string { return e.Message }

// Unwrap lets errors.Is match the kind's sentinel.
func (e *RemoteError) Unwrap() error { return e.sentinel }

// Phase is where a task is in the agent's life cycle (finer than the
// driver's State: it covers moves and suspended images).
type Phase string

const (
	// PhaseRunning: the driver runs the task (it may be paused in memory).
	PhaseRunning Phase = "running"
	// PhaseSuspended: the task is an image on this node's disk.
	PhaseSuspended Phase = "suspended"
	// PhaseMigratingOut: this copy is moving to Peer.
	PhaseMigratingOut Phase = "migrating-out"
	// PhaseIncoming: a copy is being prepared here (paused, not yet owner).
	PhaseIncoming Phase = "incoming"
	// PhaseMoved: the task moved to Peer at Epoch; a tombstone kept so a
	// resurrected old copy is recognised as stale.
	PhaseMoved Phase = "moved"
	// PhaseLost: the agent's record says running but the driver has no
	// such task (it died while the agent was away).
	PhaseLost Phase = "lost"
)

// Task is what list and inspect return.
type Task struct {
	ID     string       `json:"id"`
	Driver string       `json:"driver"`
	Epoch  uint64       `json:"epoch"`
	Phase  Phase        `json:"phase"`
	Spec   *driver.Spec `json:"spec,omitempty"`
	// Status is the driver's view (absent for suspended tasks).
	Status *driver.Status `json:"status,omitempty"`
	// Image is the suspend image, for suspended tasks.
	Image *driver.Image `json:"image,omitempty"`
	// Busy names the operation in flight on the task (e.g. "migrate").
	Busy string `json:"busy,omitempty"`
	// Peer is the other agent of a move (address), when moving or moved.
	Peer string `json:"peer,omitempty"`
	// Stale flags a copy this agent no longer owns: its epoch is behind the
	// agent's record, it has no record at all, or its move committed
	// elsewhere. Stale copies are never resumed; they are reported so the
	// controller can remove them.
	Stale       bool   `json:"stale,omitempty"`
	StaleReason string `json:"stale_reason,omitempty"`
	// CheckpointPeer is the agent (host:port) to which the task's committed
	// periodic checkpoints are copied; empty: none.
	CheckpointPeer string `json:"checkpoint_peer,omitempty"`
	// RAMTailKiB is a running guest's RAM tail as its driver launched it
	// (0: none, a guest first booted on QEMU 9.0 or later; else the tail
	// older QEMUs give; see driver.VMSpec.RAMTailKiB), so the controller
	// learns the shape of a guest it did not see boot. Nil: not a running
	// guest, or its driver does not say.
	RAMTailKiB *int64 `json:"ram_tail_kib,omitempty"`
}

// RunRequest starts a new task (POST /v1/tasks).
type RunRequest struct {
	// Driver is "qemu" or "process"; empty means the driver matching the
	// spec (VM → qemu, Process → process).
	Driver string      `json:"driver,omitempty"`
	Spec   driver.Spec `json:"spec"`
	// CheckpointPeer is the address (host:port) of the agent to which this
	// task's committed periodic checkpoints are copied, as a Replica; empty
	// means no copy. The agent keeps it in the task's record.
	CheckpointPeer string `json:"checkpoint_peer,omitempty"`
}

// EpochRequest is the body of commands on an existing task (stop, suspend,
// cancel, pause, unpause): Epoch must equal the agent's record.
type EpochRequest struct {
	Epoch uint64 `json:"epoch"`
}

// ResumeRequest resumes a suspended task (POST /v1/tasks/{id}/resume).
type ResumeRequest struct {
	// Epoch is the task's current epoch (the one recorded with the image).
	// A resume from a peer commits Epoch+1 here.
	Epoch uint64 `json:"epoch"`
	// From is the address (host:port) of the agent holding the image (or,
	// with Replica, the replica); empty means this agent.
	From string `json:"from,omitempty"`
	// Replica starts the task from the replica of its latest periodic
	// checkpoint (see Replica) held by From, after the node that ran it was
	// lost: the task starts with FERRY_RESTORE=1 on the receiving agent at
	// Epoch+1, so a copy on the old holder is stale if it comes back. The
	// replica's epoch must not be ahead of Epoch.
	Replica bool `json:"replica,omitempty"`
	// CheckpointPeer: as in RunRequest, for the resumed task.
	CheckpointPeer string `json:"checkpoint_peer,omitempty"`
	// Stream: From is suspending the task for a checkpoint migration
	// and streams its checkpoint while the job writes it: fetch it with
	// ImageLiveProtocol now (From's Config.ImageTransfer "stream").
	Stream bool `json:"stream,omitempty"`
}

// GrantRequest names, at the agent holding a suspended task's image, the
// only agent that may fetch it (POST /v1/tasks/{id}/grant, the
// controller's): the destination of a resume from this agent's image, asked
// before the destination is asked to resume. Epoch is the image's epoch; To
// is the destination's address, which the holder dials to learn the name in
// its certificate.
type GrantRequest struct {
	Epoch uint64 `json:"epoch"`
	To    string `json:"to"`
}

// MigrateRequest moves a running task to another agent
// (POST /v1/tasks/{id}/migrate). The response is NDJSON: MigrateEvent
// lines, the last one with Done set.
type MigrateRequest struct {
	Epoch uint64 `json:"epoch"`
	// To is the destination agent's address (host:port).
	To string `json:"to"`
	// Mode is "live" (needs a driver.LiveMigrator), "checkpoint" (suspend,
	// move the image, resume) or "" (live when the driver can, else
	// checkpoint).
	Mode    string                  `json:"mode,omitempty"`
	Options driver.MigrationOptions `json:"options"`
	// CheckpointPeer: as in RunRequest; after the move the destination
	// copies the task's periodic checkpoints to it.
	CheckpointPeer string `json:"checkpoint_peer,omitempty"`
}

// Replica is a copy of a task's latest committed periodic checkpoint kept
// by a peer agent (GET /v1/replicas), so that losing the node that runs the
// task costs at most one checkpoint interval. A replica is never run by
// itself: a ResumeRequest with Replica set starts the task from it.
type Replica struct {
	Task string `json:"task"`
	// Epoch is the task's epoch when the checkpoint was taken, Seq the
	// holder's checkpoint number within it; (Epoch, Seq) orders replicas.
	Epoch uint64 `json:"epoch"`
	Seq   uint64 `json:"seq"`
	// Bytes is the checkpoint's size; Taken when it was committed.
	Bytes int64     `json:"bytes"`
	Taken time.Time `json:"taken"`
	// Holder is the address of the agent that ran the task and sent it.
	Holder string `json:"holder"`
}

// MigrateEvent is one line of a migration's NDJSON stream.
type MigrateEvent struct {
	// Step is the protocol step: begin, prepare, perform, finish, confirm,
	// abort, done.
	Step     string           `json:"step"`
	Progress *driver.Progress `json:"progress,omitempty"`
	// Done is set on the last line; Error is set when the move failed.
	Done  bool   `json:"done,omitempty"`
	Error *Error `json:"error,omitempty"`
	// On success: the destination's new epoch, the time the whole move
	// took, and (live moves) QEMU's reported downtime.
	Epoch    uint64        `json:"epoch,omitempty"`
	Took     time.Duration `json:"took,omitempty"`
	Downtime time.Duration `json:"downtime,omitempty"`
	// Mode actually used.
	Mode string `json:"mode,omitempty"`
}

// NodeInfo describes the node (GET /v1/node).
type NodeInfo struct {
	Name        string   `json:"name"`
	CPUs        float64  `json:"cpus"`
	MemoryBytes int64    `json:"memory_bytes"`
	Accelerator string   `json:"accelerator,omitempty"`
	Drivers     []string `json:"drivers"`
	// QEMUVersion is the node's QEMU release ("10.0.2"), when it runs the
	// qemu driver and could read it.
	QEMUVersion string `json:"qemu_version,omitempty"`
	// Used is the sum of the demands of running and incoming tasks.
	UsedCPUs        float64 `json:"used_cpus"`
	UsedMemoryBytes int64   `json:"used_memory_bytes"`
}

// Health is GET /v1/health.
type Health struct {
	OK   bool   `json:"ok"`
	Name string `json:"name"`
}

// PrepareRequest is a source agent asking a destination to prepare an
// incoming live migration (POST /v1/peer/prepare). Spec.Epoch is the new
// epoch the destination will own after finish.
type PrepareRequest struct {
	Driver string      `json:"driver"`
	Spec   driver.Spec `json:"spec"`
	// Source is the source agent's name, for logs and records.
	Source string `json:"source"`
}

// PrepareResponse names the incoming session.
type PrepareResponse struct {
	Token string `json:"token"`
}

// SessionRequest finishes or aborts an incoming session
// (POST /v1/peer/finish, /v1/peer/abort).
type SessionRequest struct {
	ID    string `json:"id"`
	Token string `json:"token"`
}

// ReleaseRequest ends a fetch of a suspended image (POST
// /v1/peer/tasks/{id}/release), sent only by the agent the holder's record
// binds. Committed: the task now lives at Peer with Epoch, the image's
// epoch plus one, and the holder keeps only a tombstone. Not committed: the
// resume failed and the holder's image is suspended again, bound to nobody
// (Epoch is then the image's epoch).
type ReleaseRequest struct {
	Epoch     uint64 `json:"epoch"`
	Peer      string `json:"peer"`
	Committed bool   `json:"committed"`
}

// TunnelProtocol is the Upgrade token of the migration tunnel.
const TunnelProtocol = "ferry-tunnel/1"

// ImageProtocol is the Upgrade token of an image fetch with the CAS
// chunk-transfer protocol (cas/transfer); RecordHeader carries the
// holder's task record (base64 JSON) on the 101 answer.
const (
	ImageProtocol = "ferry-cas/1"
	RecordHeader  = "Ferry-Record"
)

// ImageTarProtocol is the Upgrade token of an image fetch as one tar
// stream (record.json, then the image's files): after the 101 answer,
// which carries the record in RecordHeader, the fetcher answers "OK\n"
// (or "ERR <reason>\n": no room, and nothing is sent) and reads the tar.
// No staging, no hashing: TLS protects the bytes in flight; it is how a
// checkpoint move fetches its image.
const ImageTarProtocol = "ferry-tar/1"

// ImageLiveProtocol is the Upgrade token of the fetch of a checkpoint that
// the holder streams while the job writes it (ResumeRequest.Stream): after
// the 101 answer (the record in RecordHeader) the holder's driver speaks
// its live stream (driver/process: SuspendStreaming / ReceiveStreaming).
const ImageLiveProtocol = "ferry-live/1"

// ReplicaHeader carries a replica's description (base64 JSON) with a
// replica push (POST /v1/peer/replicas/{id}, upgraded to ImageProtocol, the
// holder sending) and a replica fetch (GET /v1/peer/replicas/{id}/image,
// the peer sending).
const ReplicaHeader = "Ferry-Replica"

// ValidID checks a task id: it names files and URLs.
func ValidID(id string) error {
	if id == "" || len(id) > 128 {
		return fmt.Errorf("%w: task id %q: want 1-128 characters", driver.ErrInvalidSpec, id)
	}
	for i, c := range id {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' && i > 0
		if !ok {
			return fmt.Errorf("%w: task id %q: only letters, digits, '-', '_' and (not first) '.'", driver.ErrInvalidSpec, id)
		}
	}
	return nil
}
