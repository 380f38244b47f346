package process

import (
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/internal/writeback"
	"github.com/ferrycluster/ferry/pki"
)

// BenchmarkCheckpointFloor measures, on this machine and in one run, each
// step that a checkpoint + move + restart through two agents must take and
// a plain copy of the same bytes does not, so that the lowest ratio any
// implementation could reach here is known (docs/checkpointing.md, "The
// floor"):
//
//   - write-s: the job's own write of its state from memory into a new
//     file (8 MiB writes, early writeback every 16 MiB as the driver
//     queues it); the plain copy's source is already a cached file;
//   - fsync-s: the source's commit, fsync of that file afterwards;
//   - handshake-s: one mutual-TLS handshake (ECDSA certificates from
//     pki) on loopback, the fastest of three;
//   - tls-s and tls+fsync-s: the plain copy again through that TLS
//     connection (1 MiB buffers both sides; sendfile and splice cannot
//     serve TLS in user space), the fastest of three each;
//   - ckpt0-s and restart0-s: the fixed cost of a checkpoint (signal,
//     answer, commit) and of a restart (a new supervisor and job reading
//     its state back), from a job holding 4 KiB (median of three).
//
// floor-s is their sum without overlap: write + fsync + tls+fsync +
// ckpt0 + restart0 (tls+fsync includes its handshake: handshake-s is
// shown, not added); floor-stream-s is the same with the job's write and
// the source's commit overlapped with the transfer (as a perfect stream
// would: max(write + fsync, tls+fsync)); the ratios are over plain+fsync,
// as ratio-fsync is in the other benchmarks. floor-tcp-ratio and
// floor-tcp-stream-ratio are the same two without TLS (two drivers over
// plain TCP, BenchmarkCheckpoint): the copy is then plain+fsync itself,
// and no handshake. The timed part (ns/op, and MB/s from it) is the
// write and the six TLS copies, not a checkpoint: read the metrics.
func BenchmarkCheckpointFloor(b *testing.B) {
	benchSizes(b, benchFloorOnce)
}

func benchFloorOnce(b *testing.B, size int64) {
	b.StopTimer()
	root := b.TempDir()
	plain, plainSync := baselines(b, root, size)
	ckpt0, restart0 := fixedCosts(b)

	cl := newAgentCluster(b)
	srv, cli := cl.identity("node-a", pki.RoleAgent), cl.identity("node-b", pki.RoleAgent)
	state := make([]byte, size)
	for i := 0; i+8 <= len(state); i += 4096 {
		binary.LittleEndian.PutUint64(state[i:], uint64(i)*2654435761)
	}
	src := filepath.Join(root, "state")
	startBench(b, root, size)
	write, fsync := writeState(b, src, state)
	var shake, tlsCopy, tlsSync time.Duration = 1 << 62, 1 << 62, 1 << 62
	for i := 0; i < 3; i++ {
		h, d := tlsCopyOnce(b, srv.ServerConfig(), cli.ClientConfig(), src, filepath.Join(root, "tls-dst"), false)
		shake, tlsCopy = min(shake, h), min(tlsCopy, d)
		_, d = tlsCopyOnce(b, srv.ServerConfig(), cli.ClientConfig(), src, filepath.Join(root, "tls-dst-sync"), true)
		tlsSync = min(tlsSync, d)
	}
	b.StopTimer()
	floor := write + fsync + tlsSync + ckpt0 + restart0
	stream := max(write+fsync, tlsSync) + ckpt0 + restart0
	b.ReportMetric(write.Seconds(), "write-s")
	b.ReportMetric(fsync.Seconds(), "fsync-s")
	b.ReportMetric(shake.Seconds(), "handshake-s")
	b.ReportMetric(tlsCopy.Seconds(), "tls-s")
	b.ReportMetric(tlsSync.Seconds(), "tls+fsync-s")
	b.ReportMetric(ckpt0.Seconds(), "ckpt0-s")
	b.ReportMetric(restart0.Seconds(), "restart0-s")
	b.ReportMetric(plain.Seconds(), "plain-s")
	b.ReportMetric(plainSync.Seconds(), "plain+fsync-s")
	b.ReportMetric(floor.Seconds(), "floor-s")
	b.ReportMetric(floor.Seconds()/plainSync.Seconds(), "floor-ratio")
	b.ReportMetric(stream.Seconds(), "floor-stream-s")
	b.ReportMetric(stream.Seconds()/plainSync.Seconds(), "floor-stream-ratio")
	// The same between two drivers over plain TCP (no TLS): the copy is
	// the baseline itself.
	tcp := write + fsync + plainSync + ckpt0 + restart0
	b.ReportMetric(tcp.Seconds()/plainSync.Seconds(), "floor-tcp-ratio")
	b.ReportMetric((max(write+fsync, plainSync)+ckpt0+restart0).Seconds()/plainSync.Seconds(), "floor-tcp-stream-ratio")
	b.SetBytes(size)
}

// writeState writes state to path as the blob job does (8 MiB writes) with
// the driver's early writeback, and fsyncs it as the commit does.
func writeState(b *testing.B, path string, state []byte) (write, fsync time.Duration) {
	t0 := time.Now()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var queued int64
	for off := 0; off < len(state); off += 8 << 20 {
		end := min(off+8<<20, len(state))
		if _, err := f.Write(state[off:end]); err != nil {
			b.Fatal(err)
		}
		if int64(end)-queued >= writeback.Step {
			writeback.Start(f, queued, int64(end)-queued)
			queued = int64(end)
		}
	}
	t1 := time.Now()
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	return t1.Sub(t0), time.Since(t1)
}

// tlsCopyOnce copies src to dst over a mutual-TLS loopback connection
// (1 MiB buffers) and returns the handshake's time and the copy's (the
// handshake included).
func tlsCopyOnce(b *testing.B, server, client *tls.Config, src, dst string, sync bool) (handshake, total time.Duration) {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", server)
	if err != nil {
		b.Fatal(err)
	}
	dial := func(addr string) (net.Conn, error) {
		c, err := tls.Dial("tcp", addr, client)
		if err == nil {
			err = c.Handshake()
		}
		return c, err
	}
	return timedCopy(b, ln, dial, src, dst, sync, func(w io.Writer, r io.Reader) (int64, error) {
		return io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{r}, make([]byte, 1<<20))
	})
}

// fixedCosts is the median of three checkpoints (Suspend: signal, answer,
// commit) and restarts (Resume until the job has its state) of a job
// holding 4 KiB, between two drivers.
func fixedCosts(b *testing.B) (ckpt, restart time.Duration) {
	var cs, rs []time.Duration
	for i := 0; i < 3; i++ {
		r := newBenchRig(b, 4096)
		t0 := time.Now()
		img, err := r.a.Suspend(r.ctx, "blob", filepath.Join(r.root, "image"))
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		r.resumeOnB(b, img.Dir)
		cs, rs = append(cs, t1.Sub(t0)), append(rs, time.Since(t1))
		_ = r.b.Stop(r.ctx, "blob")
	}
	return median3(cs), median3(rs)
}

func median3(d []time.Duration) time.Duration {
	a, b, c := d[0], d[1], d[2]
	return max(min(a, b), min(max(a, b), c))
}
