package process

import (
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/ferrycluster/ferry/internal/writeback"
)

// Early writeback (internal/writeback): a checkpoint is fsynced before it
// counts, on the node that takes it and on the node that receives it; its
// files are queued for the disk while the job writes them (stagingWriteback)
// and while they arrive (recvFile), so the final fsync only waits for the
// tail.

// stagingWriteback starts writeback of the files a job is writing into
// its checkpoint directory, polled while the driver waits for its answer.
type stagingWriteback struct {
	dir  string
	last time.Time
	done map[string]int64 // bytes of each file already queued
}

func newStagingWriteback(dir string) *stagingWriteback {
	return &stagingWriteback{dir: dir, done: map[string]int64{}}
}

// poll queues what the job wrote since the last call (at most every 20 ms).
func (w *stagingWriteback) poll() {
	if time.Since(w.last) < 20*time.Millisecond {
		return
	}
	w.last = time.Now()
	_ = filepath.WalkDir(w.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil || fi.Size()-w.done[p] < writeback.Step {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return nil
		}
		writeback.Start(f, w.done[p], fi.Size()-w.done[p])
		f.Close()
		w.done[p] = fi.Size()
		return nil
	})
}
