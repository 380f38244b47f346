// Package chunker cuts a byte stream into chunks for the content-addressed
// store: Fixed cuts aligned blocks (4 KiB for disk images and QEMU state
// files, whose filesystems and pages are block-aligned), FastCDC cuts at
// content-defined points so that an insertion in an unaligned stream (a tar
// of a checkpoint directory) moves only the chunks around it.
//
// FastCDC follows Xia et al., "The Design of Fast Content-Defined Chunking
// for Data Deduplication Based Storage Systems" (IEEE TPDS 2020): a Gear
// rolling hash, cut-point skipping below the minimum size, normalized
// chunking (a harder mask before the average size, an easier one after),
// and rolling two bytes per step. The Gear table and the masks are the
// reference implementation's (the table is MD5 of 64 repeated bytes, built
// at init), so cut points match other FastCDC 2020 implementations; the
// tests check published reference vectors.
//
// Chunkers never hash; they only report whether a chunk is all zeros so the
// caller can record a hole instead.
package chunker
