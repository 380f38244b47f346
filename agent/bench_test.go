package agent

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/pki"
)

// migrationRun is one measured live migration.
type migrationRun struct {
	ok        bool
	err       string
	wall      time.Duration // from the request to the destination running
	qemuTotal time.Duration // QEMU's total-time
	downtime  time.Duration // QEMU's reported downtime
	bytes     int64         // RAM bytes QEMU transferred
}

type benchRow struct {
	memMiB         int64
	load           string
	tunnel, direct migrationRun
}

// BenchmarkMigrate live-migrates guests of 128, 256 and 512 MiB, idle and
// dirtying memory at about 10, 50 and 100 MB/s, once through the agents
// (QEMU → unix socket → agent → mutual TLS → agent → unix socket → QEMU,
// with the whole prepare/perform/finish/confirm protocol) and once directly
// between the two QEMUs over a unix socket, and measures loopback TCP
// throughput in the same run. It prints a markdown table (docs/agent.md).
//
//	make bench-migrate    # go test -run '^$' -bench Migrate -benchtime 1x ./agent/...
//
// FERRY_BENCH_MEM (e.g. "128") and FERRY_BENCH_LOAD (e.g. "idle") narrow the
// matrix.
func BenchmarkMigrate(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
	defer cancel()
	loop := loopbackThroughput(b, 1<<30)
	b.Logf("loopback TCP throughput: %.0f MB/s", loop/1e6)
	ca := newTestCA(b)
	a := startNode(b, ca, "node-a", qemuDrivers(b), nil)
	c := startNode(b, ca, "node-b", qemuDrivers(b), nil)
	loads := []struct{ name, workload string }{
		{"idle", "counter"}, {"dirty10", "dirty 10 48"}, {"dirty50", "dirty 50 48"}, {"dirty100", "dirty 100 48"},
	}
	var rows []benchRow
	for _, mem := range []int64{128, 256, 512} {
		if f := os.Getenv("FERRY_BENCH_MEM"); f != "" && f != fmt.Sprint(mem) {
			continue
		}
		for _, l := range loads {
			if f := os.Getenv("FERRY_BENCH_LOAD"); f != "" && f != l.name {
				continue
			}
			b.Run(fmt.Sprintf("%dMiB/%s", mem, l.name), func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					r := benchMigrateOnce(ctx, b, a, c, fmt.Sprintf("m%d-%s-%d", mem, l.name, i), mem, l.workload)
					r.load = l.name
					rows = append(rows, r)
					if r.tunnel.ok {
						b.ReportMetric(float64(r.tunnel.qemuTotal.Milliseconds()), "tunnel-total-ms")
						b.ReportMetric(float64(r.tunnel.downtime.Milliseconds()), "tunnel-downtime-ms")
					}
					if r.direct.ok {
						b.ReportMetric(float64(r.direct.qemuTotal.Milliseconds()), "direct-total-ms")
						b.ReportMetric(float64(r.direct.downtime.Milliseconds()), "direct-downtime-ms")
					}
				}
			})
		}
	}
	fmt.Print(benchTable(rows, loop))
}

