package controller

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// ErrSpec marks a job spec that cannot be accepted. Errors are *SpecError
// values naming the line and the field.
var ErrSpec = errors.New("invalid job spec")

// SpecError names where a job spec is wrong.
type SpecError struct {
	Line  int    // 1-based line in the spec file, 0 when unknown
	Field string // path such as tasks[1].memory
	Msg   string
}

func (e *SpecError) Error() string {
	loc := ""
	if e.Line > 0 {
		loc = fmt.Sprintf("line %d: ", e.Line)
	}
	if e.Field != "" {
		loc += e.Field + ": "
	}
	return loc + e.Msg
}

// Unwrap makes errors.Is(err, ErrSpec) true.
func (e *SpecError) Unwrap() error { return ErrSpec }

// JobSpec is what an operator submits: a job (Entropy's vjob) of task groups
// that run, sleep and wake together.
type JobSpec struct {
	Name     string `json:"name"`
	Priority int    `json:"priority"`
	// Preemptible jobs may be suspended for higher-priority ones (default true).
	Preemptible bool           `json:"preemptible"`
	Tasks       []TaskSpec     `json:"tasks"`
	Constraints Constraints    `json:"constraints"`
	Checkpoint  CheckpointSpec `json:"checkpoint"`
	Migration   MigrationSpec  `json:"migration"`
}

// TaskSpec is a group of Count identical tasks.
type TaskSpec struct {
	Name   string `json:"name"`
	Driver string `json:"driver"` // qemu or process
	// Process: the command and its environment.
	Command []string          `json:"command,omitempty"`
	Env     map[string]string `json:"env,omitempty"`
	// QEMU: the guest image (kernel path, or "" / "default" for the node's
	// default guest) and the workload its init runs.
	Image    string `json:"image,omitempty"`
	Initrd   string `json:"initrd,omitempty"`
	Workload string `json:"workload,omitempty"`
	// CPUMilli (from cpus: 0.5 → 500) and MemoryBytes (from memory: 256MiB).
	CPUMilli    int64 `json:"cpu_milli"`
	MemoryBytes int64 `json:"memory_bytes"`
	Count       int   `json:"count"`
}

// Constraints are placement rules for the job's tasks.
type Constraints struct {
	// Spread: the job's tasks on distinct nodes.
	Spread bool `json:"spread,omitempty"`
	// Gather: the job's tasks on one node.
	Gather bool `json:"gather,omitempty"`
	// Lonely: nodes hosting the job host nothing else.
	Lonely bool `json:"lonely,omitempty"`
	// Pinned: the tasks run only on this node.
	Pinned string `json:"pinned,omitempty"`
	// Fence: only nodes whose labels match all of these.
	Fence map[string]string `json:"fence,omitempty"`
	// Ban: never nodes whose labels match all of these.
	Ban map[string]string `json:"ban,omitempty"`
}

// CheckpointSpec tunes cooperative checkpointing of process tasks.
type CheckpointSpec struct {
	Interval time.Duration `json:"interval,omitempty"`
	Timeout  time.Duration `json:"timeout,omitempty"`
	Signal   string        `json:"signal,omitempty"`
	ExitCode int           `json:"exit_code,omitempty"`
}

