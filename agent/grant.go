package agent

import (
	"fmt"
	"net/http"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/driver"
)

// handleGrant binds a suspended image of this node to the agent at req.To
// (POST /v1/tasks/{id}/grant, the controller's only): the destination the
// controller is about to ask to resume the task from this image. Only that
// agent may then fetch the image and release it (handleImage,
// handleRelease); the binding is in the durable record (record.PeerName),
// so a restart keeps it, and the phase stays suspended. The name is the one
// in the certificate of the agent at req.To, as a checkpoint move's source
// learns its destination's (peerName).
//
// A retried grant (the controller's executor repeats an action it had not
// seen end) is answered as done while the named agent fetches the image or
// after it committed the task (the tombstone at req.Epoch+1 bound to it);
// a suspended image bound to another agent is rebound (the controller's
// word is the latest), one being fetched by another agent is busy.
func (a *Agent) handleGrant(w http.ResponseWriter, r *http.Request) {
	var req api.GrantRequest
	id, err := decodeTask(r, &req)
	if err != nil {
		writeErr(w, err)
		return
	}
	if req.Epoch == 0 || req.To == "" {
		writeErr(w, fmt.Errorf("%w: grant of task %q: epoch (%d) and to (%q) are required", driver.ErrInvalidSpec, id, req.Epoch, req.To))
		return
	}
	name, err := a.peerName(r.Context(), req.To)
	if err != nil {
		writeErr(w, fmt.Errorf("grant of task %q to %s: the agent there cannot be named: %w", id, req.To, err))
		return
	}
	if name == a.cfg.Name {
		writeErr(w, fmt.Errorf("%w: grant of task %q to %s: that is node %s itself", driver.ErrInvalidSpec, id, req.To, name))
		return
	}
	a.mu.Lock()
	err = a.grantLocked(id, req.Epoch, name)
	a.mu.Unlock()
	if err != nil {
		writeErr(w, err)
		return
	}
	a.log.Info("image fetch granted", "task", id, "epoch", req.Epoch, "to", name)
	writeJSON(w, http.StatusOK, struct{}{})
}

// grantLocked binds the suspended image of task id at epoch to the agent
// named name (handleGrant). Caller holds mu.
func (a *Agent) grantLocked(id string, epoch uint64, name string) error {
	if rec, ok := a.records[id]; ok && rec.Phase == api.PhaseMoved && rec.Epoch == epoch+1 && rec.PeerName == name {
		return nil // fetched and committed by name already
	}
	rec, err := a.checkEpochLocked(id, epoch)
	if err != nil {
		return err
	}
	switch {
	case rec.Phase == api.PhaseSuspended && rec.Image != nil:
		if err := a.busyLocked(id); err != nil {
			return err
		}
		if rec.PeerName == name {
			return nil
		}
		n := *rec
		n.PeerName = name
		return a.putLocked(&n)
	case rec.Phase == api.PhaseMigratingOut && rec.Mode == "fetch" && rec.PeerName == name:
		return nil // being fetched by name
	case rec.Phase == api.PhaseMigratingOut:
		return fmt.Errorf("%w: task %q on %s is being fetched by or moving to node %q", driver.ErrBusy, id, a.cfg.Name, rec.PeerName)
	}
	return fmt.Errorf("%w: task %q is %s on %s, not suspended: nothing to grant", driver.ErrInvalidSpec, id, rec.Phase, a.cfg.Name)
}
