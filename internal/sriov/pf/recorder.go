package pf

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"strings"

	"github.com/warpnet/warpnet/internal/atomicfile"
	"github.com/warpnet/warpnet/internal/flock"
)

// State is the content of a recorder state file:
//
//	{"version": 1, "pfs": {"sim0": {"numVFs": 4, "vfs": {"0": {...VFState}, ...}}}}
//
// There is one entry per PF netdev name and VF index. The simulator writes
// every VF's initial state (InitPF); a VF without an entry reads as
// DefaultVFState.
type State struct {
	Version int                 `json:"version"`
	PFs     map[string]*PFState `json:"pfs"`
}

// PFState is the recorded state of one PF. NumVFs > 0 (set by InitPF) makes
// the recorder reject VF indexes >= NumVFs, as a real PF rejects a VF it does
// not have.
type PFState struct {
	NumVFs int             `json:"numVFs"`
	VFs    map[int]VFState `json:"vfs"`
}

const stateVersion = 1

// recorder implements PF by recording into a JSON state file. Every change
// is a read-modify-write under an exclusive internal/flock lock on
// "<file>.lock" (a separate file, because the state file itself is replaced
// by rename so that readers never see a half-written file). Each call opens
// the lock anew, so it serialises goroutines of one process as well as
// separate processes, and a stuck holder is an error after flock's bounded
// wait.
type recorder struct{ path string }

// Recorder returns a PF that records settings in stateFile instead of
// applying them. A missing or empty file reads as no state at all; it is
// created on the first change (its directory must exist).
//
// If the file declares PFs (InitPF, as the simulator does), only those PF
// names and their VF indexes are accepted, like a real node rejects an
// unknown PF or VF; a file that declares no PF accepts any PF name and VF
// index, which is handy for unit tests.
func Recorder(stateFile string) PF { return recorder{path: stateFile} }

// InitPF records pfName with len(vfs) VFs in stateFile and their initial
// states, replacing what was recorded for that PF before. The simulator
// calls it when it creates a PF.
func InitPF(stateFile, pfName string, vfs []VFState) error {
	if pfName == "" {
		return fmt.Errorf("%w: empty PF name", ErrInvalid)
	}
	r := recorder{path: stateFile}
	return r.update(func(st *State) error {
		p := &PFState{NumVFs: len(vfs), VFs: map[int]VFState{}}
		for i, s := range vfs {
			p.VFs[i] = s
		}
		st.PFs[pfName] = p
		return nil
	})
}

// ReadState returns everything recorded in stateFile (an empty State if the
// file does not exist).
func ReadState(stateFile string) (*State, error) {
	r := recorder{path: stateFile}
	var st *State
	err := r.withLock(false, func() error {
		var err error
		st, err = r.read()
		return err
	})
	return st, err
}

func (r recorder) lockPath() string { return r.path + ".lock" }

func (r recorder) withLock(exclusive bool, fn func() error) error {
	if r.path == "" {
		return fmt.Errorf("PF state recorder: no state file given (set %s)", EnvStateFile)
	}
	release, err := flock.Acquire(r.lockPath(), exclusive)
	if err != nil {
		return fmt.Errorf("PF state recorder: %w", err)
	}
	defer release()
	return fn()
}

// read parses the state file; the caller holds the lock.
func (r recorder) read() (*State, error) {
	st := &State{Version: stateVersion, PFs: map[string]*PFState{}}
	data, err := os.ReadFile(r.path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("PF state recorder: %w", err)
	}
	if len(strings.TrimSpace(string(data))) == 0 {
		return st, nil
	}
	if err := json.Unmarshal(data, st); err != nil {
		return nil, fmt.Errorf("PF state recorder: %s is not a PF state file: %w", r.path, err)
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("PF state recorder: %s has version %d, this build understands %d", r.path, st.Version, stateVersion)
	}
	if st.PFs == nil {
		st.PFs = map[string]*PFState{}
	}
	for name, p := range st.PFs {
		if p == nil {
			st.PFs[name] = &PFState{}
			p = st.PFs[name]
		}
		if p.VFs == nil {
			p.VFs = map[int]VFState{}
		}
	}
	return st, nil
}

