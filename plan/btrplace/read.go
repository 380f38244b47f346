// Package btrplace reads and writes BtrPlace's JSON formats: instances
// ({"model", "constraints", "objective"}) become a *plan.Problem, and a
// *plan.Plan becomes a ReconfigurationPlan ({"origin", "actions"}). It is an
// adapter only: the planner and the verifier work on native types.
//
// BtrPlace identifies nodes and VMs by integers; Instance keeps the maps
// between those ids and the model's indices. Every key of BtrPlace's JSON
// converters is read for the constraint catalog ferry supports; views other
// than shareableResource (e.g. the network view) are ignored with a warning.
// Bad input gives an error wrapping cluster.ErrInvalid that names the
// element (and its position) at fault; the reader never panics.
package btrplace

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/plan"
)

// MaxInputBytes bounds the (decompressed) size of an instance.
const MaxInputBytes = 1 << 30

// Instance is a BtrPlace instance read into ferry's types.
type Instance struct {
	Problem *plan.Problem
	// NodeIDs[i] is the BtrPlace id of Problem.Model.Nodes[i]; VMIDs[t] that
	// of Problem.Model.Tasks[t].
	NodeIDs, VMIDs []int
	// Warnings lists what was read but ignored (unknown views).
	Warnings []string
	// model is the instance's "model" object as given, written back as the
	// plan's origin.
	model json.RawMessage
}

// NodeIndex returns the model index of a BtrPlace node id, or -1.
func (in *Instance) NodeIndex(id int) int { return indexOf(in.NodeIDs, id) }

// VMIndex returns the model index of a BtrPlace VM id, or -1.
func (in *Instance) VMIndex(id int) int { return indexOf(in.VMIDs, id) }

func indexOf(ids []int, id int) int {
	i := sort.SearchInts(ids, id)
	if i < len(ids) && ids[i] == id {
		return i
	}
	return -1
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", cluster.ErrInvalid, fmt.Sprintf(format, args...))
}

// ReadInstanceFile reads an instance from a file, "-" meaning stdin.
func ReadInstanceFile(path string) (*Instance, error) {
	if path == "-" {
		return ReadInstance(os.Stdin)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadInstance(f)
}

// decompress returns the bytes of r, gunzipped when they start with the gzip
// magic number.
func decompress(r io.Reader) ([]byte, error) {
	br := bufio.NewReader(r)
	head, _ := br.Peek(2)
	var src io.Reader = br
	if len(head) == 2 && head[0] == 0x1f && head[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, invalid("gzip: %v", err)
		}
		defer zr.Close()
		src = zr
	}
	data, err := io.ReadAll(io.LimitReader(src, MaxInputBytes+1))
	if err != nil {
		return nil, invalid("reading the instance: %v", err)
	}
	if len(data) > MaxInputBytes {
		return nil, invalid("instance larger than %d bytes", MaxInputBytes)
	}
	return data, nil
}

// ReadInstance reads a BtrPlace instance, plain JSON or gzipped.
func ReadInstance(r io.Reader) (*Instance, error) {
	data, err := decompress(r)
	if err != nil {
		return nil, err
	}
	var top map[string]json.RawMessage
	if err := unmarshal(data, &top); err != nil {
		return nil, invalid("instance: %v", err)
	}
	if top == nil {
		return nil, invalid("instance: expected a JSON object")
	}
	mraw, ok := top["model"]
	if !ok || isNull(mraw) {
		return nil, invalid("instance: missing key \"model\"")
	}
	in, err := readModel(mraw)
	if err != nil {
		return nil, err
	}
	r2 := &reader{in: in}
	if c, ok := top["constraints"]; ok && !isNull(c) {
		var cs []json.RawMessage
		if err := unmarshal(c, &cs); err != nil {
			return nil, invalid("constraints: expected an array: %v", err)
		}
		for i, raw := range cs {
			k, err := r2.constraint(raw)
			if err != nil {
				return nil, fmt.Errorf("constraints[%d]: %w", i, err)
			}
			in.Problem.Constraints = append(in.Problem.Constraints, k)
		}
	}
	if o, ok := top["objective"]; ok && !isNull(o) {
		obj, err := objective(o)
		if err != nil {
			return nil, err
		}
		in.Problem.Objective = obj
	}
	return in, nil
}

