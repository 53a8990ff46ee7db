// Package source provides warpd's inputs: Services, EndpointSlices and Nodes,
// from a YAML file (standalone nodes, the demo) or from the API server.
package source

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/warpnet/warpnet/daemon/services"
)

// Source is one of warpd's inputs.
type Source interface {
	// Start begins watching; it returns once the first state is known
	// (or ctx ends).
	Start(ctx context.Context) error
	// Changes is signalled when the input may have changed.
	Changes() <-chan struct{}
	// Take returns what to sync: a view of the current Services and
	// EndpointSlices (nil until there is a good state) and the services
	// (namespace/name) that may have changed since the last Take; all
	// says that any may have (the first Take). This is the change
	// tracking that lets warpd translate and write only what changed.
	// An error says the source cannot be followed right now; the view
	// keeps the last good state.
	Take() (view services.View, changed []string, all bool, err error)
	// String names the source for logs and warpd's status.
	String() string

	// NodeChanges is signalled when the cluster's Nodes may have changed
	// in what node networking uses: the set of nodes, their pod CIDRs or
	// their addresses (not at every status heartbeat).
	NodeChanges() <-chan struct{}
	// Nodes returns the cluster's Nodes (read only); ok is false until
	// they are known.
	Nodes() (nodes []*corev1.Node, ok bool)
}

// Snapshot is the whole input at one moment.
type Snapshot struct {
	Services       []*corev1.Service
	EndpointSlices []*discoveryv1.EndpointSlice
	Nodes          []*corev1.Node
}

// networkKey is what node networking reads of a Node: a change in it is a
// change that matters.
func networkKey(n *corev1.Node) string {
	return fmt.Sprint(n.Name, n.Spec.PodCIDR, n.Spec.PodCIDRs, n.Status.Addresses)
}

// nodesKey is networkKey over a set of nodes (in the order given).
func nodesKey(nodes []*corev1.Node) string {
	var b strings.Builder
	for _, n := range nodes {
		b.WriteString(networkKey(n))
		b.WriteByte('\n')
	}
	return b.String()
}

// signal sends on a coalescing channel: one pending notification is
// enough, since readers take the whole current state.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
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

	changes     chan struct{}
	nodeChanges chan struct{}

	mu       sync.Mutex
	snap     *Snapshot          // last good state
	view     *services.ListView // of snap
	pending  map[string]bool    // services changed since the last Take
	taken    bool               // Take was called
	problem  error              // why the file cannot be followed now, if it cannot
	nodesKey string             // nodesKey of snap.Nodes
}

// Start reads the file once and then polls it until ctx ends.
func (f *File) Start(ctx context.Context) error {
	if f.Poll <= 0 {
		f.Poll = time.Second
	}
	if f.Settle <= 0 {
		f.Settle = min(f.Poll, 250*time.Millisecond)
	}
	f.changes, f.nodeChanges = make(chan struct{}, 1), make(chan struct{}, 1)
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
	nodesChanged := false
	if snap != nil {
		view := services.NewListView(snap.Services, snap.EndpointSlices)
		if f.pending == nil {
			f.pending = map[string]bool{}
		}
		for _, key := range changedKeys(f.view, view) {
			f.pending[key] = true
		}
		f.snap, f.view = snap, view
		if key := nodesKey(snap.Nodes); key != f.nodesKey || f.nodesKey == "" {
			f.nodesKey, nodesChanged = key, true
		}
	}
	f.problem = problem
	f.mu.Unlock()
	if changed {
		signal(f.changes)
	}
	if nodesChanged {
		signal(f.nodeChanges)
	}
}

// NodeChanges is signalled when the file's Nodes changed.
func (f *File) NodeChanges() <-chan struct{} { return f.nodeChanges }

// Nodes returns the Nodes of the file's last good state.
func (f *File) Nodes() ([]*corev1.Node, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.snap == nil {
		return nil, false
	}
	return f.snap.Nodes, true
}

// Changes is signalled when the file's state or problem changed.
func (f *File) Changes() <-chan struct{} { return f.changes }

// Take returns the file's last good state, the services that changed in
// it since the last Take, and what keeps the file from being followed, if
// anything.
func (f *File) Take() (services.View, []string, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.view == nil {
		return nil, nil, false, f.problem
	}
	all := !f.taken
	f.taken = true
	keys := make([]string, 0, len(f.pending))
	for k := range f.pending {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	f.pending = map[string]bool{}
	return f.view, keys, all, f.problem
}

// changedKeys lists the services whose Service or EndpointSlices differ
// between two states of the file (prev nil: all of next's).
func changedKeys(prev, next *services.ListView) []string {
	keys := map[string]bool{}
	for _, k := range next.ServiceKeys() {
		keys[k] = true
	}
	if prev != nil {
		for _, k := range prev.ServiceKeys() {
			keys[k] = true
		}
	}
	var out []string
	for k := range keys {
		if prev == nil || !sameService(prev, next, k) {
			out = append(out, k)
		}
	}
	return out
}

func sameService(a, b services.View, key string) bool {
	sa, oka := a.Service(key)
	sb, okb := b.Service(key)
	if oka != okb || !reflect.DeepEqual(sa, sb) {
		return false
	}
	byName := func(ss []*discoveryv1.EndpointSlice) map[string]*discoveryv1.EndpointSlice {
		m := map[string]*discoveryv1.EndpointSlice{}
		for _, s := range ss {
			m[s.Name] = s
		}
		return m
	}
	return reflect.DeepEqual(byName(a.EndpointSlices(key)), byName(b.EndpointSlices(key)))
}

func (f *File) String() string { return "file " + f.Path }
