package agent

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/driver/drivertest"
	"github.com/ferrycluster/ferry/driver/qemu"
	"github.com/ferrycluster/ferry/pki"
)

// migrationRun is one measured live migration (one hop).
type migrationRun struct {
	ok        bool
	err       string
	qemuTotal time.Duration // QEMU's total-time at the source
	downtime  time.Duration // QEMU's reported downtime
	bytes     int64         // RAM bytes QEMU transferred
	// running: from the start of the move (tunnel: prepare answered;
	// direct: MigrateOut called, the destination already prepared) until
	// the destination has loaded the whole state and runs.
	running time.Duration
}

type benchRow struct {
	memMiB         int64
	load           string
	loop           float64 // loopback TCP bytes/s measured just before the row
	tunnel, direct []migrationRun
	silent         string // the guest stopped printing after a move
}

func kind(tunnel bool) string {
	if tunnel {
		return "tunnelled"
	}
	return "direct"
}

// BenchmarkMigrate live-migrates guests of 128, 256 and 512 MiB, idle and
// dirtying memory at about 10, 50 and 100 MB/s, through the agents (QEMU →
// unix socket → agent → mutual TLS → agent → unix socket → QEMU, with the
// whole prepare/perform/finish/confirm protocol) and directly between the
// two QEMUs over a unix socket, interleaved on the same guest: each round
// is tunnel A→B, direct B→A, direct A→B, tunnel B→A, so every hop leaves a
// QEMU that has not migrated before and both kinds see the same guest and
// the same machine load. Loopback TCP throughput is measured before each
// row. It prints a markdown table (docs/agent.md).
//
//	make bench-migrate    # go test -run '^$' -bench Migrate -benchtime 1x ./agent/...
//
// FERRY_BENCH_MEM (e.g. "128") and FERRY_BENCH_LOAD (e.g. "idle") narrow the
// matrix; FERRY_BENCH_ROUNDS (default 1) repeats the four hops.
func BenchmarkMigrate(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
	defer cancel()
	rounds := 1
	if v := os.Getenv("FERRY_BENCH_ROUNDS"); v != "" {
		if _, err := fmt.Sscan(v, &rounds); err != nil || rounds < 1 {
			b.Fatalf("FERRY_BENCH_ROUNDS=%q: want a positive number", v)
		}
	}
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
					r := benchRow{memMiB: mem, load: l.name, loop: loopbackThroughput(b, 256<<20)}
					benchMigrateRow(ctx, b, a, c, fmt.Sprintf("m%d-%s-%d", mem, l.name, i), l.workload, rounds, &r)
					rows = append(rows, r)
					if t, ok := median(r.tunnel, func(m migrationRun) time.Duration { return m.qemuTotal }); ok {
						b.ReportMetric(float64(t.Milliseconds()), "tunnel-total-ms")
					}
					if t, ok := median(r.direct, func(m migrationRun) time.Duration { return m.qemuTotal }); ok {
						b.ReportMetric(float64(t.Milliseconds()), "direct-total-ms")
					}
				}
			})
		}
	}
	fmt.Print(benchTable(rows))
}

