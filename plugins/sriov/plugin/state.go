package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/warpnet/warpnet/internal/atomicfile"
	"github.com/warpnet/warpnet/internal/cnierr"
	"github.com/warpnet/warpnet/internal/flock"
	"github.com/warpnet/warpnet/internal/sriov/pf"
	"github.com/warpnet/warpnet/internal/sriov/sysfs"
)

// State on disk, under the configuration's dataDir:
//
//	vf/<pci>.json                    the VF's record: its pristine state and
//	                                 the attachment that holds it now
//	vf/<pci>.lock                    flock serialising everything done to a VF
//	cache/<container>:<ifname>.json  which VF an attachment was given and its
//	                                 ADD configuration, so that DEL needs
//	                                 neither the original stdin nor deviceID
//
// The pristine state is kept per VF, not per attachment: a pod that takes
// over the VF of a pod that vanished without a DEL must not mistake the
// vanished pod's settings (its VLAN, MAC, trust, ...) for the VF's own. The
// record is written by the first ADD that claims the VF, before anything is
// changed, and is removed only when the VF's last holder leaves (its DEL, GC,
// or the rollback of a failed ADD), after the VF was put back as recorded.
// Its holder field is what keeps the late DEL of an old pod from resetting a
// VF that a new pod has since been given.

// key identifies an attachment.
type key struct{ ContainerID, IfName string }

// Original is a VF as it was before any attachment changed it.
type Original struct {
	PF       pf.VFState
	Name     string   // host netdev name
	AltNames []string // host altnames (udev's predictable names), dropped in the pod
	MAC      string
	MTU      int
}

// attachment is an attachment and the namespace it was made in.
type attachment struct {
	ContainerID string
	IfName      string
	Netns       string
}

func (a attachment) key() key { return key{a.ContainerID, a.IfName} }

// vfRecord is the record of a VF that some attachment holds.
type vfRecord struct {
	Holder attachment
	VF     sysfs.VF
	// Pristine is nil only for a record of an older warp-sriov whose
	// holder's cache had no original state either: then nothing is known
	// to restore.
	Pristine *Original
}

// cacheRecord is the cache entry of one attachment.
type cacheRecord struct {
	attachment
	VF    sysfs.VF
	Stdin json.RawMessage // the ADD configuration, for IPAM DEL
	// Orig is the original state of the VF as older versions recorded it,
	// per attachment; read only to upgrade their VF records.
	Orig *Original `json:",omitempty"`
}

func cachePath(dataDir string, k key) string {
	return filepath.Join(dataDir, "cache", url.QueryEscape(k.ContainerID)+":"+url.QueryEscape(k.IfName)+".json")
}

func vfPath(dataDir, pci string) string { return filepath.Join(dataDir, "vf", pci+".json") }

// ioErr reports a dataDir failure as CNI code 5.
func ioErr(err error) *types.Error {
	return cnierr.New(types.ErrIOFailure, "dataDir: %v", err)
}

// writeJSON writes atomically and durably (internal/atomicfile),
// so that neither a crash nor a power loss leaves half a record.
func writeJSON(path string, v any) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return ioErr(err)
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if _, err := atomicfile.Write(path, b, 0o600); err != nil {
		return ioErr(err)
	}
	return nil
}

// readJSON returns false when the file does not exist.
func readJSON(path string, v any) (bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, ioErr(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, ioErr(fmt.Errorf("%s: %w", path, err))
	}
	return true, nil
}

func removeFile(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return ioErr(err)
	}
	return nil
}

// readVF returns the VF's record, nil if no attachment holds the VF.
func readVF(dataDir, pci string) (*vfRecord, error) {
	path := vfPath(dataDir, pci)
	var rec vfRecord
	if ok, err := readJSON(path, &rec); err != nil || !ok {
		return nil, err
	}
	if rec.Holder.ContainerID == "" {
		if err := rec.upgrade(dataDir, path); err != nil {
			return nil, err
		}
	}
	return &rec, nil
}

// upgrade reads a record of an older warp-sriov, which held only the holder
// (at the top level) and kept the VF's original state in the holder's cache.
func (rec *vfRecord) upgrade(dataDir, path string) error {
	if _, err := readJSON(path, &rec.Holder); err != nil {
		return err
	}
	var c cacheRecord
	if ok, err := readJSON(cachePath(dataDir, rec.Holder.key()), &c); err != nil || !ok {
		return err
	}
	rec.VF, rec.Pristine = c.VF, c.Orig
	return nil
}

// listJSON returns the records in dataDir/sub, by file name.
func listJSON(dataDir, sub string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(dataDir, sub))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, ioErr(err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".json") {
			out = append(out, filepath.Join(dataDir, sub, e.Name()))
		}
	}
	return out, nil
}

// lockTimeout bounds the wait for a VF's lock (tests shorten it).
var lockTimeout = flock.DefaultTimeout

// lockVF takes the VF's exclusive lock; the kernel drops it if we die. A
// holder stuck for longer than lockTimeout is CNI code 11.
func lockVF(dataDir, pci string) (unlock func(), err error) {
	dir := filepath.Join(dataDir, "vf")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, ioErr(err)
	}
	l, err := flock.Open(filepath.Join(dir, pci+".lock"))
	if err != nil {
		return nil, ioErr(err)
	}
	l.SetTimeout(lockTimeout)
	if err := l.Lock(); err != nil {
		l.Close()
		if errors.Is(err, flock.ErrTimeout) {
			return nil, cnierr.New(types.ErrTryAgainLater, "VF %s: another warp-sriov is still working on it: %v", pci, err)
		}
		return nil, ioErr(err)
	}
	return func() { l.Close() }, nil
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