// MigrationSpec says how the job may move.
type MigrationSpec struct {
	// Live allows live migration (default true); otherwise moves go by
	// suspend and resume.
	Live        bool          `json:"live"`
	MaxDowntime time.Duration `json:"max_downtime,omitempty"`
	// Bandwidth limit in bytes per second (0 unlimited).
	Bandwidth int64 `json:"bandwidth,omitempty"`
}

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_-]{0,62}$`)

// Limits on a spec, so a bad spec cannot make the controller allocate much.
const (
	maxTasksPerJob = 10000
	maxSpecBytes   = 1 << 20
)

// ParseSpec parses a job spec in YAML (or JSON, which YAML accepts) and
// validates it. Errors are *SpecError values naming the line and field.
func ParseSpec(data []byte) (*JobSpec, error) {
	if len(data) > maxSpecBytes {
		return nil, &SpecError{Msg: fmt.Sprintf("spec is %d bytes, the limit is %d", len(data), maxSpecBytes)}
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, yamlError(err)
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, &SpecError{Line: 1, Msg: "empty spec"}
	}
	root := doc.Content[0]
	p := &parser{}
	spec := JobSpec{Preemptible: true, Migration: MigrationSpec{Live: true}}
	nameLine := root.Line
	p.mapping(root, "", func(key string, k, v *yaml.Node) {
		switch key {
		case "name":
			spec.Name = p.str(v, key)
			nameLine = v.Line
		case "priority":
			spec.Priority = int(p.int(v, key, -1000000, 1000000))
		case "preemptible":
			spec.Preemptible = p.bool(v, key)
		case "tasks":
			p.seq(v, key, func(i int, item *yaml.Node) {
				spec.Tasks = append(spec.Tasks, p.task(item, fmt.Sprintf("tasks[%d]", i)))
			})
		case "constraints":
			spec.Constraints = p.constraints(v, key)
		case "checkpoint":
			p.mapping(v, key, func(f string, _, v *yaml.Node) {
				path := key + "." + f
				switch f {
				case "interval":
					spec.Checkpoint.Interval = p.duration(v, path)
				case "timeout":
					spec.Checkpoint.Timeout = p.duration(v, path)
				case "signal":
					spec.Checkpoint.Signal = p.str(v, path)
					if sig := spec.Checkpoint.Signal; sig != "" && !strings.HasPrefix(sig, "SIG") {
						p.fail(v, path, "signal %q: want a name such as SIGUSR2", sig)
					}
				case "exit_code":
					spec.Checkpoint.ExitCode = int(p.int(v, path, 1, 255))
				default:
					p.unknown(v, path)
				}
			})
		case "migration":
			p.mapping(v, key, func(f string, _, v *yaml.Node) {
				path := key + "." + f
				switch f {
				case "live":
					spec.Migration.Live = p.bool(v, path)
				case "max_downtime":
					spec.Migration.MaxDowntime = p.duration(v, path)
				case "bandwidth":
					spec.Migration.Bandwidth = p.size(v, path)
				default:
					p.unknown(v, path)
				}
			})
		default:
			p.unknown(k, key)
		}
	})
	if p.err != nil {
		return nil, p.err
	}
	if spec.Name == "" {
		return nil, &SpecError{Line: nameLine, Field: "name", Msg: "a job needs a name"}
	}
	if !nameRE.MatchString(spec.Name) {
		return nil, &SpecError{Line: nameLine, Field: "name", Msg: fmt.Sprintf("%q: want 1-63 letters, digits, '-' or '_'", spec.Name)}
	}
	if len(spec.Tasks) == 0 {
		return nil, &SpecError{Line: root.Line, Field: "tasks", Msg: "a job needs at least one task"}
	}
	total := 0
	seen := map[string]int{}
	for i, t := range spec.Tasks {
		if l, dup := seen[t.Name]; dup {
			return nil, &SpecError{Line: p.lines[fmt.Sprintf("tasks[%d]", i)], Field: fmt.Sprintf("tasks[%d].name", i), Msg: fmt.Sprintf("task %q is already defined at line %d", t.Name, l)}
		}
		seen[t.Name] = p.lines[fmt.Sprintf("tasks[%d]", i)]
		total += t.Count
	}
	if total > maxTasksPerJob {
		return nil, &SpecError{Line: root.Line, Field: "tasks", Msg: fmt.Sprintf("%d tasks in one job, the limit is %d", total, maxTasksPerJob)}
	}
	if spec.Constraints.Gather && spec.Constraints.Spread && total > 1 {
		return nil, &SpecError{Line: p.lines["constraints"], Field: "constraints", Msg: "spread and gather cannot both hold for more than one task"}
	}
	return &spec, nil
}

func (p *parser) task(n *yaml.Node, path string) TaskSpec {
	t := TaskSpec{Count: 1}
	if p.lines == nil {
		p.lines = map[string]int{}
	}
	p.lines[path] = n.Line
	var cpuSet, memSet bool
	p.mapping(n, path, func(f string, _, v *yaml.Node) {
		fp := path + "." + f
		switch f {
		case "name":
			t.Name = p.str(v, fp)
			if !nameRE.MatchString(t.Name) {
				p.fail(v, fp, "%q: want 1-63 letters, digits, '-' or '_'", t.Name)
			}
		case "driver":
			t.Driver = p.str(v, fp)
			if t.Driver != "qemu" && t.Driver != "process" {
				p.fail(v, fp, "driver %q: want qemu or process", t.Driver)
			}
		case "command":
			if v.Kind == yaml.ScalarNode {
				t.Command = []string{"/bin/sh", "-c", p.str(v, fp)}
			} else {
				p.seq(v, fp, func(i int, item *yaml.Node) { t.Command = append(t.Command, p.str(item, fmt.Sprintf("%s[%d]", fp, i))) })
			}
		case "env":
			t.Env = p.labels(v, fp)
		case "image":
			t.Image = p.str(v, fp)
		case "initrd":
			t.Initrd = p.str(v, fp)
		case "workload":
			t.Workload = p.str(v, fp)
		case "cpus":
			c := p.float(v, fp)
			if p.err == nil && (c <= 0 || c > 1024) {
				p.fail(v, fp, "%v: want more than 0 and at most 1024", c)
			}
			t.CPUMilli = int64(math.Round(c * 1000))
			if p.err == nil && t.CPUMilli < 1 {
				p.fail(v, fp, "%v: want at least 0.001", c)
			}
			cpuSet = true
		case "memory":
			t.MemoryBytes = p.size(v, fp)
			if p.err == nil && t.MemoryBytes < 1<<20 {
				p.fail(v, fp, "%d bytes: want at least 1MiB", t.MemoryBytes)
			}
			memSet = true
		case "count":
			t.Count = int(p.int(v, fp, 1, maxTasksPerJob))
		default:
			p.unknown(v, fp)
		}
	})
	if p.err != nil {
		return t
	}
	switch {
	case t.Name == "":
		p.fail(n, path+".name", "a task needs a name")
	case t.Driver == "":
		p.fail(n, path+".driver", "a task needs a driver (qemu or process)")
	case !cpuSet:
		p.fail(n, path+".cpus", "a task needs cpus")
	case !memSet:
		p.fail(n, path+".memory", "a task needs memory")
	case t.Driver == "process" && len(t.Command) == 0:
		p.fail(n, path+".command", "a process task needs a command")
	case t.Driver == "process" && t.Image != "":
		p.fail(n, path+".image", "a process task has no image (use command)")
	case t.Driver == "qemu" && len(t.Command) > 0:
		p.fail(n, path+".command", "a qemu task has no command (use image and workload)")
	}
	return t
}

func (p *parser) constraints(n *yaml.Node, path string) Constraints {
	var c Constraints
	if p.lines == nil {
		p.lines = map[string]int{}
	}
	p.lines[path] = n.Line
	p.mapping(n, path, func(f string, _, v *yaml.Node) {
		fp := path + "." + f
		switch f {
		case "spread":
			c.Spread = p.bool(v, fp)
		case "gather":
			c.Gather = p.bool(v, fp)
		case "lonely":
			c.Lonely = p.bool(v, fp)
		case "pinned":
			c.Pinned = p.str(v, fp)
		case "fence":
			c.Fence = p.labels(v, fp)
		case "ban":
			c.Ban = p.labels(v, fp)
		default:
			p.unknown(v, fp)
		}
	})
	return c
}

// parser walks a yaml.Node tree, keeping the first error.
type parser struct {
	err   *SpecError
	lines map[string]int
}

func (p *parser) fail(n *yaml.Node, field, format string, a ...any) {
	if p.err == nil {
		p.err = &SpecError{Line: n.Line, Field: field, Msg: fmt.Sprintf(format, a...)}
	}
}

func (p *parser) unknown(n *yaml.Node, field string) {
	p.fail(n, field, "unknown field")
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	case yaml.AliasNode:
		return "an alias"
	}
	return "nothing"
}

func (p *parser) mapping(n *yaml.Node, path string, each func(key string, k, v *yaml.Node)) {
	if p.err != nil {
		return
	}
	if n.Kind != yaml.MappingNode {
		p.fail(n, path, "want a mapping, got %s", kindName(n))
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content) && p.err == nil; i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		field := k.Value
		if path != "" {
			field = path + "." + k.Value
		}
		if k.Kind != yaml.ScalarNode {
			p.fail(k, path, "keys must be plain names")
			return
		}
		if seen[k.Value] {
			p.fail(k, field, "set twice")
			return
		}
		seen[k.Value] = true
		each(k.Value, k, v)
	}
}

func (p *parser) seq(n *yaml.Node, path string, each func(int, *yaml.Node)) {
	if p.err != nil {
		return
	}
	if n.Kind != yaml.SequenceNode {
		p.fail(n, path, "want a list, got %s", kindName(n))
		return
	}
	for i, item := range n.Content {
		if p.err != nil {
			return
		}
		each(i, item)
	}
}

func (p *parser) scalar(n *yaml.Node, path string) (string, bool) {
	if p.err != nil {
		return "", false
	}
	if n.Kind != yaml.ScalarNode {
		p.fail(n, path, "want a value, got %s", kindName(n))
		return "", false
	}
	return n.Value, true
}

func (p *parser) str(n *yaml.Node, path string) string {
	s, _ := p.scalar(n, path)
	return s
}

func (p *parser) bool(n *yaml.Node, path string) bool {
	s, ok := p.scalar(n, path)
	if !ok {
		return false
	}
	switch strings.ToLower(s) {
	case "true", "yes", "on":
		return true
	case "false", "no", "off":
		return false
	}
	p.fail(n, path, "%q: want true or false", s)
	return false
}

func (p *parser) int(n *yaml.Node, path string, lo, hi int64) int64 {
	s, ok := p.scalar(n, path)
	if !ok {
		return 0
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		p.fail(n, path, "%q: want a whole number", s)
		return 0
	}
	if v < lo || v > hi {
		p.fail(n, path, "%d: want %d to %d", v, lo, hi)
		return 0
	}
	return v
}

func (p *parser) float(n *yaml.Node, path string) float64 {
	s, ok := p.scalar(n, path)
	if !ok {
		return 0
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		p.fail(n, path, "%q: want a number", s)
		return 0
	}
	return v
}

func (p *parser) duration(n *yaml.Node, path string) time.Duration {
	s, ok := p.scalar(n, path)
	if !ok {
		return 0
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		p.fail(n, path, "%q: want a duration such as 300ms or 30s", s)
		return 0
	}
	return d
}

var units = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1000}, {"MB", 1000000}, {"GB", 1000000000}, {"TB", 1000000000000},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"B", 1},
}

// ParseSize reads a byte size: a whole number with an optional unit (B,
// KiB, MiB, GiB, TiB; KB, MB, GB, TB; K, M, G, T as binary).
func ParseSize(s string) (int64, error) {
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range units {
		if strings.HasSuffix(num, u.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(num, u.suffix)), u.mult
			break
		}
	}
	v, err := strconv.ParseInt(num, 10, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%q: want a size such as 512MiB or 2GiB", s)
	}
	if v > math.MaxInt64/mult {
		return 0, fmt.Errorf("%q: too large", s)
	}
	return v * mult, nil
}

func (p *parser) size(n *yaml.Node, path string) int64 {
	s, ok := p.scalar(n, path)
	if !ok {
		return 0
	}
	v, err := ParseSize(s)
	if err != nil {
		p.fail(n, path, "%v", err)
	}
	return v
}

func (p *parser) labels(n *yaml.Node, path string) map[string]string {
	m := map[string]string{}
	p.mapping(n, path, func(k string, _, v *yaml.Node) {
		m[k] = p.str(v, path+"."+k)
	})
	return m
}

var yamlLineRE = regexp.MustCompile(`line (\d+)`)

// yamlError turns a YAML syntax error into a SpecError with its line.
func yamlError(err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = strings.TrimSpace(yamlLineRE.ReplaceAllString(msg, ""))
		msg = strings.TrimPrefix(msg, ": ")
	}
	return &SpecError{Line: line, Msg: "syntax: " + msg}
}
