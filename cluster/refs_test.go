package cluster

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"reflect"
	"slices"
	"testing"

	"pgregory.net/rapid"
)

// catalog has one constraint of every type, with distinct indices so each
// field's place in TaskRefs / NodeGroups is visible.
var catalog = []struct {
	c            Constraint
	tasks, nodes []int
	onlyNamed    bool
}{
	{Spread{Tasks: []int{1, 2}}, []int{1, 2}, nil, true},
	{Ban{Tasks: []int{3}, Nodes: []int{4, 5}}, []int{3}, []int{4, 5}, true},
	{Fence{Tasks: []int{6, 7}, Nodes: []int{8}}, []int{6, 7}, []int{8}, true},
	{Gather{Tasks: []int{9}}, []int{9}, nil, true},
	{Among{Tasks: []int{10}, Groups: [][]int{{11, 12}, {13}}}, []int{10}, []int{11, 12, 13}, true},
	{Split{Groups: [][]int{{14}, {15, 16}}}, []int{14, 15, 16}, nil, true},
	{SplitAmong{TaskGroups: [][]int{{17}, {18}}, NodeGroups: [][]int{{19}, {20, 21}}}, []int{17, 18}, []int{19, 20, 21}, true},
	{Lonely{Tasks: []int{22}}, []int{22}, nil, false},
	{Root{Tasks: []int{23}}, []int{23}, nil, true},
	{Quarantine{Nodes: []int{24}}, nil, []int{24}, false},
	{StateConstraint{State: Sleeping, Tasks: []int{25, 26}}, []int{25, 26}, nil, true},
	{NodeStateConstraint{State: NodeOffline, Nodes: []int{27}}, nil, []int{27}, false},
	{Preserve{Tasks: []int{28}, Resource: "cpu", Amount: 2}, []int{28}, nil, true},
	{ResourceCapacity{Nodes: []int{29}, Resource: "cpu", Amount: 3}, nil, []int{29}, false},
	{RunningCapacity{Nodes: []int{30, 31}, Amount: 1}, nil, []int{30, 31}, false},
	{MaxOnline{Nodes: []int{32}, Amount: 1}, nil, []int{32}, false},
	{Overbook{Nodes: []int{33}, Resource: "cpu", Ratio: 2}, nil, []int{33}, false},
	{Seq{Tasks: []int{34, 35}}, []int{34, 35}, nil, true},
	{NoDelay{Task: 36}, []int{36}, nil, true},
}

func TestRefsOfEveryConstraintType(t *testing.T) {
	for _, k := range catalog {
		if got := TaskRefs(k.c); !slices.Equal(got, k.tasks) {
			t.Errorf("TaskRefs(%s) = %v, want %v", k.c.Kind(), got, k.tasks)
		}
		if got := nodeRefs(k.c); !slices.Equal(got, k.nodes) {
			t.Errorf("nodeRefs(%s) = %v, want %v", k.c.Kind(), got, k.nodes)
		}
		if got := ConstrainsOnlyNamedTasks(k.c); got != k.onlyNamed {
			t.Errorf("ConstrainsOnlyNamedTasks(%s) = %v", k.c.Kind(), got)
		}
	}
	// A pointer or foreign type references nothing and is not remapped.
	if TaskRefs(&Spread{Tasks: []int{1}}) != nil || nodeRefs(&Ban{Nodes: []int{1}}) != nil {
		t.Error("a pointer constraint has refs")
	}
}

// TestGroupsListTheRefsWithoutCopying: TaskGroups / NodeGroups hold the
// catalog's references, in field order, and share the constraint's own
// slices.
func TestGroupsListTheRefsWithoutCopying(t *testing.T) {
	for _, k := range catalog {
		if got := slices.Concat(TaskGroups(k.c)...); !slices.Equal(got, k.tasks) {
			t.Errorf("TaskGroups(%s) = %v, want %v", k.c.Kind(), got, k.tasks)
		}
		if got := slices.Concat(NodeGroups(k.c)...); !slices.Equal(got, k.nodes) {
			t.Errorf("NodeGroups(%s) = %v, want %v", k.c.Kind(), got, k.nodes)
		}
	}
	big := Among{Tasks: []int{1}, Groups: [][]int{make([]int, 1000), make([]int, 1000)}}
	if gs := NodeGroups(big); len(gs) != 2 || &gs[0][0] != &big.Groups[0][0] {
		t.Error("NodeGroups copied an among constraint's groups")
	}
	if gs := TaskGroups(big); len(gs) != 1 || &gs[0][0] != &big.Tasks[0] {
		t.Error("TaskGroups copied an among constraint's tasks")
	}
}

