package btrplace_test

import (
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/plan"
	"github.com/ferrycluster/ferry/plan/btrplace"
	"github.com/ferrycluster/ferry/plan/verify"
)

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestReadCatalog reads an instance using every constraint of the catalog
// and checks the whole problem (ids 0..n map to indices 0..n here).
func TestReadCatalog(t *testing.T) {
	in, err := btrplace.ReadInstance(bytes.NewReader(readFile(t, "testdata/catalog.json")))
	if err != nil {
		t.Fatal(err)
	}
	m := in.Problem.Model
	if got := m.Resources; !reflect.DeepEqual(got, []string{"cpu", "mem"}) {
		t.Fatalf("resources %v", got)
	}
	if len(in.Warnings) != 1 || !strings.Contains(in.Warnings[0], `"net" ignored`) {
		t.Fatalf("warnings %v", in.Warnings)
	}
	if in.Problem.Objective != plan.MinMigrations {
		t.Fatalf("objective %v", in.Problem.Objective)
	}
	wantNodes := []cluster.Node{
		{Name: "0", State: cluster.NodeOnline, Capacity: []int64{8, 64}},
		{Name: "1", State: cluster.NodeOnline, Capacity: []int64{8, 64}},
		{Name: "2", State: cluster.NodeOnline, Capacity: []int64{8, 64}},
		{Name: "3", State: cluster.NodeOffline, Capacity: []int64{16, 64}, Labels: map[string]string{"rack": "r1"},
			Durations: map[cluster.ActionKind]int64{cluster.BootNode: 4, cluster.ShutdownNode: 2}},
	}
	if !reflect.DeepEqual(m.Nodes, wantNodes) {
		t.Fatalf("nodes\n got %+v\nwant %+v", m.Nodes, wantNodes)
	}
	wantTasks := []cluster.Task{
		{Name: "0", State: cluster.Running, Node: 0, Demand: []int64{2, 0}, Durations: map[cluster.ActionKind]int64{cluster.Migrate: 3}},
		{Name: "1", State: cluster.Running, Node: 0, Demand: []int64{2, 0}},
		{Name: "2", State: cluster.Running, Node: 1, Demand: []int64{3, 0}},
		{Name: "3", State: cluster.Sleeping, Node: 2, Demand: []int64{1, 0}, Durations: map[cluster.ActionKind]int64{cluster.Resume: 2}},
		{Name: "4", State: cluster.Ready, Node: cluster.NoNode, Demand: []int64{1, 0}, Durations: map[cluster.ActionKind]int64{cluster.Boot: 2}},
		{Name: "5", State: cluster.Running, Node: 2, Demand: []int64{1, 8}},
	}
	if !reflect.DeepEqual(m.Tasks, wantTasks) {
		t.Fatalf("tasks\n got %+v\nwant %+v", m.Tasks, wantTasks)
	}
	want := []cluster.Constraint{
		cluster.Spread{Tasks: []int{0, 2}},
		cluster.Ban{Tasks: []int{0}, Nodes: []int{3}},
		cluster.Fence{Tasks: []int{2}, Nodes: []int{1, 2}, Continuous: true},
		cluster.Gather{Tasks: []int{1, 5}},
		cluster.Among{Tasks: []int{1, 5}, Groups: [][]int{{0, 1}, {2, 3}}},
		cluster.Split{Groups: [][]int{{0}, {2}}},
		cluster.SplitAmong{TaskGroups: [][]int{{0}, {2}}, NodeGroups: [][]int{{0, 1}, {2, 3}}},
		cluster.Lonely{Tasks: []int{2}},
		cluster.Root{Tasks: []int{5}},
		cluster.Quarantine{Nodes: []int{1}},
		cluster.StateConstraint{State: cluster.Running, Tasks: []int{4}},
		cluster.StateConstraint{State: cluster.Ready, Tasks: []int{1}},
		cluster.StateConstraint{State: cluster.Sleeping, Tasks: []int{3}},
		cluster.StateConstraint{State: cluster.Killed, Tasks: []int{3}},
		cluster.NodeStateConstraint{State: cluster.NodeOnline, Nodes: []int{3}},
		cluster.NodeStateConstraint{State: cluster.NodeOffline, Nodes: []int{2}},
		cluster.Preserve{Tasks: []int{2}, Resource: "mem", Amount: 4},
		cluster.ResourceCapacity{Nodes: []int{0, 1}, Resource: "cpu", Amount: 10},
		cluster.RunningCapacity{Nodes: []int{0}, Amount: 3, Continuous: true},
		cluster.MaxOnline{Nodes: []int{0, 1, 2, 3}, Amount: 3},
		cluster.Overbook{Nodes: []int{0}, Resource: "cpu", Ratio: 1.5, Continuous: true},
		cluster.Seq{Tasks: []int{0, 1, 2}},
		cluster.NoDelay{Task: 0},
	}
	if !reflect.DeepEqual(in.Problem.Constraints, want) {
		for i := range want {
			if i >= len(in.Problem.Constraints) || !reflect.DeepEqual(in.Problem.Constraints[i], want[i]) {
				t.Errorf("constraint %d: got %#v want %#v", i, in.Problem.Constraints[i], want[i])
			}
		}
		t.FailNow()
	}
}

