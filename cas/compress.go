package cas

import (
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Encoding says how a chunk's bytes are represented at rest or on the wire.
type Encoding uint8

const (
	// Raw: the chunk's bytes as they are.
	Raw Encoding = 0
	// Zstd: one zstd frame that decodes to the chunk's bytes.
	Zstd Encoding = 1
)

func (e Encoding) String() string {
	switch e {
	case Raw:
		return "raw"
	case Zstd:
		return "zstd"
	}
	return fmt.Sprintf("encoding(%d)", uint8(e))
}

var (
	codecOnce sync.Once
	encoder   *zstd.Encoder
	decoder   *zstd.Decoder
)

func codecs() (*zstd.Encoder, *zstd.Decoder) {
	codecOnce.Do(func() {
		var err error
		// EncodeAll and DecodeAll are safe for concurrent use.
		encoder, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
		if err != nil {
			panic(err) // only bad options make this fail
		}
		decoder, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(MaxChunkLen+1))
		if err != nil {
			panic(err)
		}
	})
	return encoder, decoder
}

// Compress returns data compressed with zstd if that saves at least 10%,
// otherwise data itself with Raw. dst is reused if large enough.
func Compress(dst, data []byte) (Encoding, []byte) {
	enc, _ := codecs()
	out := enc.EncodeAll(data, dst[:0])
	if len(out) <= len(data)-len(data)/10 {
		return Zstd, out
	}
	return Raw, data
}

// Decode returns the chunk bytes of payload in encoding e. The result must
// be exactly want bytes long; anything else is rejected with ErrCorrupt. The
// zstd decoder stops a frame (a zstd bomb) at MaxChunkLen+1 bytes.
func Decode(e Encoding, payload []byte, want int, dst []byte) ([]byte, error) {
	switch e {
	case Raw:
		if len(payload) != want {
			return nil, fmt.Errorf("%w: raw chunk has %d bytes, want %d", ErrCorrupt, len(payload), want)
		}
		return payload, nil
	case Zstd:
		_, dec := codecs()
		if want > MaxChunkLen {
			return nil, fmt.Errorf("%w: chunk length %d over limit %d", ErrInvalid, want, MaxChunkLen)
		}
		if cap(dst) < want+1 {
			dst = make([]byte, 0, want+1)
		}
		out, err := dec.DecodeAll(payload, dst[:0])
		if err != nil {
			return nil, fmt.Errorf("%w: zstd chunk: %v", ErrCorrupt, err)
		}
		if len(out) != want {
			return nil, fmt.Errorf("%w: zstd chunk decodes to %d bytes, want %d", ErrCorrupt, len(out), want)
		}
		return out, nil
	}
	return nil, fmt.Errorf("%w: unknown chunk encoding %d", ErrInvalid, uint8(e))
}
