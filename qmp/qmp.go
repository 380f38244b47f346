// Package qmp is a small client for the QEMU Machine Protocol.
//
// A Client speaks to one QEMU over its QMP socket:
//
//  1. Dial (or New over an open connection) reads QEMU's greeting and
//     negotiates capabilities (qmp_capabilities);
//  2. Execute sends one command and waits for its reply, bounded by the
//     context; one command is in flight at a time (callers are serialised)
//     and every command carries an id, so a late reply to an abandoned
//     command is never taken for the reply to the next one;
//  3. Subscribe delivers asynchronous events (STOP, RESUME, SHUTDOWN,
//     MIGRATION, MIGRATION_PASS, ...) on a channel;
//  4. when QEMU dies or the connection breaks, every pending and later call
//     fails with ErrDisconnected and every event channel is closed.
//
// An error reply from QEMU is returned as *Error (class and description).
// Every line QEMU sends is parsed by ParseMessage, which refuses anything
// that is not one of the protocol's message shapes; lines longer than
// MaxLineBytes end the connection.
package qmp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"
)

// MaxLineBytes is the longest message accepted from QEMU. Replies to the
// commands we use are a few KiB; 4 MiB leaves room for query-* on big VMs.
const MaxLineBytes = 4 << 20

// Errors with kinds.
var (
	// ErrDisconnected: QEMU went away (process died, socket closed).
	ErrDisconnected = errors.New("qmp: disconnected")
	// ErrProtocol: QEMU sent something that is not QMP.
	ErrProtocol = errors.New("qmp: protocol error")
)

// Error is an error reply from QEMU.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return fmt.Sprintf("qmp: %s: %s", e.Class, e.Desc) }

// Event is an asynchronous QMP event.
type Event struct {
	Name string
	Data json.RawMessage
	Time time.Time
}

// Greeting is what QEMU announces on connect.
type Greeting struct {
	Version struct {
		QEMU struct {
			Major int `json:"major"`
			Minor int `json:"minor"`
			Micro int `json:"micro"`
		} `json:"qemu"`
		Package string `json:"package"`
	} `json:"version"`
	Capabilities []string `json:"capabilities"`
}

// Message is one parsed line from QEMU: exactly one of Greeting, Return
// (with ID), Err (with ID) or Event is set.
type Message struct {
	Greeting *Greeting
	Return   json.RawMessage
	Err      *Error
	ID       string
	Event    *Event
}

