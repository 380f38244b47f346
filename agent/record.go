package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/driver"
)

// record is the agent's durable knowledge of one task: who owns it (the
// epoch), where it is in its life cycle, and where its image is. It lives in
// DATA/tasks/ID/record.json and is replaced atomically (write aside, fsync,
// rename, fsync the directory), so a crash leaves the old or the new record,
// never a torn one.
type record struct {
	ID     string        `json:"id"`
	Driver string        `json:"driver"`
	Epoch  uint64        `json:"epoch"`
	Phase  api.Phase     `json:"phase"`
	Spec   driver.Spec   `json:"spec"`
	Image  *driver.Image `json:"image,omitempty"`
	// Peer is the other agent of a move in flight, or where the task moved.
	Peer string `json:"peer,omitempty"`
	// Mode of an outbound move in flight ("live" or "checkpoint"), or
	// "fetch" while a peer fetches a suspended image (handleImage).
	Mode string `json:"mode,omitempty"`
	// PeerName is the certificate name of the only agent that may fetch
	// the image and release it (mayActLocked): the destination of an
	// outbound checkpoint move (the agent at Peer), or the agent the
	// controller granted a suspended image to (handleGrant; phase
	// suspended, then migrating-out, mode fetch, while it fetches). It
	// stays on a suspended image whose fetch a restart of this agent cut
	// (the fetcher may still commit the task and release it), and on the
	// tombstone of the move. A suspended image bound to nobody may be
	// fetched by nobody.
	PeerName string `json:"peer_name,omitempty"`
	// Prev is the record an incoming copy replaced (a tombstone of an
	// earlier stay), restored if the incoming move aborts.
	Prev *record `json:"prev,omitempty"`
	// CheckpointPeer is the agent the task's committed periodic checkpoints
	// are copied to (replica.go); CheckpointSeq numbers those copies within
	// the epoch.
	CheckpointPeer string    `json:"checkpoint_peer,omitempty"`
	CheckpointSeq  uint64    `json:"checkpoint_seq,omitempty"`
	UpdatedAt      time.Time `json:"updated_at"`
}

// store reads and writes records under DATA/tasks.
type store struct{ dir string }

func (s store) taskDir(id string) string    { return filepath.Join(s.dir, id) }
func (s store) imageDir(id string) string   { return filepath.Join(s.dir, id, "image") }
func (s store) recordPath(id string) string { return filepath.Join(s.dir, id, "record.json") }

func (s store) put(r *record) error {
	r.Spec.Epoch = r.Epoch
	r.UpdatedAt = time.Now().UTC()
	dir := s.taskDir(r.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return writeFileSync(s.recordPath(r.ID), b)
}

// writeFileSync replaces the file at path with b atomically and durably
// (a synced temporary file renamed over it, then the directory synced).
func writeFileSync(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
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
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// remove deletes the task's record and everything under its directory.
func (s store) remove(id string) error {
	return os.RemoveAll(s.taskDir(id))
}

// load reads every record; unreadable ones are reported, not fatal.
func (s store) load() (map[string]*record, []error) {
	out := map[string]*record{}
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return out, nil
		}
		return out, []error{err}
	}
	var errs []error
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		b, err := os.ReadFile(s.recordPath(e.Name()))
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		var r record
		if err := json.Unmarshal(b, &r); err != nil || r.ID != e.Name() {
			errs = append(errs, fmt.Errorf("record %s: unreadable or misnamed: %v", s.recordPath(e.Name()), err))
			continue
		}
		out[r.ID] = &r
	}
	return out, errs
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// dirSize sums the sizes of the regular files under dir.
func dirSize(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}
