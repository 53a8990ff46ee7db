// Package source provides warpd's inputs: Services and EndpointSlices, from
// a YAML file (standalone nodes, the demo) or from the API server.
package source

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// Source is one of warpd's inputs.
type Source interface {
	// Start begins watching; it returns once the first state is known
	// (or ctx ends).
	Start(ctx context.Context) error
	// Changes is signalled when the input may have changed.
	Changes() <-chan struct{}
	// Snapshot returns the current input; changed is false when it is
	// known to equal the last one returned. An error says the source
	// cannot be followed right now; the last good state stays in force.
	Snapshot() (snap *Snapshot, changed bool, err error)
	// String names the source for logs and warpd's status.
	String() string
}

// Snapshot is the whole input at one moment.
type Snapshot struct {
	Services       []*corev1.Service
	EndpointSlices []*discoveryv1.EndpointSlice
}

var _ Source = (*File)(nil)

// File watches a services file by polling it: changes are detected by
// content hash, so in-place rewrites are caught too, and no inotify support
// is needed. A file is read as the new state only once it has stayed the
// same for Settle, so a rewrite in progress (`cat new > file` truncates
// first) is never mistaken for the new state; and an empty file never is
// (see ErrEmpty).
type File struct {
	Path   string
	Poll   time.Duration // default 1s
	Settle time.Duration // default Poll, at most 250ms

	changes chan struct{}

	mu      sync.Mutex
	snap    *Snapshot // last good state
	fresh   bool      // snap not yet returned by Snapshot
	problem error     // why the file cannot be followed now, if it cannot
}

// Start reads the file once and then polls it until ctx ends.
func (f *File) Start(ctx context.Context) error {
	if f.Poll <= 0 {
		f.Poll = time.Second
	}
	if f.Settle <= 0 {
		f.Settle = min(f.Poll, 250*time.Millisecond)
	}
	f.changes = make(chan struct{}, 1)
	w := &fileWatch{f: f}
	w.look(true) // at start nothing is being written that we could wait for
	go func() {
		t := time.NewTimer(f.Poll)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			t.Reset(w.look(false))
		}
	}()
	return nil
}

// fileWatch is the poller's state.
type fileWatch struct {
	f        *File
	applied  [32]byte // content last parsed (successfully or not)
	parsed   bool
	parseErr error
	seen     [32]byte // content seen at the last look, not parsed yet
}

// look reads the file and returns when to look again: soon after a change,
// to see whether the writer has finished; after Poll otherwise.
func (w *fileWatch) look(now bool) time.Duration {
	data, err := os.ReadFile(w.f.Path)
	if err != nil {
		w.f.set(nil, fmt.Errorf("read services file: %w", err))
		return w.f.Poll
	}
	sum := sha256.Sum256(data)
	switch {
	case w.parsed && sum == w.applied:
		w.f.set(nil, w.parseErr) // unchanged (again readable, maybe)
		return w.f.Poll
	case !now && sum != w.seen:
		w.seen = sum // changed since the last look: let the writer finish
		return w.f.Settle
	}
	w.applied, w.seen, w.parsed = sum, sum, true
	snap, err := ParseFile(data)
	if err != nil {
		err = fmt.Errorf("%s: %w", w.f.Path, err)
	}
	w.parseErr = err
	w.f.set(snap, err)
	return w.f.Poll
}

// set records a new good state (snap != nil) and the current problem, and
// signals Changes when either changed.
func (f *File) set(snap *Snapshot, problem error) {
	f.mu.Lock()
	changed := snap != nil || fmt.Sprint(problem) != fmt.Sprint(f.problem)
	if snap != nil {
		f.snap, f.fresh = snap, true
	}
	f.problem = problem
	f.mu.Unlock()
	if changed {
		select {
		case f.changes <- struct{}{}:
		default:
		}
	}
}

// Changes is signalled when the file's state or problem changed.
func (f *File) Changes() <-chan struct{} { return f.changes }

// Snapshot returns the last good state of the file, and what keeps the file
// from being followed, if anything.
func (f *File) Snapshot() (*Snapshot, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fresh := f.fresh
	f.fresh = false
	return f.snap, fresh, f.problem
}

func (f *File) String() string { return "file " + f.Path }
