package cas

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// IDSize is the length of an ID in bytes.
const IDSize = sha256.Size

// ID names a chunk: the SHA-256 of its (uncompressed) bytes.
type ID [IDSize]byte

// Sum returns the ID of data.
func Sum(data []byte) ID { return ID(sha256.Sum256(data)) }

// String is the lowercase hex form of the ID.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Short is the first 12 hex digits, for logs and error messages.
func (id ID) Short() string { return hex.EncodeToString(id[:6]) }

// IsZero reports whether the ID is all zero bytes (the "no ID" value).
func (id ID) IsZero() bool { return id == ID{} }

// ParseID parses the 64-digit hex form of an ID.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 2*IDSize {
		return id, fmt.Errorf("%w: chunk id %q: want %d hex digits, got %d", ErrInvalid, s, 2*IDSize, len(s))
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("%w: chunk id %q: %v", ErrInvalid, s, err)
	}
	return id, nil
}
