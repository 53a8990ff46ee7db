package pf_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/warpnet/warpnet/internal/sriov/pf"
	"github.com/warpnet/warpnet/tests/harness"
)

func mustMAC(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestRecorderDefaultsAndRoundTrip(t *testing.T) {
	file := filepath.Join(t.TempDir(), "state.json")
	r := pf.Recorder(file)

	// Nothing recorded: a fresh VF's defaults (and no file is needed).
	got, err := r.VF("pf0", 3)
	if err != nil {
		t.Fatal(err)
	}
	if want := pf.DefaultVFState(); got != want {
		t.Fatalf("untouched VF = %+v, want defaults %+v", got, want)
	}
	if want := (pf.VFState{Proto: "802.1q", SpoofChk: true, LinkState: "auto"}); got != want {
		t.Fatalf("defaults = %+v, want %+v", got, want)
	}

	// Every field, set through the interface, read back.
	steps := []error{
		r.SetMAC("pf0", 3, mustMAC(t, "02:00:00:aa:bb:cc")),
		r.SetVLAN("pf0", 3, 100, 5, pf.ProtoDot1AD),
		r.SetSpoofChk("pf0", 3, false),
		r.SetTrust("pf0", 3, true),
		r.SetLinkState("pf0", 3, pf.LinkStateDisable),
		r.SetRate("pf0", 3, 100, 2500),
	}
	if err := errors.Join(steps...); err != nil {
		t.Fatal(err)
	}
	want := pf.VFState{MAC: "02:00:00:aa:bb:cc", VLAN: 100, QoS: 5, Proto: "802.1ad", SpoofChk: false,
		Trust: true, LinkState: "disable", MinTxRate: 100, MaxTxRate: 2500}
	if got, err := r.VF("pf0", 3); err != nil || got != want {
		t.Fatalf("VF after setting every field = %+v, %v; want %+v", got, err, want)
	}
	// A second recorder on the same file (as a later plugin call) sees it too.
	if got, err := pf.Recorder(file).VF("pf0", 3); err != nil || got != want {
		t.Fatalf("reopened: %+v, %v; want %+v", got, err, want)
	}
	// Without InitPF any PF name goes.
	if err := r.SetTrust("pf1", 0, true); err != nil {
		t.Fatalf("second PF in an undeclared file: %v", err)
	}
	// The other VFs are untouched.
	if got, _ := r.VF("pf0", 2); got != pf.DefaultVFState() {
		t.Fatalf("VF 2 = %+v, want defaults", got)
	}

	// Back to the defaults, field by field: zero MAC clears, "" proto is 802.1q.
	steps = []error{
		r.SetMAC("pf0", 3, make(net.HardwareAddr, 6)),
		r.SetVLAN("pf0", 3, 0, 0, ""),
		r.SetSpoofChk("pf0", 3, true),
		r.SetTrust("pf0", 3, false),
		r.SetLinkState("pf0", 3, pf.LinkStateAuto),
		r.SetRate("pf0", 3, 0, 0),
	}
	if err := errors.Join(steps...); err != nil {
		t.Fatal(err)
	}
	if got, _ := r.VF("pf0", 3); got != pf.DefaultVFState() {
		t.Fatalf("VF after resetting = %+v, want defaults", got)
	}

	// The file is the documented JSON.
	st, err := pf.ReadState(file)
	if err != nil {
		t.Fatal(err)
	}
	if st.Version != 1 || st.PFs["pf0"] == nil || len(st.PFs["pf0"].VFs) != 1 || len(st.PFs) != 2 {
		t.Fatalf("state = %+v", st)
	}
	data, _ := os.ReadFile(file)
	if !strings.Contains(string(data), `"linkState": "auto"`) {
		t.Fatalf("state file lacks the documented keys:\n%s", data)
	}
}

func TestRecorderRejectsWhatAPFRejects(t *testing.T) {
	file := filepath.Join(t.TempDir(), "state.json")
	init := []pf.VFState{pf.DefaultVFState(), pf.DefaultVFState()}
	init[1].MAC = "02:11:22:33:44:55"
	if err := pf.InitPF(file, "sim0", init); err != nil {
		t.Fatal(err)
	}
	r := pf.Recorder(file)
	if got, err := r.VF("sim0", 1); err != nil || got.MAC != "02:11:22:33:44:55" || !got.SpoofChk {
		t.Fatalf("initialised VF 1 = %+v, %v", got, err)
	}
	for _, c := range []struct {
		name string
		err  error
		want error
	}{
		{"VF beyond NumVFs", r.SetTrust("sim0", 2, true), pf.ErrNoVF},
		{"read VF beyond NumVFs", func() error { _, err := r.VF("sim0", 7); return err }(), pf.ErrNoVF},
		{"unknown PF", r.SetTrust("sim1", 0, true), pf.ErrNoPF},
		{"negative VF", r.SetTrust("sim0", -1, true), pf.ErrInvalid},
		{"empty PF", r.SetTrust("", 0, true), pf.ErrInvalid},
		{"VLAN 4096", r.SetVLAN("sim0", 0, 4096, 0, ""), pf.ErrInvalid},
		{"QoS 8", r.SetVLAN("sim0", 0, 10, 8, ""), pf.ErrInvalid},
		{"proto", r.SetVLAN("sim0", 0, 10, 0, "802.1x"), pf.ErrInvalid},
		{"multicast MAC", r.SetMAC("sim0", 0, mustMAC(t, "01:00:5e:00:00:01")), pf.ErrInvalid},
		{"short MAC", r.SetMAC("sim0", 0, net.HardwareAddr{1, 2}), pf.ErrInvalid},
		{"link state", r.SetLinkState("sim0", 0, "up"), pf.ErrInvalid},
		{"min above max", r.SetRate("sim0", 0, 200, 100), pf.ErrInvalid},
		{"negative rate", r.SetRate("sim0", 0, -1, 0), pf.ErrInvalid},
	} {
		if !errors.Is(c.err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, c.err, c.want)
		}
	}
	// None of the rejected calls changed anything.
	if got, _ := r.VF("sim0", 0); got != pf.DefaultVFState() {
		t.Fatalf("VF 0 = %+v after rejected calls", got)
	}
	// A min rate with no max is fine (max 0 = unlimited).
	if err := r.SetRate("sim0", 0, 50, 0); err != nil {
		t.Fatal(err)
	}
}

