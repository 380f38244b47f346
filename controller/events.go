package controller

import (
	"fmt"
	"sync"
	"time"
)

// Event is one thing the loop decided or did, for `ferry events -f`.
type Event struct {
	Seq    uint64            `json:"seq"`
	Time   time.Time         `json:"time"`
	Kind   string            `json:"kind"` // node, job, task, plan, action
	Object string            `json:"object"`
	What   string            `json:"what"`
	Fields map[string]string `json:"fields,omitempty"`
}

func (e Event) String() string {
	s := fmt.Sprintf("%s %-6s %-22s %s", e.Time.Format("15:04:05.000"), e.Kind, e.Object, e.What)
	for _, k := range sortedKeys(e.Fields) {
		s += " " + k + "=" + e.Fields[k]
	}
	return s
}

// Events is a bounded ring of recent events with subscribers.
type Events struct {
	mu   sync.Mutex
	ring []Event
	size int
	seq  uint64
	subs map[chan Event]struct{}
}

// NewEvents keeps the last size events.
func NewEvents(size int) *Events {
	return &Events{size: size, subs: map[chan Event]struct{}{}}
}

// Publish records an event and hands it to subscribers (a slow subscriber
// misses events rather than slowing the loop).
func (es *Events) Publish(e Event) {
	es.mu.Lock()
	defer es.mu.Unlock()
	es.seq++
	e.Seq = es.seq
	es.ring = append(es.ring, e)
	if len(es.ring) > es.size {
		es.ring = es.ring[len(es.ring)-es.size:]
	}
	for ch := range es.subs {
		select {
		case ch <- e:
		default:
		}
	}
}

// Recent returns the events after seq.
func (es *Events) Recent(after uint64) []Event {
	es.mu.Lock()
	defer es.mu.Unlock()
	var out []Event
	for _, e := range es.ring {
		if e.Seq > after {
			out = append(out, e)
		}
	}
	return out
}

// Subscribe returns a channel of new events and a cancel function.
func (es *Events) Subscribe() (<-chan Event, func()) {
	ch := make(chan Event, 256)
	es.mu.Lock()
	es.subs[ch] = struct{}{}
	es.mu.Unlock()
	return ch, func() {
		es.mu.Lock()
		delete(es.subs, ch)
		es.mu.Unlock()
	}
}

// event publishes and logs an event.
func (c *Controller) event(kind, object, what string, kv ...any) {
	e := Event{Time: c.cfg.Now(), Kind: kind, Object: object, What: what, Fields: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		e.Fields[fmt.Sprint(kv[i])] = fmt.Sprint(kv[i+1])
	}
	c.events.Publish(e)
	c.log.Info(what, append([]any{"about", kind, "object", object}, kv...)...)
}

// eventOnce publishes an event unless the last event had the same text
// (the loop retries every period; the stream says it once).
func (c *Controller) eventOnce(kind, object, what string, kv ...any) {
	recent := c.events.Recent(0)
	if n := len(recent); n > 0 && recent[n-1].Kind == kind && recent[n-1].What == what {
		return
	}
	c.event(kind, object, what, kv...)
}
