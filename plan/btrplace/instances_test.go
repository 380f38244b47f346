package btrplace_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/plan"
	"github.com/ferrycluster/ferry/plan/btrplace"
	"github.com/ferrycluster/ferry/plan/verify"
)

// sharedDir is ../shared/peer/btrplace next to the repository root (the
// directory holding go.mod).
func sharedDir() string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for i := 0; i < 10; i++ {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		dir = filepath.Dir(dir)
	}
	return filepath.Join(dir, "..", "shared", "peer", "btrplace")
}

// sharedFiles lists the instances of the shared corpus (none when absent).
func sharedFiles() []string {
	files, _ := filepath.Glob(filepath.Join(sharedDir(), "*.json*"))
	return files
}

func sharedInstances(t *testing.T) []string {
	t.Helper()
	files := sharedFiles()
	if len(files) == 0 {
		t.Skipf("no BtrPlace instances in %s (the shared peer corpus is not on this machine)", sharedDir())
	}
	return files
}

// TestSharedInstances solves every instance of the shared BtrPlace corpus,
// with and without Options.LiveOnly, verifies the plan, writes it as a
// ReconfigurationPlan, reads it back and verifies it again.
func TestSharedInstances(t *testing.T) {
	for _, path := range sharedInstances(t) {
		var mttr [2]int64
		for i, live := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/live=%t", filepath.Base(path), live), func(t *testing.T) { mttr[i] = solveShared(t, path, live) })
		}
		if mttr[0] > mttr[1] {
			t.Logf("%s: MTTR %d when suspend+resume may relocate, %d with live migrations only: the larger space gave the worse plan",
				filepath.Base(path), mttr[0], mttr[1])
		}
	}
}

// solveShared solves, checks and round-trips one instance; it returns the
// plan's MTTR.
func solveShared(t *testing.T, path string, live bool) int64 {
	in, err := btrplace.ReadInstanceFile(path)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	pl, err := plan.Solve(context.Background(), in.Problem, plan.Options{Timeout: 10 * time.Second, Seed: 1, LiveOnly: live})
	if err != nil {
		t.Fatalf("solve: %v", err)
	}
	t.Logf("%s: %d nodes, %d VMs, %d constraints: %d actions, %d migrations, MTTR %d (lower bound %d), makespan %d, in %v",
		filepath.Base(path), len(in.Problem.Model.Nodes), len(in.Problem.Model.Tasks), len(in.Problem.Constraints),
		len(pl.Actions), pl.Migrations(), pl.MTTR(), pl.Stats.LowerBound, pl.Makespan(), time.Since(start).Round(time.Millisecond))
	if err := verify.Check(in.Problem, pl); err != nil {
		t.Fatalf("plan fails the verifier: %v", err)
	}
	var buf bytes.Buffer
	if err := in.WritePlan(&buf, pl); err != nil {
		t.Fatal(err)
	}
	if strings.HasSuffix(path, ".gz") && len(in.Warnings) > 0 && !bytes.Contains(buf.Bytes(), []byte(`"net"`)) {
		t.Fatalf("the origin lost the ignored views")
	}
	back, pl2, err := btrplace.ReadPlan(&buf)
	if err != nil {
		t.Fatal(err)
	}
	back.Problem.Constraints = in.Problem.Constraints
	back.Problem.Objective = in.Problem.Objective
	if err := verify.Check(back.Problem, pl2); err != nil {
		t.Fatalf("plan read back from JSON fails the verifier: %v", err)
	}
	if pl2.MTTR() != pl.MTTR() || len(pl2.Actions) != len(pl.Actions) {
		t.Fatalf("round trip changed the plan: MTTR %d -> %d", pl.MTTR(), pl2.MTTR())
	}
	if live {
		for _, a := range pl.Actions {
			if a.Kind == cluster.Suspend || a.Kind == cluster.Resume {
				t.Logf("live-only plan suspends %s (a pivot with no room elsewhere)", in.Problem.Model.Tasks[a.Task].Name)
			}
		}
	}
	return pl.MTTR()
}
