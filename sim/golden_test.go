package sim_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ferrycluster/ferry/policy"
	"github.com/ferrycluster/ferry/sim"
	"github.com/ferrycluster/ferry/sim/check"
	"github.com/ferrycluster/ferry/sim/workload"
)

var update = flag.Bool("update", false, "rewrite the expected event logs of testdata/*.txt")

// A golden script: header lines ("policy: a,b", "drain: T NODE"),
// "scenario:" then the scenario YAML, then "--- expect" and the event log
// with the summary table of every policy.
func TestGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.txt")
	if len(files) == 0 {
		t.Fatal("no golden scripts")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			in, want, _ := strings.Cut(string(raw), "--- expect\n")
			head, scen, ok := strings.Cut(in, "scenario:\n")
			if !ok {
				t.Fatal("no scenario: line")
			}
			var policies []string
			var drains []sim.Drain
			for _, l := range strings.Split(head, "\n") {
				switch {
				case strings.HasPrefix(l, "policy:"):
					policies = strings.Split(strings.TrimSpace(strings.TrimPrefix(l, "policy:")), ",")
				case strings.HasPrefix(l, "drain:"):
					f := strings.Fields(strings.TrimPrefix(l, "drain:"))
					at, _ := strconv.ParseInt(f[0], 10, 64)
					drains = append(drains, sim.Drain{At: at, Node: f[1]})
				}
			}
			w, err := workload.ParseScenario(strings.NewReader(scen))
			if err != nil {
				t.Fatal(err)
			}
			var got bytes.Buffer
			var rs []*sim.Result
			for _, name := range policies {
				p, err := policy.ByName(name)
				if err != nil {
					t.Fatal(err)
				}
				r, err := sim.Run(context.Background(), sim.Config{Workload: w, Policy: p, Seed: 1, Drains: drains})
				if err != nil {
					t.Fatal(err)
				}
				if err := check.Run(w, r); err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(&got, "== %s\n", name)
				r.WriteLog(&got)
				rs = append(rs, r)
			}
			sim.Table(&got, rs)
			if *update {
				if err := os.WriteFile(f, []byte(in+"--- expect\n"+got.String()), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if got.String() != want {
				t.Fatalf("event log differs (go test -update to accept):\n--- got\n%s--- want\n%s", got.String(), want)
			}
		})
	}
}
