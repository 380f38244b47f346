package transfer

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"

	"github.com/ferrycluster/ferry/cas"
)

// A RUN frame carries consecutive wanted entries in one go:
// first entry u32, count u32, then the raw bytes of the entries first …
// first+count-1, back to back (exactly the sum of their lengths). It saves a
// frame and a write per 4 KiB block, and lets the sender hand the file's
// bytes to the socket without copying them (sendfile).
const (
	runHdrLen = 8
	// maxRunLen bounds the chunk bytes of one RUN frame (and so the
	// receiver's batch buffers).
	maxRunLen   = 2 << 20
	maxRunFrame = runHdrLen + maxRunLen
)

// sendChunks streams the wanted entries of x from src, where x's bytes
// start at base: consecutive raw chunks as RUN frames, chunks that
// compress (when compress is set) as CHUNK frames.
func sendChunks(ctx context.Context, w *frameWriter, conn io.Writer, src *os.File, base int64, x *cas.Index, want []uint32, compress bool, res *SendResult, prog *progressor) error {
	offs := x.Offsets()
	if base != 0 {
		for i := range offs {
			offs[i] += base
		}
	}
	rf, zeroCopy := conn.(io.ReaderFrom)
	var buf, zbuf []byte
	var zs zsampler
	var first, count uint32
	runLen := 0
	flushRun := func() error {
		if count == 0 {
			return nil
		}
		var hdr [runHdrLen]byte
		binary.BigEndian.PutUint32(hdr[:], first)
		binary.BigEndian.PutUint32(hdr[4:], count)
		if err := w.header(msgRun, runHdrLen+runLen); err != nil {
			return err
		}
		if _, err := w.bw.Write(hdr[:]); err != nil {
			return err
		}
		off := offs[first]
		if zeroCopy {
			if err := w.Flush(); err != nil {
				return err
			}
			if _, err := src.Seek(off, io.SeekStart); err != nil {
				return err
			}
			m, err := rf.ReadFrom(&io.LimitedReader{R: src, N: int64(runLen)})
			if err != nil {
				return fmt.Errorf("RUN of entries %d+%d: %w", first, count, err)
			}
			if m < int64(runLen) {
				return fmt.Errorf("%w: source shrank below its index (at %d)", cas.ErrCorrupt, off+m)
			}
		} else {
			if cap(buf) < runLen {
				buf = make([]byte, max(runLen, maxRunLen))
			}
			if err := readFull(src, buf[:runLen], off); err != nil {
				return err
			}
			if _, err := w.bw.Write(buf[:runLen]); err != nil {
				return fmt.Errorf("RUN of entries %d+%d: %w", first, count, err)
			}
		}
		res.ChunksSent += int(count)
		res.BytesSent += int64(runLen)
		res.PayloadBytes += int64(runLen)
		prog.addN(int64(runLen), int(count))
		count, runLen = 0, 0
		return nil
	}
	var cbuf []byte
	for _, i := range want {
		if err := ctx.Err(); err != nil {
			return err
		}
		e := x.Entries[i]
		if compress && zs.try() {
			if cap(cbuf) < int(e.Length) {
				cbuf = make([]byte, e.Length)
			}
			data := cbuf[:e.Length]
			if err := readFull(src, data, offs[i]); err != nil {
				return err
			}
			enc, payload := cas.Compress(zbuf, data)
			zs.record(enc == cas.Zstd)
			if enc == cas.Zstd {
				zbuf = payload
				if err := flushRun(); err != nil {
					return err
				}
				var hdr [chunkHdrLen]byte
				binary.BigEndian.PutUint32(hdr[:], i)
				hdr[4] = byte(enc)
				if err := w.frame(msgChunk, hdr[:], payload); err != nil {
					return fmt.Errorf("CHUNK %d: %w", i, err)
				}
				res.ChunksSent++
				res.BytesSent += int64(e.Length)
				res.PayloadBytes += int64(len(payload))
				prog.add(int64(e.Length))
				continue
			}
		}
		if count > 0 && (i != first+count || runLen+int(e.Length) > maxRunLen) {
			if err := flushRun(); err != nil {
				return err
			}
		}
		if count == 0 {
			first = i
		}
		count++
		runLen += int(e.Length)
	}
	return flushRun()
}

// readFull reads len(b) bytes of src at off; a short read means the file
// shrank below its index.
func readFull(src *os.File, b []byte, off int64) error {
	n, err := src.ReadAt(b, off)
	if n < len(b) {
		if err == nil || err == io.EOF {
			err = fmt.Errorf("%w: source shrank below its index (at %d)", cas.ErrCorrupt, off+int64(n))
		}
		return err
	}
	return nil
}

// zsampler decides which chunks are worth a zstd attempt: every chunk while
// compression pays; after 8 misses in a row (media, encrypted or already
// compressed data) only one chunk in 64, as a sample, until one pays again.
// Incompressible data then costs the sender ~1.6% of the zstd attempts.
type zsampler struct{ misses, skip int }

func (z *zsampler) try() bool {
	if z.skip > 0 {
		z.skip--
		return false
	}
	return true
}

func (z *zsampler) record(saved bool) {
	if saved {
		z.misses = 0
		return
	}
	z.misses++
	if z.misses >= 8 {
		z.skip = 63
	}
}

// parseRun checks a RUN frame's header against the index and the chunks
// still wanted (isWanted, cleared for the entries the frame carries) and
// returns its entries. n is the frame's length.
func parseRun(hdr []byte, n int, x *cas.Index, isWanted []bool) (first, count uint32, err error) {
	first, count = binary.BigEndian.Uint32(hdr), binary.BigEndian.Uint32(hdr[4:])
	if count == 0 {
		return 0, 0, fmt.Errorf("%w: RUN of 0 entries", cas.ErrInvalid)
	}
	if uint64(first)+uint64(count) > uint64(len(x.Entries)) {
		return 0, 0, fmt.Errorf("%w: RUN of entries %d+%d beyond the index's %d", cas.ErrInvalid, first, count, len(x.Entries))
	}
	total := 0
	for k := first; k < first+count; k++ {
		if !isWanted[k] {
			return 0, 0, fmt.Errorf("%w: RUN carries entry %d, which was not asked for or came twice", cas.ErrInvalid, k)
		}
		total += int(x.Entries[k].Length)
		if total > n-runHdrLen {
			break
		}
	}
	if total != n-runHdrLen {
		return 0, 0, fmt.Errorf("%w: RUN of entries %d+%d carries %d bytes, not the length of those entries", cas.ErrInvalid, first, count, n-runHdrLen)
	}
	for k := first; k < first+count; k++ {
		isWanted[k] = false
	}
	return first, count, nil
}
