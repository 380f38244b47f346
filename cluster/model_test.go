package cluster

import (
	"errors"
	"strings"
	"testing"
)

func twoNodeModel() *Model {
	return &Model{
		Resources: []string{"cpu", "memory"},
		Nodes: []Node{
			{Name: "n1", Capacity: []int64{4, 8 << 30}},
			{Name: "n2", Capacity: []int64{4, 8 << 30}},
			{Name: "n3", State: NodeOffline, Capacity: []int64{4, 8 << 30}},
		},
		Tasks: []Task{
			{Name: "a", State: Running, Node: 0, Demand: []int64{2, 1 << 30}},
			{Name: "b", State: Sleeping, Node: 1, Demand: []int64{1, 2 << 30}},
			{Name: "c", State: Ready, Node: NoNode, Demand: []int64{1, 1 << 30}},
		},
	}
}

func TestValidateAcceptsConsistentModel(t *testing.T) {
	if err := twoNodeModel().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestValidateNamesTheFaultyElement(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(m *Model)
		want   string
	}{
		{"duplicate node", func(m *Model) { m.Nodes[1].Name = "n1" }, `node "n1" declared twice`},
		{"duplicate task", func(m *Model) { m.Tasks[1].Name = "a" }, `task "a" declared twice`},
		{"negative capacity", func(m *Model) { m.Nodes[0].Capacity[1] = -1 }, `node "n1": negative capacity -1 for "memory"`},
		{"negative demand", func(m *Model) { m.Tasks[2].Demand[0] = -3 }, `task "c": negative demand -3 for "cpu"`},
		{"short demand", func(m *Model) { m.Tasks[0].Demand = []int64{1} }, `task "a": 1 demands for 2 resources`},
		{"ready but placed", func(m *Model) { m.Tasks[2].Node = 0 }, `task "c" is ready but placed`},
		{"running nowhere", func(m *Model) { m.Tasks[0].Node = 7 }, `task "a" is running on unknown node 7`},
		{"running on offline", func(m *Model) { m.Tasks[0].Node = 2 }, `task "a" is running on offline node "n3"`},
		{"negative duration", func(m *Model) { m.Tasks[0].Durations = map[ActionKind]int64{Migrate: -1} }, `task "a": negative duration -1 for migrate`},
		{"duplicate resource", func(m *Model) { m.Resources[1] = "cpu" }, `resource "cpu" declared twice`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := twoNodeModel()
			c.mutate(m)
			err := m.Validate()
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("got %v, want ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not name %q", err, c.want)
			}
		})
	}
}

func TestCloneIsDeep(t *testing.T) {
	m := twoNodeModel()
	m.Nodes[0].Labels = map[string]string{"rack": "r1"}
	c := m.Clone()
	c.Nodes[0].Capacity[0] = 99
	c.Nodes[0].Labels["rack"] = "r9"
	c.Tasks[0].Demand[0] = 99
	if m.Nodes[0].Capacity[0] != 4 || m.Nodes[0].Labels["rack"] != "r1" || m.Tasks[0].Demand[0] != 2 {
		t.Fatal("clone shares memory with the original")
	}
}

func TestUsageCountsRunningTasksOnly(t *testing.T) {
	u := twoNodeModel().Usage()
	if u[0][0] != 2 || u[1][0] != 0 {
		t.Fatalf("usage = %v", u)
	}
}

func TestAttrDurations(t *testing.T) {
	m := twoNodeModel()
	m.Tasks[0].Durations = map[ActionKind]int64{Migrate: 7}
	m.Nodes[2].Durations = map[ActionKind]int64{BootNode: 12}
	d := AttrDurations{}
	if got := d.Duration(m, Migrate, 0, 0, 1); got != 7 {
		t.Errorf("migrate a = %d, want 7", got)
	}
	if got := d.Duration(m, Migrate, 2, 0, 1); got != 1 {
		t.Errorf("migrate c = %d, want default 1", got)
	}
	if got := d.Duration(m, BootNode, -1, NoNode, 2); got != 12 {
		t.Errorf("bootNode n3 = %d, want 12", got)
	}
	if got := (AttrDurations{Default: 3}).Duration(m, Boot, 2, NoNode, 0); got != 3 {
		t.Errorf("boot with default 3 = %d", got)
	}
}

func TestBandwidthDurations(t *testing.T) {
	m := twoNodeModel()
	b := BandwidthDurations{Memory: "memory", NetBandwidth: 1 << 30, DiskBandwidth: 1 << 29, Latency: 1, BootTask: 5}
	// a: 1 GiB: migrate = 1 + 1, suspend = 1 + 2, remote resume = 1 + 2 + 1.
	if got := b.Duration(m, Migrate, 0, 0, 1); got != 2 {
		t.Errorf("migrate = %d, want 2", got)
	}
	if got := b.Duration(m, Suspend, 0, 0, 0); got != 3 {
		t.Errorf("suspend = %d, want 3", got)
	}
	if got := b.Duration(m, Resume, 0, 0, 1); got != 4 {
		t.Errorf("remote resume = %d, want 4", got)
	}
	if got := b.Duration(m, Resume, 0, 0, 0); got != 3 {
		t.Errorf("local resume = %d, want 3", got)
	}
	if got := b.Duration(m, Boot, 2, NoNode, 0); got != 5 {
		t.Errorf("boot = %d, want 5", got)
	}
	m.Tasks[0].Durations = map[ActionKind]int64{Migrate: 40}
	if got := b.Duration(m, Migrate, 0, 0, 1); got != 40 {
		t.Errorf("override = %d, want 40", got)
	}
}

func TestParseRoundTrips(t *testing.T) {
	for _, k := range ActionKinds() {
		got, err := ParseActionKind(k.String())
		if err != nil || got != k {
			t.Errorf("ParseActionKind(%q) = %v, %v", k, got, err)
		}
	}
	for _, s := range []TaskState{Ready, Running, Sleeping, Killed} {
		got, err := ParseTaskState(s.String())
		if err != nil || got != s {
			t.Errorf("ParseTaskState(%q) = %v, %v", s, got, err)
		}
	}
	if _, err := ParseActionKind("teleport"); !errors.Is(err, ErrInvalid) {
		t.Errorf("unknown kind: %v", err)
	}
}
