// Package transfer moves a file or a directory between two nodes so that
// only the chunks the receiver lacks cross the network.
//
// The protocol runs over any io.ReadWriter (a net.Conn, a TLS connection
// from the agent's mTLS listener, or the body pair of one HTTP request via
// Handler and Dial). It is the same whichever side dialled:
//
//	sender                              receiver
//	HELLO  (transfer id, name, kind) ─▶
//	INDEX  (chunks, holes, root)     ─▶ checks the root; looks each chunk up: in its partial
//	                                    file (a resumed transfer), in its
//	                                    chunk store (verified; a corrupt one
//	                                    is removed and asked for)
//	                                 ◀─ WANT (entries it lacks)
//	RUN / CHUNK × n (only those)     ─▶ verifies each against its id and
//	                                    writes it at every offset it occurs
//	DONE                             ─▶ all wanted chunks verified (a v1
//	                                    index: whole-file digest too),
//	                                    renames the file into place
//	                                 ◀─ RESULT (ok or the reason)
//
// A RUN frame carries consecutive wanted entries raw, back to back (up to
// 2 MiB; the sender hands the file's bytes to a TCP socket with sendfile); a
// CHUNK frame carries one chunk, zstd-compressed when that saves 10% (the
// sender samples: after 8 misses in a row it tries one chunk in 64). The
// receiver reads frames, hashes and writes on three goroutines, asks the
// kernel to start writing back every 16 MiB and fsyncs once at the end.
//
// Either side may send ERROR instead, with a reason, and close. A transfer
// cut at any point is resumed by running it again with the same transfer id:
// what the receiver already wrote to its partial file (checked by hash) or
// holds in its store is not sent again. Holes (all-zero runs) are never sent
// and stay sparse in the rebuilt file.
//
// Directories (process checkpoints, guest images) travel as their files
// (KindTree, tree.go; SendDir): a TREE frame lists them, then each file's
// bytes cross piece by piece, hashed by the sender while earlier pieces are
// on the wire, written in place by the receiver into a fresh directory
// (every path confined to it: os.Root, plus explicit checks that give clear
// errors for path traversal, absolute names, escaping symlinks and special
// files), fsynced once at the end and swapped into place, so a committed
// checkpoint is never replaced by a partial one. A receiver that expects
// none of the chunks (Receiver.Fresh) asks for the bytes without an index
// and keeps their chunks after the commit. The older tar form (KindDir) is
// still received.
//
// Every message is a frame: type u8, length u32 (big-endian), payload, with
// a per-type length limit checked before anything is read or allocated.
package transfer
