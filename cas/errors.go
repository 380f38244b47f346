package cas

import "errors"

// Error kinds. Every error this package and its subpackages return for bad
// data wraps one of these, so callers can map them with errors.Is.
var (
	// ErrInvalid: input from outside (an index, a message, a name) is malformed
	// or out of bounds. Nothing was changed.
	ErrInvalid = errors.New("cas: invalid input")
	// ErrCorrupt: stored or received bytes do not hash to their ID or a
	// rebuilt file does not match its whole-file digest. A corrupt stored
	// chunk is removed so that it is fetched again.
	ErrCorrupt = errors.New("cas: corrupt data")
	// ErrNotFound: the chunk or pin is not in the store.
	ErrNotFound = errors.New("cas: not found")
)
