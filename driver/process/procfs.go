package process

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// clockTick is USER_HZ, the unit of /proc/PID/stat times (100 on Linux).
const clockTick = 100

// procStat is the part of /proc/PID/stat the driver reads.
type procStat struct {
	state byte
	cpu   time.Duration // utime+stime+cutime+cstime
	start uint64        // starttime in clock ticks since boot
}

// parseProcStat parses the text of /proc/PID/stat. The command name is in
// parentheses and may itself contain spaces and parentheses, so fields are
// counted from the last ')'.
func parseProcStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 > len(b) {
		return procStat{}, errors.New("stat: no command field")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); field N is f[N-3].
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("stat: %d fields after the command, want >= 20", len(f))
	}
	var ticks uint64
	for _, n := range []int{14, 15, 16, 17} {
		v, err := strconv.ParseInt(f[n-3], 10, 64)
		if err != nil || v < 0 {
			return procStat{}, fmt.Errorf("stat: field %d %q", n, f[n-3])
		}
		ticks += uint64(v)
	}
	start, err := strconv.ParseUint(f[22-3], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("stat: field 22 %q", f[22-3])
	}
	return procStat{state: f[0][0], cpu: time.Duration(ticks) * time.Second / clockTick, start: start}, nil
}

func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	return parseProcStat(b)
}

// alive reports whether pid is a live (not zombie) process started at start
// (0: any start time).
func alive(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	st, err := readProcStat(pid)
	if err != nil {
		return false
	}
	if start != 0 && st.start != start {
		return false // pid reused
	}
	return st.state != 'Z' && st.state != 'X'
}

// procIO is /proc/PID/io: bytes moved through read/write calls (rchar,
// wchar, page-cache hits included) and bytes that reached storage.
type procIO struct {
	rchar, wchar, readBytes, writeBytes int64
}

func parseProcIO(b []byte) (procIO, error) {
	var io procIO
	found := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil || n < 0 {
			continue
		}
		switch k {
		case "rchar":
			io.rchar = n
		case "wchar":
			io.wchar = n
		case "read_bytes":
			io.readBytes = n
		case "write_bytes":
			io.writeBytes = n
		default:
			continue
		}
		found++
	}
	if found < 2 {
		return procIO{}, errors.New("io: no rchar/wchar")
	}
	return io, nil
}

// rssBytes reads VmRSS from /proc/PID/status.
func rssBytes(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) >= 1 {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				if err == nil {
					return kb * 1024, nil
				}
			}
		}
	}
	return 0, errors.New("no VmRSS")
}

// waitExit blocks until the process pid (started at start) is gone or
// stop is closed. It uses a pidfd where the kernel has one (works for
// processes that are not our children, as after an agent restart) and polls
// /proc otherwise.
func waitExit(pid int, start uint64, stop <-chan struct{}) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err == nil {
		defer unix.Close(fd)
		if !alive(pid, start) { // pid reused between the check and the open
			return
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, err := unix.Poll(fds, 200)
			if n > 0 || (err != nil && err != unix.EINTR) {
				return
			}
		}
	}
	for alive(pid, start) {
		select {
		case <-stop:
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// writeJSONAtomic writes v as JSON to path: a temporary file in the same
// directory, renamed over path. Readers see the old or the new content,
// never a mix, even if the writer is killed. Without fsync: these are
// records of running processes, which a machine crash ends anyway; a
// checkpoint's manifest uses writeJSONDurable.
func writeJSONAtomic(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(b, '\n'), false)
}

// writeJSONDurable is writeJSONAtomic with the file and its directory
// fsynced: it survives a machine crash.
func writeJSONDurable(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(b, '\n'), true)
}

func writeFileAtomic(path string, b []byte, durable bool) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil && durable {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if !durable {
		return nil
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// readJSON reads a JSON file into v, refusing trailing garbage.
func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	if dec.More() {
		return fmt.Errorf("%s: trailing data", filepath.Base(path))
	}
	return nil
}

// signalDisposition reads from /proc/PID/status whether the process has a
// handler for sig (SigCgt) or ignores it (SigIgn). The driver sends the
// checkpoint signal only to a job that catches it: before the job has set
// up its handler the default action would kill it.
func signalDisposition(pid int, sig int) (caught, ignored bool, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return false, false, err
	}
	return parseSignalMasks(b, sig)
}

func parseSignalMasks(b []byte, sig int) (caught, ignored bool, err error) {
	if sig < 1 || sig > 64 {
		return false, false, fmt.Errorf("signal %d out of range", sig)
	}
	bit := uint64(1) << (sig - 1)
	found := 0
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "SigCgt" && k != "SigIgn") {
			continue
		}
		mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		if err != nil {
			return false, false, fmt.Errorf("status %s: %q", k, v)
		}
		if k == "SigCgt" {
			caught = mask&bit != 0
		} else {
			ignored = mask&bit != 0
		}
		found++
	}
	if found != 2 {
		return false, false, errors.New("status: no SigCgt/SigIgn")
	}
	return caught, ignored, nil
}
