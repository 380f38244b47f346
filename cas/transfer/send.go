package transfer

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/ferrycluster/ferry/cas"
)

// SendOptions configure one transfer from this side.
type SendOptions struct {
	// ID names the transfer; use the same one to resume after a failure.
	ID string
	// Name is the relative path the receiver is asked to give the file.
	Name string
	// Chunking to use when Index is nil (default cas.Fixed).
	Chunking cas.Chunking
	// Index of the file if already computed (saves re-hashing on a retry).
	Index *cas.Index
	// Compress sends a chunk zstd-compressed when that saves at least 10%.
	Compress bool
	Progress ProgressFunc
	Logger   *slog.Logger
	// Keep, if set, is this node's chunk store: after a successful
	// transfer the file's chunks are added to it and its index pinned as
	// KeepAs (cas.Store.Keep), so when the file or a similar one comes
	// back only the changed chunks cross. A failure to keep is logged, not
	// returned: the transfer itself succeeded.
	Keep   *cas.Store
	KeepAs string
	// Background, if set, runs the keep of a directory's chunks (SendDir)
	// after the send returns: it must call f eventually, with a context
	// that ends when the work should stop. SendResult.Kept is then 0.
	Background func(f func(context.Context))
}

// SendResult says what crossed the wire.
type SendResult struct {
	Index *cas.Index
	// ChunksSent and BytesSent count chunk payloads (BytesSent before
	// compression, PayloadBytes after); WireBytes counts everything this
	// side wrote, frames and index included.
	ChunksSent              int
	BytesSent, PayloadBytes int64
	WireBytes               int64
	IndexBytes              int64
	// Kept counts the chunks added to SendOptions.Keep.
	Kept int
}

// SendFile sends the file at path over conn to a Receiver.
func SendFile(ctx context.Context, conn io.ReadWriter, path string, opts SendOptions) (SendResult, error) {
	f, err := os.Open(path)
	if err != nil {
		return SendResult{}, fmt.Errorf("transfer: send: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return SendResult{}, fmt.Errorf("transfer: send: %w", err)
	}
	if !st.Mode().IsRegular() {
		return SendResult{}, fmt.Errorf("%w: send %s: not a regular file", cas.ErrInvalid, path)
	}
	return send(ctx, conn, f, Header{ID: opts.ID, Name: opts.Name, Kind: KindFile, Mode: uint32(st.Mode().Perm())}, opts)
}

func send(ctx context.Context, conn io.ReadWriter, src *os.File, h Header, opts SendOptions) (res SendResult, err error) {
	if err := h.Validate(); err != nil {
		return res, err
	}
	log := senderLog(opts, h)
	prog := &progressor{fn: opts.Progress, p: Progress{ID: h.ID}}
	x := opts.Index
	if x == nil {
		prog.phase(PhaseIndex)
		ch := opts.Chunking
		if ch == 0 {
			ch = cas.Fixed
		}
		if _, err := src.Seek(0, io.SeekStart); err != nil {
			return res, err
		}
		if x, err = cas.BuildIndex(src, cas.IndexOptions{Chunking: ch}); err != nil {
			return res, fmt.Errorf("transfer: index %s: %w", h.Name, err)
		}
	}
	res.Index = x
	prog.p.Size = x.Size
	w, r, stop := openConn(ctx, conn)
	defer stop()
	defer ctxCause(ctx, &err)
	defer func() { res.WireBytes = w.n }()

	// HELLO and INDEX.
	if err := w.frame(msgHello, encodeHello(h)); err != nil {
		return res, err
	}
	res.IndexBytes = x.EncodedLen()
	if err := w.header(msgIndex, int(res.IndexBytes)); err != nil {
		return res, err
	}
	if err := cas.EncodeIndex(w.bw, x); err != nil {
		return res, err
	}
	if err := w.Flush(); err != nil {
		return res, fmt.Errorf("transfer: send index: %w", err)
	}

	// WANT.
	t, n, err := r.next("WANT", map[msgType]int{msgWant: 4 + 4*len(x.Entries)})
	if err != nil {
		return res, err
	}
	b, err := r.payload(t, n, nil)
	if err != nil {
		return res, err
	}
	want, err := DecodeWant(b, x)
	if err != nil {
		return res, err
	}
	for _, i := range want {
		prog.p.Wanted += int64(x.Entries[i].Length)
	}
	prog.p.ChunksWanted = len(want)
	prog.p.Present = x.Size - prog.p.Wanted
	log.Debug("receiver wants", "chunks", len(want), "bytes", prog.p.Wanted, "of", x.Size)
	prog.phase(PhaseStream)

	// Chunks: consecutive raw chunks go as RUN frames (one header, then
	// the bytes straight from the file: sendfile on a TCP connection);
	// a chunk that compresses goes alone as a CHUNK frame.
	if err := sendChunks(ctx, w, conn, src, 0, x, want, opts.Compress, &res, prog); err != nil {
		return res, fmt.Errorf("transfer: send %s: %w", h.Name, err)
	}
	if err := w.frame(msgDone); err != nil {
		return res, err
	}
	if err := w.Flush(); err != nil {
		return res, fmt.Errorf("transfer: send: %w", err)
	}

	// RESULT.
	t, n, err = r.next("RESULT", map[msgType]int{msgResult: maxSmallFrame})
	if err != nil {
		return res, err
	}
	if b, err = r.payload(t, n, b); err != nil {
		return res, err
	}
	if err := decodeResult(b); err != nil {
		return res, err
	}
	prog.phase(PhaseComplete)
	if opts.Keep != nil && opts.KeepAs != "" {
		if res.Kept, err = opts.Keep.Keep(ctx, opts.KeepAs, src, x); err != nil {
			log.Warn("keeping the sent chunks", "pin", opts.KeepAs, "err", err)
			err = nil
		}
	}
	log.Info("sent", "name", h.Name, "size", x.Size, "chunks_sent", res.ChunksSent, "bytes_sent", res.BytesSent)
	return res, nil
}

// senderLog is the logger of a send of h.
func senderLog(opts SendOptions, h Header) *slog.Logger {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	return log.With("component", "cas.transfer", "transfer", h.ID, "role", "sender")
}

// openConn starts a transfer's side on conn: its frame writer and reader,
// and ctx's cancellation unblocking conn's I/O until stop is called.
func openConn(ctx context.Context, conn io.ReadWriter) (*frameWriter, *frameReader, func() bool) {
	stop := watch(ctx, conn)
	return newFrameWriter(conn, flusherOf(conn)), newFrameReader(conn), stop
}

// ctxCause says, in *err, that ctx ended when that is why it failed.
func ctxCause(ctx context.Context, err *error) {
	if *err != nil && ctx.Err() != nil {
		*err = fmt.Errorf("transfer: %w (%v)", ctx.Err(), *err)
	}
}
