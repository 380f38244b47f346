package workload

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"

	"gopkg.in/yaml.v3"
)

// Scenario is the hand-made workload format (YAML, or JSON which is YAML):
//
//	name: two-jobs
//	nodes: {count: 2, cpu: 2, memory_mib: 4096}
//	durations: {disk_mbps: 100, net_mbps: 117, latency: 1, boot: 1, shutdown: 1}
//	soft: [cpu]            # optional: resources whose demand may exceed capacity
//	jobs:
//	  - {name: a, submit: 0, tasks: 2, cpu: 1, memory_mib: 512, work: 100, walltime: 120}
//	  - {name: b, submit: 5, ngb: HC}  # an NGB vjob of 9 VMs (ED, HC, VP, MB)
//	  - {name: c, submit: 9, count: 3, tasks: 1, work: 50}  # c-1, c-2, c-3
type Scenario struct {
	Name  string `yaml:"name"`
	Nodes struct {
		Count     int   `yaml:"count"`
		CPU       int64 `yaml:"cpu"`
		MemoryMiB int64 `yaml:"memory_mib"`
	} `yaml:"nodes"`
	Durations struct {
		DiskMBps int64 `yaml:"disk_mbps"`
		NetMBps  int64 `yaml:"net_mbps"`
		Latency  int64 `yaml:"latency"`
		Boot     int64 `yaml:"boot"`
		Shutdown int64 `yaml:"shutdown"`
	} `yaml:"durations"`
	Soft []string      `yaml:"soft"`
	Jobs []ScenarioJob `yaml:"jobs"`
}

// ScenarioJob is one job line of a Scenario.
type ScenarioJob struct {
	Name      string `yaml:"name"`
	Submit    int64  `yaml:"submit"`
	Count     int    `yaml:"count"`
	Tasks     int    `yaml:"tasks"`
	CPU       int64  `yaml:"cpu"`
	MemoryMiB int64  `yaml:"memory_mib"`
	Work      int64  `yaml:"work"`
	Walltime  int64  `yaml:"walltime"`
	Priority  int    `yaml:"priority"`
	NGB       string `yaml:"ngb"`
	// Pinned jobs are neither preemptible nor migratable.
	Pinned bool `yaml:"pinned"`
}

// ParseScenario reads a scenario; errors wrap ErrInvalid and name the
// element (job index and name, field).
func ParseScenario(r io.Reader) (*Workload, error) {
	b, err := io.ReadAll(io.LimitReader(r, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("%w: reading scenario: %v", ErrInvalid, err)
	}
	var s Scenario
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("%w: scenario: %v", ErrInvalid, err)
	}
	return s.Workload()
}

// Workload converts a Scenario, filling defaults: 1 cpu and 1024 MiB per
// task, 2 cpu and 4096 MiB per node, SWF action costs.
func (s *Scenario) Workload() (*Workload, error) {
	if s.Nodes.Count <= 0 || s.Nodes.Count > 10000 {
		return nil, fmt.Errorf("%w: nodes.count %d must be in 1..10000", ErrInvalid, s.Nodes.Count)
	}
	w := &Workload{Name: s.Name, Resources: []string{"cpu", "memory"}, Durations: SWFDurations(), Soft: s.Soft}
	if w.Name == "" {
		w.Name = "scenario"
	}
	d := &w.Durations
	if s.Durations.DiskMBps > 0 {
		d.DiskBandwidth = s.Durations.DiskMBps * 1_000_000
	}
	if s.Durations.NetMBps > 0 {
		d.NetBandwidth = s.Durations.NetMBps * 1_000_000
	}
	if s.Durations.Latency > 0 {
		d.Latency = s.Durations.Latency
	}
	if s.Durations.Boot > 0 {
		d.BootTask = s.Durations.Boot
	}
	if s.Durations.Shutdown > 0 {
		d.ShutdownTask = s.Durations.Shutdown
	}
	cpu, mem := s.Nodes.CPU, s.Nodes.MemoryMiB
	if cpu <= 0 {
		cpu = 2
	}
	if mem <= 0 {
		mem = 4096
	}
	for i := range s.Nodes.Count {
		w.Nodes = append(w.Nodes, Node{Name: fmt.Sprintf("n%d", i+1), Capacity: []int64{cpu, mem * MiB}})
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i, sj := range s.Jobs {
		if sj.Name == "" {
			return nil, fmt.Errorf("%w: job %d: no name", ErrInvalid, i)
		}
		if sj.Count < 0 || sj.Count > 100000 || sj.Submit < 0 || sj.Work < 0 || sj.Walltime < 0 || sj.CPU < 0 || sj.MemoryMiB < 0 {
			return nil, fmt.Errorf("%w: job %d (%s): negative or huge value", ErrInvalid, i, sj.Name)
		}
		n := max(sj.Count, 1)
		for k := range n {
			name := sj.Name
			if sj.Count > 0 {
				name = fmt.Sprintf("%s-%d", sj.Name, k+1)
			}
			var j Job
			if sj.NGB != "" {
				if !slices.Contains(NGBKinds(), sj.NGB) {
					return nil, fmt.Errorf("%w: job %d (%s): ngb %q is not one of %v", ErrInvalid, i, sj.Name, sj.NGB, NGBKinds())
				}
				j = NGBJob(name, sj.NGB, sj.Submit, rng)
			} else {
				c, m := sj.CPU, sj.MemoryMiB
				if c == 0 {
					c = 1
				}
				if m == 0 {
					m = 1024
				}
				j = Job{Name: name, Submit: sj.Submit, Tasks: sj.Tasks, Demand: []int64{c, m * MiB}, Work: sj.Work, Walltime: sj.Walltime, Kind: "scenario"}
				if j.Tasks == 0 {
					j.Tasks = 1
				}
			}
			j.Priority = sj.Priority
			j.Preemptible, j.Migratable = !sj.Pinned, !sj.Pinned
			w.Jobs = append(w.Jobs, j)
		}
	}
	sortJobs(w.Jobs)
	if err := w.Validate(); err != nil {
		return nil, err
	}
	return w, nil
}
