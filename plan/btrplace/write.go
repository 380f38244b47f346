package btrplace

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/plan"
)

// actionIDs are BtrPlace's action ids per kind.
var actionIDs = map[cluster.ActionKind]string{
	cluster.Migrate: "migrateVM", cluster.Boot: "bootVM", cluster.Shutdown: "shutdownVM",
	cluster.Suspend: "suspendVM", cluster.Resume: "resumeVM", cluster.Kill: "killVM",
	cluster.BootNode: "bootNode", cluster.ShutdownNode: "shutdownNode",
}

// jsonAction is one action of a ReconfigurationPlan. bootVM carries its
// destination under both "on" (ferry's documented key) and "to" (the key
// BtrPlace's ActionConverter reads).
type jsonAction struct {
	ID    string `json:"id"`
	VM    *int   `json:"vm,omitempty"`
	Node  *int   `json:"node,omitempty"`
	On    *int   `json:"on,omitempty"`
	From  *int   `json:"from,omitempty"`
	To    *int   `json:"to,omitempty"`
	Start int64  `json:"start"`
	End   int64  `json:"end"`
}

type jsonPlan struct {
	Origin  json.RawMessage `json:"origin"`
	Actions []jsonAction    `json:"actions"`
}

func ptr(v int) *int { return &v }

// EncodePlan returns pl as a BtrPlace ReconfigurationPlan. The origin is the
// instance's model as read (views it ignored included). Actions are sorted by
// start time, then end, then kind and element id.
func (in *Instance) EncodePlan(pl *plan.Plan) ([]byte, error) {
	if pl == nil {
		return nil, fmt.Errorf("%w: nil plan", cluster.ErrInvalid)
	}
	origin := in.model
	if origin == nil {
		var err error
		if origin, err = in.EncodeModel(); err != nil {
			return nil, err
		}
	}
	node := func(i int) (*int, error) {
		if i < 0 || i >= len(in.NodeIDs) {
			return nil, fmt.Errorf("%w: action references node index %d", cluster.ErrInvalid, i)
		}
		return ptr(in.NodeIDs[i]), nil
	}
	out := jsonPlan{Origin: origin, Actions: make([]jsonAction, 0, len(pl.Actions))}
	for i, a := range pl.Actions {
		id, ok := actionIDs[a.Kind]
		if !ok {
			return nil, fmt.Errorf("%w: action %d: unknown kind %v", cluster.ErrInvalid, i, a.Kind)
		}
		ja := jsonAction{ID: id, Start: a.Start, End: a.End}
		var err error
		if a.Kind.IsNodeAction() {
			ja.Node, err = node(a.Node)
		} else {
			if a.Task < 0 || a.Task >= len(in.VMIDs) {
				return nil, fmt.Errorf("%w: action %d references task index %d", cluster.ErrInvalid, i, a.Task)
			}
			ja.VM = ptr(in.VMIDs[a.Task])
			switch a.Kind {
			case cluster.Boot:
				if ja.On, err = node(a.To); err == nil {
					ja.To = ja.On
				}
			case cluster.Shutdown:
				ja.On, err = node(a.From)
			case cluster.Kill:
				if a.From != cluster.NoNode {
					ja.On, err = node(a.From)
				}
			default: // migrate, suspend, resume
				if ja.From, err = node(a.From); err == nil {
					ja.To, err = node(a.To)
				}
			}
		}
		if err != nil {
			return nil, fmt.Errorf("action %d (%s): %w", i, id, err)
		}
		out.Actions = append(out.Actions, ja)
	}
	key := func(a jsonAction) int {
		if a.VM != nil {
			return *a.VM
		}
		return *a.Node
	}
	sort.SliceStable(out.Actions, func(i, j int) bool {
		a, b := out.Actions[i], out.Actions[j]
		if a.Start != b.Start {
			return a.Start < b.Start
		}
		if a.End != b.End {
			return a.End < b.End
		}
		if a.ID != b.ID {
			return a.ID < b.ID
		}
		return key(a) < key(b)
	})
	return json.MarshalIndent(out, "", "  ")
}

// WritePlan writes pl as a BtrPlace ReconfigurationPlan.
func (in *Instance) WritePlan(w io.Writer, pl *plan.Plan) error {
	b, err := in.EncodePlan(pl)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	_, err = w.Write(b)
	return err
}

