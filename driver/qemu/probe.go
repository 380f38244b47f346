package qemu

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// probeCacheDir holds remembered probe answers. /run is a tmpfs emptied at
// every boot, and each answer also names the boot it was made in, so a
// kernel or KVM change after a reboot is probed again. Tests point it
// elsewhere.
var probeCacheDir = "/run/ferry"

// probeMemo remembers answers within this process.
var probeMemo sync.Map // key → accelerator

// CachedProbe is Probe with its answer remembered for the rest of the
// machine's boot, in this process and in a file under /run/ferry, keyed by
// the boot id and the QEMU binary, kernel and initrd (path, size, mtime).
// A failing KVM probe costs its whole timeout (nested KVM hangs at guest
// boot), and every agent start and test binary would otherwise pay it. An
// interrupted probe is not remembered. A KVM guest prints within seconds, so
// a probe that times out under a generous timeout is taken as a definite
// "no"; an operator who knows better passes --accel kvm to the agent or
// deletes /run/ferry/accel-* to probe again.
func CachedProbe(ctx context.Context, qemuBin, kernel, initrd string, timeout time.Duration) string {
	key, ok := probeKey(qemuBin, kernel, initrd)
	if !ok {
		return Probe(ctx, qemuBin, kernel, initrd, timeout)
	}
	if a, ok := probeMemo.Load(key); ok {
		return a.(string)
	}
	file := filepath.Join(probeCacheDir, "accel-"+key)
	if b, err := os.ReadFile(file); err == nil {
		if a := strings.TrimSpace(string(b)); a == "kvm" || a == "tcg" {
			probeMemo.Store(key, a)
			return a
		}
	}
	a := Probe(ctx, qemuBin, kernel, initrd, timeout)
	if ctx.Err() != nil {
		return a
	}
	probeMemo.Store(key, a)
	if os.MkdirAll(probeCacheDir, 0o755) == nil {
		tmp := file + ".tmp" + fmt.Sprint(os.Getpid())
		if os.WriteFile(tmp, []byte(a+"\n"), 0o644) == nil {
			os.Rename(tmp, file)
		}
	}
	return a
}

// probeKey names what a probe's answer depends on; ok is false when the
// boot id or a file cannot be read (then nothing is remembered).
func probeKey(qemuBin, kernel, initrd string) (string, bool) {
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", false
	}
	h := sha256.New()
	fmt.Fprintf(h, "boot %s\n", strings.TrimSpace(string(boot)))
	for _, p := range []string{qemuBin, kernel, initrd} {
		if p == "" {
			fmt.Fprintf(h, "-\n")
			continue
		}
		if lp, err := exec.LookPath(p); err == nil {
			p = lp
		}
		fi, err := os.Stat(p)
		if err != nil {
			return "", false
		}
		fmt.Fprintf(h, "%s %d %d\n", p, fi.Size(), fi.ModTime().UnixNano())
	}
	return hex.EncodeToString(h.Sum(nil))[:24], true
}
