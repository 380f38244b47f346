package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const greeting = `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": ["oob"]}}`

// fakeQEMU serves one QMP connection on a unix socket; script is called
// with a reader of commands and the connection to answer on.
func fakeQEMU(t *testing.T, script func(r *bufio.Reader, c net.Conn)) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { l.Close(); <-done })
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		script(bufio.NewReader(c), c)
	}()
	return sock
}

type cmd struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        string          `json:"id"`
}

func readCmd(t *testing.T, r *bufio.Reader) (cmd, bool) {
	line, err := r.ReadBytes('\n')
	if err != nil {
		return cmd{}, false
	}
	var c cmd
	if err := json.Unmarshal(line, &c); err != nil {
		t.Errorf("fake: bad command %q: %v", line, err)
		return cmd{}, false
	}
	return c, true
}

func send(c net.Conn, s string) { c.Write([]byte(s + "\r\n")) }

// negotiate plays the greeting and capabilities part.
func negotiate(t *testing.T, r *bufio.Reader, c net.Conn) bool {
	send(c, greeting)
	m, ok := readCmd(t, r)
	if !ok || m.Execute != "qmp_capabilities" {
		t.Errorf("fake: first command %+v, want qmp_capabilities", m)
		return false
	}
	send(c, `{"return": {}, "id": "`+m.ID+`"}`)
	return true
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestExecuteAndEvents(t *testing.T) {
	sock := fakeQEMU(t, func(r *bufio.Reader, c net.Conn) {
		if !negotiate(t, r, c) {
			return
		}
		m, _ := readCmd(t, r)
		if m.Execute != "query-status" {
			t.Errorf("fake: got %s", m.Execute)
		}
		// An event arrives before the reply.
		send(c, `{"timestamp": {"seconds": 1700000000, "microseconds": 5}, "event": "STOP"}`)
		send(c, `{"return": {"status": "paused", "running": false}, "id": "`+m.ID+`"}`)
		m, _ = readCmd(t, r)
		if string(m.Arguments) != `{"value":1}` {
			t.Errorf("fake: arguments %s", m.Arguments)
		}
		send(c, `{"error": {"class": "GenericError", "desc": "no such thing"}, "id": "`+m.ID+`"}`)
		readCmd(t, r)
	})
	c, err := Dial(ctx(t), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if g := c.Greeting(); g.Version.QEMU.Major != 7 || g.Version.QEMU.Minor != 2 {
		t.Errorf("greeting %+v", g)
	}
	events, unsub := c.Subscribe(4)
	defer unsub()
	var st struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	if err := c.Execute(ctx(t), "query-status", nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.Status != "paused" || st.Running {
		t.Errorf("status %+v", st)
	}
	select {
	case ev := <-events:
		if ev.Name != "STOP" || ev.Time.Unix() != 1700000000 {
			t.Errorf("event %+v", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no STOP event")
	}
	err = c.Execute(ctx(t), "x", map[string]int{"value": 1}, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "GenericError" || qe.Desc != "no such thing" {
		t.Fatalf("err = %v, want *Error GenericError", err)
	}
}

func TestDisconnectMidCommand(t *testing.T) {
	sock := fakeQEMU(t, func(r *bufio.Reader, c net.Conn) {
		if negotiate(t, r, c) {
			readCmd(t, r) // and hang up without answering
		}
	})
	c, err := Dial(ctx(t), sock)
	if err != nil {
		t.Fatal(err)
	}
	events, _ := c.Subscribe(1)
	err = c.Execute(ctx(t), "query-status", nil, nil)
	if !errors.Is(err, ErrDisconnected) {
		t.Fatalf("err = %v, want ErrDisconnected", err)
	}
	if _, ok := <-events; ok {
		t.Error("event channel still open after disconnect")
	}
	<-c.Done()
	if err := c.Execute(ctx(t), "query-status", nil, nil); !errors.Is(err, ErrDisconnected) {
		t.Errorf("after disconnect: err = %v", err)
	}
}

func TestGarbageAndOversized(t *testing.T) {
	for name, bad := range map[string]string{
		"garbage":     "this is not json",
		"half json":   `{"return": `,
		"two kinds":   `{"return": {}, "event": "STOP"}`,
		"no kind":     `{"id": "ferry-2"}`,
		"array":       `[1,2,3]`,
		"empty class": `{"error": {"class": "", "desc": "x"}}`,
		"oversized":   `{"return": "` + strings.Repeat("a", MaxLineBytes+10) + `"}`,
	} {
		t.Run(name, func(t *testing.T) {
			sock := fakeQEMU(t, func(r *bufio.Reader, c net.Conn) {
				if negotiate(t, r, c) {
					readCmd(t, r)
					send(c, bad)
					io.Copy(io.Discard, r) // until the client hangs up
				}
			})
			c, err := Dial(ctx(t), sock)
			if err != nil {
				t.Fatal(err)
			}
			err = c.Execute(ctx(t), "query-status", nil, nil)
			if !errors.Is(err, ErrDisconnected) || !errors.Is(err, ErrProtocol) {
				t.Fatalf("err = %v, want ErrDisconnected and ErrProtocol", err)
			}
		})
	}
}

func TestNoGreeting(t *testing.T) {
	sock := fakeQEMU(t, func(r *bufio.Reader, c net.Conn) {
		send(c, `{"return": {}}`)
		io.Copy(io.Discard, r)
	})
	if _, err := Dial(ctx(t), sock); !errors.Is(err, ErrProtocol) {
		t.Fatalf("err = %v, want ErrProtocol", err)
	}
	silent := fakeQEMU(t, func(r *bufio.Reader, c net.Conn) { io.Copy(io.Discard, r) })
	short, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := Dial(short, silent); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("silent server: err = %v, want ErrDisconnected", err)
	}
}

func TestDeadlineThenLateReply(t *testing.T) {
	sock := fakeQEMU(t, func(r *bufio.Reader, c net.Conn) {
		if !negotiate(t, r, c) {
			return
		}
		slow, _ := readCmd(t, r)
		next, _ := readCmd(t, r) // the client gave up on slow and sent next
		send(c, `{"return": {"which": "slow"}, "id": "`+slow.ID+`"}`)
		send(c, `{"return": {"which": "next"}, "id": "`+next.ID+`"}`)
		readCmd(t, r)
	})
	c, err := Dial(ctx(t), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	short, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := c.Execute(short, "slow", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow: err = %v, want deadline", err)
	}
	var got struct{ Which string }
	if err := c.Execute(ctx(t), "next", nil, &got); err != nil {
		t.Fatal(err)
	}
	if got.Which != "next" {
		t.Fatalf("next got the reply to %q", got.Which)
	}
}

func TestParseMessage(t *testing.T) {
	m, err := ParseMessage([]byte(`{"event": "MIGRATION", "data": {"status": "active"}, "timestamp": {"seconds": 1, "microseconds": 2}}`))
	if err != nil || m.Event == nil || m.Event.Name != "MIGRATION" || string(m.Event.Data) != `{"status": "active"}` {
		t.Fatalf("%+v %v", m, err)
	}
	m, err = ParseMessage([]byte(`{"return": {}, "id": 7}`))
	if err != nil || m.ID != "7" {
		t.Fatalf("%+v %v", m, err)
	}
}

func FuzzParseMessage(f *testing.F) {
	for _, s := range []string{
		greeting,
		`{"return": {}, "id": "ferry-1"}`,
		`{"error": {"class": "GenericError", "desc": "x"}, "id": "ferry-2"}`,
		`{"event": "MIGRATION_PASS", "data": {"pass": 2}, "timestamp": {"seconds": 1, "microseconds": 999999}}`,
		`{"event": "", "data": null}`,
		`{"return": [], "id": 5}`,
		`[]`, `{`, ``, `null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMessage(b)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error without kind: %v", err)
			}
			return
		}
		n := 0
		for _, set := range []bool{m.Greeting != nil, m.Return != nil, m.Err != nil, m.Event != nil} {
			if set {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("message with %d kinds: %+v", n, m)
		}
	})
}

// TestRealQEMU talks to a real QEMU (machine "none": no guest needed).
func TestRealQEMU(t *testing.T) {
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed (scripts/setup.sh installs it)")
	}
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	cmd := exec.Command(bin, "-machine", "none", "-nodefaults", "-nographic", "-display", "none",
		"-qmp", "unix:"+sock+",server=on,wait=off")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var c *Client
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err = Dial(ctx(t), sock)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dial real QEMU: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if c.Greeting().Version.QEMU.Major == 0 {
		t.Errorf("greeting %+v", c.Greeting())
	}
	var st struct{ Status string }
	if err := c.Execute(ctx(t), "query-status", nil, &st); err != nil || st.Status == "" {
		t.Fatalf("query-status: %+v %v", st, err)
	}
	var qe *Error
	if err := c.Execute(ctx(t), "no-such-command", nil, nil); !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Fatalf("unknown command: %v", err)
	}
	events, _ := c.Subscribe(8)
	if err := c.Execute(ctx(t), "quit", nil, nil); err != nil && !errors.Is(err, ErrDisconnected) {
		t.Fatalf("quit: %v", err)
	}
	sawShutdown := false
	for ev := range events {
		sawShutdown = sawShutdown || ev.Name == "SHUTDOWN"
	}
	if !sawShutdown {
		t.Error("no SHUTDOWN event before disconnect")
	}
	if err := c.Execute(ctx(t), "query-status", nil, nil); !errors.Is(err, ErrDisconnected) {
		t.Errorf("after quit: err = %v", err)
	}
}

// TestOneCommandInFlight: concurrent callers are serialised; the fake
// server fails the test if a command arrives before the previous reply.
func TestOneCommandInFlight(t *testing.T) {
	const n = 20
	sock := fakeQEMU(t, func(r *bufio.Reader, c net.Conn) {
		if !negotiate(t, r, c) {
			return
		}
		for i := 0; i < n; i++ {
			m, ok := readCmd(t, r)
			if !ok {
				return
			}
			// Anything already buffered would be a second command in flight.
			c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			if _, err := r.Peek(1); err == nil {
				t.Errorf("a second command arrived while %s was in flight", m.ID)
			}
			c.SetReadDeadline(time.Time{})
			send(c, `{"return": {"id": "`+m.ID+`"}, "id": "`+m.ID+`"}`)
		}
		io.Copy(io.Discard, r)
	})
	c, err := Dial(ctx(t), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			var got struct{ ID string }
			errs <- c.Execute(ctx(t), "query-status", nil, &got)
		}()
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