func TestRecorderErrors(t *testing.T) {
	if _, err := pf.Recorder("").VF("pf0", 0); err == nil || !strings.Contains(err.Error(), pf.EnvStateFile) {
		t.Fatalf("empty state file path: %v", err)
	}
	file := filepath.Join(t.TempDir(), "state.json")
	os.WriteFile(file, []byte("not json"), 0o644)
	if _, err := pf.Recorder(file).VF("pf0", 0); err == nil || !strings.Contains(err.Error(), "not a PF state file") {
		t.Fatalf("garbage state file: %v", err)
	}
	if err := pf.Recorder(filepath.Join(t.TempDir(), "missing-dir", "s.json")).SetTrust("pf0", 0, true); err == nil {
		t.Fatal("state file in a missing directory: no error")
	}
}

func TestFromEnv(t *testing.T) {
	file := filepath.Join(t.TempDir(), "state.json")
	t.Setenv(pf.EnvStateFile, file)
	if err := pf.FromEnv().SetTrust("pf0", 1, true); err != nil {
		t.Fatal(err)
	}
	if s, _ := pf.Recorder(file).VF("pf0", 1); !s.Trust {
		t.Fatal("FromEnv with WARP_SIM_PF_STATE set did not record into that file")
	}
	t.Setenv(pf.EnvStateFile, "")
	if _, err := pf.FromEnv().VF("warp-no-such-link0", 0); !errors.Is(err, pf.ErrNoPF) {
		t.Fatalf("FromEnv without the variable should use netlink: %v", err)
	}
}

// envHelper makes the test binary act as one writer process of
// TestRecorderConcurrentWriters.
const envHelper = "WARP_PF_TEST_HELPER"

