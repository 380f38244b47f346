package process

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/agent"
	"github.com/ferrycluster/ferry/agent/api"
)

// BenchmarkCheckpointAgents is BenchmarkCheckpoint through two real agents
// on loopback: a checkpoint migration (POST /v1/tasks/{id}/migrate, mode
// checkpoint) — Suspend on A, the image fetched by B over mutual TLS, with
// each image transfer (agent.Config.ImageTransfer: cas = chunk transfer
// through the node's chunk store, tar = one tar stream), Resume on B at the
// next epoch — until the job on B has its state back. ckpt ends at the
// "perform" event, move at "finish" (fetch, commit and B's Resume call),
// resume when the job says "restored". stream = ferry agent
// --image-transfer=stream: the checkpoint crosses while the job writes it
// (ImageLiveProtocol), so ckpt (until "perform") includes the move of all
// but what the destination does after its copy is committed.
//
// cas-back times the move back (B → A, the job's state unchanged) after an
// untimed A → B: with the chunk transfer, A holds the image's chunks from
// its first send, so the state crosses as its index (nothing else); B
// first finishes keeping the chunks it received raw.
func BenchmarkCheckpointAgents(b *testing.B) {
	for _, transfer := range []string{agent.ImageTransferCAS, agent.ImageTransferTar, "cas-back", agent.ImageTransferStream} {
		b.Run(transfer, func(b *testing.B) {
			benchSizes(b, func(b *testing.B, size int64) { benchAgentsOnce(b, transfer, size) })
		})
	}
}

func benchAgentsOnce(b *testing.B, transfer string, size int64) {
	back := transfer == "cas-back"
	if back {
		transfer = agent.ImageTransferCAS
	}
	b.StopTimer()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cl := newAgentCluster(b)
	cl.transfer = transfer
	na, nb := cl.start("node-a"), cl.start("node-b")
	spec := jobSpec("blob", "blob", map[string]string{"FERRY_TEST_BYTES": strconv.FormatInt(size, 10)})
	spec.Process.CheckpointTimeout = 5 * time.Minute
	if _, err := na.c.Run(ctx, api.RunRequest{Spec: spec}); err != nil {
		b.Fatal(err)
	}
	waitLog(b, na.drv, "blob", "ready ")
	plain, plainSync := baselines(b, b.TempDir(), size)
	from, to, epoch := na, nb, uint64(1)
	if back {
		if _, err := na.c.Migrate(ctx, "blob", api.MigrateRequest{Epoch: 1, To: nb.addr, Mode: "checkpoint"}, nil); err != nil {
			b.Fatal(err)
		}
		waitLog(b, nb.drv, "blob", "restored ")
		from, to, epoch = nb, na, 2
	}

	startBench(b, b.TempDir(), size)
	t0 := time.Now()
	cpu0 := cpuTime()
	var t1, t2 time.Time
	_, err := from.c.Migrate(ctx, "blob", api.MigrateRequest{Epoch: epoch, To: to.addr, Mode: "checkpoint"}, func(ev api.MigrateEvent) {
		switch ev.Step {
		case "perform":
			t1 = time.Now()
		case "finish":
			t2 = time.Now()
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	waitLog(b, to.drv, "blob", "restored ")
	t3 := time.Now()
	stopBench(b, cpu0)
	report(b, size, t1.Sub(t0), t2.Sub(t1), t3.Sub(t2), plain, plainSync)
	reportWrite(b, from.drv)
}
