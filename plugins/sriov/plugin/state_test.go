package plugin

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/warpnet/warpnet/internal/sriov/pf"
)

// A VF lock held for longer than the bounded wait is "try again later"
// (code 11), naming the VF and the lock file.
func TestStuckVFLockIsTryAgain(t *testing.T) {
	dir := t.TempDir()
	const pci = "0000:3b:02.0"
	unlock, err := lockVF(dir, pci)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	defer func(d time.Duration) { lockTimeout = d }(lockTimeout)
	lockTimeout = 100 * time.Millisecond
	_, err = lockVF(dir, pci)
	var te *types.Error
	if !errors.As(err, &te) || te.Code != types.ErrTryAgainLater {
		t.Fatalf("second lock: %v, want CNI code 11", err)
	}
	for _, want := range []string{pci, filepath.Join(dir, "vf", pci+".lock"), "try again"} {
		if !strings.Contains(te.Msg, want) {
			t.Errorf("message %q does not say %q", te.Msg, want)
		}
	}
}

// Records of an older warp-sriov (the holder at the top level of the VF
// record, the original state in the holder's cache) are read as one VF
// record, and releasing it restores that original state.
func TestOlderRecordsAreUpgraded(t *testing.T) {
	dir := t.TempDir()
	const pci = "0000:3b:02.3"
	write := func(path, data string) {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(vfPath(dir, pci), `{"ContainerID": "c1", "IfName": "net1", "Netns": "/run/netns/gone"}`)
	write(cachePath(dir, key{"c1", "net1"}), `{"ContainerID": "c1", "IfName": "net1", "Netns": "/run/netns/gone",
		"VF": {"PCI": "`+pci+`", "PFName": "sim0", "Index": 3, "Driver": "vfio-pci"},
		"Orig": {"PF": {"mac": "", "vlan": 0, "proto": "802.1q", "spoofchk": true, "linkState": "auto"}},
		"Stdin": {"cniVersion": "1.0.0"}}`)
	rec, err := readVF(dir, pci)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Holder != (attachment{"c1", "net1", "/run/netns/gone"}) || rec.VF.Index != 3 || rec.VF.PFName != "sim0" || rec.Pristine == nil || !rec.Pristine.PF.SpoofChk {
		t.Fatalf("upgraded record %+v (pristine %+v)", rec, rec.Pristine)
	}

	ops := pf.Recorder(filepath.Join(dir, "pf.json"))
	if err := ops.SetVLAN("sim0", 3, 7, 0, ""); err != nil {
		t.Fatal(err)
	}
	if err := release(ops, dir, rec, "", ""); err != nil {
		t.Fatal(err)
	}
	if got, _ := ops.VF("sim0", 3); got != rec.Pristine.PF {
		t.Errorf("after release %+v, want %+v", got, rec.Pristine.PF)
	}
	if _, err := os.Stat(vfPath(dir, pci)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("VF record left after release: %v", err)
	}
}
