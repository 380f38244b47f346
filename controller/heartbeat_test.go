package controller

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/driver"
)

// readFull is the API's way to a heartbeat: the envelope, then the list.
func readFull(b []byte) (Heartbeat, error) {
	env, err := readHeartbeat(bytes.NewReader(b))
	if err != nil {
		return Heartbeat{}, err
	}
	ts, err := decodeTasks(env.Tasks)
	if err != nil {
		return Heartbeat{}, err
	}
	return Heartbeat{Node: env.Node, Addr: env.Addr, Info: env.Info, Tasks: ts}, nil
}

// readPlain decodes the whole body at once, strictly: the reference.
func readPlain(b []byte) (Heartbeat, error) {
	var hb Heartbeat
	if len(b) > maxHeartbeat {
		return hb, errTooBig
	}
	err := strictDecode(b, &hb)
	if err != nil {
		return Heartbeat{}, err
	}
	return hb, nil
}

var errTooBig = errors.New("heartbeat too big")

func heartbeatSeeds(t testing.TB) [][]byte {
	hb := Heartbeat{Node: "n1", Addr: "127.0.0.1:7400", Info: api.NodeInfo{Name: "n1", CPUs: 2, MemoryBytes: 1 << 30, UsedMemoryBytes: 5},
		Tasks: []api.Task{{ID: "j.t.0", Driver: "process", Epoch: 3, Phase: api.PhaseRunning, Status: &driver.Status{ID: "j.t.0", Epoch: 3, State: driver.StateRunning, Message: `a "quoted" ] } text`}}}}
	good, err := json.Marshal(hb)
	if err != nil {
		t.Fatal(err)
	}
	return [][]byte{
		good,
		[]byte(`{"node":"n1","tasks":null}`),
		[]byte(`{"node":"n1"}`),
		[]byte(` { "tasks" : [ ] , "node" : "n1" } `),
		[]byte(`{"node":"n1","tasks":[],"tasks":[{"id":"x"}]}`),
		[]byte(`{"node":"n1","TASKS":[{"id":"y"}],"tasks":[]}`),
		[]byte(`{"node":"n1","tasks":[}`),
		[]byte(`{"node":"n1","tasks":[]}{}`),
		[]byte(`{"node":"n1","tasks":[{"id":"x","bogus":1}]}`),
		[]byte(`{"node":"n1","bogus":1,"tasks":[]}`),
		[]byte(`{"node":"a\"tasks\":[]","tasks":[{"id":"z"}]}`),
		[]byte(`{"info":{"tasks":[]},"tasks":[]}`),
		[]byte(`[]`),
		[]byte(`{"node":"n1","tasks":nul}`),
	}
}

// The API's two-step read of a heartbeat (the list cut out by a structural
// scan, the envelope and the list each decoded strictly) agrees with
// decoding the whole body strictly at once: same heartbeat, or both refuse.
func TestReadHeartbeatAgreesWithPlainDecoding(t *testing.T) {
	for _, b := range heartbeatSeeds(t) {
		checkHeartbeatRead(t, b)
	}
	// The scan takes the common body and cuts exactly the list out.
	good := heartbeatSeeds(t)[0]
	start, end, ok := splitTasks(good)
	if !ok || !bytes.HasPrefix(good[start:end], []byte(`[{"id":"j.t.0"`)) || good[end] != '}' {
		t.Fatalf("splitTasks(%s) = %d, %d, %v", good, start, end, ok)
	}
}

func FuzzReadHeartbeat(f *testing.F) {
	for _, b := range heartbeatSeeds(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkHeartbeatRead(t, b)
	})
}

func checkHeartbeatRead(t *testing.T, b []byte) {
	t.Helper()
	got, gerr := readFull(b)
	want, werr := readPlain(b)
	if (gerr == nil) != (werr == nil) {
		t.Fatalf("%q: two-step read error %v, plain decoding error %v", b, gerr, werr)
	}
	if gerr == nil && !reflect.DeepEqual(got, want) {
		t.Fatalf("%q: two-step read %+v, plain decoding %+v", b, got, want)
	}
}
