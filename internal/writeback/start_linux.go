package writeback

import (
	"os"

	"golang.org/x/sys/unix"
)

// Start queues n bytes of f from off for the disk (n == 0: to the end of
// the file) without waiting. A hint: an error only means the final fsync
// does all the work.
func Start(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}
