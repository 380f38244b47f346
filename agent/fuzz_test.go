package agent

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/driver"
)

// FuzzReadImageTar feeds arbitrary image streams (what a peer sends on
// resume) to the reader: it returns an error or a record, never panics,
// and never writes outside its directory.
//
// Each input is written out and fsynced, files and directories. On the
// disk that cost an input about 1 ms when the disk was idle, more while
// other work flushed. The fuzzer minimizes every new interesting input by
// trying up to O(len²) shorter variants, for up to -fuzzminimizetime (60 s),
// and it does not count those runs: a tar input is kilobytes, so a 20 s
// run showed a few dozen inputs, with nearly all the time spent minimizing.
// So the inputs land on a tmpfs when there is one (fsync does nothing
// there; durability is not what this target checks), and the seed's file
// is small, which keeps the inputs to minimize short.
func FuzzReadImageTar(f *testing.F) {
	src := f.TempDir()
	os.WriteFile(filepath.Join(src, "vmstate"), bytes.Repeat([]byte{1, 2, 3}, 100), 0o600)
	os.MkdirAll(filepath.Join(src, "sub"), 0o700)
	os.WriteFile(filepath.Join(src, "sub", "task.json"), []byte(`{}`), 0o600)
	var good bytes.Buffer
	if err := writeImageTar(&good, &record{ID: "t", Epoch: 1, Driver: "qemu"}, src); err != nil {
		f.Fatal(err)
	}
	f.Add(good.Bytes())
	f.Add(good.Bytes()[:len(good.Bytes())/2])
	f.Add([]byte("not a tar"))
	base := f.TempDir()
	if shm, err := os.MkdirTemp("/dev/shm", "ferry-fuzz-"); err == nil {
		base = shm
		f.Cleanup(func() { os.RemoveAll(shm) })
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		root, err := os.MkdirTemp(base, "")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(root)
		dir := filepath.Join(root, "image")
		os.MkdirAll(dir, 0o700)
		rec, err := readImageTar(bytes.NewReader(b), dir)
		if err == nil && rec == nil {
			t.Fatal("no error and no record")
		}
		filepath.Walk(root, func(p string, _ os.FileInfo, _ error) error {
			if p != root && !strings.HasPrefix(p, dir) {
				t.Fatalf("wrote %s outside the image directory", p)
			}
			return nil
		})
	})
}

// FuzzDecodeRunRequest feeds arbitrary bodies to the request decoder and
// the spec checks: bad input is an ErrInvalidSpec, never a panic.
func FuzzDecodeRunRequest(f *testing.F) {
	good, _ := json.Marshal(api.RunRequest{Spec: driver.Spec{ID: "a", VM: &driver.VMSpec{Workload: "counter"}}})
	f.Add(good)
	f.Add([]byte(`{"spec":{"id":"../x","process":{"command":["true"]}}}`))
	f.Add([]byte(`{"spec":{"id":"a","cpus":-1,"vm":{}}}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := httptest.NewRequest("POST", "/v1/tasks", bytes.NewReader(b))
		var req api.RunRequest
		if err := decode(r, &req); err != nil {
			if e, _ := api.ErrorFor(err); e.Kind != "invalid" {
				t.Fatalf("decode error of kind %q: %v", e.Kind, err)
			}
			return
		}
		if err := validateSpec(&req.Spec); err == nil {
			if api.ValidID(req.Spec.ID) != nil {
				t.Fatal("valid spec with an invalid id")
			}
		}
	})
}