// write replaces the state file atomically; the caller holds the lock.
func (r recorder) write(st *State) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if _, err := atomicfile.Write(r.path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("PF state recorder: write %s: %w", r.path, err)
	}
	return nil
}

func (r recorder) update(fn func(*State) error) error {
	return r.withLock(true, func() error {
		st, err := r.read()
		if err != nil {
			return err
		}
		if err := fn(st); err != nil {
			return err
		}
		return r.write(st)
	})
}

// declared reports whether the file describes PFs (InitPF was called for
// at least one): then unknown PF names are rejected.
func (st *State) declared() bool {
	for _, p := range st.PFs {
		if p.NumVFs > 0 {
			return true
		}
	}
	return false
}

// lookup validates pfName/vf against the recorded PFs and returns the PF's
// entry (created when the file declares no PF).
func (r recorder) lookup(st *State, pfName string, vf int) (*PFState, error) {
	p, ok := st.PFs[pfName]
	if !ok {
		if st.declared() {
			return nil, fmt.Errorf("%w: PF %q is not in %s (it has %s)", ErrNoPF, pfName, r.path, strings.Join(slices.Sorted(maps.Keys(st.PFs)), ", "))
		}
		p = &PFState{VFs: map[int]VFState{}}
		st.PFs[pfName] = p
	}
	if p.NumVFs > 0 && vf >= p.NumVFs {
		return nil, fmt.Errorf("%w: PF %s has %d VFs (0-%d), no VF %d", ErrNoVF, pfName, p.NumVFs, p.NumVFs-1, vf)
	}
	return p, nil
}

func (r recorder) VF(pfName string, vf int) (VFState, error) {
	if err := checkVF(pfName, vf); err != nil {
		return VFState{}, err
	}
	var s VFState
	err := r.withLock(false, func() error {
		st, err := r.read()
		if err != nil {
			return err
		}
		p, err := r.lookup(st, pfName, vf)
		if err != nil {
			return err
		}
		var ok bool
		if s, ok = p.VFs[vf]; !ok {
			s = DefaultVFState()
		}
		return nil
	})
	return s, err
}

// set applies fn to the VF's recorded state.
func (r recorder) set(pfName string, vf int, fn func(*VFState)) error {
	if err := checkVF(pfName, vf); err != nil {
		return err
	}
	return r.update(func(st *State) error {
		p, err := r.lookup(st, pfName, vf)
		if err != nil {
			return err
		}
		s, ok := p.VFs[vf]
		if !ok {
			s = DefaultVFState()
		}
		fn(&s)
		p.VFs[vf] = s
		return nil
	})
}

func (r recorder) SetMAC(pfName string, vf int, mac net.HardwareAddr) error {
	if err := checkMAC(mac); err != nil {
		return err
	}
	m := mac.String()
	if isZeroMAC(mac) {
		m = ""
	}
	return r.set(pfName, vf, func(s *VFState) { s.MAC = m })
}

func (r recorder) SetVLAN(pfName string, vf, vlan, qos int, proto string) error {
	name, _, err := checkVLAN(vlan, qos, proto)
	if err != nil {
		return err
	}
	return r.set(pfName, vf, func(s *VFState) { s.VLAN, s.QoS, s.Proto = vlan, qos, name })
}

func (r recorder) SetSpoofChk(pfName string, vf int, on bool) error {
	return r.set(pfName, vf, func(s *VFState) { s.SpoofChk = on })
}

func (r recorder) SetTrust(pfName string, vf int, on bool) error {
	return r.set(pfName, vf, func(s *VFState) { s.Trust = on })
}

func (r recorder) SetLinkState(pfName string, vf int, state string) error {
	if _, err := checkLinkState(state); err != nil {
		return err
	}
	return r.set(pfName, vf, func(s *VFState) { s.LinkState = state })
}

func (r recorder) SetRate(pfName string, vf, minMbps, maxMbps int) error {
	if err := checkRate(minMbps, maxMbps); err != nil {
		return err
	}
	return r.set(pfName, vf, func(s *VFState) { s.MinTxRate, s.MaxTxRate = minMbps, maxMbps })
}