func benchMigrateOnce(ctx context.Context, b *testing.B, a, c *node, id string, memMiB int64, workload string) benchRow {
	row := benchRow{memMiB: memMiB}
	spec := vmSpec(id, workload)
	spec.MemoryBytes = memMiB << 20
	if _, err := a.c.Run(ctx, api.RunRequest{Spec: spec}); err != nil {
		b.Fatal(err)
	}
	bctx, bcancel := context.WithTimeout(ctx, 4*time.Minute)
	a.waitCounter(bctx, id, 5)
	bcancel()
	time.Sleep(2 * time.Second) // let the workload reach its rate
	opts := driver.MigrationOptions{MaxDowntime: 50 * time.Millisecond}

	// Through the agents: A → B.
	mctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	t0 := time.Now()
	ev, err := a.c.Migrate(mctx, id, api.MigrateRequest{Epoch: 1, To: c.addr, Mode: "live", Options: opts}, nil)
	cancel()
	if err != nil {
		row.tunnel = migrationRun{err: err.Error()}
		a.c.Stop(ctx, id, 1)
		return row
	}
	row.tunnel = migrationRun{ok: true, wall: time.Since(t0), qemuTotal: ev.Progress.TotalTime, downtime: ev.Downtime, bytes: ev.Progress.TransferredBytes}
	// The guest must run at the destination before it moves back.
	deadline := time.Now().Add(3 * time.Minute)
	for len(c.counters(ctx, id)) < 2 {
		if time.Now().After(deadline) {
			row.direct = migrationRun{err: "guest printed nothing at the destination within 3 min after the tunnelled move; direct move skipped"}
			c.c.Stop(ctx, id, 2)
			return row
		}
		time.Sleep(250 * time.Millisecond)
	}

	// Directly between the QEMUs: B → A over A's incoming socket.
	src := c.drivers[0].(driver.LiveMigrator)
	dst := a.drivers[0].(driver.LiveMigrator)
	spec.Epoch = 3
	mctx, cancel = context.WithTimeout(ctx, 3*time.Minute)
	t0 = time.Now()
	sock, err := dst.PrepareIncoming(mctx, spec)
	if err != nil {
		b.Fatal(err)
	}
	p, err := src.MigrateOut(mctx, id, sock, opts, nil)
	if err == nil {
		err = dst.FinishIncoming(mctx, id)
	}
	cancel()
	if err != nil {
		row.direct = migrationRun{err: err.Error()}
		src.AbortOut(ctx, id)
		dst.AbortIncoming(ctx, id)
	} else {
		row.direct = migrationRun{ok: true, wall: time.Since(t0), qemuTotal: p.TotalTime, downtime: p.Downtime, bytes: p.TransferredBytes}
		src.ConfirmOut(ctx, id)
		a.drivers[0].Stop(ctx, id)
	}
	c.c.Stop(ctx, id, 2)
	return row
}

// loopbackThroughput sends n bytes over a loopback TCP connection and
// returns bytes per second.
func loopbackThroughput(b *testing.B, n int64) float64 {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	done := make(chan time.Time, 1)
	go func() {
		cn, err := l.Accept()
		if err != nil {
			done <- time.Now()
			return
		}
		io.Copy(io.Discard, cn)
		done <- time.Now()
		cn.Close()
	}()
	cn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 256<<10)
	t0 := time.Now()
	for sent := int64(0); sent < n; sent += int64(len(buf)) {
		if _, err := cn.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	cn.Close()
	end := <-done
	return float64(n) / end.Sub(t0).Seconds()
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f", float64(d.Microseconds())/1000) }

// benchTable renders the rows as markdown with the targets' ratios.
func benchTable(rows []benchRow, loop float64) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "\nloopback TCP: %.0f MB/s\n\n", loop/1e6)
	sb.WriteString("| RAM MiB | load | tunnel total ms | tunnel downtime ms | tunnel MB sent | tunnel wall ms | direct total ms | direct downtime ms | direct MB sent | tunnel/direct total | total / (RAM/loopback) |\n")
	sb.WriteString("|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		cell := func(m migrationRun, f func(migrationRun) string) string {
			if !m.ok {
				return "failed"
			}
			return f(m)
		}
		ratio, ideal := "-", "-"
		if r.tunnel.ok && r.direct.ok && r.direct.qemuTotal > 0 {
			ratio = fmt.Sprintf("%.2f", float64(r.tunnel.qemuTotal)/float64(r.direct.qemuTotal))
		}
		if r.tunnel.ok {
			idealT := float64(r.memMiB<<20) / loop
			ideal = fmt.Sprintf("%.1f", r.tunnel.qemuTotal.Seconds()/idealT)
		}
		fmt.Fprintf(&sb, "| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.memMiB, r.load,
			cell(r.tunnel, func(m migrationRun) string { return ms(m.qemuTotal) }),
			cell(r.tunnel, func(m migrationRun) string { return ms(m.downtime) }),
			cell(r.tunnel, func(m migrationRun) string { return fmt.Sprintf("%.1f", float64(m.bytes)/1e6) }),
			cell(r.tunnel, func(m migrationRun) string { return ms(m.wall) }),
			cell(r.direct, func(m migrationRun) string { return ms(m.qemuTotal) }),
			cell(r.direct, func(m migrationRun) string { return ms(m.downtime) }),
			cell(r.direct, func(m migrationRun) string { return fmt.Sprintf("%.1f", float64(m.bytes)/1e6) }),
			ratio, ideal)
	}
	for _, r := range rows {
		if !r.tunnel.ok {
			fmt.Fprintf(&sb, "\n%dMiB/%s tunnel: %s", r.memMiB, r.load, r.tunnel.err)
		}
		if !r.direct.ok {
			fmt.Fprintf(&sb, "\n%dMiB/%s direct: %s", r.memMiB, r.load, r.direct.err)
		}
	}
	sb.WriteString("\n")
	return sb.String()
}

