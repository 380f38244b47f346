package controller

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/store"
)

// maxHeartbeat bounds a pushed heartbeat's body.
const maxHeartbeat = 1 << 20

// heartbeatEnvelope is a pushed heartbeat with its task list left encoded.
type heartbeatEnvelope struct {
	Node  string          `json:"node"`
	Addr  string          `json:"addr"`
	Info  api.NodeInfo    `json:"info"`
	Tasks json.RawMessage `json:"tasks"`
}

// readHeartbeat reads a pushed heartbeat: the envelope decoded (unknown
// fields refused), the task list returned still encoded. The list is cut
// out by a small structural scan first (splitTasks) so the JSON decoder
// reads only the envelope — the list is the bulk of the body, and most
// heartbeats repeat the node's previous list. Whatever the scan does not
// accept is decoded the plain way; both ways give the same result
// (FuzzReadHeartbeat).
func readHeartbeat(r io.Reader) (heartbeatEnvelope, error) {
	var env heartbeatEnvelope
	body, err := io.ReadAll(io.LimitReader(r, maxHeartbeat+1))
	if err != nil {
		return env, fmt.Errorf("%w: body: %v", store.ErrInvalid, err)
	}
	if len(body) > maxHeartbeat {
		return env, fmt.Errorf("%w: body: heartbeat larger than %d bytes", store.ErrInvalid, maxHeartbeat)
	}
	if start, end, ok := splitTasks(body); ok {
		small := make([]byte, 0, len(body)-(end-start)+4)
		small = append(append(append(small, body[:start]...), "null"...), body[end:]...)
		if strictDecode(small, &env) == nil && string(env.Tasks) == "null" {
			env.Tasks = body[start:end]
			return env, nil
		}
		env = heartbeatEnvelope{}
	}
	if err := strictDecode(body, &env); err != nil {
		return heartbeatEnvelope{}, fmt.Errorf("%w: body: %v", store.ErrInvalid, err)
	}
	return env, nil
}

// strictDecode decodes exactly one JSON value into v, refusing unknown
// fields and trailing data.
func strictDecode(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if _, err := d.Token(); err != io.EOF {
		return fmt.Errorf("data after the value")
	}
	return nil
}

// decodeTasks decodes an encoded task list strictly (null: none).
func decodeTasks(raw []byte) ([]api.Task, error) {
	var ts []api.Task
	if len(raw) == 0 {
		return nil, nil
	}
	if err := strictDecode(raw, &ts); err != nil {
		return nil, err
	}
	return ts, nil
}

// splitTasks finds the value of the top-level member "tasks" of a JSON
// object: body[start:end] is that value. It reports false when body is not
// an object it can walk, has no such member or has it twice. It checks only
// structure (strings, nesting); the caller decodes the rest strictly and
// the list's bytes are decoded (or were, identical, before) strictly too.
func splitTasks(b []byte) (start, end int, ok bool) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return 0, 0, false
	}
	i++
	found := false
	for {
		i = skipSpace(b, i)
		if i >= len(b) {
			return 0, 0, false
		}
		if b[i] == '}' {
			return start, end, found
		}
		if b[i] != '"' {
			return 0, 0, false
		}
		kEnd := skipString(b, i)
		if kEnd < 0 {
			return 0, 0, false
		}
		key := b[i:kEnd]
		i = skipSpace(b, kEnd)
		if i >= len(b) || b[i] != ':' {
			return 0, 0, false
		}
		i = skipSpace(b, i+1)
		vEnd := skipValue(b, i)
		if vEnd < 0 {
			return 0, 0, false
		}
		if string(key) == `"tasks"` {
			if found {
				return 0, 0, false
			}
			found, start, end = true, i, vEnd
		}
		i = skipSpace(b, vEnd)
		if i < len(b) && b[i] == ',' {
			i++
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string starting at b[i] ('"'),
// or -1.
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return -1
}

// skipValue returns the index after the value starting at b[i], or -1.
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				j := skipString(b, i)
				if j < 0 {
					return -1
				}
				i = j - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
		return -1
	}
	start := i
	for ; i < len(b); i++ {
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			if i == start {
				return -1
			}
			return i
		}
	}
	return i
}
