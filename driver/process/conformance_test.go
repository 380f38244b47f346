package process

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/driver/drivertest"
)

// newTestDriver returns a driver over a fresh data dir (one "node") that
// is closed, with its tasks stopped, at cleanup.
func newTestDriver(t *testing.T, cfg Config) *Driver {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		list, _ := d.List(ctx)
		for _, st := range list {
			_ = d.Stop(ctx, st.ID)
		}
		d.Close()
	})
	return d
}

// jobSpec runs one of the test jobs (main_test.go).
func jobSpec(id, job string, env map[string]string) driver.Spec {
	e := map[string]string{testJobEnv: job}
	for k, v := range env {
		e[k] = v
	}
	return driver.Spec{ID: id, Epoch: 1, Process: &driver.ProcessSpec{Command: []string{os.Args[0]}, Env: e}}
}

func TestConformance(t *testing.T) {
	drivertest.Run(t, drivertest.Harness{
		NewDriver: func(t *testing.T) driver.Driver { return newTestDriver(t, Config{}) },
		Spec:      func(id string) driver.Spec { return jobSpec(id, "counter", nil) },
		InvalidSpecs: func() []driver.Spec {
			empty := jobSpec("x", "counter", nil)
			empty.Process.Command = nil
			sig := jobSpec("x", "counter", nil)
			sig.Process.CheckpointSignal = "SIGKILL"
			neg := jobSpec("x", "counter", nil)
			neg.Process.CheckpointInterval = -time.Second
			return []driver.Spec{empty, sig, neg}
		},
		Timeout:  time.Minute,
		Parallel: true,
	})
}
