package process

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as the jobs the tests run: with FERRY_TEST_JOB
// set it runs one of the small programs below instead of the tests. Each
// speaks the checkpoint protocol of docs/checkpointing.md.
const testJobEnv = "FERRY_TEST_JOB"

func TestMain(m *testing.M) {
	if name := os.Getenv(testJobEnv); name != "" {
		os.Exit(testJob(name))
	}
	os.Exit(m.Run())
}

func testJob(name string) int {
	// Listen first: a Go program silently drops a checkpoint request that
	// arrives before signal.Notify.
	sigs := make(chan os.Signal, 4)
	if name != "ignore" {
		signal.Notify(sigs, syscall.SIGUSR2, syscall.SIGUSR1)
	}
	ckpt := os.Getenv(EnvCheckpointDir)
	restore := ""
	if os.Getenv(EnvRestore) == "1" {
		restore = os.Getenv(EnvRestoreDir)
	}
	switch name {
	case "counter", "slow":
		// Prints "counter N" every 20 ms; checkpoints N. With
		// FERRY_TEST_ANSWER=exit it answers by exiting with the checkpoint
		// code; "slow" answers its second and later requests by writing a
		// partial file and hanging (for kill -9 tests).
		var n int64
		if restore != "" {
			b, err := os.ReadFile(filepath.Join(restore, "counter"))
			if err != nil {
				fmt.Println("restore:", err)
				return 2
			}
			n, _ = strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64)
			fmt.Println("restored", n)
		}
		requests := 0
		tick := time.NewTicker(20 * time.Millisecond)
		for {
			select {
			case <-tick.C:
				n++
				fmt.Println("counter", n)
			case <-sigs:
				requests++
				if name == "slow" && requests >= 2 {
					_ = os.WriteFile(filepath.Join(ckpt, "counter"), []byte("partial"), 0o644)
					time.Sleep(time.Hour)
				}
				if err := os.WriteFile(filepath.Join(ckpt, "counter"), []byte(strconv.FormatInt(n, 10)+"\n"), 0o644); err != nil {
					fmt.Println("checkpoint:", err)
					return 2
				}
				if _, err := os.Stat(filepath.Join(ckpt, ContinueRequest)); err != nil || os.Getenv("FERRY_TEST_ANSWER") == "exit" {
					return 85
				}
				if err := os.WriteFile(filepath.Join(ckpt, DoneMarker), nil, 0o644); err != nil {
					return 2
				}
			}
		}
	case "self":
		// Checkpoints itself every 10 counters by exiting with the
		// checkpoint code (HTCondor self-checkpointing); done at 40.
		var n int64
		if restore != "" {
			b, err := os.ReadFile(filepath.Join(restore, "counter"))
			if err != nil {
				fmt.Println("restore:", err)
				return 2
			}
			n, _ = strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64)
		}
		for n < 40 {
			n++
			fmt.Println("counter", n)
			time.Sleep(5 * time.Millisecond)
			if n%10 == 0 && n < 40 {
				if err := os.WriteFile(filepath.Join(ckpt, "counter"), []byte(strconv.FormatInt(n, 10)), 0o644); err != nil {
					return 2
				}
				return 85
			}
		}
		return 0
	case "ignore":
		signal.Ignore(syscall.SIGUSR2)
		for i := 1; ; i++ {
			fmt.Println("counter", i)
			time.Sleep(20 * time.Millisecond)
		}
	case "fail":
		for i := 1; i <= 30; i++ {
			fmt.Println("line", i)
		}
		fmt.Println("fatal: the answer is not 42")
		return 3
	case "exit":
		code, _ := strconv.Atoi(os.Getenv("FERRY_TEST_CODE"))
		time.Sleep(300 * time.Millisecond)
		return code
	case "blob":
		// Holds FERRY_TEST_BYTES of state; checkpoint-and-stop writes it to
		// "blob"; restore reads it back whole and checks its pattern (a
		// cheap check: the benchmark measures moving bytes, not hashing).
		size, _ := strconv.ParseInt(os.Getenv("FERRY_TEST_BYTES"), 10, 64)
		var state []byte
		if restore != "" {
			// Map the checkpoint rather than read it into fresh memory:
			// pages come straight from the page cache.
			f, err := os.Open(filepath.Join(restore, "blob"))
			if err != nil {
				fmt.Println("restore:", err)
				return 2
			}
			fi, _ := f.Stat()
			if fi.Size() > 0 {
				if state, err = syscall.Mmap(int(f.Fd()), 0, int(fi.Size()), syscall.PROT_READ, syscall.MAP_PRIVATE|syscall.MAP_POPULATE); err != nil {
					fmt.Println("restore: mmap:", err)
					return 2
				}
			}
			f.Close()
			for i := 0; i+8 <= len(state); i += 4096 {
				if binary.LittleEndian.Uint64(state[i:]) != uint64(i)*2654435761 {
					fmt.Println("restore: corrupt state at", i)
					return 2
				}
			}
			fmt.Println("restored", len(state))
		} else {
			state = make([]byte, size)
			for i := 0; i+8 <= len(state); i += 4096 {
				binary.LittleEndian.PutUint64(state[i:], uint64(i)*2654435761)
			}
			fmt.Println("ready", len(state))
		}
		<-sigs
		t0 := time.Now()
		// Stream it out in 8 MiB writes: on the development VM one 1 GiB
		// write(2) was three times slower than chunked writes.
		f, err := os.Create(filepath.Join(ckpt, "blob"))
		if err != nil {
			return 2
		}
		for off := 0; off < len(state); off += 8 << 20 {
			if _, err := f.Write(state[off:min(off+8<<20, len(state))]); err != nil {
				return 2
			}
		}
		if err := f.Close(); err != nil {
			return 2
		}
		// FERRY_TEST_COPIES=file holding n: n-1 more copies (a checkpoint
		// larger than the job's memory).
		var copies int
		if p := os.Getenv("FERRY_TEST_COPIES"); p != "" {
			b, _ := os.ReadFile(p)
			copies, _ = strconv.Atoi(string(bytes.TrimSpace(b)))
		}
		for i := 1; i < copies; i++ {
			if err := os.WriteFile(filepath.Join(ckpt, "blob."+strconv.Itoa(i)), state, 0o644); err != nil {
				return 2
			}
		}
		fmt.Println("wrote", len(state), "in", time.Since(t0))
		return 85
	case "rewrite":
		// Writes a checkpoint the way that defeats following it naively:
		// a body then its header, a file that shrinks, one written aside
		// and renamed, one that appears last, one removed; exits 85.
		if restore != "" {
			b, err := os.ReadFile(filepath.Join(restore, "state"))
			if err != nil || !bytes.HasPrefix(b, []byte("HEADER")) {
				fmt.Println("restore: bad state", err)
				return 2
			}
			fmt.Println("restored", len(b))
			<-sigs
			return 0
		}
		fmt.Println("ready")
		<-sigs
		pattern := func(n, seed int) []byte {
			b := make([]byte, n)
			for i := range b {
				b[i] = byte(i*seed + i>>12)
			}
			return b
		}
		write := func(name string, b []byte, step int) bool {
			f, err := os.Create(filepath.Join(ckpt, name))
			if err != nil {
				return false
			}
			defer f.Close()
			for off := 0; off < len(b); off += step {
				if _, err := f.Write(b[off:min(off+step, len(b))]); err != nil {
					return false
				}
				time.Sleep(time.Millisecond)
			}
			return true
		}
		state := pattern(6<<20+4096, 7)
		copy(state, make([]byte, 4096)) // header written as zeros first
		if !write("state", state, 256<<10) || !write("shrink", pattern(5<<20, 3), 512<<10) || !write("tmp", pattern(3<<20+11, 5), 512<<10) ||
			!write("gone", pattern(2<<20, 9), 1<<20) {
			return 2
		}
		time.Sleep(30 * time.Millisecond)
		f, err := os.OpenFile(filepath.Join(ckpt, "state"), os.O_WRONLY, 0)
		if err != nil {
			return 2
		}
		hdr := bytes.Repeat([]byte("HEADER.."), 512)
		if _, err := f.WriteAt(hdr, 0); err != nil || f.Close() != nil {
			return 2
		}
		if os.Truncate(filepath.Join(ckpt, "shrink"), 2<<20+1000) != nil || os.Remove(filepath.Join(ckpt, "gone")) != nil ||
			os.MkdirAll(filepath.Join(ckpt, "sub"), 0o755) != nil || os.Rename(filepath.Join(ckpt, "tmp"), filepath.Join(ckpt, "sub", "final")) != nil {
			return 2
		}
		time.Sleep(30 * time.Millisecond)
		if !write("late", pattern(1<<20+7, 11), 1<<20) {
			return 2
		}
		return 85
	}
	fmt.Println("unknown test job", name)
	return 2
}