func TestReadGzip(t *testing.T) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(readFile(t, "testdata/catalog.json"))
	zw.Close()
	in, err := btrplace.ReadInstance(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if len(in.Problem.Model.Tasks) != 6 {
		t.Fatalf("%d tasks", len(in.Problem.Model.Tasks))
	}
}

// TestBadInput: each malformed instance gives an ErrInvalid error naming the
// element at fault.
func TestBadInput(t *testing.T) {
	base := string(readFile(t, "testdata/catalog.json"))
	for _, tc := range []struct{ name, from, to, want string }{
		{"malformed json", `"model": {`, `"model": {{`, "instance:"},
		{"not an object", base, `[1,2]`, "instance:"},
		{"no model", `"model"`, `"modelx"`, `missing key "model"`},
		{"no mapping", `"mapping"`, `"mappingx"`, `missing key "mapping"`},
		{"vm placed twice", `"runningVMs": [2]`, `"runningVMs": [2, 0]`, "vm 0 placed twice"},
		{"vm ready and running", `"readyVMs": [4]`, `"readyVMs": [4, 5]`, "vm 5 placed twice"},
		{"node twice", `"offlineNodes": [3]`, `"offlineNodes": [3, 1]`, "node 1 declared twice"},
		{"node id not int", `"1": {"runningVMs": [2]`, `"x1": {"runningVMs": [2]`, `node id "x1" is not an integer`},
		{"negative capacity", `"nodes": {"3": 16}`, `"nodes": {"3": -16}`, "views[0] (cpu).nodes[3]: negative capacity -16"},
		{"negative consumption", `"vms": {"5": 8}`, `"vms": {"5": -8}`, "views[1] (mem).vms[5]: negative consumption"},
		{"negative default capacity", `"defCapacity": 64`, `"defCapacity": -1`, "negative default"},
		{"view unknown vm", `"vms": {"5": 8}`, `"vms": {"55": 8}`, "views[1] (mem).vms: unknown vm 55"},
		{"view unknown node", `"nodes": {"3": 16}`, `"nodes": {"33": 16}`, "unknown node 33"},
		{"view resource twice", `"rcId": "mem"`, `"rcId": "cpu"`, "views[1] (cpu): resource declared twice"},
		{"view amount not int", `"2": "3"`, `"2": "three"`, "views[0] (cpu).vms[2]: expected an integer"},
		{"negative duration", `"migrate": 3`, `"migrate": -3`, "attributes.vms[0].migrate: negative duration -3"},
		{"fractional duration", `"boot": 2.0`, `"boot": 2.5`, "attributes.vms[4].boot: expected an integer"},
		{"negative node duration", `"boot": 4`, `"boot": -4`, "attributes.nodes[3].boot: negative duration"},
		{"attribute unknown vm", `"3": {"resume": 2`, `"33": {"resume": 2`, "attributes.vms: unknown vm 33"},
		{"unknown constraint", `"id": "lonely"`, `"id": "lonesome"`, `constraints[7]: invalid input: unknown constraint id "lonesome"`},
		{"constraint unknown vm", `{"id": "ban", "vm": 0`, `{"id": "ban", "vm": 70`, `constraints[1]: invalid input: ban: key "vm": unknown vm 70`},
		{"constraint unknown node", `"node": 1}`, `"node": 11}`, `quarantine: key "node": unknown node 11`},
		{"constraint missing key", `{"id": "root", "vm": 5}`, `{"id": "root"}`, `root: missing key "vm"`},
		{"constraint bad group", `"parts": [[0, 1], [2, 3]]`, `"parts": [[0, 1], [2, 9]]`, `among: key "parts": group 1: unknown node 9`},
		{"constraint unknown resource", `"rc": "mem", "amount": 4`, `"rc": "disk", "amount": 4`, `preserve: key "rc": unknown resource "disk"`},
		{"negative amount", `"amount": 10`, `"amount": -10`, `resourceCapacity: key "amount": negative amount -10`},
		{"bad ratio", `"ratio": 1.5`, `"ratio": 0.5`, `overbook: key "ratio": 0.5 must be a finite number >= 1`},
		{"bad continuous", `"vms": [0, 2], "continuous": false`, `"vms": [0, 2], "continuous": "no"`, `spread: key "continuous": expected a boolean`},
		{"unknown objective", `"minimizeMigrations"`, `"minimizeEnergy"`, `unknown objective id "minimizeEnergy"`},
		{"constraints not array", `"constraints": [`, `"constraints": {"a": [`, "constraints: expected an array"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := strings.Replace(base, tc.from, tc.to, 1)
			if src == base {
				t.Fatalf("mutation %q not applied", tc.from)
			}
			if tc.name == "constraints not array" {
				src = strings.Replace(src, `"objective"`, `"x": 1}, "objective"`, 1)
			}
			_, err := btrplace.ReadInstance(strings.NewReader(src))
			if err == nil {
				t.Fatal("want an error")
			}
			if !errors.Is(err, cluster.ErrInvalid) {
				t.Fatalf("error %v does not wrap cluster.ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not name %q", err, tc.want)
			}
		})
	}
}

