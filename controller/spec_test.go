package controller

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const goodSpec = `# a batch job
name: batch-low
priority: 1
tasks:
  - name: worker
    driver: process
    command: ["/bin/sh", "-c", "sleep 100"]
    env: {MODE: fast}
    cpus: 0.5
    memory: 64MiB
    count: 3
  - name: vm
    driver: qemu
    workload: counter
    cpus: 1
    memory: 256MiB
constraints:
  spread: true
  fence: {zone: a}
  ban: {disk: hdd}
checkpoint:
  interval: 30s
  timeout: 10s
  signal: SIGUSR2
  exit_code: 85
migration:
  live: false
  max_downtime: 300ms
  bandwidth: 100MiB
`

func TestParseSpecGood(t *testing.T) {
	s, err := ParseSpec([]byte(goodSpec))
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != "batch-low" || s.Priority != 1 || !s.Preemptible || len(s.Tasks) != 2 {
		t.Fatalf("%+v", s)
	}
	w := s.Tasks[0]
	if w.CPUMilli != 500 || w.MemoryBytes != 64<<20 || w.Count != 3 || w.Env["MODE"] != "fast" || len(w.Command) != 3 {
		t.Fatalf("worker %+v", w)
	}
	if s.Tasks[1].Count != 1 || s.Tasks[1].Workload != "counter" {
		t.Fatalf("vm %+v", s.Tasks[1])
	}
	if !s.Constraints.Spread || s.Constraints.Fence["zone"] != "a" || s.Constraints.Ban["disk"] != "hdd" {
		t.Fatalf("constraints %+v", s.Constraints)
	}
	if s.Checkpoint.Interval != 30*time.Second || s.Checkpoint.ExitCode != 85 {
		t.Fatalf("checkpoint %+v", s.Checkpoint)
	}
	if s.Migration.Live || s.Migration.MaxDowntime != 300*time.Millisecond || s.Migration.Bandwidth != 100<<20 {
		t.Fatalf("migration %+v", s.Migration)
	}
}

func TestParseSpecJSON(t *testing.T) {
	s, err := ParseSpec([]byte(`{"name": "j", "priority": 7, "tasks": [{"name": "t", "driver": "process", "command": "sleep 1", "cpus": 1, "memory": "1GiB"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if s.Priority != 7 || s.Tasks[0].MemoryBytes != 1<<30 || s.Tasks[0].Command[2] != "sleep 1" {
		t.Fatalf("%+v", s)
	}
}

func TestParseSpecBad(t *testing.T) {
	for _, tc := range []struct {
		name, spec string
		line       int
		field, msg string
	}{
		{"unknown top field", "name: j\nprio: 3\n", 2, "prio", "unknown field"},
		{"bad memory", "name: j\ntasks:\n  - name: t\n    driver: process\n    command: x\n    cpus: 1\n    memory: lots\n", 7, "tasks[0].memory", "want a size"},
		{"bad driver", "name: j\ntasks:\n  - name: t\n    driver: docker\n", 4, "tasks[0].driver", "want qemu or process"},
		{"missing cpus", "name: j\ntasks:\n  - name: t\n    driver: process\n    command: x\n    memory: 1GiB\n", 3, "tasks[0].cpus", "needs cpus"},
		{"negative cpus", "name: j\ntasks:\n  - name: t\n    driver: process\n    command: x\n    cpus: -1\n    memory: 1GiB\n", 6, "tasks[0].cpus", "more than 0"},
		{"priority not a number", "name: j\npriority: high\n", 2, "priority", "whole number"},
		{"tasks not a list", "name: j\ntasks: 3\n", 2, "tasks", "want a list"},
		{"no tasks", "name: j\n", 1, "tasks", "at least one task"},
		{"no name", "priority: 1\n", 1, "name", "needs a name"},
		{"bad name", "name: 'a b'\ntasks: []\n", 1, "name", "letters"},
		{"syntax", "name: j\ntasks: [\n", 2, "", "syntax"},
		{"duplicate key", "name: j\nname: k\n", 2, "name", "set twice"},
		{"duplicate task", "name: j\ntasks:\n  - {name: t, driver: process, command: x, cpus: 1, memory: 1GiB}\n  - {name: t, driver: process, command: x, cpus: 1, memory: 1GiB}\n", 4, "tasks[1].name", "already defined at line 3"},
		{"bad duration", "name: j\ncheckpoint:\n  interval: soon\n", 3, "checkpoint.interval", "duration"},
		{"bad constraint", "name: j\nconstraints:\n  near: x\n", 3, "constraints.near", "unknown field"},
		{"qemu with command", "name: j\ntasks:\n  - {name: t, driver: qemu, command: x, cpus: 1, memory: 1GiB}\n", 3, "tasks[0].command", "no command"},
		{"too many", "name: j\ntasks:\n  - {name: t, driver: process, command: x, cpus: 1, memory: 1GiB, count: 20000}\n", 3, "tasks[0].count", "1 to 10000"},
		{"empty", "", 1, "", "empty spec"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseSpec([]byte(tc.spec))
			var se *SpecError
			if !errors.As(err, &se) || !errors.Is(err, ErrSpec) {
				t.Fatalf("want a SpecError, got %v", err)
			}
			if se.Line != tc.line || se.Field != tc.field || !strings.Contains(se.Msg, tc.msg) {
				t.Fatalf("got line %d field %q msg %q; want line %d field %q msg containing %q", se.Line, se.Field, se.Msg, tc.line, tc.field, tc.msg)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "512": 512, "1KiB": 1024, "2 GiB": 2 << 30, "1MB": 1000000, "3G": 3 << 30} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("%q: %d %v, want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1.5GiB", "9999999999TiB", "GiB"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

func FuzzParseSpec(f *testing.F) {
	f.Add([]byte(goodSpec))
	f.Add([]byte(`{"name":"j","tasks":[{"name":"t","driver":"process","command":["a"],"cpus":1,"memory":"1MiB"}]}`))
	f.Add([]byte("name: j\ntasks:\n  - &a {name: t}\n  - *a\n"))
	f.Add([]byte("- a\n- b\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseSpec(data)
		if err != nil {
			var se *SpecError
			if !errors.As(err, &se) {
				t.Fatalf("error of no kind: %v", err)
			}
			return
		}
		if s.Name == "" || len(s.Tasks) == 0 {
			t.Fatalf("accepted an incomplete spec: %+v", s)
		}
		for _, tk := range s.Tasks {
			if tk.CPUMilli <= 0 || tk.MemoryBytes <= 0 || tk.Count < 1 {
				t.Fatalf("accepted a task without demand: %+v", tk)
			}
		}
	})
}

func TestExampleSpecs(t *testing.T) {
	files, err := filepath.Glob("../examples/jobs/*.yaml")
	if err != nil || len(files) < 4 {
		t.Fatalf("examples: %v %v", files, err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		_, err = ParseSpec(b)
		if filepath.Base(f) == "bad.yaml" {
			var se *SpecError
			if !errors.As(err, &se) || se.Line != 8 || se.Field != "tasks[0].memory" {
				t.Errorf("%s: %v", f, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}
