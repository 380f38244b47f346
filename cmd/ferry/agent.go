package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/ferrycluster/ferry/agent"
	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/driver/process"
	"github.com/ferrycluster/ferry/driver/qemu"
	"github.com/ferrycluster/ferry/image"
	"github.com/ferrycluster/ferry/pki"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func init() {
	var (
		o             agentFlags
		memory        string
		advertise     string
		imageTransfer string
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "run the node agent: runs tasks and moves them to peer agents over mutual TLS",
		Long: "agent serves the node API (docs/agent.md) on --listen over mutual TLS with the\n" +
			"certificate --tls-dir/NAME.crt (issue it with `ferry tls issue --role agent`).\n" +
			"Tasks keep running when the agent exits; a new agent on the same --data-dir\n" +
			"re-attaches to them.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			mem, err := parseBytes(memory)
			if err != nil {
				return withCode(2, fmt.Errorf("--memory: %w", err))
			}
			id, err := pki.Load(o.tlsDir, o.name)
			if err != nil {
				return withCode(2, err)
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			drivers, closeDrivers, err := o.drivers(ctx, log)
			if err != nil {
				return err
			}
			defer closeDrivers()
			a, err := agent.New(agent.Config{
				Name: o.name, DataDir: o.dataDir, Listen: o.listen, Advertise: advertise,
				CPUs: o.cpus, MemoryBytes: mem, Identity: id, Drivers: drivers, Logger: log,
				ImageTransfer: imageTransfer,
			})
			if err != nil {
				return withCode(2, err)
			}
			if err := a.Start(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "agent %s listening on %s\n", o.name, a.Addr())
			<-ctx.Done()
			return a.Close()
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dataDir, "data-dir", "", "node data directory (records, images, driver state)")
	f.StringVar(&o.listen, "listen", "127.0.0.1:7400", "address to serve the agent API on")
	f.StringVar(&advertise, "advertise", "", "address peers reach this agent on (default: the listen address)")
	f.StringVar(&o.name, "name", "", "node name (its certificate name in --tls-dir)")
	f.Float64Var(&o.cpus, "cpus", 0, "CPU capacity offered (default: the machine's)")
	f.StringVar(&memory, "memory", "", "memory capacity offered, e.g. 4G, 512M (default: the machine's)")
	f.StringVar(&o.tlsDir, "tls-dir", "", "directory with ca.crt, NAME.crt and NAME.key")
	f.StringVar(&imageTransfer, "image-transfer", agent.ImageTransferCAS, "how images are fetched from peers: cas (chunk store, only changed chunks cross), tar (one stream, faster for fresh checkpoints) or stream (cas, and a checkpoint migration from this node sends the state while the job writes it)")
	o.addDriverFlags(f)
	cmd.MarkFlagRequired("data-dir")
	cmd.MarkFlagRequired("name")
	cmd.MarkFlagRequired("tls-dir")
	root.AddCommand(cmd)
}

// agentFlags are the agent's settings shared with driver construction.
type agentFlags struct {
	dataDir, listen, name, tlsDir string
	cpus                          float64
	kernel, initrd, accel         string
	noQEMU                        bool
}

// processDriver builds the process driver under DATA/drivers/process.
func (o *agentFlags) processDriver(log *slog.Logger) (driver.Driver, func(), error) {
	d, err := process.New(process.Config{DataDir: filepath.Join(o.dataDir, "drivers", "process"), Logger: log})
	if err != nil {
		return nil, nil, err
	}
	return d, func() { d.Close() }, nil
}

// parseBytes reads "4G", "512M", "64K" or a plain byte count ("" is 0).
func parseBytes(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	mult := int64(1)
	switch strings.ToUpper(s[len(s)-1:]) {
	case "K":
		mult = 1 << 10
	case "M":
		mult = 1 << 20
	case "G":
		mult = 1 << 30
	case "T":
		mult = 1 << 40
	}
	if mult != 1 {
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseFloat(s, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q: want a size like 4G, 512M or a byte count", s)
	}
	return int64(n * float64(mult)), nil
}

func (o *agentFlags) addDriverFlags(f *pflag.FlagSet) {
	f.StringVar(&o.kernel, "kernel", "build/guest/vmlinuz", "guest kernel for the qemu driver's default image")
	f.StringVar(&o.initrd, "initrd", "", "guest initramfs; empty builds the default image (workloads counter, dirty) into DATA/images")
	f.StringVar(&o.accel, "accel", "", "qemu accelerator: kvm, tcg or empty to probe")
	f.BoolVar(&o.noQEMU, "no-qemu", false, "run without the qemu driver")
}

// drivers builds the node's drivers: process always, qemu unless disabled
// or its guest kernel is missing (then the agent says so and runs without).
func (o *agentFlags) drivers(ctx context.Context, log *slog.Logger) ([]driver.Driver, func(), error) {
	p, closeP, err := o.processDriver(log)
	if err != nil {
		return nil, nil, err
	}
	ds := []driver.Driver{p}
	if o.noQEMU {
		return ds, closeP, nil
	}
	initrd, kernel := o.initrd, o.kernel
	if initrd == "" {
		if _, err := os.Stat(kernel); err != nil {
			log.Warn("no guest kernel: running without the qemu driver (run scripts/setup.sh or pass --kernel)", "component", "agent", "kernel", kernel)
			return ds, closeP, nil
		}
		store := &image.Store{Dir: imagesDir(o.dataDir), DefaultKernel: kernel}
		img, err := store.Build(ctx, image.Spec{Name: "default", Init: "counter"}, "")
		if err != nil {
			closeP()
			return nil, nil, fmt.Errorf("build the default guest image: %w", err)
		}
		kernel, initrd = img.Kernel, img.Initrd
	}
	q, err := qemu.New(ctx, qemu.Config{DataDir: filepath.Join(o.dataDir, "drivers", "qemu"), Kernel: kernel, Initrd: initrd, Accel: o.accel, Logger: log})
	if err != nil {
		closeP()
		return nil, nil, err
	}
	return append(ds, q), closeP, nil
}
