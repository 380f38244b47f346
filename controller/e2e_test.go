package controller

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/store"
)

func TestE2ESubmitRunStop(t *testing.T) {
	c := newTestCluster(t, 2, 2)
	if _, err := c.cli.Submit(ctx(t), []byte(counterJob("web", 5, 3, 1, ""))); err != nil {
		t.Fatal(err)
	}
	for _, tn := range []string{"web.c.0", "web.c.1", "web.c.2"} {
		tn := tn
		c.waitFor(tn+" running", 30*time.Second, func() bool {
			n, _ := c.liveCopies(tn)
			return c.phase(tn) == store.TaskRunning && n == 1
		})
	}
	jv, err := c.cli.Job(ctx(t), "web")
	if err != nil || jv.Status != "running" {
		t.Fatalf("job %+v %v", jv.Status, err)
	}
	if _, err := c.cli.JobAction(ctx(t), "web", "stop"); err != nil {
		t.Fatal(err)
	}
	c.waitFor("job stopped", 30*time.Second, func() bool {
		jv, _ := c.cli.Job(ctx(t), "web")
		return jv.Status == "stopped"
	})
	c.waitFor("no copies left", 30*time.Second, func() bool {
		for _, tn := range []string{"web.c.0", "web.c.1", "web.c.2"} {
			if n, _ := c.liveCopies(tn); n != 0 {
				return false
			}
		}
		return true
	})
}

func TestE2EBadSpecNamesLineAndField(t *testing.T) {
	c := newTestCluster(t, 1, 1)
	_, err := c.cli.Submit(ctx(t), []byte("name: j\ntasks:\n  - name: t\n    driver: process\n    command: x\n    cpus: 1\n    memory: lots\n"))
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || ae.Line != 7 || ae.Field != "tasks[0].memory" {
		t.Fatalf("%#v", err)
	}
	if !errors.Is(err, store.ErrInvalid) {
		t.Fatal("kind lost")
	}
	// Nothing was submitted.
	jobs, err := c.cli.Jobs(ctx(t))
	if err != nil || len(jobs) != 0 {
		t.Fatalf("%v %v", jobs, err)
	}
	// A wrong token is refused.
	bad := *c.cli
	bad.token = "fry_wrong"
	if _, err := bad.Submit(ctx(t), []byte(counterJob("x", 1, 1, 1, ""))); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("wrong token: %v", err)
	}
}
