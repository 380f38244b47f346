package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func open(t *testing.T, id, dir string, bootstrap bool) *Store {
	t.Helper()
	s, err := Open(Config{ID: id, DataDir: dir, RaftAddr: "127.0.0.1:0", APIAddr: id + ":api", Bootstrap: bootstrap, Fast: true, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func waitLeader(t *testing.T, stores ...*Store) *Store {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, s := range stores {
			if s.IsLeader() {
				return s
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no leader elected")
	return nil
}

func apply(t *testing.T, s *Store, c Command) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := s.Apply(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	return r
}

func TestSingleServerPersistsAcrossRestart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s1")
	s := open(t, "s1", dir, true)
	waitLeader(t, s)
	apply(t, s, Command{RegisterNode: &RegisterNode{Name: "n1", Capacity: Resources{2000, 1 << 30}}})
	apply(t, s, Command{SubmitJob: &SubmitJob{Job: Job{Name: "j"}, Tasks: []Task{{Name: "j.t.0", Driver: "process"}}}})
	// An invalid command is refused before it reaches the log.
	r, err := s.Apply(context.Background(), Command{SubmitJob: &SubmitJob{Job: Job{Name: "j"}, Tasks: []Task{{Name: "j.t.9", Driver: "process"}}}})
	if err != nil || !errors.Is(r.Err, ErrConflict) {
		t.Fatalf("duplicate job: %v %v", err, r.Err)
	}
	if err := s.Snapshot(); err != nil {
		t.Fatal(err)
	}
	apply(t, s, Command{Drain: &Drain{Name: "n1", Drain: true}})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Restart (with --bootstrap again: it must not re-bootstrap).
	s = open(t, "s1", dir, true)
	defer s.Close()
	waitLeader(t, s)
	var jobs, status string
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		s.View(func(st *State) {
			jobs = fmt.Sprint(len(st.Jobs))
			if n := st.Nodes["n1"]; n != nil {
				status = string(n.Status)
			}
		})
		if jobs == "1" && status == "draining" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("after restart: %s jobs, node %q", jobs, status)
}

func TestFollowerRefusesWrites(t *testing.T) {
	s1 := open(t, "a", t.TempDir(), true)
	defer s1.Close()
	waitLeader(t, s1)
	s2 := open(t, "b", t.TempDir(), false)
	defer s2.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s1.Join(ctx, Server{ID: "b", RaftAddr: s2.RaftAddr(), APIAddr: "b:api"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Apply(ctx, Command{RegisterNode: &RegisterNode{Name: "n"}}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("follower apply: %v", err)
	}
	if err := s2.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	for s2.LeaderAPI() != "a:api" {
		if ctx.Err() != nil {
			t.Fatalf("follower never learned the leader's API address (got %q)", s2.LeaderAPI())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestThreeServersSurviveLeaderLoss(t *testing.T) {
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	ids := []string{"s0", "s1", "s2"}
	stores := []*Store{open(t, ids[0], dirs[0], true)}
	waitLeader(t, stores[0])
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	apply(t, stores[0], Command{AddServer: &Server{ID: "s0", RaftAddr: stores[0].RaftAddr(), APIAddr: "s0:api"}})
	for i := 1; i < 3; i++ {
		s := open(t, ids[i], dirs[i], false)
		stores = append(stores, s)
		if err := stores[0].Join(ctx, Server{ID: ids[i], RaftAddr: s.RaftAddr(), APIAddr: ids[i] + ":api"}); err != nil {
			t.Fatal(err)
		}
	}
	defer func() {
		for _, s := range stores {
			if s != nil {
				s.Close()
			}
		}
	}()
	apply(t, stores[0], Command{RegisterNode: &RegisterNode{Name: "n1", Capacity: Resources{1000, 1 << 20}}})

	// Kill the leader; the other two elect a new one that has the write.
	old := waitLeader(t, stores...)
	var rest []*Store
	for i, s := range stores {
		if s == old {
			s.Close()
			stores[i] = nil
		} else {
			rest = append(rest, s)
		}
	}
	leader := waitLeader(t, rest...)
	apply(t, leader, Command{RegisterNode: &RegisterNode{Name: "n2", Capacity: Resources{1000, 1 << 20}}})
	for _, s := range rest {
		for {
			var n int
			s.View(func(st *State) { n = len(st.Nodes) })
			if n == 2 {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("server %s has %d nodes", s.ID(), n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if srv, err := leader.Servers(); err != nil || len(srv) != 3 {
		t.Fatalf("servers: %v %v", srv, err)
	}
}
