package process

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Early writeback: a checkpoint is fsynced before it counts (on the node
// that takes it and on the node that receives it). Left to the end, that
// fsync writes the whole image while nothing else happens; started while
// the bytes arrive (sync_file_range(SYNC_FILE_RANGE_WRITE), which queues
// the dirty pages for the disk without waiting), the disk works while the
// job or the network still produces, and the final fsync only waits for
// the tail. The durability is the same: the commit still fsyncs every
// file and directory.

// writebackStep is how many new bytes of a file trigger a writeback.
const writebackStep = 16 << 20

// startWriteback queues n bytes of f from off for the disk (a hint: an
// error only means the final fsync does all the work).
func startWriteback(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}

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
		if err != nil || fi.Size()-w.done[p] < writebackStep {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return nil
		}
		startWriteback(f, w.done[p], fi.Size()-w.done[p])
		f.Close()
		w.done[p] = fi.Size()
		return nil
	})
}

// copyWriteback copies size bytes from r to f (splice from a socket where
// the kernel can), queueing each writebackStep for the disk as it lands.
func copyWriteback(f *os.File, r io.Reader, size int64) (int64, error) {
	var off int64
	for off < size {
		n, err := io.CopyN(f, r, min(writebackStep, size-off))
		if n > 0 {
			startWriteback(f, off, n)
		}
		off += n
		if err != nil {
			return off, err
		}
	}
	return off, nil
}