func TestPlanRoundTrip(t *testing.T) {
	in, err := btrplace.ReadInstance(bytes.NewReader(readFile(t, "testdata/catalog.json")))
	if err != nil {
		t.Fatal(err)
	}
	pl := &plan.Plan{Origin: in.Problem.Model, Actions: []plan.Action{
		{Kind: cluster.BootNode, Task: -1, Node: 3, From: -1, To: 3, Start: 0, End: 4},
		{Kind: cluster.Migrate, Task: 0, Node: -1, From: 0, To: 1, Start: 0, End: 3},
		{Kind: cluster.Boot, Task: 4, Node: -1, From: -1, To: 3, Start: 4, End: 6},
		{Kind: cluster.Shutdown, Task: 1, Node: -1, From: 0, To: -1, Start: 3, End: 4},
		{Kind: cluster.Suspend, Task: 2, Node: -1, From: 1, To: 1, Start: 0, End: 1},
		{Kind: cluster.Resume, Task: 3, Node: -1, From: 2, To: 0, Start: 4, End: 6},
		{Kind: cluster.Kill, Task: 5, Node: -1, From: 2, To: -1, Start: 0, End: 1},
		{Kind: cluster.ShutdownNode, Task: -1, Node: 2, From: -1, To: 2, Start: 6, End: 7},
	}}
	b, err := in.EncodePlan(pl)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"id": "bootVM"`, `"on": 3`, `"id": "migrateVM"`, `"from": 0`, `"id": "shutdownNode"`, `"node": 2`, `"origin": {`, `"net"`} {
		if !bytes.Contains(b, []byte(key)) {
			t.Fatalf("plan lacks %s:\n%s", key, b)
		}
	}
	in2, pl2, err := btrplace.ReadPlan(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in2.Problem.Model, in.Problem.Model) {
		t.Fatalf("origin changed")
	}
	got := map[plan.Action]bool{}
	for _, a := range pl2.Actions {
		got[a] = true
	}
	for _, a := range pl.Actions {
		if !got[a] {
			t.Fatalf("action %+v lost in the round trip; got %+v", a, pl2.Actions)
		}
	}
	// Actions come out ordered by start time.
	for i := 1; i < len(pl2.Actions); i++ {
		if pl2.Actions[i].Start < pl2.Actions[i-1].Start {
			t.Fatalf("actions not sorted by start: %+v", pl2.Actions)
		}
	}
	// A model encoded from scratch reads back the same.
	raw, err := in.EncodeModel()
	if err != nil {
		t.Fatal(err)
	}
	in3, err := btrplace.ReadInstance(bytes.NewReader(append(append([]byte(`{"model":`), raw...), '}')))
	if err != nil {
		t.Fatal(err)
	}
	m1, m3 := in.Problem.Model.Clone(), in3.Problem.Model.Clone()
	for i := range m1.Nodes {
		m1.Nodes[i].Labels = nil // labels are not written back
	}
	if !reflect.DeepEqual(m1, m3) {
		t.Fatalf("EncodeModel round trip:\n got %+v\nwant %+v", m3, m1)
	}
}

func TestReadPlanBadInput(t *testing.T) {
	in, err := btrplace.ReadInstance(bytes.NewReader(readFile(t, "testdata/catalog.json")))
	if err != nil {
		t.Fatal(err)
	}
	b, err := in.EncodePlan(&plan.Plan{Actions: []plan.Action{{Kind: cluster.Migrate, Task: 0, From: 0, To: 1, Start: 0, End: 3}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ from, to, want string }{
		{`"migrateVM"`, `"teleportVM"`, `unknown action id "teleportVM"`},
		{`"to": 1`, `"to": 7`, `key "to": unknown node 7`},
		{`"vm": 0`, `"vm": 70`, "unknown vm 70"},
		{`"start": 0,`, ``, `missing "start"`},
	} {
		src := strings.Replace(string(b), tc.from, tc.to, 1)
		_, _, err := btrplace.ReadPlan(strings.NewReader(src))
		if !errors.Is(err, cluster.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("%s -> %s: got %v, want %q", tc.from, tc.to, err, tc.want)
		}
	}
}

func FuzzReadInstance(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/fuzz/*.json")
	seeds = append(seeds, "testdata/catalog.json")
	for _, s := range seeds {
		f.Add(readFile(f, s))
	}
	// The small instances of the shared BtrPlace corpus, read in place.
	for _, s := range sharedFiles() {
		if st, err := os.Stat(s); err == nil && st.Size() <= 16<<10 {
			f.Add(readFile(f, s))
		}
	}
	f.Add([]byte(`{"model":{"mapping":{"readyVMs":[1],"onlineNodes":{},"offlineNodes":[0]},"attributes":{},"views":[]}}`))
	f.Add([]byte(`{"model":{"mapping":{"readyVMs":[],"onlineNodes":{"0":{"runningVMs":[1],"sleepingVMs":[1]}},"offlineNodes":[]}}}`))
	f.Add([]byte(`{}`))
	f.Add([]byte{0x1f, 0x8b, 0x08})
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := btrplace.ReadInstance(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, cluster.ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if err := in.Problem.Model.Validate(); err != nil {
			t.Fatalf("accepted an invalid model: %v", err)
		}
		b, err := in.EncodePlan(&plan.Plan{})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := btrplace.ReadPlan(bytes.NewReader(b)); err != nil {
			t.Fatalf("cannot read back the plan written for an accepted instance: %v", err)
		}
	})
}

func FuzzReadPlan(f *testing.F) {
	in, err := btrplace.ReadInstance(bytes.NewReader(readFile(f, "testdata/catalog.json")))
	if err != nil {
		f.Fatal(err)
	}
	b, err := in.EncodePlan(&plan.Plan{Actions: []plan.Action{
		{Kind: cluster.Migrate, Task: 0, Node: -1, From: 0, To: 1, Start: 0, End: 3},
		{Kind: cluster.BootNode, Task: -1, Node: 3, From: -1, To: 3, Start: 0, End: 4},
		{Kind: cluster.Boot, Task: 4, Node: -1, From: -1, To: 3, Start: 4, End: 6},
	}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`{"origin":{"mapping":{"readyVMs":[1],"onlineNodes":{"0":{"runningVMs":[],"sleepingVMs":[]}},"offlineNodes":[]}},"actions":[{"id":"bootVM","vm":1,"to":0,"start":0,"end":1,"hooks":{"pre":[]}}]}`))
	f.Add([]byte(`{"origin":{},"actions":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		in, pl, err := btrplace.ReadPlan(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, cluster.ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		// Whatever the actions, the verifier judges them without panicking.
		if _, err := verify.Violations(in.Problem, pl); err != nil {
			t.Fatalf("verifier rejected an accepted origin: %v", err)
		}
		if _, err := in.EncodePlan(pl); err != nil {
			t.Fatalf("cannot write back an accepted plan: %v", err)
		}
	})
}
