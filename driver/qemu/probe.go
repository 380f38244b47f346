package qemu

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
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
var probeMemo sync.Map // "accel-"/"version-" + key → answer

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
	isAccel := func(a string) bool { return a == "kvm" || a == "tcg" }
	a, _ := remembered("accel-"+key, isAccel, func() (string, bool) {
		a := Probe(ctx, qemuBin, kernel, initrd, timeout)
		return a, ctx.Err() == nil
	})
	return a
}

// CachedVersion is the version of the QEMU binary qemuBin (`--version`),
// remembered like CachedProbe's answer (per process and per boot, in
// /run/ferry/version-*, keyed by the boot id and the binary's path, size
// and mtime), so each binary is asked once per boot.
func CachedVersion(ctx context.Context, qemuBin string) (Version, error) {
	valid := func(s string) bool { _, err := ParseVersion(s); return err == nil }
	ask := func() (string, bool) {
		vctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(vctx, qemuBin, "--version").Output()
		if err != nil {
			return "", false
		}
		v, err := ParseVersion(string(out))
		if err != nil {
			return "", false
		}
		return v.String(), true
	}
	var s string
	if key, ok := probeKey(qemuBin, "", ""); ok {
		s, _ = remembered("version-"+key, valid, ask)
	} else {
		s, _ = ask()
	}
	if s == "" {
		return Version{}, fmt.Errorf("qemu: cannot read the version of %s (%s --version)", qemuBin, qemuBin)
	}
	return ParseVersion(s)
}

// remembered returns the answer stored under name (in this process, else
// in probeCacheDir/name when valid accepts it), or computes it; an answer
// compute does not vouch for (ok false: interrupted, failed) is returned
// but not stored.
func remembered(name string, valid func(string) bool, compute func() (string, bool)) (string, bool) {
	if a, ok := probeMemo.Load(name); ok {
		return a.(string), true
	}
	file := filepath.Join(probeCacheDir, name)
	if b, err := os.ReadFile(file); err == nil {
		if a := strings.TrimSpace(string(b)); valid(a) {
			probeMemo.Store(name, a)
			return a, true
		}
	}
	a, ok := compute()
	if !ok {
		return a, false
	}
	probeMemo.Store(name, a)
	if os.MkdirAll(probeCacheDir, 0o755) == nil {
		tmp := file + ".tmp" + fmt.Sprint(os.Getpid())
		if os.WriteFile(tmp, []byte(a+"\n"), 0o644) == nil {
			os.Rename(tmp, file)
		}
	}
	return a, true
}

// Version is a QEMU release (major.minor.micro).
type Version struct{ Major, Minor, Micro int }

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro) }

// AtLeast reports whether v is major.minor or later.
func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || v.Major == major && v.Minor >= minor
}

var versionRE = regexp.MustCompile(`^(?:QEMU emulator version )?(\d{1,4})\.(\d{1,4})\.(\d{1,4})(?:[ (]|$)`)

// ParseVersion reads the version from the first line of `qemu-system-*
// --version` ("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2...)")
// or a bare "10.0.2".
func ParseVersion(s string) (Version, error) {
	first, _, _ := strings.Cut(s, "\n")
	m := versionRE.FindStringSubmatch(first)
	if m == nil {
		return Version{}, fmt.Errorf("qemu: no version in %q (want \"QEMU emulator version X.Y.Z\")", first[:min(len(first), 80)])
	}
	var v Version
	for i, p := range []*int{&v.Major, &v.Minor, &v.Micro} {
		*p, _ = strconv.Atoi(m[i+1])
	}
	return v, nil
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