func objective(raw json.RawMessage) (plan.Objective, error) {
	var o map[string]json.RawMessage
	if err := unmarshal(raw, &o); err != nil || o == nil {
		return 0, invalid("objective: expected an object with an \"id\"")
	}
	var id string
	if err := unmarshal(o["id"], &id); err != nil {
		return 0, invalid("objective: key \"id\": expected a string")
	}
	switch id {
	case "minimizeMTTR":
		return plan.MinMTTR, nil
	case "minimizeMigrations":
		return plan.MinMigrations, nil
	}
	return 0, invalid("objective: unknown objective id %q (want minimizeMTTR or minimizeMigrations)", id)
}

func isNull(raw json.RawMessage) bool {
	return len(bytes.TrimSpace(raw)) == 0 || string(bytes.TrimSpace(raw)) == "null"
}

func unmarshal(data []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return fmt.Errorf("trailing data after the JSON value")
	}
	return nil
}

// readModel reads {"mapping", "attributes", "views"}.
func readModel(raw json.RawMessage) (*Instance, error) {
	var mo map[string]json.RawMessage
	if err := unmarshal(raw, &mo); err != nil || mo == nil {
		return nil, invalid("model: expected an object")
	}
	var mp struct {
		ReadyVMs     []int                      `json:"readyVMs"`
		OfflineNodes []int                      `json:"offlineNodes"`
		OnlineNodes  map[string]json.RawMessage `json:"onlineNodes"`
	}
	mraw, ok := mo["mapping"]
	if !ok || isNull(mraw) {
		return nil, invalid("model: missing key \"mapping\"")
	}
	if err := unmarshal(mraw, &mp); err != nil {
		return nil, invalid("model.mapping: %v", err)
	}

	type vmAt struct {
		state cluster.TaskState
		node  int // BtrPlace node id
	}
	nodes := map[int]cluster.NodeState{}
	vms := map[int]vmAt{}
	where := func(v vmAt) string {
		if v.state == cluster.Ready {
			return "ready"
		}
		return fmt.Sprintf("%s on node %d", v.state, v.node)
	}
	placeVM := func(id int, at vmAt) error {
		if prev, dup := vms[id]; dup {
			return invalid("model.mapping: vm %d placed twice (%s and %s)", id, where(prev), where(at))
		}
		vms[id] = at
		return nil
	}
	for _, id := range mp.OfflineNodes {
		if _, dup := nodes[id]; dup {
			return nil, invalid("model.mapping: node %d declared twice", id)
		}
		nodes[id] = cluster.NodeOffline
	}
	for _, id := range mp.ReadyVMs {
		if err := placeVM(id, vmAt{cluster.Ready, cluster.NoNode}); err != nil {
			return nil, err
		}
	}
	onIDs := make([]int, 0, len(mp.OnlineNodes))
	for k := range mp.OnlineNodes {
		id, err := strconv.Atoi(k)
		if err != nil {
			return nil, invalid("model.mapping.onlineNodes: node id %q is not an integer", k)
		}
		onIDs = append(onIDs, id)
	}
	sort.Ints(onIDs)
	for _, id := range onIDs {
		if _, dup := nodes[id]; dup {
			return nil, invalid("model.mapping: node %d declared twice", id)
		}
		nodes[id] = cluster.NodeOnline
		var on struct {
			RunningVMs  []int `json:"runningVMs"`
			SleepingVMs []int `json:"sleepingVMs"`
		}
		if err := unmarshal(mp.OnlineNodes[strconv.Itoa(id)], &on); err != nil {
			return nil, invalid("model.mapping.onlineNodes[%d]: %v", id, err)
		}
		for _, v := range on.RunningVMs {
			if err := placeVM(v, vmAt{cluster.Running, id}); err != nil {
				return nil, err
			}
		}
		for _, v := range on.SleepingVMs {
			if err := placeVM(v, vmAt{cluster.Sleeping, id}); err != nil {
				return nil, err
			}
		}
	}
	if len(nodes) != len(onIDs)+len(mp.OfflineNodes) {
		// a key like "01" and "1" both parse to 1
		return nil, invalid("model.mapping: a node id is declared twice")
	}

	in := &Instance{model: raw}
	for id := range nodes {
		in.NodeIDs = append(in.NodeIDs, id)
	}
	sort.Ints(in.NodeIDs)
	for id := range vms {
		in.VMIDs = append(in.VMIDs, id)
	}
	sort.Ints(in.VMIDs)
	m := &cluster.Model{}
	m.Nodes = make([]cluster.Node, len(in.NodeIDs))
	for i, id := range in.NodeIDs {
		m.Nodes[i] = cluster.Node{Name: strconv.Itoa(id), State: nodes[id]}
	}
	m.Tasks = make([]cluster.Task, len(in.VMIDs))
	for i, id := range in.VMIDs {
		v := vms[id]
		n := cluster.NoNode
		if v.state != cluster.Ready {
			n = in.NodeIndex(v.node)
		}
		m.Tasks[i] = cluster.Task{Name: strconv.Itoa(id), State: v.state, Node: n}
	}
	in.Problem = &plan.Problem{Model: m}

	if a, ok := mo["attributes"]; ok && !isNull(a) {
		if err := in.readAttributes(a); err != nil {
			return nil, err
		}
	}
	if v, ok := mo["views"]; ok && !isNull(v) {
		var views []json.RawMessage
		if err := unmarshal(v, &views); err != nil {
			return nil, invalid("model.views: expected an array: %v", err)
		}
		for i, raw := range views {
			if err := in.readView(i, raw); err != nil {
				return nil, err
			}
		}
	}
	for t := range m.Tasks {
		if len(m.Tasks[t].Demand) < len(m.Resources) {
			m.Tasks[t].Demand = append(m.Tasks[t].Demand, make([]int64, len(m.Resources)-len(m.Tasks[t].Demand))...)
		}
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	return in, nil
}

// vmDurationKeys maps VM attribute names to the action whose duration they
// set; nodeDurationKeys the node attribute names.
var vmDurationKeys = map[string]cluster.ActionKind{
	"boot": cluster.Boot, "shutdown": cluster.Shutdown, "suspend": cluster.Suspend,
	"resume": cluster.Resume, "migrate": cluster.Migrate, "kill": cluster.Kill,
}

var nodeDurationKeys = map[string]cluster.ActionKind{
	"boot": cluster.BootNode, "shutdown": cluster.ShutdownNode,
	"bootNode": cluster.BootNode, "shutdownNode": cluster.ShutdownNode,
}

func (in *Instance) readAttributes(raw json.RawMessage) error {
	var at struct {
		VMs   map[string]map[string]json.RawMessage `json:"vms"`
		Nodes map[string]map[string]json.RawMessage `json:"nodes"`
	}
	if err := unmarshal(raw, &at); err != nil {
		return invalid("model.attributes: %v", err)
	}
	m := in.Problem.Model
	for _, k := range sortedKeys(at.VMs) {
		id, err := strconv.Atoi(k)
		if err != nil {
			return invalid("model.attributes.vms: vm id %q is not an integer", k)
		}
		t := in.VMIndex(id)
		if t < 0 {
			return invalid("model.attributes.vms: unknown vm %d", id)
		}
		for _, key := range sortedKeys(at.VMs[k]) {
			kind, ok := vmDurationKeys[key]
			if !ok {
				continue // other attributes (e.g. memUsed) do not concern the planner
			}
			d, err := duration(at.VMs[k][key])
			if err != nil {
				return invalid("model.attributes.vms[%d].%s: %v", id, key, err)
			}
			if m.Tasks[t].Durations == nil {
				m.Tasks[t].Durations = map[cluster.ActionKind]int64{}
			}
			m.Tasks[t].Durations[kind] = d
		}
	}
	for _, k := range sortedKeys(at.Nodes) {
		id, err := strconv.Atoi(k)
		if err != nil {
			return invalid("model.attributes.nodes: node id %q is not an integer", k)
		}
		n := in.NodeIndex(id)
		if n < 0 {
			return invalid("model.attributes.nodes: unknown node %d", id)
		}
		for _, key := range sortedKeys(at.Nodes[k]) {
			raw := at.Nodes[k][key]
			if kind, ok := nodeDurationKeys[key]; ok {
				d, err := duration(raw)
				if err != nil {
					return invalid("model.attributes.nodes[%d].%s: %v", id, key, err)
				}
				if m.Nodes[n].Durations == nil {
					m.Nodes[n].Durations = map[cluster.ActionKind]int64{}
				}
				m.Nodes[n].Durations[kind] = d
				continue
			}
			var v any
			if err := unmarshal(raw, &v); err != nil {
				return invalid("model.attributes.nodes[%d].%s: %v", id, key, err)
			}
			switch v.(type) {
			case string, json.Number, bool:
			default:
				return invalid("model.attributes.nodes[%d].%s: expected a string, number or boolean", id, key)
			}
			if m.Nodes[n].Labels == nil {
				m.Nodes[n].Labels = map[string]string{}
			}
			m.Nodes[n].Labels[key] = fmt.Sprint(v)
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// duration reads a non-negative integral number.
func duration(raw json.RawMessage) (int64, error) {
	v, err := integer(raw)
	if err != nil {
		return 0, err
	}
	if v < 0 {
		return 0, fmt.Errorf("negative duration %d", v)
	}
	return v, nil
}

// integer reads an integral JSON number, or a string holding one (BtrPlace
// writes some amounts as strings).
func integer(raw json.RawMessage) (int64, error) {
	var v any
	if err := unmarshal(raw, &v); err != nil {
		return 0, err
	}
	var s string
	switch v := v.(type) {
	case json.Number:
		s = v.String()
	case string:
		s = strings.TrimSpace(v)
	default:
		return 0, fmt.Errorf("expected an integer, got %s", strings.TrimSpace(string(raw)))
	}
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		return i, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
		return 0, fmt.Errorf("expected an integer, got %s", s)
	}
	return int64(f), nil
}

// readView reads one view; only shareableResource is understood.
func (in *Instance) readView(i int, raw json.RawMessage) error {
	var v map[string]json.RawMessage
	if err := unmarshal(raw, &v); err != nil || v == nil {
		return invalid("model.views[%d]: expected an object", i)
	}
	var id string
	if err := unmarshal(v["id"], &id); err != nil {
		return invalid("model.views[%d]: key \"id\": expected a string", i)
	}
	if id != "shareableResource" {
		in.Warnings = append(in.Warnings, fmt.Sprintf("model.views[%d]: view %q ignored (only shareableResource is supported)", i, id))
		return nil
	}
	var rc string
	if err := unmarshal(v["rcId"], &rc); err != nil || rc == "" {
		return invalid("model.views[%d]: key \"rcId\": expected a non-empty string", i)
	}
	where := fmt.Sprintf("model.views[%d] (%s)", i, rc)
	m := in.Problem.Model
	if m.Resource(rc) >= 0 {
		return invalid("%s: resource declared twice", where)
	}
	var defCons, defCap int64
	var err error
	if raw, ok := v["defConsumption"]; ok {
		if defCons, err = integer(raw); err != nil {
			return invalid("%s: defConsumption: %v", where, err)
		}
	}
	if raw, ok := v["defCapacity"]; ok {
		if defCap, err = integer(raw); err != nil {
			return invalid("%s: defCapacity: %v", where, err)
		}
	}
	if defCons < 0 || defCap < 0 {
		return invalid("%s: negative default consumption or capacity", where)
	}
	r := len(m.Resources)
	m.Resources = append(m.Resources, rc)
	for n := range m.Nodes {
		m.Nodes[n].Capacity = append(m.Nodes[n].Capacity, defCap)
	}
	for t := range m.Tasks {
		m.Tasks[t].Demand = append(m.Tasks[t].Demand, defCons)
	}
	read := func(key, what string, set func(id int, val int64) error) error {
		raw, ok := v[key]
		if !ok || isNull(raw) {
			return nil
		}
		var vals map[string]json.RawMessage
		if err := unmarshal(raw, &vals); err != nil {
			return invalid("%s: key %q: expected an object", where, key)
		}
		for _, k := range sortedKeys(vals) {
			id, err := strconv.Atoi(k)
			if err != nil {
				return invalid("%s.%s: %s id %q is not an integer", where, key, what, k)
			}
			val, err := integer(vals[k])
			if err != nil {
				return invalid("%s.%s[%d]: %v", where, key, id, err)
			}
			if val < 0 {
				return invalid("%s.%s[%d]: negative %s %d", where, key, id, map[string]string{"vm": "consumption", "node": "capacity"}[what], val)
			}
			if err := set(id, val); err != nil {
				return err
			}
		}
		return nil
	}
	if err := read("vms", "vm", func(id int, val int64) error {
		t := in.VMIndex(id)
		if t < 0 {
			return invalid("%s.vms: unknown vm %d", where, id)
		}
		m.Tasks[t].Demand[r] = val
		return nil
	}); err != nil {
		return err
	}
	return read("nodes", "node", func(id int, val int64) error {
		n := in.NodeIndex(id)
		if n < 0 {
			return invalid("%s.nodes: unknown node %d", where, id)
		}
		m.Nodes[n].Capacity[r] = val
		return nil
	})
}