type wireMessage struct {
	QMP       *Greeting       `json:"QMP"`
	Return    json.RawMessage `json:"return"`
	Error     *Error          `json:"error"`
	ID        json.RawMessage `json:"id"`
	Event     *string         `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// ParseMessage parses one line of QMP output.
func ParseMessage(line []byte) (Message, error) {
	line = bytes.TrimSpace(line)
	var w wireMessage
	if len(line) == 0 || line[0] != '{' {
		return Message{}, fmt.Errorf("%w: not a JSON object: %.60q", ErrProtocol, line)
	}
	if err := json.Unmarshal(line, &w); err != nil {
		return Message{}, fmt.Errorf("%w: %v in %.60q", ErrProtocol, err, line)
	}
	var m Message
	kinds := 0
	if w.QMP != nil {
		kinds++
		m.Greeting = w.QMP
	}
	if w.Return != nil {
		kinds++
		m.Return = w.Return
	}
	if w.Error != nil {
		kinds++
		if w.Error.Class == "" {
			return Message{}, fmt.Errorf("%w: error reply without class: %.60q", ErrProtocol, line)
		}
		m.Err = w.Error
	}
	if w.Event != nil {
		kinds++
		if *w.Event == "" {
			return Message{}, fmt.Errorf("%w: event without name", ErrProtocol)
		}
		ev := &Event{Name: *w.Event, Data: w.Data}
		if w.Timestamp != nil && w.Timestamp.Seconds >= 0 && w.Timestamp.Microseconds >= 0 && w.Timestamp.Microseconds < 1e6 {
			ev.Time = time.Unix(w.Timestamp.Seconds, w.Timestamp.Microseconds*1000)
		}
		m.Event = ev
	}
	if kinds != 1 {
		return Message{}, fmt.Errorf("%w: message is not exactly one of greeting, return, error, event: %.60q", ErrProtocol, line)
	}
	if w.ID != nil {
		var s string
		if err := json.Unmarshal(w.ID, &s); err != nil {
			m.ID = string(w.ID) // numeric ids: kept as their text
		} else {
			m.ID = s
		}
	}
	return m, nil
}

type reply struct {
	id  string
	ret json.RawMessage
	err *Error
}

// Client is a QMP connection. Safe for concurrent use.
type Client struct {
	conn     net.Conn
	greeting Greeting

	cmdMu   sync.Mutex // one command in flight
	nextID  uint64
	replies chan reply

	mu   sync.Mutex
	subs map[chan Event]struct{}
	err  error // why the connection ended
	done chan struct{}
}

// Dial connects to the QMP unix socket at path and negotiates.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("%w: dial %s: %v", ErrDisconnected, path, err)
	}
	c, err := New(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// New runs the greeting and capabilities negotiation over conn. The client
// owns conn from then on.
func New(ctx context.Context, conn net.Conn) (*Client, error) {
	c := &Client{
		conn:    conn,
		replies: make(chan reply, 1),
		subs:    map[chan Event]struct{}{},
		done:    make(chan struct{}),
	}
	br := bufio.NewReaderSize(conn, 64*1024)
	// The greeting is read synchronously, bounded by ctx.
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	line, err := readLine(br)
	stopped := stop()
	if err != nil {
		if !stopped || ctx.Err() != nil {
			return nil, fmt.Errorf("%w: waiting for greeting: %v", ErrDisconnected, ctx.Err())
		}
		return nil, fmt.Errorf("%w: waiting for greeting: %v", ErrDisconnected, err)
	}
	m, err := ParseMessage(line)
	if err != nil {
		return nil, err
	}
	if m.Greeting == nil {
		return nil, fmt.Errorf("%w: first message is not a greeting: %.60q", ErrProtocol, line)
	}
	c.greeting = *m.Greeting
	go c.readLoop(br)
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp: negotiate capabilities: %w", err)
	}
	return c, nil
}

// Greeting returns QEMU's greeting.
func (c *Client) Greeting() Greeting { return c.greeting }

// readLine reads one newline-terminated line of at most MaxLineBytes.
func readLine(br *bufio.Reader) ([]byte, error) {
	var buf []byte
	for {
		frag, err := br.ReadSlice('\n')
		buf = append(buf, frag...)
		if len(buf) > MaxLineBytes {
			return nil, fmt.Errorf("%w: line longer than %d bytes", ErrProtocol, MaxLineBytes)
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf, nil
	}
}

func (c *Client) readLoop(br *bufio.Reader) {
	var cause error
	for {
		line, err := readLine(br)
		if err != nil {
			cause = err
			break
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		m, err := ParseMessage(line)
		if err != nil {
			cause = err
			break
		}
		switch {
		case m.Event != nil:
			c.publish(*m.Event)
		case m.Return != nil || m.Err != nil:
			r := reply{id: m.ID, ret: m.Return, err: m.Err}
			// At most one command is waiting; a reply nobody waits for
			// (abandoned command) is dropped by the id check in Execute.
			select {
			case c.replies <- r:
			default:
				select { // replace a stale unread reply
				case <-c.replies:
				default:
				}
				c.replies <- r
			}
		default:
			// A second greeting: ignore.
		}
	}
	c.shutdown(cause)
}

func (c *Client) shutdown(cause error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return
	}
	if errors.Is(cause, ErrProtocol) {
		c.err = fmt.Errorf("%w: %w", ErrDisconnected, cause)
	} else {
		c.err = fmt.Errorf("%w: %v", ErrDisconnected, cause)
	}
	c.conn.Close()
	for ch := range c.subs {
		close(ch)
	}
	c.subs = nil
	close(c.done)
}

func (c *Client) publish(ev Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for ch := range c.subs {
		select {
		case ch <- ev:
		default: // a slow subscriber loses events rather than stalling QMP
		}
	}
}

// Subscribe returns a channel of every event from now on (buffered with
// buf slots; a full subscriber misses events) and a function that ends the
// subscription. The channel is closed when the connection ends.
func (c *Client) Subscribe(buf int) (<-chan Event, func()) {
	ch := make(chan Event, max(buf, 1))
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.subs == nil {
		close(ch)
		return ch, func() {}
	}
	c.subs[ch] = struct{}{}
	return ch, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if _, ok := c.subs[ch]; ok {
			delete(c.subs, ch)
			close(ch)
		}
	}
}

// Done is closed when the connection has ended; Err then says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended, or nil while it is up.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close ends the connection.
func (c *Client) Close() error {
	c.shutdown(errors.New("closed by client"))
	return nil
}

// Execute runs cmd with args (nil or a JSON-marshalable value) and decodes
// the reply's "return" into result (nil to ignore it). It returns *Error
// for an error reply, ErrDisconnected when QEMU went away, or ctx's error.
func (c *Client) Execute(ctx context.Context, cmd string, args, result any) error {
	c.cmdMu.Lock()
	defer c.cmdMu.Unlock()
	if err := c.Err(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("qmp: %s: %w", cmd, err)
	}
	c.nextID++
	id := "ferry-" + strconv.FormatUint(c.nextID, 10)
	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        string `json:"id"`
	}{cmd, args, id}
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("qmp: encode %s: %w", cmd, err)
	}
	b = append(b, '\n')
	if dl, ok := ctx.Deadline(); ok {
		c.conn.SetWriteDeadline(dl)
	} else {
		c.conn.SetWriteDeadline(time.Time{})
	}
	if _, err := c.conn.Write(b); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("qmp: %s: %w", cmd, ctx.Err())
		}
		c.shutdown(err)
		return c.Err()
	}
	for {
		select {
		case r := <-c.replies:
			if r.id != id {
				continue // reply to an abandoned command
			}
			if r.err != nil {
				return r.err
			}
			if result != nil {
				if err := json.Unmarshal(r.ret, result); err != nil {
					return fmt.Errorf("%w: decode reply to %s: %v", ErrProtocol, cmd, err)
				}
			}
			return nil
		case <-c.done:
			select {
			case r := <-c.replies:
				if r.id == id && r.err == nil {
					if result != nil {
						if err := json.Unmarshal(r.ret, result); err != nil {
							return fmt.Errorf("%w: decode reply to %s: %v", ErrProtocol, cmd, err)
						}
					}
					return nil
				}
				if r.id == id {
					return r.err
				}
			default:
			}
			return fmt.Errorf("qmp: %s: %w", cmd, c.Err())
		case <-ctx.Done():
			return fmt.Errorf("qmp: %s: %w", cmd, ctx.Err())
		}
	}
}
