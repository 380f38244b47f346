package cluster

// Constraint is a placement or scheduling rule, one of the concrete types
// below (BtrPlace's catalog). A discrete constraint holds in the final state;
// a continuous one at every instant of the plan. Task and node references are
// indices into the Model. Semantics follow BtrPlace's documentation; where
// ferry decides something BtrPlace leaves open, the type's comment says so.
type Constraint interface {
	// Kind is the BtrPlace id ("spread", "ban", ...).
	Kind() string
	// IsContinuous reports whether the rule holds at every instant.
	IsContinuous() bool
}

// Spread: the running tasks are on pairwise distinct nodes. Continuous by
// default in BtrPlace: a task may not arrive on a node before another of the
// set has left it.
type Spread struct {
	Tasks      []int
	Continuous bool
}

// Ban: the tasks may not run on the nodes.
type Ban struct {
	Tasks, Nodes []int
	Continuous   bool
}

// Fence: the tasks may run only on the nodes.
type Fence struct {
	Tasks, Nodes []int
	Continuous   bool
}

// Gather: the running tasks share one node.
type Gather struct {
	Tasks      []int
	Continuous bool
}

// Among: the running tasks are all within one of the node groups.
type Among struct {
	Tasks      []int
	Groups     [][]int
	Continuous bool
}

// Split: running tasks of different groups never share a node.
type Split struct {
	Groups     [][]int
	Continuous bool
}

// SplitAmong: each task group runs within one node group, and distinct task
// groups use distinct node groups.
type SplitAmong struct {
	TaskGroups [][]int
	NodeGroups [][]int
	Continuous bool
}

// Lonely: nodes hosting the tasks host no other running task.
type Lonely struct {
	Tasks      []int
	Continuous bool
}

// Root: the tasks do not move (no migration; they stay on their node).
// Always continuous.
type Root struct {
	Tasks []int
}

// Quarantine: the nodes are sealed: no task arrives, none leaves. Always
// continuous.
type Quarantine struct {
	Nodes []int
}

// StateConstraint fixes the final state of tasks: running, ready, sleeping
// or killed. A task with no state constraint keeps its state.
type StateConstraint struct {
	State TaskState
	Tasks []int
}

// NodeStateConstraint fixes the final state of nodes: online or offline.
type NodeStateConstraint struct {
	State NodeState
	Nodes []int
}

// Preserve reserves at least Amount of Resource for each task while running:
// its demand is raised to Amount.
type Preserve struct {
	Tasks    []int
	Resource string
	Amount   int64
}

// ResourceCapacity: the summed demand on Resource of running tasks on the
// nodes (together) is at most Amount.
type ResourceCapacity struct {
	Nodes      []int
	Resource   string
	Amount     int64
	Continuous bool
}

// RunningCapacity: at most Amount running tasks on the nodes together.
type RunningCapacity struct {
	Nodes      []int
	Amount     int
	Continuous bool
}

// MaxOnline: at most Amount of the nodes are online.
type MaxOnline struct {
	Nodes      []int
	Amount     int
	Continuous bool
}

// Overbook: on each node, Resource's capacity counts Ratio times (>= 1).
type Overbook struct {
	Nodes      []int
	Resource   string
	Ratio      float64
	Continuous bool
}

// Seq: the tasks' actions happen in order: the action of Tasks[i+1] starts
// after that of Tasks[i] ends. Always continuous.
type Seq struct {
	Tasks []int
}

// NoDelay: the task's action starts at time 0. Always continuous.
type NoDelay struct {
	Task int
}

// Kind implementations.
func (Spread) Kind() string           { return "spread" }
func (Ban) Kind() string              { return "ban" }
func (Fence) Kind() string            { return "fence" }
func (Gather) Kind() string           { return "gather" }
func (Among) Kind() string            { return "among" }
func (Split) Kind() string            { return "split" }
func (SplitAmong) Kind() string       { return "splitAmong" }
func (Lonely) Kind() string           { return "lonely" }
func (Root) Kind() string             { return "root" }
func (Quarantine) Kind() string       { return "quarantine" }
func (Preserve) Kind() string         { return "preserve" }
func (ResourceCapacity) Kind() string { return "resourceCapacity" }
func (RunningCapacity) Kind() string  { return "runningCapacity" }
func (MaxOnline) Kind() string        { return "maxOnline" }
func (Overbook) Kind() string         { return "overbook" }
func (Seq) Kind() string              { return "seq" }
func (NoDelay) Kind() string          { return "noDelay" }

// Kind is the BtrPlace id of the state: running, ready, sleeping, killed.
func (c StateConstraint) Kind() string { return c.State.String() }

// Kind is the BtrPlace id of the state: online, offline.
func (c NodeStateConstraint) Kind() string { return c.State.String() }

// IsContinuous implementations.
func (c Spread) IsContinuous() bool            { return c.Continuous }
func (c Ban) IsContinuous() bool               { return c.Continuous }
func (c Fence) IsContinuous() bool             { return c.Continuous }
func (c Gather) IsContinuous() bool            { return c.Continuous }
func (c Among) IsContinuous() bool             { return c.Continuous }
func (c Split) IsContinuous() bool             { return c.Continuous }
func (c SplitAmong) IsContinuous() bool        { return c.Continuous }
func (c Lonely) IsContinuous() bool            { return c.Continuous }
func (Root) IsContinuous() bool                { return true }
func (Quarantine) IsContinuous() bool          { return true }
func (StateConstraint) IsContinuous() bool     { return false }
func (NodeStateConstraint) IsContinuous() bool { return false }
func (Preserve) IsContinuous() bool            { return false }
func (c ResourceCapacity) IsContinuous() bool  { return c.Continuous }
func (c RunningCapacity) IsContinuous() bool   { return c.Continuous }
func (c MaxOnline) IsContinuous() bool         { return c.Continuous }
func (c Overbook) IsContinuous() bool          { return c.Continuous }
func (Seq) IsContinuous() bool                 { return true }
func (NoDelay) IsContinuous() bool             { return true }
