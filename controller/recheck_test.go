package controller

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/policy"
	"github.com/ferrycluster/ferry/store"
)

// leaderStore opens a one-server store in a temporary directory and waits
// until it leads; the context (30 s) ends and the store closes with the test.
func leaderStore(t *testing.T) (*store.Store, context.Context) {
	t.Helper()
	st, err := store.Open(store.Config{ID: "s1", DataDir: filepath.Join(t.TempDir(), "s1"), RaftAddr: "127.0.0.1:0", Bootstrap: true, Fast: true, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	if err := st.WaitLeader(cx); err != nil {
		t.Fatal(err)
	}
	return st, cx
}

// applier returns a function applying a command to st that fails the test
// when the command is refused.
func applier(t *testing.T, st *store.Store, cx context.Context) func(store.Command) store.Result {
	return func(cmd store.Command) store.Result {
		t.Helper()
		r, err := st.Apply(cx, cmd)
		if err == nil {
			err = r.Err
		}
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
}

// recheckPolicy keeps every task as it is and, at its first decision, asks
// to decide again `after` seconds later; it reports the View.Now of each
// decision.
type recheckPolicy struct {
	after   int64
	decided chan int64
}

func (recheckPolicy) Name() string { return "recheck" }
func (p recheckPolicy) Decide(v *policy.View) (policy.Decision, error) {
	d := policy.Current(v.Model)
	select {
	case p.decided <- v.Now:
		d.Recheck = v.Now + p.after
	default:
	}
	return d, nil
}

// fakeClock is the controller's Now and After: time moves only when the
// test says, and a timer fires when the test fires it.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers chan fakeTimer
}

type fakeTimer struct {
	d  time.Duration
	ch chan time.Time
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) After(d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	f.timers <- fakeTimer{d, ch}
	return ch
}

func (f *fakeClock) advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
}

// The loop decides again at the time the policy's Decision.Recheck names,
// though nothing else happens: no store change, no event, and a period far
// longer than the test.
func TestLoopWakesAtThePolicysRecheck(t *testing.T) {
	st, cx := leaderStore(t)
	for _, c := range []store.Command{
		{RegisterNode: &store.RegisterNode{Name: "n1", Capacity: store.Resources{CPUMilli: 1000, MemoryBytes: 1 << 30}}},
		{SubmitJob: &store.SubmitJob{Job: store.Job{Name: "j"}, Tasks: []store.Task{{Name: "j.t.0", Driver: "process", Demand: store.Resources{CPUMilli: 500}}}}},
	} {
		if r, err := st.Apply(cx, c); err != nil || r.Err != nil {
			t.Fatal(err, r.Err)
		}
	}
	// 0.4 s into a second: the recheck (whole seconds) is 1.6 s away.
	clock := &fakeClock{now: time.Unix(1_000_000, 4e8), timers: make(chan fakeTimer, 8)}
	pol := recheckPolicy{after: 2, decided: make(chan int64, 1)}
	c := New(Config{Store: st, Policy: pol, Period: time.Hour, HeartbeatTimeout: 2 * time.Hour, NoPoll: true,
		Now: clock.Now, After: clock.After, Logger: quietLog()})
	runCtx, stop := context.WithCancel(cx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	defer func() { stop(); <-done }()

	c.Trigger()
	if now := <-pol.decided; now != 1_000_000 {
		t.Fatalf("first decision at %d, want 1000000", now)
	}
	var tm fakeTimer
	select {
	case tm = <-clock.timers:
	case <-cx.Done():
		t.Fatal("the loop set no timer for the policy's recheck")
	}
	if tm.d != 1600*time.Millisecond {
		t.Fatalf("timer of %v, want 1.6s (to the recheck at 1000002)", tm.d)
	}
	clock.advance(tm.d)
	tm.ch <- clock.Now()
	select {
	case now := <-pol.decided:
		if now != 1_000_002 {
			t.Fatalf("second decision at %d, want 1000002", now)
		}
	case <-cx.Done():
		t.Fatal("the loop did not decide again at the recheck")
	}
}
