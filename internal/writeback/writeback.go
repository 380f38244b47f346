// Package writeback starts the disk's work on a file while it is still
// being written. A checkpoint or image is fsynced before it counts; left
// to the end, that fsync writes the whole file while nothing else happens.
// Queued as the bytes land (sync_file_range(SYNC_FILE_RANGE_WRITE) on
// Linux, which does not wait), the disk works while the job or the network
// still produces, and the final fsync only waits for the tail. Durability
// is the same: the callers still fsync every file and directory.
package writeback

import (
	"errors"
	"io"
	"os"
)

// Step is how many new bytes of a file Copy writes before queueing them.
const Step = 16 << 20

// Copy copies r to f, size bytes (fewer only with an error, io.EOF when r
// ends first) or, with size < 0, until r ends, queueing each Step for the
// disk as it lands. It returns the bytes copied. io.Copy underneath
// splices from a socket where the kernel can.
func Copy(f *os.File, r io.Reader, size int64) (int64, error) {
	var off int64
	for size < 0 || off < size {
		step := int64(Step)
		if size >= 0 {
			step = min(step, size-off)
		}
		n, err := io.CopyN(f, r, step)
		if n > 0 {
			Start(f, off, n)
		}
		off += n
		if size < 0 && errors.Is(err, io.EOF) {
			return off, nil
		}
		if err != nil {
			return off, err
		}
	}
	return off, nil
}
