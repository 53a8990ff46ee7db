package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"syscall"

	"github.com/warpnet/warpnet/internal/sriov/pf"
	"github.com/warpnet/warpnet/internal/sriov/sysfs"
)

// State on disk, under the configuration's dataDir:
//
//	cache/<container>:<ifname>.json  what ADD did, so DEL can undo it with no
//	                                 (or a different) stdin and after restarts
//	vf/<pci>.json                    which attachment holds the VF now
//	vf/<pci>.lock                    flock serialising everything done to a VF
//
// The lock and the allocation record keep the late DEL of an old pod from
// resetting a VF that a new pod has since been given.

// key identifies an attachment.
type key struct{ ContainerID, IfName string }

// Original is the VF as it was before ADD touched it.
type Original struct {
	PF       pf.VFState
	Name     string   // host netdev name
	AltNames []string // host altnames (udev's predictable names), dropped in the pod
	MAC      string
	MTU      int
}

// record is the cache entry of one attachment.
type record struct {
	ContainerID string
	IfName      string
	Netns       string
	VF          sysfs.VF
	Orig        Original
	Stdin       json.RawMessage // the ADD configuration, for IPAM DEL and CHECK
}

// allocation says which attachment holds a VF.
type allocation struct {
	ContainerID string
	IfName      string
	Netns       string
}

func (a allocation) key() key { return key{a.ContainerID, a.IfName} }

func cachePath(dataDir string, k key) string {
	return filepath.Join(dataDir, "cache", url.QueryEscape(k.ContainerID)+":"+url.QueryEscape(k.IfName)+".json")
}

func allocPath(dataDir, pci string) string { return filepath.Join(dataDir, "vf", pci+".json") }

// writeJSON writes atomically (temporary file, then rename), so a crash
// never leaves half a record that DEL would then fail to read.
func writeJSON(path string, v any) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("dataDir: %w", err)
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("dataDir: %w", err)
	}
	return os.Rename(tmp, path)
}

// readJSON returns false when the file does not exist.
func readJSON(path string, v any) (bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, json.Unmarshal(b, v)
}

func removeFile(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// lockVF takes the VF's exclusive lock; the kernel drops it if we die.
func lockVF(dataDir, pci string) (unlock func(), err error) {
	dir := filepath.Join(dataDir, "vf")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("dataDir: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, pci+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("dataDir: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock VF %s: %w", pci, err)
	}
	return func() { f.Close() }, nil
}

// netnsExists reports whether a pod namespace path still names a namespace.
func netnsExists(path string) bool {
	if path == "" {
		return false
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return false
	}
	const nsfsMagic = 0x6e736673
	return st.Type == nsfsMagic
}
