package btrplace

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"

	"github.com/ferrycluster/ferry/cluster"
)

// reader converts constraint objects, resolving BtrPlace ids to indices.
type reader struct {
	in *Instance
}

// cobj is one constraint object being read.
type cobj struct {
	id string
	o  map[string]json.RawMessage
	r  *reader
}

func (c *cobj) errf(format string, args ...any) error {
	return invalid("%s: %s", c.id, fmt.Sprintf(format, args...))
}

// raw returns the value at the first of keys present.
func (c *cobj) raw(keys ...string) (json.RawMessage, string, bool) {
	for _, k := range keys {
		if v, ok := c.o[k]; ok && !isNull(v) {
			return v, k, true
		}
	}
	return nil, keys[0], false
}

// ints reads an int or an array of ints at the first present key.
func (c *cobj) ints(keys ...string) ([]int, string, error) {
	raw, key, ok := c.raw(keys...)
	if !ok {
		alt := ""
		if len(keys) > 1 {
			alt = fmt.Sprintf(" (or %q)", strings.Join(keys[1:], ", "))
		}
		return nil, key, c.errf("missing key %q%s", key, alt)
	}
	var one int
	if err := unmarshal(raw, &one); err == nil {
		return []int{one}, key, nil
	}
	var many []int
	if err := unmarshal(raw, &many); err != nil {
		return nil, key, c.errf("key %q: expected an integer id or an array of ids", key)
	}
	return many, key, nil
}

func (c *cobj) vms(keys ...string) ([]int, error) {
	ids, key, err := c.ints(keys...)
	if err != nil {
		return nil, err
	}
	out := make([]int, len(ids))
	for i, id := range ids {
		t := c.r.in.VMIndex(id)
		if t < 0 {
			return nil, c.errf("key %q: unknown vm %d", key, id)
		}
		out[i] = t
	}
	return out, nil
}

func (c *cobj) nodes(keys ...string) ([]int, error) {
	ids, key, err := c.ints(keys...)
	if err != nil {
		return nil, err
	}
	out := make([]int, len(ids))
	for i, id := range ids {
		n := c.r.in.NodeIndex(id)
		if n < 0 {
			return nil, c.errf("key %q: unknown node %d", key, id)
		}
		out[i] = n
	}
	return out, nil
}

// groups reads an array of arrays of ids at key, resolved by resolve.
func (c *cobj) groups(key string, vm bool) ([][]int, error) {
	raw, _, ok := c.raw(key)
	if !ok {
		return nil, c.errf("missing key %q", key)
	}
	var ids [][]int
	if err := unmarshal(raw, &ids); err != nil {
		return nil, c.errf("key %q: expected an array of arrays of ids", key)
	}
	out := make([][]int, len(ids))
	for g, grp := range ids {
		out[g] = make([]int, len(grp))
		for i, id := range grp {
			x := c.r.in.NodeIndex(id)
			what := "node"
			if vm {
				x, what = c.r.in.VMIndex(id), "vm"
			}
			if x < 0 {
				return nil, c.errf("key %q: group %d: unknown %s %d", key, g, what, id)
			}
			out[g][i] = x
		}
	}
	return out, nil
}

func (c *cobj) str(key string) (string, error) {
	raw, _, ok := c.raw(key)
	if !ok {
		return "", c.errf("missing key %q", key)
	}
	var s string
	if err := unmarshal(raw, &s); err != nil {
		return "", c.errf("key %q: expected a string", key)
	}
	return s, nil
}

func (c *cobj) resource(key string) (string, error) {
	s, err := c.str(key)
	if err != nil {
		return "", err
	}
	if c.r.in.Problem.Model.Resource(s) < 0 {
		return "", c.errf("key %q: unknown resource %q (no shareableResource view declares it)", key, s)
	}
	return s, nil
}

func (c *cobj) amount(key string) (int64, error) {
	raw, _, ok := c.raw(key)
	if !ok {
		return 0, c.errf("missing key %q", key)
	}
	v, err := integer(raw)
	if err != nil {
		return 0, c.errf("key %q: %v", key, err)
	}
	if v < 0 {
		return 0, c.errf("key %q: negative amount %d", key, v)
	}
	return v, nil
}

func (c *cobj) count(key string) (int, error) {
	v, err := c.amount(key)
	if err != nil {
		return 0, err
	}
	if v > math.MaxInt32 {
		return 0, c.errf("key %q: amount %d too large", key, v)
	}
	return int(v), nil
}

// continuous reads the optional "continuous" flag.
func (c *cobj) continuous(def bool) (bool, error) {
	raw, _, ok := c.raw("continuous")
	if !ok {
		return def, nil
	}
	var b bool
	if err := unmarshal(raw, &b); err != nil {
		return false, c.errf("key \"continuous\": expected a boolean")
	}
	return b, nil
}