// BenchmarkMigrateTunnelPath measures the tunnel's byte path alone — unix
// socket → agent → mutual TLS 1.3 over loopback TCP → agent → unix socket —
// against loopback TCP in the same run, to separate the tunnel's capacity
// from QEMU's.
func BenchmarkMigrateTunnelPath(b *testing.B) {
	const n = 512 << 20
	loop := loopbackThroughput(b, n)
	ca := newTestCA(b)
	srcID, dstID := ca.identity("node-a", pki.RoleAgent), ca.identity("node-b", pki.RoleAgent)
	dir := b.TempDir()
	for i := 0; i < b.N; i++ {
		dstSock := filepath.Join(dir, fmt.Sprintf("dst%d.sock", i))
		dstLn, err := net.Listen("unix", dstSock)
		if err != nil {
			b.Fatal(err)
		}
		got := make(chan int64, 1)
		go func() {
			c, err := dstLn.Accept()
			if err != nil {
				got <- 0
				return
			}
			k, _ := io.Copy(io.Discard, c)
			c.Close()
			got <- k
		}()
		tln, err := tls.Listen("tcp", "127.0.0.1:0", dstID.ServerConfig())
		if err != nil {
			b.Fatal(err)
		}
		go func() {
			c, err := tln.Accept()
			if err != nil {
				return
			}
			q, err := net.Dial("unix", dstSock)
			if err != nil {
				c.Close()
				return
			}
			pipe(c, q)
		}()
		srcSock := filepath.Join(dir, fmt.Sprintf("src%d.sock", i))
		srcLn, err := net.Listen("unix", srcSock)
		if err != nil {
			b.Fatal(err)
		}
		tc, err := tls.Dial("tcp", tln.Addr().String(), srcID.ClientConfig())
		if err != nil {
			b.Fatal(err)
		}
		go func() {
			c, err := srcLn.Accept()
			if err != nil {
				return
			}
			pipe(c, tc)
		}()
		c, err := net.Dial("unix", srcSock)
		if err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 256<<10)
		t0 := time.Now()
		for sent := 0; sent < n; sent += len(buf) {
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		c.(*net.UnixConn).CloseWrite()
		k := <-got
		el := time.Since(t0)
		c.Close()
		dstLn.Close()
		srcLn.Close()
		tln.Close()
		if k != n {
			b.Fatalf("carried %d bytes, want %d", k, n)
		}
		rate := float64(n) / el.Seconds()
		b.ReportMetric(rate/1e6, "tunnel-MB/s")
		b.ReportMetric(loop/1e6, "loopback-MB/s")
		fmt.Printf("\ntunnel path: %.0f MB/s; loopback TCP: %.0f MB/s (ratio %.2f)\n", rate/1e6, loop/1e6, rate/loop)
	}
}
