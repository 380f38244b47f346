package sim

import (
	"fmt"
	"io"
	"strings"

	"github.com/ferrycluster/ferry/cluster"
)

// EventKind is what happened at an instant of the simulation.
type EventKind uint8

const (
	// EvArrive: a job entered the queue.
	EvArrive EventKind = iota
	// EvPlan: the control loop issued a plan of N actions.
	EvPlan
	// EvNoPlan: the planner found no plan; the loop waits for the next event.
	EvNoPlan
	// EvStart and EvEnd bracket an action on a task.
	EvStart
	EvEnd
	// EvCancel: an action dropped because its job completed meanwhile.
	EvCancel
	// EvRun: a job's tasks are all running: it progresses from now.
	EvRun
	// EvStop: a job stops progressing (a task is leaving or paused).
	EvStop
	// EvComplete: a job finished its work; its tasks are gone.
	EvComplete
	// EvDrain: a node starts draining.
	EvDrain
)

var eventNames = [...]string{"arrive", "plan", "noplan", "start", "end", "cancel", "run", "stop", "complete", "drain"}

func (k EventKind) String() string {
	if int(k) < len(eventNames) {
		return eventNames[k]
	}
	return fmt.Sprintf("EventKind(%d)", k)
}

// Event is one line of the event log. Task is a global task id: the tasks
// of the workload's jobs numbered in job order (job 0's tasks first). From
// and To are node indices (-1 when they do not apply); N is the number of
// actions of a plan.
type Event struct {
	T      int64
	Kind   EventKind
	Action cluster.ActionKind
	Job    int32
	Task   int32
	From   int32
	To     int32
	N      int32
}

// WriteLog writes the event log as text, one event per line, with the
// workload's names: the golden tests compare it byte for byte.
func (r *Result) WriteLog(w io.Writer) error {
	var b strings.Builder
	node := func(n int32) string {
		if n < 0 || int(n) >= len(r.nodeNames) {
			return "-"
		}
		return r.nodeNames[n]
	}
	for _, e := range r.Events {
		b.Reset()
		fmt.Fprintf(&b, "%7d %-8s", e.T, e.Kind)
		switch e.Kind {
		case EvArrive, EvRun, EvStop, EvComplete:
			fmt.Fprintf(&b, " %s", r.Jobs[e.Job].Name)
		case EvPlan:
			fmt.Fprintf(&b, " %d actions", e.N)
		case EvDrain:
			fmt.Fprintf(&b, " %s", node(e.To))
		case EvStart, EvEnd, EvCancel:
			fmt.Fprintf(&b, " %-8s %s/%d %s -> %s", e.Action, r.Jobs[e.Job].Name, e.Task-r.Jobs[e.Job].firstTask, node(e.From), node(e.To))
		}
		b.WriteByte('\n')
		if _, err := io.WriteString(w, b.String()); err != nil {
			return err
		}
	}
	return nil
}