func TestRecorderHelperProcess(t *testing.T) {
	spec := os.Getenv(envHelper)
	if spec == "" {
		t.Skip("helper process for TestRecorderConcurrentWriters")
	}
	// spec: "<file>|<first vf>|<count>"
	parts := strings.Split(spec, "|")
	first, _ := strconv.Atoi(parts[1])
	n, _ := strconv.Atoi(parts[2])
	if err := writeVFs(pf.Recorder(parts[0]), first, n); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// writeVFs sets every field of VFs first..first+n-1 to values derived from
// the index, in six separate read-modify-writes each.
func writeVFs(r pf.PF, first, n int) error {
	for vf := first; vf < first+n; vf++ {
		w := wantFor(vf)
		mac, _ := net.ParseMAC(w.MAC)
		if err := errors.Join(
			r.SetMAC("pf0", vf, mac),
			r.SetVLAN("pf0", vf, w.VLAN, w.QoS, w.Proto),
			r.SetSpoofChk("pf0", vf, w.SpoofChk),
			r.SetTrust("pf0", vf, w.Trust),
			r.SetLinkState("pf0", vf, w.LinkState),
			r.SetRate("pf0", vf, w.MinTxRate, w.MaxTxRate),
		); err != nil {
			return fmt.Errorf("VF %d: %w", vf, err)
		}
	}
	return nil
}

func wantFor(vf int) pf.VFState {
	return pf.VFState{
		MAC: fmt.Sprintf("02:00:00:00:%02x:%02x", vf>>8, vf&0xff), VLAN: 100 + vf, QoS: vf % 8,
		Proto: []string{pf.ProtoDot1Q, pf.ProtoDot1AD}[vf%2], SpoofChk: vf%3 == 0, Trust: vf%2 == 1,
		LinkState: []string{"auto", "enable", "disable"}[vf%3], MinTxRate: vf, MaxTxRate: 1000 + vf,
	}
}

// TestRecorderConcurrentWriters: 20 goroutines and 4 processes each set
// every field of their own VFs at the same time; no update may be lost.
func TestRecorderConcurrentWriters(t *testing.T) {
	file := filepath.Join(t.TempDir(), "state.json")
	const goroutines, procs, perProc = 20, 4, 3
	total := goroutines + procs*perProc
	var wg sync.WaitGroup
	errs := make(chan error, goroutines+procs)
	for i := 0; i < procs; i++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestRecorderHelperProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s|%d|%d", envHelper, file, goroutines+i*perProc, perProc))
		wg.Add(1)
		go func() {
			defer wg.Done()
			if out, err := cmd.CombinedOutput(); err != nil {
				errs <- fmt.Errorf("writer process: %v\n%s", err, out)
			}
		}()
	}
	for i := 0; i < goroutines; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := writeVFs(pf.Recorder(file), i, 1); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st, err := pf.ReadState(file)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(st.PFs["pf0"].VFs); n != total {
		t.Errorf("state has %d VFs, want %d (lost updates)", n, total)
	}
	for vf := 0; vf < total; vf++ {
		if got, err := pf.Recorder(file).VF("pf0", vf); err != nil || got != wantFor(vf) {
			t.Errorf("VF %d = %+v, %v; want %+v", vf, got, err, wantFor(vf))
		}
	}
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(file), ".state.json.tmp-*")); len(m) > 0 {
		t.Errorf("temp files left behind: %v", m)
	}
}

// TestNetlinkWithoutSRIOV: there is no SR-IOV NIC here, so the real
// implementation can only be checked for its errors: a veth has no VFs, a
// missing link is reported as such, and bad arguments never reach the kernel.
func TestNetlinkWithoutSRIOV(t *testing.T) {
	e := harness.New(t)
	node, peer := e.NetNS("node"), e.NetNS("peer")
	e.Veth(node, "veth0", peer, "veth1")
	n := pf.Netlink()
	mac := mustMAC(t, "02:00:00:00:00:01")
	err := node.Do(func() error {
		checks := []struct {
			name string
			err  error
			want error
			text string
		}{
			{"VF on veth", func() error { _, err := n.VF("veth0", 0); return err }(), pf.ErrNoVF, "not an SR-IOV PF"},
			{"trust on veth", n.SetTrust("veth0", 0, true), pf.ErrNoVF, "veth0 (veth) reports no VFs"},
			{"spoofchk on veth", n.SetSpoofChk("veth0", 0, false), pf.ErrNoVF, ""},
			{"MAC on veth", n.SetMAC("veth0", 0, mac), pf.ErrNoVF, ""},
			{"VLAN on veth", n.SetVLAN("veth0", 0, 10, 0, ""), pf.ErrNoVF, ""},
			{"link state on veth", n.SetLinkState("veth0", 0, "enable"), pf.ErrNoVF, ""},
			{"rate on veth", n.SetRate("veth0", 0, 0, 100), pf.ErrNoVF, ""},
			{"missing link", func() error { _, err := n.VF("nosuch0", 0); return err }(), pf.ErrNoPF, "not found in this network namespace"},
			{"bad VLAN", n.SetVLAN("veth0", 0, 5000, 0, ""), pf.ErrInvalid, ""},
			{"bad link state", n.SetLinkState("veth0", 0, "bogus"), pf.ErrInvalid, ""},
		}
		for _, c := range checks {
			if !errors.Is(c.err, c.want) || !strings.Contains(fmt.Sprint(c.err), c.text) {
				t.Errorf("%s: err = %v, want %v containing %q", c.name, c.err, c.want, c.text)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
