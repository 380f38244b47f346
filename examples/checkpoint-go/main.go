// Command checkpoint-go is a long computation that speaks ferry's
// checkpoint protocol (docs/checkpointing.md): it sums a deterministic
// pseudo-random sequence over -steps steps and prints "result N" at the end.
// Moved between nodes any number of times, it prints the same result as a
// run that was never moved.
//
// Protocol, as this program implements it:
//   - FERRY_RESTORE=1: read the state from $FERRY_RESTORE_DIR/state.json.
//   - SIGUSR2 (the default checkpoint signal): at the next step boundary write
//     the state to $FERRY_CHECKPOINT_DIR/state.json; then, if the driver asked
//     to continue ($FERRY_CHECKPOINT_DIR/FERRY_CHECKPOINT_CONTINUE exists),
//     create $FERRY_CHECKPOINT_DIR/FERRY_CHECKPOINT_DONE and go on; otherwise
//     exit with $FERRY_CHECKPOINT_EXIT_CODE (85).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

type state struct {
	Step uint64 `json:"step"` // steps done
	X    uint64 `json:"x"`    // generator state
	Sum  uint64 `json:"sum"`  // running result
}

// step advances the computation by one step (a 64-bit LCG, summed).
func (s *state) step() {
	s.X = s.X*6364136223846793005 + 1442695040888963407
	s.Sum += s.X >> 33
	s.Step++
}

func main() {
	steps := flag.Uint64("steps", 2000, "steps to compute")
	delay := flag.Duration("delay", time.Millisecond, "pause per step (makes the run long enough to move)")
	// Listen first: a Go program silently drops a SIGUSR2 that arrives
	// before signal.Notify, and the request would time out.
	req := make(chan os.Signal, 1)
	signal.Notify(req, syscall.SIGUSR2) // the default checkpoint signal
	flag.Parse()

	var s state
	if os.Getenv("FERRY_RESTORE") == "1" {
		b, err := os.ReadFile(filepath.Join(os.Getenv("FERRY_RESTORE_DIR"), "state.json"))
		if err == nil {
			err = json.Unmarshal(b, &s)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "restore:", err)
			os.Exit(1)
		}
		fmt.Println("restored at step", s.Step)
	}
	code := 85
	if n, err := strconv.Atoi(os.Getenv("FERRY_CHECKPOINT_EXIT_CODE")); err == nil {
		code = n
	}
	for s.Step < *steps {
		select {
		case <-req:
			if checkpoint(s) {
				continue
			}
			os.Exit(code)
		default:
		}
		s.step()
		if s.Step%100 == 0 {
			fmt.Println("step", s.Step)
		}
		time.Sleep(*delay)
	}
	fmt.Println("result", s.Sum)
}

// checkpoint writes the state and reports whether to keep running.
func checkpoint(s state) bool {
	dir := os.Getenv("FERRY_CHECKPOINT_DIR")
	b, _ := json.Marshal(s)
	if err := os.WriteFile(filepath.Join(dir, "state.json"), b, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "checkpoint:", err)
		os.Exit(1) // not the checkpoint code: the driver keeps the last good one
	}
	if _, err := os.Stat(filepath.Join(dir, "FERRY_CHECKPOINT_CONTINUE")); err != nil {
		return false
	}
	if err := os.WriteFile(filepath.Join(dir, "FERRY_CHECKPOINT_DONE"), nil, 0o644); err != nil {
		os.Exit(1)
	}
	return true
}
