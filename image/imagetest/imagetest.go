// Package imagetest gives tests the guest they boot: Debian's cloud kernel
// (fetched by scripts/fetch-guest.sh when setup has not run) and the
// "counter" initramfs, whose init prints "counter N" every 100 ms. The image
// is built once per test binary; call Cleanup from TestMain after m.Run.
package imagetest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ferrycluster/ferry/image"
)

var (
	once sync.Once
	img  image.Image
	err  error
	dir  string
)

// repoRoot walks up from the working directory (a package directory under
// go test) to the directory holding go.mod.
func repoRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", errors.New("no go.mod above the working directory")
		}
		d = parent
	}
}

// Counter returns the counter guest image, building it on first use.
func Counter(tb testing.TB) image.Image {
	tb.Helper()
	once.Do(func() {
		var root string
		if root, err = repoRoot(); err != nil {
			return
		}
		kernel := filepath.Join(root, "build", "guest", "vmlinuz")
		if _, statErr := os.Stat(kernel); statErr != nil {
			out, runErr := exec.Command(filepath.Join(root, "scripts", "fetch-guest.sh")).CombinedOutput()
			if runErr != nil {
				err = fmt.Errorf("fetch guest kernel: %w: %s", runErr, out)
				return
			}
		}
		if dir, err = os.MkdirTemp("", "ferry-test-images-"); err != nil {
			return
		}
		s := &image.Store{Dir: dir, DefaultKernel: kernel}
		img, err = s.Build(context.Background(), image.Spec{Name: "counter", Init: "counter"}, "")
	})
	if err != nil {
		tb.Fatalf("guest image: %v", err)
	}
	return img
}

// Cleanup removes the image built by Counter, if any.
func Cleanup() {
	if dir != "" {
		os.RemoveAll(dir)
	}
}
