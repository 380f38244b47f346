// Package cas is ferry's content-addressed chunk layer: it names data by the
// SHA-256 of its bytes so that only the chunks a destination lacks cross the
// network (seeds/001: "hot" blocks already there, "cold" ones sent).
//
// Vocabulary:
//
//   - chunk: a run of bytes, named by its ID, the SHA-256 of the bytes.
//   - hole: a run of zero bytes; never hashed, stored or sent, only its length
//     is written in an index. A rebuilt file is sparse there.
//   - index: the recipe of one file: its size, its digest (v2: the root over
//     the entry list, see Index.Root; v1: the whole-file SHA-256) and the
//     list of chunks and holes in order (see Index, EncodeIndex, DecodeIndex).
//   - store: a node's on-disk set of chunks (see Store), fan-out directories
//     by ID, atomic writes, every read verified against the ID.
//   - pin: a named index kept in the store; it holds a reference on each of
//     its chunks. Garbage collection removes chunks no pin references.
//
// The chunkers live in cas/chunker (fixed 4 KiB blocks and FastCDC), the
// network protocol in cas/transfer. docs/cas.md explains the design and the
// measurements.
package cas
