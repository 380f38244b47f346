package workload

import (
	"errors"
	"strings"
	"testing"

	"github.com/ferrycluster/ferry/sim/swf"
)

func TestVTDCModel(t *testing.T) {
	w := VTDC(1)
	if err := w.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(w.Nodes) != 11 || len(w.Jobs) != 8 {
		t.Fatalf("%d nodes, %d jobs", len(w.Nodes), len(w.Jobs))
	}
	kinds := map[string]int{}
	for _, j := range w.Jobs {
		kinds[j.Kind]++
		if j.Tasks != 9 || j.Submit != 0 {
			t.Fatalf("%s: %d tasks submitted at %d", j.Name, j.Tasks, j.Submit)
		}
		// Peak concurrency of computing VMs per graph.
		peak := int64(0)
		for _, s := range j.Segments {
			var c int64
			for _, x := range s.CPU {
				c += x
			}
			peak = max(peak, c)
		}
		want := map[string]int64{"ED": 9, "HC": 1, "VP": 3, "MB": 3}[j.Kind]
		if peak != want {
			t.Fatalf("%s: %d VMs compute at once, want %d", j.Name, peak, want)
		}
	}
	for _, k := range NGBKinds() {
		if kinds[k] != 2 {
			t.Fatalf("kinds = %v", kinds)
		}
	}
	if VTDC(1).Jobs[0].Work != w.Jobs[0].Work || VTDC(2).Name == w.Name {
		t.Fatal("VTDC not a function of its seed")
	}
}

func TestScenarioErrorsNameTheElement(t *testing.T) {
	cases := map[string]string{
		"nodes: {count: 0}":                                                 "nodes.count 0",
		"nodes: {count: 1}\njobs: [{name: a, work: 0}]":                     `job "a": work 0`,
		"nodes: {count: 1}\njobs: [{work: 5}]":                              "job 0: no name",
		"nodes: {count: 1}\njobs: [{name: a, ngb: XX}]":                     `ngb "XX"`,
		"nodes: {count: 1, cpu: 1}\njobs: [{name: a, tasks: 2, work: 5}]":   "do not fit",
		"nodes: {count: 1}\nbogus: 1":                                       "bogus",
		"nodes: {count: 1}\njobs: [{name: a, work: 5}, {name: a, work: 5}]": "repeated",
		"nodes: {count: 1}\nsoft: [gpu]\njobs: [{name: a, work: 5}]":        `soft resource "gpu"`,
		"nodes: {count: 1}\nsoft: [memory]\njobs: [{name: a, work: 5}]":     `memory cannot be time-shared`,
		"nodes: {count: 1}\njobs: [{name: a, work: 5, submit: -1}]":         "negative",
	}
	for in, want := range cases {
		_, err := ParseScenario(strings.NewReader(in))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want %q", in, err, want)
		}
	}
}

func TestFromSWFMapping(t *testing.T) {
	tr, err := swf.Read(strings.NewReader(`; MaxProcs: 4
1 100 0 50 2 -1 -1 2 80 -1 1 1 1 -1 -1 -1 -1 -1
2 110 0 -1 2 -1 -1 2 80 -1 0 1 1 -1 -1 -1 -1 -1
3 120 0 30 8 -1 -1 8 80 -1 1 1 1 -1 -1 -1 -1 -1
4 130 0 90 1 -1 524288 1 60 -1 1 1 1 -1 -1 -1 -1 -1
`), swf.Options{})
	if err != nil {
		t.Fatal(err)
	}
	w, dropped, err := FromSWF(tr, "t", SWFOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Nodes) != 4 || dropped != 2 || len(w.Jobs) != 2 {
		t.Fatalf("nodes %d dropped %d jobs %d", len(w.Nodes), dropped, len(w.Jobs))
	}
	a, b := w.Jobs[0], w.Jobs[1]
	if a.Submit != 0 || a.Tasks != 2 || a.Work != 50 || a.Walltime != 80 || a.Demand[1] != GiB {
		t.Fatalf("job 1 = %+v", a)
	}
	if b.Submit != 30 || b.Walltime != 90 || b.Demand[1] != 512*MiB {
		t.Fatalf("job 4 = %+v (run time above the request becomes the estimate; memory from the trace)", b)
	}
}

func FuzzParseScenario(f *testing.F) {
	f.Add("nodes: {count: 2}\njobs: [{name: a, tasks: 2, work: 10}, {name: b, ngb: HC, count: 2}]")
	f.Add(`{"nodes": {"count": 1}, "jobs": [{"name": "x", "work": 1}]}`)
	f.Add("nodes: {count: 99999999}")
	f.Fuzz(func(t *testing.T, s string) {
		w, err := ParseScenario(strings.NewReader(s))
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error without kind: %v", err)
			}
			return
		}
		if err := w.Validate(); err != nil {
			t.Fatalf("accepted an invalid workload: %v", err)
		}
	})
}
