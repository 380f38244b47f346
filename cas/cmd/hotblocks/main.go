// Command hotblocks redoes the hot-block experiment of seeds/001 on real
// data: given a file A already at the destination and a file B to send, it
// reports how many of B's chunks are "hot" (already there), what a ferry
// transfer sends against a full copy, and what the index costs.
//
//	go run ./cas/cmd/hotblocks compare [-chunking fixed|cdc|both] [-wire] A B
//	go run ./cas/cmd/hotblocks suspend-pair [-wait 2m] [-mem 256] OUTDIR
//
// compare -wire also performs the transfer over TCP on 127.0.0.1 into a
// receiver whose store holds A's chunks, and reports the bytes on the wire.
// suspend-pair boots the counter guest with driver/qemu, suspends it to
// OUTDIR/vmstate-1, resumes it, waits, and suspends it again to
// OUTDIR/vmstate-2 (two suspend images of one VM taken minutes apart).
// docs/cas.md has the recipe for the kernel-image pairs and the results.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/ferrycluster/ferry/cas"
	"github.com/ferrycluster/ferry/cas/transfer"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: hotblocks compare|suspend-pair ...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "compare":
		err = compareCmd(os.Args[2:])
	case "suspend-pair":
		err = suspendPairCmd(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "hotblocks:", err)
		os.Exit(1)
	}
}

func compareCmd(args []string) error {
	fs := flag.NewFlagSet("compare", flag.ExitOnError)
	chunking := fs.String("chunking", "both", "fixed, cdc or both")
	wire := fs.Bool("wire", false, "also transfer B over loopback TCP to a receiver holding A and count wire bytes")
	fs.Parse(args)
	if fs.NArg() != 2 {
		return fmt.Errorf("compare wants two files, A (at the destination) and B (to send)")
	}
	a, b := fs.Arg(0), fs.Arg(1)
	var kinds []cas.Chunking
	switch *chunking {
	case "fixed":
		kinds = []cas.Chunking{cas.Fixed}
	case "cdc":
		kinds = []cas.Chunking{cas.CDC}
	case "both":
		kinds = []cas.Chunking{cas.Fixed, cas.CDC}
	default:
		return fmt.Errorf("unknown chunking %q", *chunking)
	}
	fmt.Printf("| A → B | chunking | B size | zero (holes) | hot (of non-zero) | sent | sent / full copy | index | index / B |%s\n", map[bool]string{true: " wire bytes |", false: ""}[*wire])
	fmt.Printf("|---|---|---|---|---|---|---|---|---|%s\n", map[bool]string{true: "---|", false: ""}[*wire])
	for _, k := range kinds {
		for _, dir := range [][2]string{{a, b}, {b, a}} {
			row, err := compare(dir[0], dir[1], k, *wire)
			if err != nil {
				return err
			}
			fmt.Println(row)
		}
	}
	return nil
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func compare(a, b string, k cas.Chunking, wire bool) (string, error) {
	xa, err := cas.IndexFile(a, cas.IndexOptions{Chunking: k})
	if err != nil {
		return "", err
	}
	xb, err := cas.IndexFile(b, cas.IndexOptions{Chunking: k})
	if err != nil {
		return "", err
	}
	o := cas.Compare(xa, xb)
	row := fmt.Sprintf("| %s → %s | %s | %s | %.1f%% | %.1f%% | %s | %.1f%% | %s | %.2f%% |",
		filepath.Base(a), filepath.Base(b), k, mib(xb.Size), pct(o.Holes, xb.Size), 100*o.HotFraction(),
		mib(o.Sent()), pct(o.Sent(), xb.Size), mib(o.IndexBytes), pct(o.IndexBytes, xb.Size))
	if wire {
		w, err := wireBytes(a, b, k)
		if err != nil {
			return "", err
		}
		row += fmt.Sprintf(" %s |", mib(w))
	}
	return row, nil
}

func pct(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}

// wireBytes transfers A (kept in the receiver's store) then B, and returns
// what the sender of B wrote to the connection.
func wireBytes(a, b string, k cas.Chunking) (int64, error) {
	dir, err := os.MkdirTemp("", "hotblocks-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	st, err := cas.Open(filepath.Join(dir, "store"), cas.Options{})
	if err != nil {
		return 0, err
	}
	defer st.Close()
	rc := &transfer.Receiver{StagingDir: filepath.Join(dir, "staging"), DestDir: filepath.Join(dir, "dest"), Store: st, Keep: true}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				rc.Serve(context.Background(), c)
			}()
		}
	}()
	var last transfer.SendResult
	for i, p := range []string{a, b} {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return 0, err
		}
		last, err = transfer.SendFile(context.Background(), c, p, transfer.SendOptions{ID: fmt.Sprint("hot", i), Name: fmt.Sprint("f", i), Chunking: k})
		c.Close()
		if err != nil {
			return 0, err
		}
	}
	return last.WireBytes, nil
}
