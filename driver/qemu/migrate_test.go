package qemu

import (
	"github.com/ferrycluster/ferry/driver"
	"testing"
	"time"
)

// queryStatus returns QEMU's run state of the task on d.
func queryStatus(t *testing.T, d *Driver, id string) string {
	t.Helper()
	tk, err := d.lookup(id)
	if err != nil {
		t.Fatal(err)
	}
	var qs struct {
		Status string `json:"status"`
	}
	if err := tk.execute(ctxT(t, time.Minute), "query-status", nil, &qs); err != nil {
		t.Fatal(err)
	}
	return qs.Status
}

// A warm-up migration gets past its setup (the dirty-bitmap sync), ends by
// itself and never pauses the guest; a live migration started while one is
// in flight waits for it, and the guest then carries on at the destination,
// which warms up in turn.
func TestWarmUp(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 5*time.Minute)
	a, b := newDriver(t), newDriver(t)
	s := spec("warm")
	if err := a.Start(ctx, s); err != nil {
		t.Fatal(err)
	}
	last := waitCounter(t, a, s.ID, 0, 2)
	ta, err := a.lookup(s.ID)
	if err != nil {
		t.Fatal(err)
	}
	// WarmUp fails unless QEMU announced the end of the setup (the sync).
	if err := a.WarmUp(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	var mi migrateInfo
	if err := ta.execute(ctx, "query-migrate", nil, &mi); err != nil || (mi.Status != "cancelled" && mi.Status != "failed") {
		t.Fatalf("after a warm-up the migration is %q (%s), err %v; want cancelled or failed", mi.Status, mi.ErrorDesc, err)
	}
	if st := queryStatus(t, a, s.ID); st != "running" {
		t.Fatalf("after a warm-up the guest is %q, want running", st)
	}
	last = waitCounter(t, a, s.ID, 0, last)

	// A move without a downtime limit gets QEMU's default, not the one the
	// operation before it set (QEMU keeps parameters between migrations).
	for _, o := range []struct {
		opts driver.MigrationOptions
		want int64
	}{{driver.MigrationOptions{MaxDowntime: 100 * time.Millisecond}, 100}, {driver.MigrationOptions{}, defaultDowntimeLimitMS}} {
		if err := ta.setMigration(ctx, o.opts); err != nil {
			t.Fatal(err)
		}
		var p struct {
			DowntimeLimit int64 `json:"downtime-limit"`
		}
		if err := ta.execute(ctx, "query-migrate-parameters", nil, &p); err != nil || p.DowntimeLimit != o.want {
			t.Fatalf("after setMigration(%+v) downtime-limit is %d ms (err %v), want %d", o.opts, p.DowntimeLimit, err, o.want)
		}
	}

	a.warmUp(ta) // in flight while the move starts
	sock, err := b.PrepareIncoming(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.MigrateOut(ctx, s.ID, sock, driver.MigrationOptions{MaxDowntime: 50 * time.Millisecond}, nil); err != nil {
		t.Fatalf("migrate during a warm-up: %v", err)
	}
	if err := b.FinishIncoming(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	if err := a.ConfirmOut(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	tb, err := b.lookup(s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := tb.waitWarm(ctx); err != nil { // the one FinishIncoming began
		t.Fatal(err)
	}
	if st := queryStatus(t, b, s.ID); st != "running" {
		t.Fatalf("after its warm-up the destination is %q, want running", st)
	}
	waitCounter(t, b, s.ID, 0, last)
}