// EncodeModel writes the instance's model (mapping, attributes with the
// durations, one shareableResource view per resource) in BtrPlace's format.
func (in *Instance) EncodeModel() (json.RawMessage, error) {
	m := in.Problem.Model
	type onNode struct {
		RunningVMs  []int `json:"runningVMs"`
		SleepingVMs []int `json:"sleepingVMs"`
	}
	mapping := struct {
		ReadyVMs     []int             `json:"readyVMs"`
		OnlineNodes  map[string]onNode `json:"onlineNodes"`
		OfflineNodes []int             `json:"offlineNodes"`
	}{ReadyVMs: []int{}, OnlineNodes: map[string]onNode{}, OfflineNodes: []int{}}
	for n, nd := range m.Nodes {
		if nd.State == cluster.NodeOnline {
			mapping.OnlineNodes[strconv.Itoa(in.NodeIDs[n])] = onNode{RunningVMs: []int{}, SleepingVMs: []int{}}
		} else {
			mapping.OfflineNodes = append(mapping.OfflineNodes, in.NodeIDs[n])
		}
	}
	for t, tk := range m.Tasks {
		switch tk.State {
		case cluster.Ready:
			mapping.ReadyVMs = append(mapping.ReadyVMs, in.VMIDs[t])
		case cluster.Running, cluster.Sleeping:
			k := strconv.Itoa(in.NodeIDs[tk.Node])
			on := mapping.OnlineNodes[k]
			if tk.State == cluster.Running {
				on.RunningVMs = append(on.RunningVMs, in.VMIDs[t])
			} else {
				on.SleepingVMs = append(on.SleepingVMs, in.VMIDs[t])
			}
			mapping.OnlineNodes[k] = on
		}
	}
	attrs := map[string]map[string]map[string]int64{"vms": {}, "nodes": {}}
	for t, tk := range m.Tasks {
		for k, d := range tk.Durations {
			if attrs["vms"][strconv.Itoa(in.VMIDs[t])] == nil {
				attrs["vms"][strconv.Itoa(in.VMIDs[t])] = map[string]int64{}
			}
			attrs["vms"][strconv.Itoa(in.VMIDs[t])][k.String()] = d
		}
	}
	for n, nd := range m.Nodes {
		for k, d := range nd.Durations {
			name := map[cluster.ActionKind]string{cluster.BootNode: "boot", cluster.ShutdownNode: "shutdown"}[k]
			if name == "" {
				continue
			}
			if attrs["nodes"][strconv.Itoa(in.NodeIDs[n])] == nil {
				attrs["nodes"][strconv.Itoa(in.NodeIDs[n])] = map[string]int64{}
			}
			attrs["nodes"][strconv.Itoa(in.NodeIDs[n])][name] = d
		}
	}
	type view struct {
		ID             string           `json:"id"`
		RcID           string           `json:"rcId"`
		DefConsumption int64            `json:"defConsumption"`
		DefCapacity    int64            `json:"defCapacity"`
		VMs            map[string]int64 `json:"vms"`
		Nodes          map[string]int64 `json:"nodes"`
	}
	views := make([]view, len(m.Resources))
	for r, name := range m.Resources {
		v := view{ID: "shareableResource", RcID: name, VMs: map[string]int64{}, Nodes: map[string]int64{}}
		for t, tk := range m.Tasks {
			v.VMs[strconv.Itoa(in.VMIDs[t])] = tk.Demand[r]
		}
		for n, nd := range m.Nodes {
			v.Nodes[strconv.Itoa(in.NodeIDs[n])] = nd.Capacity[r]
		}
		views[r] = v
	}
	return json.Marshal(map[string]any{"mapping": mapping, "attributes": attrs, "views": views})
}

// ReadPlan reads a BtrPlace ReconfigurationPlan: its origin becomes the
// returned Instance (with no constraints) and its actions the plan. bootVM
// accepts its destination under "to" or "on".
func ReadPlan(r io.Reader) (*Instance, *plan.Plan, error) {
	data, err := decompress(r)
	if err != nil {
		return nil, nil, err
	}
	var top map[string]json.RawMessage
	if err := unmarshal(data, &top); err != nil || top == nil {
		return nil, nil, invalid("plan: expected a JSON object")
	}
	o, ok := top["origin"]
	if !ok || isNull(o) {
		return nil, nil, invalid("plan: missing key \"origin\"")
	}
	in, err := readModel(o)
	if err != nil {
		return nil, nil, fmt.Errorf("plan origin: %w", err)
	}
	var raws []json.RawMessage
	if a, ok := top["actions"]; !ok || unmarshal(a, &raws) != nil {
		return nil, nil, invalid("plan: key \"actions\": expected an array")
	}
	pl := &plan.Plan{Origin: in.Problem.Model}
	kinds := map[string]cluster.ActionKind{}
	for k, id := range actionIDs {
		kinds[id] = k
	}
	for i, raw := range raws {
		var ja struct {
			ID                     string
			VM, Node, On, From, To *int
			Start, End             *int64
		}
		if err := unmarshal(raw, &ja); err != nil {
			return nil, nil, invalid("actions[%d]: %v", i, err)
		}
		kind, ok := kinds[ja.ID]
		if !ok {
			return nil, nil, invalid("actions[%d]: unknown action id %q", i, ja.ID)
		}
		if ja.Start == nil || ja.End == nil {
			return nil, nil, invalid("actions[%d] (%s): missing \"start\" or \"end\"", i, ja.ID)
		}
		a := plan.Action{Kind: kind, Task: -1, Node: -1, From: cluster.NoNode, To: cluster.NoNode, Start: *ja.Start, End: *ja.End}
		node := func(key string, id *int) (int, error) {
			if id == nil {
				return 0, invalid("actions[%d] (%s): missing key %q", i, ja.ID, key)
			}
			n := in.NodeIndex(*id)
			if n < 0 {
				return 0, invalid("actions[%d] (%s): key %q: unknown node %d", i, ja.ID, key, *id)
			}
			return n, nil
		}
		var err error
		if kind.IsNodeAction() {
			if a.Node, err = node("node", ja.Node); err != nil {
				return nil, nil, err
			}
			a.To = a.Node
		} else {
			if ja.VM == nil {
				return nil, nil, invalid("actions[%d] (%s): missing key \"vm\"", i, ja.ID)
			}
			if a.Task = in.VMIndex(*ja.VM); a.Task < 0 {
				return nil, nil, invalid("actions[%d] (%s): unknown vm %d", i, ja.ID, *ja.VM)
			}
			switch kind {
			case cluster.Boot:
				dst, key := ja.To, "to"
				if dst == nil {
					dst, key = ja.On, "on"
				}
				a.To, err = node(key, dst)
			case cluster.Shutdown:
				a.From, err = node("on", ja.On)
			case cluster.Kill:
				if ja.On != nil {
					a.From, err = node("on", ja.On)
				}
			default:
				if a.From, err = node("from", ja.From); err == nil {
					a.To, err = node("to", ja.To)
				}
			}
			if err != nil {
				return nil, nil, err
			}
		}
		pl.Actions = append(pl.Actions, a)
	}
	return in, pl, nil
}