// benchMigrateRow boots a guest on a and moves it for rounds × (tunnel,
// direct, direct, tunnel), checking after each hop that the guest carries
// on at the destination (its counter goes on from where it was).
func benchMigrateRow(ctx context.Context, b *testing.B, a, c *node, id, workload string, rounds int, row *benchRow) {
	spec := vmSpec(id, workload)
	spec.MemoryBytes = row.memMiB << 20
	if _, err := a.c.Run(ctx, api.RunRequest{Spec: spec}); err != nil {
		b.Fatal(err)
	}
	bctx, bcancel := context.WithTimeout(ctx, 4*time.Minute)
	a.waitCounter(bctx, id, 5)
	bcancel()
	time.Sleep(2 * time.Second) // let the workload reach its rate
	// The boot wrote all of RAM; every later hop's source was warmed up
	// when its state came in (driver/qemu warmUp): warm this one up too, so
	// that no kind of hop starts from a colder QEMU than the other.
	if err := a.drivers[0].(*qemu.Driver).WarmUp(ctx, id); err != nil {
		b.Fatal(err)
	}
	opts := driver.MigrationOptions{MaxDowntime: 50 * time.Millisecond}
	at, epoch := a, uint64(1)
	defer func() {
		// The agents' records may lag behind direct hops: stop both ways.
		for _, n := range []*node{a, c} {
			n.c.Stop(context.Background(), id, epoch)
			n.drivers[0].Stop(context.Background(), id)
		}
	}()
	other := func(n *node) *node {
		if n == a {
			return c
		}
		return a
	}
	for r := 0; r < rounds; r++ {
		for _, tunnel := range []bool{true, false, false, true} {
			src, dst := at, other(at)
			dlog := dst.drivers[0].(*qemu.Driver).LogPath(id)
			last := lastCounter(src.drivers[0].(*qemu.Driver).LogPath(id), 0)
			off := fileSize(dlog)
			mctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
			var m migrationRun
			if tunnel {
				m = tunnelHop(mctx, src, dst, id, epoch, opts)
				if m.ok {
					epoch++
				}
			} else {
				s := spec
				s.Epoch = epoch
				m = directHop(mctx, src, dst, s, opts)
			}
			cancel()
			if tunnel {
				row.tunnel = append(row.tunnel, m)
			} else {
				row.direct = append(row.direct, m)
			}
			if !m.ok {
				return
			}
			at = dst
			// The guest must carry on at the destination before it moves on;
			// one that does not is a finding for the table, not a benchmark
			// error.
			deadline := time.Now().Add(3 * time.Minute)
			for lastCounter(dlog, off) <= last {
				if time.Now().After(deadline) {
					row.silent = fmt.Sprintf("after a %s move to %s the guest printed no counter above %d within 3 min", kind(tunnel), dst.name, last)
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
}

// tunnelHop moves the task through the agents.
func tunnelHop(ctx context.Context, src, dst *node, id string, epoch uint64, opts driver.MigrationOptions) migrationRun {
	var prepared, finished time.Time
	ev, err := src.c.Migrate(ctx, id, api.MigrateRequest{Epoch: epoch, To: dst.addr, Mode: "live", Options: opts}, func(e api.MigrateEvent) {
		switch e.Step {
		case "prepare":
			prepared = time.Now()
		case "finish":
			finished = time.Now()
		}
	})
	if err != nil {
		return migrationRun{err: err.Error()}
	}
	m := migrationRun{ok: true, qemuTotal: ev.Progress.TotalTime, downtime: ev.Downtime, bytes: ev.Progress.TransferredBytes}
	if !prepared.IsZero() && !finished.IsZero() {
		m.running = finished.Sub(prepared)
	}
	return m
}

// directHop moves the task from QEMU to QEMU over the destination's
// incoming unix socket, driving the two drivers as the agents would but
// without them (the agents' records are not touched: the guest ends where
// the next hop expects it).
func directHop(ctx context.Context, src, dst *node, spec driver.Spec, opts driver.MigrationOptions) migrationRun {
	from := src.drivers[0].(driver.LiveMigrator)
	to := dst.drivers[0].(driver.LiveMigrator)
	sock, err := to.PrepareIncoming(ctx, spec)
	if err != nil {
		return migrationRun{err: err.Error()}
	}
	t0 := time.Now()
	p, err := from.MigrateOut(ctx, spec.ID, sock, opts, nil)
	if err == nil {
		err = to.FinishIncoming(ctx, spec.ID)
	}
	if err != nil {
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		from.AbortOut(cctx, spec.ID)
		to.AbortIncoming(cctx, spec.ID)
		return migrationRun{err: err.Error()}
	}
	m := migrationRun{ok: true, running: time.Since(t0), qemuTotal: p.TotalTime, downtime: p.Downtime, bytes: p.TransferredBytes}
	cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	from.ConfirmOut(cctx, spec.ID)
	return m
}

// lastCounter returns the last counter in the console log path after
// offset off, or -1.
func lastCounter(path string, off int64) int64 {
	b, _ := os.ReadFile(path)
	if off > int64(len(b)) {
		return -1
	}
	cs := drivertest.ParseCounters(b[off:])
	if len(cs) == 0 {
		return -1
	}
	return cs[len(cs)-1]
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// discard reads c to its end in 256 KiB reads (io.Discard's ReadFrom reads
// 8 KiB at a time, which would understate the stream) and closes it.
func discard(c net.Conn) int64 {
	defer c.Close()
	buf := make([]byte, 256<<10)
	var n int64
	for {
		k, err := c.Read(buf)
		n += int64(k)
		if err != nil {
			return n
		}
	}
}

// loopbackThroughput sends n bytes over one loopback TCP connection in
// 256 KiB writes, read in 256 KiB reads: a single stream, as QEMU's is.
// It returns bytes per second.
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
		discard(cn)
		done <- time.Now()
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

// median of f over the successful runs.
func median(runs []migrationRun, f func(migrationRun) time.Duration) (time.Duration, bool) {
	var v []time.Duration
	for _, m := range runs {
		if m.ok {
			v = append(v, f(m))
		}
	}
	if len(v) == 0 {
		return 0, false
	}
	slices.Sort(v)
	if len(v)%2 == 0 {
		return (v[len(v)/2-1] + v[len(v)/2]) / 2, true
	}
	return v[len(v)/2], true
}

// spread renders the median of f and, with more than one run, the range.
func spread(runs []migrationRun, f func(migrationRun) time.Duration) string {
	med, ok := median(runs, f)
	if !ok {
		return "failed"
	}
	lo, hi := med, med
	for _, m := range runs {
		if m.ok {
			lo, hi = min(lo, f(m)), max(hi, f(m))
		}
	}
	if lo == hi {
		return ms(med)
	}
	return fmt.Sprintf("%s (%s–%s)", ms(med), ms(lo), ms(hi))
}

// benchTable renders the rows as markdown with the targets' ratios (of
// medians).
func benchTable(rows []benchRow) string {
	total := func(m migrationRun) time.Duration { return m.qemuTotal }
	down := func(m migrationRun) time.Duration { return m.downtime }
	running := func(m migrationRun) time.Duration { return m.running }
	mb := func(runs []migrationRun) string {
		b, ok := median(runs, func(m migrationRun) time.Duration { return time.Duration(m.bytes) })
		if !ok {
			return "-"
		}
		return fmt.Sprintf("%.1f", float64(b)/1e6)
	}
	var sb strings.Builder
	sb.WriteString("\n| RAM MiB | load | loopback MB/s | tunnel total ms | direct total ms | tunnel/direct total | tunnel total / (RAM/loopback) | direct total / (RAM/loopback) | tunnel downtime ms | direct downtime ms | tunnel MB | direct MB | tunnel until running ms | direct until running ms |\n")
	sb.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		ideal := time.Duration(float64(r.memMiB<<20) / r.loop * float64(time.Second))
		ratio := func(runs []migrationRun, to time.Duration) string {
			t, ok := median(runs, total)
			if !ok || to <= 0 {
				return "-"
			}
			return fmt.Sprintf("%.2f", float64(t)/float64(to))
		}
		dt, _ := median(r.direct, total)
		fmt.Fprintf(&sb, "| %d | %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.memMiB, r.load, r.loop/1e6,
			spread(r.tunnel, total), spread(r.direct, total), ratio(r.tunnel, dt), ratio(r.tunnel, ideal), ratio(r.direct, ideal),
			spread(r.tunnel, down), spread(r.direct, down), mb(r.tunnel), mb(r.direct), spread(r.tunnel, running), spread(r.direct, running))
	}
	for _, r := range rows {
		for _, m := range append(r.tunnel, r.direct...) {
			if !m.ok {
				fmt.Fprintf(&sb, "\n%dMiB/%s: %s", r.memMiB, r.load, m.err)
			}
		}
		if r.silent != "" {
			fmt.Fprintf(&sb, "\n%dMiB/%s: %s", r.memMiB, r.load, r.silent)
		}
	}
	sb.WriteString("\n")
	return sb.String()
}

// cpuUsed returns the CPU time this process (both ends and both agents'
// pipes) has used.
func cpuUsed() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkMigrateTunnelPath measures the tunnel's byte path alone — unix
// socket → agent → mutual TLS 1.3 over loopback TCP → agent → unix socket —
// and, in the same run, the pieces it is made of, to separate the tunnel's
// capacity from QEMU's and to show what each costs in CPU time per GB
// carried (the stand-in ends included; a direct move's transport is the
// "unix" row):
//
//	unix    writer → unix socket → reader (a direct QEMU-to-QEMU move)
//	tcp     writer → loopback TCP → reader
//	tls     writer → mutual TLS 1.3 over loopback TCP → reader
//	plain   unix → pipe → loopback TCP → pipe → unix (the tunnel without TLS)
//	tunnel  unix → pipe → mutual TLS 1.3 → pipe → unix (the agents' tunnel)
//
//	go test -run '^$' -bench MigrateTunnelPath -benchtime 3x ./agent
func BenchmarkMigrateTunnelPath(b *testing.B) {
	const n = 512 << 20
	ca := newTestCA(b)
	srv := ca.identity("node-b", pki.RoleAgent).ServerConfig()
	cli := ca.identity("node-a", pki.RoleAgent).ClientConfig()
	paths := []struct {
		name string
		tls  bool // TLS between the two ends or the two pipes
		pipe bool // unix → pipe → … → pipe → unix
		unix bool // one unix socket, no TCP
	}{
		{name: "unix", unix: true}, {name: "tcp"}, {name: "tls", tls: true},
		{name: "plain", pipe: true}, {name: "tunnel", tls: true, pipe: true},
	}
	for _, p := range paths {
		b.Run(p.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				dir := b.TempDir()
				got := make(chan int64, 1)
				reader := func(c net.Conn) { got <- discard(c) }
				var ends []net.Listener
				listen := func(network, name string) net.Listener {
					addr := "127.0.0.1:0"
					if network == "unix" {
						addr = filepath.Join(dir, name)
					}
					l, err := net.Listen(network, addr)
					if err != nil {
						b.Fatal(err)
					}
					ends = append(ends, l)
					return l
				}
				// accept serves one connection of l with f (TLS server side
				// when secure).
				accept := func(l net.Listener, secure bool, f func(net.Conn)) {
					go func() {
						c, err := l.Accept()
						if err != nil {
							got <- 0
							return
						}
						if secure {
							c = tls.Server(c, srv)
						}
						f(c)
					}()
				}
				dial := func(network, addr string, secure bool) net.Conn {
					var c net.Conn
					var err error
					if secure {
						c, err = tls.Dial(network, addr, cli)
					} else {
						c, err = net.Dial(network, addr)
					}
					if err != nil {
						b.Fatal(err)
					}
					return c
				}
				var w net.Conn
				switch {
				case p.unix:
					l := listen("unix", "dst.sock")
					accept(l, false, reader)
					w = dial("unix", l.Addr().String(), false)
				case !p.pipe:
					l := listen("tcp", "")
					accept(l, p.tls, reader)
					w = dial("tcp", l.Addr().String(), p.tls)
				default:
					dl := listen("unix", "dst.sock")
					accept(dl, false, reader)
					tl := listen("tcp", "")
					accept(tl, p.tls, func(c net.Conn) { pipe(c, dial("unix", dl.Addr().String(), false)) })
					tc := dial("tcp", tl.Addr().String(), p.tls)
					sl := listen("unix", "src.sock")
					go func() {
						c, err := sl.Accept()
						if err != nil {
							tc.Close()
							return
						}
						pipe(c, tc)
					}()
					w = dial("unix", sl.Addr().String(), false)
				}
				buf := make([]byte, 128<<10)
				t0, c0 := time.Now(), cpuUsed()
				for sent := 0; sent < n; sent += len(buf) {
					if _, err := w.Write(buf); err != nil {
						b.Fatal(err)
					}
				}
				if cw, ok := w.(interface{ CloseWrite() error }); ok {
					cw.CloseWrite()
				}
				k := <-got
				el, cpu := time.Since(t0), cpuUsed()-c0
				w.Close()
				for _, l := range ends {
					l.Close()
				}
				if k != n {
					b.Fatalf("%s: carried %d bytes, want %d", p.name, k, n)
				}
				rate := float64(n) / el.Seconds()
				b.ReportMetric(rate/1e6, "MB/s")
				b.ReportMetric(cpu.Seconds()*1e3/(n/1e9), "cpu-ms/GB")
				fmt.Printf("\n%s path: %.0f MB/s, %.0f CPU-ms per GB\n", p.name, rate/1e6, cpu.Seconds()*1e3/(n/1e9))
			}
		})
	}
}
