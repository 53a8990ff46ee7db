package k8s

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/warpnet/warpnet/internal/ociimage"
	"github.com/warpnet/warpnet/tests/harness"
)

const (
	// PauseImage is the pod sandbox image of every node (containerd's
	// sandbox_image); there is no registry, so the cluster builds it.
	PauseImage = "registry.k8s.io/pause:3.10"
	// AppImage is the test app (tests/k8s/testapp): pods run
	// `testapp serve|echo|get|hold ...`; imagePullPolicy: Never.
	AppImage = "localhost/warpnet-testapp:v1"
	// AppBinary is where the app is inside AppImage.
	AppBinary = "/testapp"
	// DevicePluginBinary is where the tests' SR-IOV device plugin
	// (tests/k8s/sriovdp) is inside AppImage.
	DevicePluginBinary = "/sriov-dp"
)

// buildTestImages compiles tests/k8s/testapp and tests/k8s/sriovdp
// (static) and packs the pause and app images into one OCI layout tar in
// dir.
func buildTestImages(dir string) (string, error) {
	bins := filepath.Join(dir, "bin")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bins+"/", "./tests/k8s/testapp", "./tests/k8s/sriovdp")
	cmd.Dir = harness.RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build testapp, sriovdp: %v\n%s", err, out)
	}
	app, err := ociimage.ReadFile(AppBinary, filepath.Join(bins, "testapp"), 0o755)
	if err != nil {
		return "", err
	}
	dp, err := ociimage.ReadFile(DevicePluginBinary, filepath.Join(bins, "sriovdp"), 0o755)
	if err != nil {
		return "", err
	}
	tar := filepath.Join(dir, "test-images.tar")
	tmp := map[string]int64{"/tmp": 0o1777}
	_, err = ociimage.WriteFile(tar,
		ociimage.Image{Name: PauseImage, Files: []ociimage.File{app}, Dirs: tmp, Entrypoint: []string{AppBinary}, Cmd: []string{"pause"}},
		ociimage.Image{Name: AppImage, Files: []ociimage.File{app, dp}, Dirs: tmp, Entrypoint: []string{AppBinary}, Cmd: []string{"pause"}},
	)
	return tar, err
}
