package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/driver/qemu"
	"github.com/ferrycluster/ferry/image"
)

// suspendPairCmd makes two suspend images of one counter guest, wait apart.
func suspendPairCmd(args []string) error {
	fs := flag.NewFlagSet("suspend-pair", flag.ExitOnError)
	wait := fs.Duration("wait", 2*time.Minute, "time the guest runs between the two suspends")
	mem := fs.Int64("mem", 256, "guest memory in MiB")
	kernel := fs.String("kernel", "build/guest/vmlinuz", "guest kernel (scripts/fetch-guest.sh)")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("suspend-pair wants an output directory")
	}
	out, err := filepath.Abs(fs.Arg(0))
	if err != nil {
		return err
	}
	if _, err := os.Stat(*kernel); err != nil {
		if b, err := exec.Command("scripts/fetch-guest.sh").CombinedOutput(); err != nil {
			return fmt.Errorf("fetch guest kernel: %v: %s", err, b)
		}
	}
	k, _ := filepath.Abs(*kernel)
	ctx := context.Background()
	work, err := os.MkdirTemp("", "hotblocks-vm-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	s := &image.Store{Dir: filepath.Join(work, "images"), DefaultKernel: k}
	img, err := s.Build(ctx, image.Spec{Name: "counter", Init: "counter"}, "")
	if err != nil {
		return err
	}
	d, err := qemu.New(ctx, qemu.Config{DataDir: filepath.Join(work, "data"), Kernel: img.Kernel, Initrd: img.Initrd})
	if err != nil {
		return err
	}
	spec := driver.Spec{ID: "hot", Epoch: 1, CPUs: 1, MemoryBytes: *mem << 20, VM: &driver.VMSpec{Workload: "counter"}}
	if err := d.Start(ctx, spec); err != nil {
		return err
	}
	defer d.Stop(context.Background(), spec.ID)
	fmt.Fprintf(os.Stderr, "guest started (%s); running 30s before the first suspend\n", d.Accel())
	time.Sleep(30 * time.Second)
	for i := 1; i <= 2; i++ {
		dir := filepath.Join(work, fmt.Sprint("s", i))
		os.MkdirAll(dir, 0o755)
		im, err := d.Suspend(ctx, spec.ID, dir)
		if err != nil {
			return fmt.Errorf("suspend %d: %w", i, err)
		}
		if err := os.MkdirAll(out, 0o755); err != nil {
			return err
		}
		dst := filepath.Join(out, fmt.Sprint("vmstate-", i))
		if err := copyFile(filepath.Join(dir, "vmstate"), dst); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "suspend %d: %d bytes in %s -> %s\n", i, im.Bytes, im.Took, dst)
		if i == 1 {
			if err := d.Resume(ctx, spec, dir); err != nil {
				return fmt.Errorf("resume: %w", err)
			}
			fmt.Fprintf(os.Stderr, "resumed; waiting %s\n", *wait)
			time.Sleep(*wait)
		}
	}
	return nil
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}
