// Command mkimage builds the warpnet container image without a container
// engine: `make image` runs it. The output is an OCI image layout tar for
// `ctr -n k8s.io images import` (or any registry tool); the same binaries
// give the same digest.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/warpnet/warpnet/install"
	"github.com/warpnet/warpnet/internal/ociimage"
)

func main() {
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	bin := fs.String("bin", "bin", "directory with the built binaries (make build)")
	repo := fs.String("repository", install.DefaultRepository, "image repository")
	tag := fs.String("tag", "dev", "image tag")
	out := fs.String("out", "bin/warpnet-image.tar", "output file (OCI image layout tar)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: mkimage [flags]\n\nBuilds the warpnet image (static binaries on an empty base) as an OCI layout tar.\nImport it on a node: ctr -n k8s.io images import FILE\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		os.Exit(2)
	}
	name := *repo + ":" + *tag
	im, err := install.Image(*bin, name, *tag)
	if err == nil {
		var built []ociimage.Built
		if built, err = ociimage.WriteFile(*out, im); err == nil {
			fmt.Printf("image: %s %s -> %s\n", name, built[0].Digest, *out)
			return
		}
	}
	fmt.Fprintf(os.Stderr, "mkimage: %v\n", err)
	os.Exit(1)
}
