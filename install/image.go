// Package install defines what ships to a node: the warpnet container image
// (Image, built by `make image` through install/mkimage). The installer that
// the image runs first is install/installer; the Helm chart is install/chart.
package install

import (
	"fmt"
	"path/filepath"

	"github.com/warpnet/warpnet/internal/ociimage"
)

// Binaries are the files of the warpnet image, all in /usr/bin: the CNI
// plugins, loopback (for nodes without one), the installer, warpd, warpctl.
var Binaries = []string{"warp-ipam", "warp-veth", "warp-sriov", "loopback", "warp-install", "warpd", "warpctl"}

// BinDir is where the image holds them; the installer's default --src.
const BinDir = "/usr/bin"

// DefaultRepository is the image name `make image` uses unless told
// otherwise (there is no registry here: import the tar into containerd, or
// re-tag and push it).
const DefaultRepository = "localhost/warpnet"

// Image is the warpnet image named name ("repo:tag"), made of the static
// binaries in binDir (`make build` output) on an empty base: no shell, no
// libc. The tag is also a label, so two tags of the same binaries are two
// images (an upgrade rolls the DaemonSet).
func Image(binDir, name, version string) (ociimage.Image, error) {
	im := ociimage.Image{
		Name:       name,
		Dirs:       map[string]int64{"/tmp": 0o1777},
		Entrypoint: []string{BinDir + "/warpd"},
		Env:        []string{"PATH=" + BinDir},
		Labels: map[string]string{
			"org.opencontainers.image.title":   "warpnet",
			"org.opencontainers.image.version": version,
		},
	}
	for _, b := range Binaries {
		f, err := ociimage.ReadFile(BinDir+"/"+b, filepath.Join(binDir, b), 0o755)
		if err != nil {
			return ociimage.Image{}, fmt.Errorf("%w (run make build)", err)
		}
		im.Files = append(im.Files, f)
	}
	return im, nil
}