// TestCatalogCoversEveryType parses constraint.go: every type with a Kind
// method must be in the catalog above, so a new constraint type cannot be
// added without saying what it references.
func TestCatalogCoversEveryType(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "constraint.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, k := range catalog {
		have[reflect.TypeOf(k.c).Name()] = true
	}
	n := 0
	for _, d := range f.Decls {
		fn, ok := d.(*ast.FuncDecl)
		if !ok || fn.Recv == nil || fn.Name.Name != "Kind" {
			continue
		}
		typ := fn.Recv.List[0].Type
		if st, ok := typ.(*ast.StarExpr); ok {
			typ = st.X
		}
		name := typ.(*ast.Ident).Name
		n++
		if !have[name] {
			t.Errorf("constraint type %s is not in the refs catalog test", name)
		}
	}
	if n != len(catalog) {
		t.Errorf("constraint.go has %d types, the catalog %d", n, len(catalog))
	}
}

func ints(t *rapid.T, label string) []int {
	return rapid.SliceOfN(rapid.IntRange(0, 50), 0, 5).Draw(t, label)
}

func groups(t *rapid.T, label string) [][]int {
	return rapid.SliceOfN(rapid.SliceOfN(rapid.IntRange(0, 50), 0, 4), 0, 3).Draw(t, label)
}

// genConstraint draws a constraint of any type with random indices.
func genConstraint(t *rapid.T) Constraint {
	cont := rapid.Bool().Draw(t, "continuous")
	switch rapid.IntRange(0, len(catalog)-1).Draw(t, "kind") {
	case 0:
		return Spread{Tasks: ints(t, "tasks"), Continuous: cont}
	case 1:
		return Ban{Tasks: ints(t, "tasks"), Nodes: ints(t, "nodes"), Continuous: cont}
	case 2:
		return Fence{Tasks: ints(t, "tasks"), Nodes: ints(t, "nodes"), Continuous: cont}
	case 3:
		return Gather{Tasks: ints(t, "tasks"), Continuous: cont}
	case 4:
		return Among{Tasks: ints(t, "tasks"), Groups: groups(t, "groups"), Continuous: cont}
	case 5:
		return Split{Groups: groups(t, "groups"), Continuous: cont}
	case 6:
		return SplitAmong{TaskGroups: groups(t, "taskGroups"), NodeGroups: groups(t, "nodeGroups"), Continuous: cont}
	case 7:
		return Lonely{Tasks: ints(t, "tasks"), Continuous: cont}
	case 8:
		return Root{Tasks: ints(t, "tasks")}
	case 9:
		return Quarantine{Nodes: ints(t, "nodes")}
	case 10:
		return StateConstraint{State: TaskState(rapid.IntRange(0, 3).Draw(t, "state")), Tasks: ints(t, "tasks")}
	case 11:
		return NodeStateConstraint{State: NodeOffline, Nodes: ints(t, "nodes")}
	case 12:
		return Preserve{Tasks: ints(t, "tasks"), Resource: "memory", Amount: 5}
	case 13:
		return ResourceCapacity{Nodes: ints(t, "nodes"), Resource: "cpu", Amount: 4, Continuous: cont}
	case 14:
		return RunningCapacity{Nodes: ints(t, "nodes"), Amount: 2, Continuous: cont}
	case 15:
		return MaxOnline{Nodes: ints(t, "nodes"), Amount: 1, Continuous: cont}
	case 16:
		return Overbook{Nodes: ints(t, "nodes"), Resource: "cpu", Ratio: 1.5, Continuous: cont}
	case 17:
		return Seq{Tasks: ints(t, "tasks")}
	default:
		return NoDelay{Task: rapid.IntRange(0, 50).Draw(t, "task")}
	}
}

func TestRemapTasksProperties(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		c := genConstraint(t)
		before := fmt.Sprintf("%#v", c)
		shift := rapid.IntRange(1, 1000).Draw(t, "shift")
		to := func(x int) int { return 3*x + shift }
		r := RemapTasks(c, to)
		// Every task reference is mapped, in place; nodes are untouched.
		want := TaskRefs(c)
		got := TaskRefs(r)
		if len(got) != len(want) {
			t.Fatalf("%s: %d task refs after remap, %d before", c.Kind(), len(got), len(want))
		}
		for i := range want {
			if got[i] != to(want[i]) {
				t.Fatalf("%s: ref %d is %d, want %d", c.Kind(), i, got[i], to(want[i]))
			}
		}
		if !slices.Equal(nodeRefs(r), nodeRefs(c)) {
			t.Fatalf("%s: node refs changed: %v -> %v", c.Kind(), nodeRefs(c), nodeRefs(r))
		}
		if r.Kind() != c.Kind() || r.IsContinuous() != c.IsContinuous() || ConstrainsOnlyNamedTasks(r) != ConstrainsOnlyNamedTasks(c) {
			t.Fatalf("%s: remap changed the constraint's kind or flags", c.Kind())
		}
		// The original is not modified (no shared slices written).
		if after := fmt.Sprintf("%#v", c); after != before {
			t.Fatalf("remap modified its input:\n%s\n%s", before, after)
		}
		// The identity remap gives an equal constraint.
		if id := RemapTasks(c, func(x int) int { return x }); !reflect.DeepEqual(id, c) {
			t.Fatalf("identity remap: %#v != %#v", id, c)
		}
	})
}

// nodeRefs flattens NodeGroups, for comparisons.
func nodeRefs(c Constraint) []int { return slices.Concat(NodeGroups(c)...) }
