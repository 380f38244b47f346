package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/ferrycluster/ferry/image"
	"github.com/spf13/cobra"
)

// imagesDir is where a node's data dir keeps guest images.
func imagesDir(dataDir string) string { return filepath.Join(dataDir, "images") }

func init() {
	imageCmd := &cobra.Command{
		Use:   "image",
		Short: "build and manage guest images (kernel + initramfs) for the qemu driver",
	}
	var dataDir, kernel string
	imageCmd.PersistentFlags().StringVar(&dataDir, "data-dir", "", "data directory; images live in DIR/images")
	imageCmd.MarkPersistentFlagRequired("data-dir")

	build := &cobra.Command{
		Use:   "build SPEC.yaml",
		Short: "build the image a spec describes, or reuse the cached one with the same identity",
		Long: "build reads a YAML spec (name, kernel, busybox, init, cmdline, files: see docs/vm.md)\n" +
			"and prints the image id: the SHA-256 of the normalized spec and its input files.\n" +
			"Relative paths in the spec are relative to the spec file.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := os.ReadFile(args[0])
			if err != nil {
				return withCode(2, err)
			}
			spec, err := image.ParseSpec(b)
			if err != nil {
				return withCode(2, fmt.Errorf("%s: %w", args[0], err))
			}
			store := &image.Store{Dir: imagesDir(dataDir), DefaultKernel: kernel}
			img, err := store.Build(cmd.Context(), spec, filepath.Dir(args[0]))
			if errors.Is(err, image.ErrInvalidSpec) {
				return withCode(2, fmt.Errorf("%s: %w", args[0], err))
			}
			if err != nil {
				return err
			}
			how := "built"
			if img.Cached {
				how = "cached"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s\nkernel %s\ninitrd %s\n", how, img.ID, img.Kernel, img.Initrd)
			return nil
		},
	}
	build.Flags().StringVar(&kernel, "kernel", "build/guest/vmlinuz", "kernel for specs that name none (scripts/fetch-guest.sh puts it here)")

	ls := &cobra.Command{
		Use:   "ls",
		Short: "list built images",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			list, err := (&image.Store{Dir: imagesDir(dataDir)}).List()
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tNAME\tSIZE\tBUILT\tINIT")
			for _, img := range list {
				fmt.Fprintf(w, "%s\t%s\t%.1f MiB\t%s\t%s\n", img.ID[:16], img.Name, float64(img.Bytes)/(1<<20),
					img.BuiltAt.Format(time.RFC3339), img.Spec.Init)
			}
			return w.Flush()
		},
	}

	rm := &cobra.Command{
		Use:   "rm REF...",
		Short: "remove images by id, unique id prefix (6+ hex digits) or unique name",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			store := &image.Store{Dir: imagesDir(dataDir)}
			for _, ref := range args {
				img, err := store.Remove(ref)
				if errors.Is(err, image.ErrNotFound) {
					return withCode(2, err)
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", img.ID)
			}
			return nil
		},
	}
	imageCmd.AddCommand(build, ls, rm)
	root.AddCommand(imageCmd)
}
