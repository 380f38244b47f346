package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/ferrycluster/ferry/cas"
	"github.com/spf13/cobra"
)

// ferry cas: inspect chunk indexes and a node's chunk store (docs/cas.md).
func init() {
	casCmd := &cobra.Command{Use: "cas", Short: "content-addressed chunks: index files, compare them, collect a store"}

	var chunking, out string
	parseChunking := func() (cas.Chunking, error) {
		switch chunking {
		case "fixed":
			return cas.Fixed, nil
		case "cdc":
			return cas.CDC, nil
		}
		return 0, fmt.Errorf("--chunking %q: want fixed or cdc", chunking)
	}
	index := &cobra.Command{
		Use:   "index FILE",
		Short: "cut FILE into chunks and print its index summary (and write the index with --out)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			k, err := parseChunking()
			if err != nil {
				return withCode(2, err)
			}
			x, err := cas.IndexFile(args[0], cas.IndexOptions{Chunking: k})
			if err != nil {
				return err
			}
			st := x.Stats()
			w := cmd.OutOrStdout()
			// A v2 index names the file by its root (a digest over the
			// chunk list), not by the file's SHA-256.
			label := "sha256"
			if x.V2() {
				label = "root  "
			}
			fmt.Fprintf(w, "file     %s\nsize     %d\n%s   %s\nchunking %s\n", args[0], x.Size, label, x.Digest, x.Chunking)
			fmt.Fprintf(w, "chunks   %d (%d distinct, %d bytes)\nholes    %d (%d bytes)\nindex    %d bytes (%.2f%%)\n",
				st.DataChunks, st.UniqueChunks, st.UniqueBytes, st.Holes, st.HoleBytes, x.EncodedLen(), 100*float64(x.EncodedLen())/float64(max(x.Size, 1)))
			if out != "" {
				f, err := os.Create(out)
				if err != nil {
					return err
				}
				if err := cas.EncodeIndex(f, x); err != nil {
					f.Close()
					return err
				}
				return f.Close()
			}
			return nil
		},
	}
	index.Flags().StringVar(&chunking, "chunking", "fixed", "fixed (4 KiB blocks: disk images) or cdc (FastCDC: streams, suspend images, tar)")
	index.Flags().StringVar(&out, "out", "", "write the index (binary wire format) to this file")

	var diffChunking string
	diff := &cobra.Command{
		Use:   "diff A B",
		Short: "what sending B costs when the destination holds A: hot share, bytes sent, index size",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			chunking = diffChunking
			k, err := parseChunking()
			if err != nil {
				return withCode(2, err)
			}
			xa, err := cas.IndexFile(args[0], cas.IndexOptions{Chunking: k})
			if err != nil {
				return err
			}
			xb, err := cas.IndexFile(args[1], cas.IndexOptions{Chunking: k})
			if err != nil {
				return err
			}
			o := cas.Compare(xa, xb)
			fmt.Fprintf(cmd.OutOrStdout(), "hot %.1f%% of %d non-zero bytes; holes %d bytes; sent %d bytes (%.1f%% of a full copy of %d), index %d bytes\n",
				100*o.HotFraction(), o.NonZero, o.Holes, o.Sent(), 100*float64(o.Sent())/float64(max(xb.Size, 1)), xb.Size, o.IndexBytes)
			return nil
		},
	}
	diff.Flags().StringVar(&diffChunking, "chunking", "fixed", "fixed or cdc")

	var storeDir string
	var grace time.Duration
	gc := &cobra.Command{
		Use:   "gc",
		Short: "remove chunks no pin references (older than --grace) from the store in --store",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := cas.Open(storeDir, cas.Options{})
			if err != nil {
				return err
			}
			defer st.Close()
			res, err := st.GC(context.Background(), time.Now(), grace)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "scanned %d chunks, removed %d (%d bytes), kept %d; %d pins\n", res.Scanned, res.Removed, res.RemovedBytes, res.Kept, len(st.Pins()))
			return nil
		},
	}
	gc.Flags().StringVar(&storeDir, "store", "", "chunk store directory")
	gc.Flags().DurationVar(&grace, "grace", time.Hour, "keep unreferenced chunks younger than this")
	gc.MarkFlagRequired("store")

	casCmd.AddCommand(index, diff, gc)
	root.AddCommand(casCmd)
}
