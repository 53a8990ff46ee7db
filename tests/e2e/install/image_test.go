package install_test

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/warpnet/warpnet/install"
	"github.com/warpnet/warpnet/internal/ociimage"
	"github.com/warpnet/warpnet/tests/harness"
)

// `make image` (install/mkimage) twice from the same bin/: the same digest,
// byte for byte the same tar; the image holds every binary and no shell.
func TestImageIsReproducibleAndShellFree(t *testing.T) {
	harness.RequireTools(t, filepath.Join(harness.BinDir(), "warp-install"), "go")
	dir := t.TempDir()
	var tars [2][]byte
	var said [2]string
	for i := range tars {
		out := filepath.Join(dir, fmt.Sprintf("%d.tar", i))
		cmd := exec.Command("go", "run", "./install/mkimage", "--bin", harness.BinDir(), "--tag", "t1", "--out", out)
		cmd.Dir = harness.RepoRoot()
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("mkimage run %d: %v\n%s", i, err, b)
		}
		said[i], _, _ = strings.Cut(string(b), " -> ") // "image: NAME DIGEST"
		if tars[i], err = os.ReadFile(out); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(tars[0], tars[1]) || said[0] != said[1] {
		t.Fatalf("two builds of the same binaries differ:\n%s%s", said[0], said[1])
	}
	im, err := install.Image(harness.BinDir(), "localhost/warpnet:t1", "t1")
	if err != nil {
		t.Fatal(err)
	}
	built, err := ociimage.Build(im)
	if err != nil {
		t.Fatal(err)
	}
	layers, _ := built[0].Image.Layers()
	rc, _ := layers[0].Uncompressed()
	defer rc.Close()
	have := map[string]int64{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		have["/"+h.Name] = h.Mode
	}
	for _, b := range install.Binaries {
		if have[install.BinDir+"/"+b] != 0o755 {
			t.Errorf("image lacks %s/%s (mode %o)", install.BinDir, b, have[install.BinDir+"/"+b])
		}
	}
	for _, sh := range []string{"/bin/sh", "/usr/bin/sh", "/bin/bash"} {
		if _, ok := have[sh]; ok {
			t.Errorf("image has a shell: %s", sh)
		}
	}
	// A different tag is a different image (the label carries it), so a
	// helm upgrade to it rolls the DaemonSet.
	im2, _ := install.Image(harness.BinDir(), "localhost/warpnet:t2", "t2")
	built2, _ := ociimage.Build(im2)
	if built2[0].Digest == built[0].Digest {
		t.Error("two tags, one digest")
	}
}
