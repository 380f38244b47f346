package image

import (
	"fmt"
	"io"
	"path"
	"strings"
)

// Mode bits of the newc cpio format (the same as st_mode).
const (
	modeDir     = 0o040000
	modeFile    = 0o100000
	modeSymlink = 0o120000
	modeChar    = 0o020000
)

// CPIOWriter writes a "newc" (SVR4, no CRC) cpio archive, the format the
// Linux kernel unpacks as an initramfs. Entries carry uid/gid 0 and mtime 0
// so the same inputs give the same bytes.
type CPIOWriter struct {
	w      io.Writer
	n      int64
	ino    uint32
	closed bool
}

// NewCPIOWriter returns a writer onto w.
func NewCPIOWriter(w io.Writer) *CPIOWriter { return &CPIOWriter{w: w, ino: 1} }

func (c *CPIOWriter) write(b []byte) error {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return err
}

func (c *CPIOWriter) pad() error {
	if r := c.n % 4; r != 0 {
		return c.write(make([]byte, 4-r))
	}
	return nil
}

func (c *CPIOWriter) header(name string, mode uint32, size int, major, minor uint32) error {
	if c.closed {
		return fmt.Errorf("cpio: write %s after close", name)
	}
	nlink := uint32(1)
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	ino := c.ino
	c.ino++
	if name == "TRAILER!!!" {
		ino = 0
		nlink = 1
	}
	h := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, size, 0, 0, major, minor, len(name)+1, 0)
	if err := c.write([]byte(h)); err != nil {
		return err
	}
	if err := c.write(append([]byte(name), 0)); err != nil {
		return err
	}
	return c.pad()
}

// cleanName makes an archive path: relative, slash-separated, no "..".
func cleanName(name string) (string, error) {
	p := strings.TrimPrefix(path.Clean("/"+name), "/")
	if p == "" || p == "." {
		return "", fmt.Errorf("cpio: empty path %q", name)
	}
	return p, nil
}

// Dir adds a directory.
func (c *CPIOWriter) Dir(name string, perm uint32) error {
	p, err := cleanName(name)
	if err != nil {
		return err
	}
	return c.header(p, modeDir|perm&0o7777, 0, 0, 0)
}

// File adds a regular file with the given contents.
func (c *CPIOWriter) File(name string, perm uint32, data []byte) error {
	p, err := cleanName(name)
	if err != nil {
		return err
	}
	if err := c.header(p, modeFile|perm&0o7777, len(data), 0, 0); err != nil {
		return err
	}
	if err := c.write(data); err != nil {
		return err
	}
	return c.pad()
}

// Symlink adds a symbolic link name -> target.
func (c *CPIOWriter) Symlink(name, target string) error {
	p, err := cleanName(name)
	if err != nil {
		return err
	}
	if err := c.header(p, modeSymlink|0o777, len(target), 0, 0); err != nil {
		return err
	}
	if err := c.write([]byte(target)); err != nil {
		return err
	}
	return c.pad()
}

// CharDev adds a character device node (e.g. /dev/console, 5:1).
func (c *CPIOWriter) CharDev(name string, perm, major, minor uint32) error {
	p, err := cleanName(name)
	if err != nil {
		return err
	}
	return c.header(p, modeChar|perm&0o7777, 0, major, minor)
}

// Close writes the trailer. It does not close the underlying writer.
func (c *CPIOWriter) Close() error {
	if c.closed {
		return nil
	}
	if err := c.header("TRAILER!!!", 0, 0, 0, 0); err != nil {
		return err
	}
	c.closed = true
	return nil
}