// constraint converts one constraint object.
func (r *reader) constraint(raw json.RawMessage) (cluster.Constraint, error) {
	var o map[string]json.RawMessage
	if err := unmarshal(raw, &o); err != nil || o == nil {
		return nil, invalid("expected a constraint object")
	}
	var id string
	if err := unmarshal(o["id"], &id); err != nil {
		return nil, invalid("key \"id\": expected a string")
	}
	c := &cobj{id: id, o: o, r: r}
	switch id {
	case "spread", "gather", "lonely":
		vms, err := c.vms("vms", "vm")
		if err != nil {
			return nil, err
		}
		cont, err := c.continuous(id == "spread")
		if err != nil {
			return nil, err
		}
		switch id {
		case "spread":
			return cluster.Spread{Tasks: vms, Continuous: cont}, nil
		case "gather":
			return cluster.Gather{Tasks: vms, Continuous: cont}, nil
		}
		return cluster.Lonely{Tasks: vms, Continuous: cont}, nil
	case "ban", "fence":
		vms, err := c.vms("vm", "vms")
		if err != nil {
			return nil, err
		}
		nodes, err := c.nodes("nodes", "node")
		if err != nil {
			return nil, err
		}
		cont, err := c.continuous(false)
		if err != nil {
			return nil, err
		}
		if id == "ban" {
			return cluster.Ban{Tasks: vms, Nodes: nodes, Continuous: cont}, nil
		}
		return cluster.Fence{Tasks: vms, Nodes: nodes, Continuous: cont}, nil
	case "among":
		vms, err := c.vms("vms", "vm")
		if err != nil {
			return nil, err
		}
		parts, err := c.groups("parts", false)
		if err != nil {
			return nil, err
		}
		cont, err := c.continuous(false)
		if err != nil {
			return nil, err
		}
		return cluster.Among{Tasks: vms, Groups: parts, Continuous: cont}, nil
	case "split":
		parts, err := c.groups("parts", true)
		if err != nil {
			return nil, err
		}
		cont, err := c.continuous(false)
		if err != nil {
			return nil, err
		}
		return cluster.Split{Groups: parts, Continuous: cont}, nil
	case "splitAmong":
		vparts, err := c.groups("vParts", true)
		if err != nil {
			return nil, err
		}
		pparts, err := c.groups("pParts", false)
		if err != nil {
			return nil, err
		}
		cont, err := c.continuous(false)
		if err != nil {
			return nil, err
		}
		return cluster.SplitAmong{TaskGroups: vparts, NodeGroups: pparts, Continuous: cont}, nil
	case "root":
		vms, err := c.vms("vm", "vms")
		if err != nil {
			return nil, err
		}
		return cluster.Root{Tasks: vms}, nil
	case "quarantine":
		nodes, err := c.nodes("node", "nodes")
		if err != nil {
			return nil, err
		}
		return cluster.Quarantine{Nodes: nodes}, nil
	case "running", "ready", "sleeping", "killed":
		vms, err := c.vms("vm", "vms")
		if err != nil {
			return nil, err
		}
		if _, err := c.continuous(false); err != nil {
			return nil, err
		}
		st, _ := cluster.ParseTaskState(id)
		return cluster.StateConstraint{State: st, Tasks: vms}, nil
	case "online", "offline":
		nodes, err := c.nodes("node", "nodes")
		if err != nil {
			return nil, err
		}
		if _, err := c.continuous(false); err != nil {
			return nil, err
		}
		st := cluster.NodeOnline
		if id == "offline" {
			st = cluster.NodeOffline
		}
		return cluster.NodeStateConstraint{State: st, Nodes: nodes}, nil
	case "preserve":
		vms, err := c.vms("vm", "vms")
		if err != nil {
			return nil, err
		}
		rc, err := c.resource("rc")
		if err != nil {
			return nil, err
		}
		amount, err := c.amount("amount")
		if err != nil {
			return nil, err
		}
		return cluster.Preserve{Tasks: vms, Resource: rc, Amount: amount}, nil
	case "resourceCapacity":
		nodes, err := c.nodes("nodes", "node")
		if err != nil {
			return nil, err
		}
		rc, err := c.resource("rc")
		if err != nil {
			return nil, err
		}
		amount, err := c.amount("amount")
		if err != nil {
			return nil, err
		}
		cont, err := c.continuous(false)
		if err != nil {
			return nil, err
		}
		return cluster.ResourceCapacity{Nodes: nodes, Resource: rc, Amount: amount, Continuous: cont}, nil
	case "runningCapacity", "maxOnline":
		nodes, err := c.nodes("nodes", "node")
		if err != nil {
			return nil, err
		}
		amount, err := c.count("amount")
		if err != nil {
			return nil, err
		}
		cont, err := c.continuous(false)
		if err != nil {
			return nil, err
		}
		if id == "maxOnline" {
			return cluster.MaxOnline{Nodes: nodes, Amount: amount, Continuous: cont}, nil
		}
		return cluster.RunningCapacity{Nodes: nodes, Amount: amount, Continuous: cont}, nil
	case "overbook":
		nodes, err := c.nodes("node", "nodes")
		if err != nil {
			return nil, err
		}
		rc, err := c.resource("rc")
		if err != nil {
			return nil, err
		}
		raw, _, ok := c.raw("ratio")
		if !ok {
			return nil, c.errf("missing key \"ratio\"")
		}
		var ratio float64
		if err := unmarshal(raw, &ratio); err != nil {
			return nil, c.errf("key \"ratio\": expected a number")
		}
		if !(ratio >= 1) || math.IsInf(ratio, 0) {
			return nil, c.errf("key \"ratio\": %v must be a finite number >= 1", ratio)
		}
		cont, err := c.continuous(true)
		if err != nil {
			return nil, err
		}
		return cluster.Overbook{Nodes: nodes, Resource: rc, Ratio: ratio, Continuous: cont}, nil
	case "seq":
		vms, err := c.vms("vms", "vm")
		if err != nil {
			return nil, err
		}
		return cluster.Seq{Tasks: vms}, nil
	case "noDelay":
		vms, err := c.vms("vm", "vms")
		if err != nil {
			return nil, err
		}
		if len(vms) != 1 {
			return nil, c.errf("key \"vm\": expected exactly one vm")
		}
		return cluster.NoDelay{Task: vms[0]}, nil
	}
	return nil, invalid("unknown constraint id %q", id)
}
