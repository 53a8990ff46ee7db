// Package kube is warp-ipam's cluster-wide store: reservations are
// IPAllocation objects in the API server (ipam/kube), one per address, so
// the API server's create is the claim and no lock spans more than one node.
//
// What stays on the node, in <dataDir>/<network>.kubernetes/:
//
//	lock             flock(2) serialising this node's allocators of the network
//	                 while they pick a candidate and move the cursor past it;
//	                 the create runs after it is released (a store.Claimer),
//	                 so the node's processes never wait for each other's API
//	                 requests (other nodes never wait for it at all)
//	cursor.<pools>   where this node's dynamic allocation continues; a new node
//	                 starts at an offset derived from its name, so nodes draw
//	                 from different parts of a pool and rarely race
//	attachments/<k>  the addresses attachment k holds (with the objects' UIDs):
//	                 written before the create, so an address whose create's
//	                 outcome was lost (crash, timeout) is still found and freed
//	journal/<k>      releases that could not reach the API server (DEL while it
//	                 was down): DEL succeeds, and every later call of the plugin
//	                 on this node retries them first
//	taken.<pools>    which addresses the pools held when this node last listed
//	                 them (after losing a race; one process lists at a time,
//	                 under taken.<pools>.lock): a hint for the next ADDs, so a
//	                 nearly full pool costs one list per node every few seconds
//	                 instead of one per ADD; it only ever makes an ADD skip an
//	                 address (a stale hint that leaves nothing free is
//	                 re-listed), and the create stays the claim
//
// A pinned address (a StatefulSet pod's) outlives its sandboxes: DEL only
// detaches it, and the next sandbox of the same pod, on any node, takes it
// over with an update conditioned on the object's resourceVersion. warpd's
// leak collector (daemon/ipamgc) releases it once the StatefulSet no longer
// needs it.
package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/warpnet/warpnet/internal/atomicfile"
	"github.com/warpnet/warpnet/internal/faultpoint"
	"github.com/warpnet/warpnet/internal/flock"
	"github.com/warpnet/warpnet/ipam/config"
	"github.com/warpnet/warpnet/ipam/kube"
	"github.com/warpnet/warpnet/ipam/store"
)

const (
	lockFile   = "lock"
	cursorFile = "cursor."
	indexDir   = "attachments"
	journalDir = "journal"
)

// Owner is the pod an ADD reserves for.
type Owner struct {
	Pod         kube.PodRef          // namespace, name, uid, interface
	StatefulSet *kube.StatefulSetRef // set: addresses are pinned to the pod
}

// Store is the kubernetes store of one network, as seen from one node.
type Store struct {
	c    *kube.Client
	ctx  context.Context // bounds every API call of this plugin run
	dir  string
	lock *flock.Lock
	node string

	// For ADD (see ForPod); zero otherwise.
	cfg   *config.Config
	owner *Owner
	adopt map[netip.Addr]*kube.IPAllocation // pinned objects of this pod that Reserve takes over

	taken       map[netip.Addr]bool // the pools' held addresses, read once on the first lost race; nil until then
	fromHint    bool                // taken came from the node's hint file, not a list of this call
	hintChecked bool                // Reserve looked for a fresh hint already
	unknown     []entry             // claims of this call whose outcome was lost (see Abandon)
}

// hintTTL is how long a node trusts its list of held addresses.
const hintTTL = 10 * time.Second

var _ store.Claimer = (*Store)(nil)

// Dir is where the node-local state of network lives under dataDir.
func Dir(dataDir, network string) string { return filepath.Join(dataDir, network+".kubernetes") }

// Open opens (creating it if needed) the node-local state of network and
// returns the store; every API call it makes is bounded by ctx.
func Open(ctx context.Context, c *kube.Client, dataDir, network, node string) (*Store, error) {
	dir := Dir(dataDir, network)
	for _, d := range []string{indexDir, journalDir} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("cannot create the node-local state directory (check dataDir): %w", err)
		}
	}
	l, err := flock.Open(filepath.Join(dir, lockFile))
	if err != nil {
		return nil, err
	}
	return &Store{c: c, ctx: ctx, dir: dir, lock: l, node: node}, nil
}

// ForPod prepares the store for an ADD: cfg's ranges (from the pods'
// pools, each range naming its pool), the pod, and its pinned objects that
// Reserve may take over.
func (s *Store) ForPod(cfg *config.Config, owner *Owner, adopt []*kube.IPAllocation) {
	s.cfg, s.owner, s.adopt = cfg, owner, map[netip.Addr]*kube.IPAllocation{}
	for _, a := range adopt {
		s.adopt[a.Addr()] = a
	}
}

// SetLockTimeout changes how long Lock waits (flock.DefaultTimeout unless set).
func (s *Store) SetLockTimeout(d time.Duration) { s.lock.SetTimeout(d) }

func (s *Store) Lock() error   { return s.lock.Lock() }
func (s *Store) Unlock() error { return s.lock.Unlock() }
func (s *Store) Close() error  { return s.lock.Close() }

// entry is one address in an attachment's index file.
type entry struct {
	Address netip.Addr `json:"address"`
	Pool    string     `json:"pool,omitempty"`
	UID     string     `json:"uid,omitempty"` // the object's UID; "" while the create's outcome is unknown
	Pinned  bool       `json:"pinned,omitempty"`
}

func fileName(k store.Key) string {
	return url.QueryEscape(k.ContainerID) + ":" + url.QueryEscape(k.IfName)
}

func keyFromFileName(name string) (store.Key, bool) {
	id, ifn, ok := strings.Cut(name, ":")
	if !ok {
		return store.Key{}, false
	}
	id, err1 := url.QueryUnescape(id)
	ifn, err2 := url.QueryUnescape(ifn)
	return store.Key{ContainerID: id, IfName: ifn}, err1 == nil && err2 == nil
}

func (s *Store) indexPath(k store.Key) string { return filepath.Join(s.dir, indexDir, fileName(k)) }

func (s *Store) readIndex(k store.Key) ([]entry, error) {
	var es []entry
	err := readJSON(s.indexPath(k), &es)
	return es, err
}

func (s *Store) writeIndex(k store.Key, es []entry) error {
	if len(es) == 0 {
		if err := os.Remove(s.indexPath(k)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	return writeJSON(s.indexPath(k), es)
}

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		// A torn write of a dead plugin: the API server has the truth.
		fmt.Fprintf(os.Stderr, "warp-ipam: ignoring unreadable %s: %v\n", path, err)
	}
	return nil
}

// isTemp reports a temporary file of writeJSON, in flight or left by a
// crash: atomicfile's, or the fixed "<name>.tmp" of earlier versions.
func isTemp(name string) bool { return atomicfile.IsTemp(name) || strings.HasSuffix(name, ".tmp") }

// writeJSON replaces path atomically, so a crash leaves the old or the new
// content. Not synced to disk: the API server has the truth, and what a
// power loss takes from the node (an index entry, a queued release) leaves
// an address to warpd's leak collector.
func writeJSON(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return atomicfile.Replace(path, data, 0o644)
}

// updateEntry applies fn to k's entry for ip (creating it when missing)
// and writes the index; fn returning false drops the entry.
func (s *Store) updateEntry(k store.Key, ip netip.Addr, fn func(e *entry) bool) error {
	es, err := s.readIndex(k)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(es, func(e entry) bool { return e.Address == ip })
	if i < 0 {
		es = append(es, entry{Address: ip})
		i = len(es) - 1
	}
	if !fn(&es[i]) {
		es = slices.Delete(es, i, i+1)
	}
	return s.writeIndex(k, es)
}

func (s *Store) poolOf(ip netip.Addr) string {
	if s.cfg != nil {
		for _, rs := range s.cfg.Ranges {
			if r, ok := rs.RangeFor(ip); ok {
				return r.Pool
			}
		}
	}
	return ""
}

// record is the object that claims ip for k.
func (s *Store) record(k store.Key, ip netip.Addr) *kube.IPAllocation {
	pool := s.poolOf(ip)
	a := &kube.IPAllocation{Spec: kube.IPAllocationSpec{
		Pool: pool, Address: ip.String(), Pod: s.owner.Pod,
		Attachment:  &kube.Attachment{ContainerID: k.ContainerID, IfName: k.IfName, Node: s.node},
		StatefulSet: s.owner.StatefulSet,
	}}
	a.Name = kube.AllocationName(ip)
	a.Labels = map[string]string{
		kube.LabelPool: kube.LabelValue(pool),
		kube.LabelPod:  kube.PodLabel(s.owner.Pod.Namespace, s.owner.Pod.Name),
	}
	attach(a, k, s.node)
	return a
}

// attach points a at attachment k on node, labels included.
func attach(a *kube.IPAllocation, k store.Key, node string) {
	a.Spec.Attachment = &kube.Attachment{ContainerID: k.ContainerID, IfName: k.IfName, Node: node}
	if a.Labels == nil {
		a.Labels = map[string]string{}
	}
	a.Labels[kube.LabelNode] = kube.LabelValue(node)
	a.Labels[kube.LabelAttachment] = kube.AttachmentLabel(k.ContainerID, k.IfName)
}

// detach leaves a pinned address to its pod's next sandbox.
func detach(a *kube.IPAllocation) {
	a.Spec.Attachment = nil
	delete(a.Labels, kube.LabelNode)
	delete(a.Labels, kube.LabelAttachment)
}

// Reserve claims ip for k by creating its object (or, for a pinned address
// of this pod, by taking the object over). The index entry is written
// first, so an outcome lost to a crash or a timeout is found by DEL.
func (s *Store) Reserve(k store.Key, ip netip.Addr) (bool, error) {
	if s.owner == nil {
		return false, errors.New("kubernetes store: Reserve outside ADD")
	}
	pinned := s.owner.StatefulSet != nil
	adopt := s.adopt[ip]
	if held, err := s.KnownHeld(ip); err != nil || (adopt == nil && held) {
		return false, err
	}
	retry := false // an earlier Reserve of this attachment may have claimed ip already
	if err := s.updateEntry(k, ip, func(e *entry) bool {
		retry = e.Pool != "" || e.UID != ""
		e.Pool, e.Pinned = s.poolOf(ip), pinned
		return true
	}); err != nil {
		return false, err
	}
	faultpoint.Hit("warp-ipam.kube.add.after-index")
	var uid string
	var err error
	if adopt != nil {
		uid, err = s.takeOver(k, adopt)
	} else {
		uid, err = s.create(k, ip, retry)
	}
	if (err == nil && uid == "") || (err != nil && !errors.Is(err, kube.ErrUnreachable)) {
		// Held by another, or refused for sure: nothing was claimed.
		if derr := s.updateEntry(k, ip, func(*entry) bool { return false }); err == nil {
			err = derr
		}
	} else if err != nil {
		s.unknown = append(s.unknown, entry{Address: ip, Pool: s.poolOf(ip), Pinned: pinned})
	}
	if err != nil || uid == "" {
		return false, err
	}
	faultpoint.Hit("warp-ipam.kube.add.after-claim")
	return true, s.updateEntry(k, ip, func(e *entry) bool { e.UID = uid; return true })
}

// create claims ip; "" without error means another attachment holds it.
// retry says that an earlier call for k may have claimed ip already.
func (s *Store) create(k store.Key, ip netip.Addr, retry bool) (string, error) {
	created, err := s.c.CreateAllocation(s.ctx, s.record(k, ip))
	if err == nil {
		return string(created.UID), nil
	}
	if !kube.IsAlreadyExists(err) {
		return "", err
	}
	if retry {
		cur, gerr := s.c.GetAllocation(s.ctx, kube.AllocationName(ip))
		switch {
		case gerr == nil && cur.HeldBy(k.ContainerID, k.IfName):
			return string(cur.UID), nil // ours already: an interrupted Reserve
		case gerr != nil && !kube.IsNotFound(gerr):
			return "", gerr
		}
	}
	// Lost a race with another node (or the address is pinned or fixed):
	// from now on skip what the pools hold, read once, instead of paying
	// a refused create per held address.
	if s.taken == nil {
		if err := s.loadTaken(true, false); err != nil {
			return "", err
		}
	}
	s.taken[ip] = true
	return "", nil
}

// takeOver moves a pinned address of this pod to attachment k. A write
// refused because the object changed meanwhile is retried on the fresh
// object, as long as it still belongs to this pod.
func (s *Store) takeOver(k store.Key, a *kube.IPAllocation) (string, error) {
	ip := a.Addr()
	for attempt := 0; attempt < 5; attempt++ {
		if !s.ours(a) {
			return "", nil
		}
		b := a.DeepCopyAlloc()
		attach(b, k, s.node)
		b.Spec.Pod.UID = s.owner.Pod.UID
		b.Spec.StatefulSet = s.owner.StatefulSet
		updated, err := s.c.UpdateAllocation(s.ctx, b)
		if err == nil {
			return string(updated.UID), nil
		}
		if !kube.IsConflict(err) {
			return "", err
		}
		if a, err = s.c.GetAllocation(s.ctx, kube.AllocationName(ip)); kube.IsNotFound(err) {
			return s.create(k, ip, true) // released meanwhile (StatefulSet scaled down and up)
		} else if err != nil {
			return "", err
		}
	}
	return "", fmt.Errorf("%s kept changing while it was taken over", a.Name)
}

// ours reports whether a pinned object belongs to this ADD's pod.
func (s *Store) ours(a *kube.IPAllocation) bool {
	return a.Pinned() && a.Spec.Pod.Namespace == s.owner.Pod.Namespace && a.Spec.Pod.Name == s.owner.Pod.Name &&
		a.Spec.Pod.Interface == s.owner.Pod.Interface
}

// KnownHeld reports ip as held when this call lost it already or the
// node's recent list of the pools' held addresses has it: a node that
// recently listed a nearly full pool skips what it knows is held from the
// first candidate on.
func (s *Store) KnownHeld(ip netip.Addr) (bool, error) {
	if s.taken == nil && !s.hintChecked {
		s.hintChecked = true
		if err := s.loadTaken(true, true); err != nil {
			return false, err
		}
	}
	return s.taken[ip], nil
}

// hint is the node's last list of the held addresses of some pools.
type hint struct {
	At    time.Time    `json:"at"`
	Addrs []netip.Addr `json:"addrs"`
}

// loadTaken reads which addresses the pools of this ADD hold: from the
// node's hint when useHint and it is fresh, else from the API server (and
// then it refreshes the hint); with hintOnly, only from a fresh hint.
func (s *Store) loadTaken(useHint, hintOnly bool) error {
	labels, path := s.poolLabels(), s.hintPath()
	if useHint && s.freshHint(path) {
		return nil
	}
	if hintOnly {
		return nil
	}
	// One process of the node lists at a time; the others wait for its
	// list and take it from the hint, instead of a burst of ADDs that lost
	// races each listing the pools (thousands of names) at once. A
	// consistent read (STATUS) cannot use the hint, so it does not wait.
	if useHint {
		if l, err := flock.Open(path + ".lock"); err == nil {
			defer l.Close()
			if d, ok := s.ctx.Deadline(); ok {
				l.SetTimeout(time.Until(d))
			}
			if l.Lock() == nil && s.freshHint(path) {
				return nil
			}
		}
	}
	at := time.Now()
	// A hint may come from the API server's cache; Held (STATUS) reads
	// consistently.
	names, err := s.c.ListAllocationNames(s.ctx, kube.LabelPool+" in ("+strings.Join(labels, ",")+")", useHint)
	if err != nil {
		if useHint && !errors.Is(err, context.DeadlineExceeded) && s.ctx.Err() == nil {
			// No hint then (the cache may still be filling): the
			// scan goes on with creates, which are the truth anyway.
			s.taken, s.fromHint = map[netip.Addr]bool{}, false
			return nil
		}
		return err
	}
	s.taken, s.fromHint = make(map[netip.Addr]bool, len(names)), false
	h := hint{At: at}
	for _, n := range names {
		if ip, ok := kube.AddrFromName(n); ok {
			s.taken[ip] = true
			h.Addrs = append(h.Addrs, ip)
		}
	}
	if err := writeJSON(path, h); err != nil {
		fmt.Fprintf(os.Stderr, "warp-ipam: cannot keep the list of held addresses in %s: %v\n", path, err)
	}
	return nil
}

// freshHint takes the held addresses from the node's hint at path if it
// is recent enough.
func (s *Store) freshHint(path string) bool {
	var h hint
	if err := readJSON(path, &h); err != nil || time.Since(h.At) >= hintTTL || time.Since(h.At) < 0 {
		return false
	}
	s.taken, s.fromHint = make(map[netip.Addr]bool, len(h.Addrs)), true
	for _, ip := range h.Addrs {
		s.taken[ip] = true
	}
	return true
}

// Relist forgets a list of held addresses that came from the node's hint,
// and reports whether it did: an ADD that found no free address with a
// stale view retries with a fresh one.
func (s *Store) Relist() bool {
	if !s.fromHint {
		return false
	}
	s.taken, s.fromHint = nil, false
	if err := os.Remove(s.hintPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(os.Stderr, "warp-ipam: %v\n", err)
	}
	return true
}

// hintPath is where the node keeps its list of the held addresses of this
// ADD's pools.
func (s *Store) hintPath() string {
	return filepath.Join(s.dir, "taken."+strings.Join(s.poolLabels(), "+"))
}

func (s *Store) poolLabels() []string {
	pools := map[string]bool{}
	for _, rs := range s.cfg.Ranges {
		for _, r := range rs {
			pools[kube.LabelValue(r.Pool)] = true
		}
	}
	return slices.Sorted(maps.Keys(pools))
}

// Held answers from one read of the pools' allocations (STATUS scans whole
// pools with it).
func (s *Store) Held(ip netip.Addr) (bool, error) {
	if s.taken == nil {
		if s.cfg == nil {
			return false, errors.New("kubernetes store: Held outside ADD or STATUS")
		}
		if err := s.loadTaken(false, false); err != nil {
			return false, err
		}
	}
	return s.taken[ip], nil
}

// Owner reads ip's object.
func (s *Store) Owner(ip netip.Addr) (store.Key, bool, error) {
	a, err := s.c.GetAllocation(s.ctx, kube.AllocationName(ip))
	if kube.IsNotFound(err) {
		return store.Key{}, false, nil
	}
	if err != nil {
		return store.Key{}, false, err
	}
	if a.Spec.Attachment == nil {
		return store.Key{}, true, nil
	}
	return store.Key{ContainerID: a.Spec.Attachment.ContainerID, IfName: a.Spec.Attachment.IfName}, true, nil
}

// DescribeOwner names the pod holding ip, for error messages.
func (s *Store) DescribeOwner(ip netip.Addr) (string, error) {
	a, err := s.c.GetAllocation(s.ctx, kube.AllocationName(ip))
	if err != nil {
		return "", err
	}
	d := fmt.Sprintf("pod %s/%s", a.Spec.Pod.Namespace, a.Spec.Pod.Name)
	if at := a.Spec.Attachment; at != nil {
		d += fmt.Sprintf(" (container %s interface %s on node %s)", at.ContainerID, at.IfName, at.Node)
	}
	if ss := a.Spec.StatefulSet; ss != nil {
		d += fmt.Sprintf(", pinned to StatefulSet %s ordinal %d", ss.Name, ss.Ordinal)
	}
	return d + " in IPPool " + a.Spec.Pool, nil
}

// ByKey returns what k holds: the index's addresses whose objects name k.
func (s *Store) ByKey(k store.Key) ([]netip.Addr, error) {
	es, err := s.readIndex(k)
	if err != nil {
		return nil, err
	}
	var held []netip.Addr
	for _, e := range es {
		a, err := s.c.GetAllocation(s.ctx, kube.AllocationName(e.Address))
		if kube.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if a.HeldBy(k.ContainerID, k.IfName) {
			held = append(held, e.Address)
		}
	}
	return held, nil
}

// Release frees ip if k holds it: a pinned address is detached (its pod
// keeps it), any other deleted. When the API server cannot be reached the
// release is queued in the journal, which later calls retry, and Release
// succeeds: the object still holds the address meanwhile, so nobody else
// can take it.
func (s *Store) Release(k store.Key, ip netip.Addr) error {
	es, err := s.readIndex(k)
	if err != nil {
		return err
	}
	e := entry{Address: ip}
	if i := slices.IndexFunc(es, func(e entry) bool { return e.Address == ip }); i >= 0 {
		e = es[i]
	}
	if err := s.releaseOne(k, e); err != nil {
		if !errors.Is(err, kube.ErrUnreachable) {
			return err
		}
		if err := s.queue(k, []entry{e}); err != nil {
			return err
		}
	}
	faultpoint.Hit("warp-ipam.kube.del.after-release")
	return s.updateEntry(k, ip, func(*entry) bool { return false })
}

// releaseOne frees e if k holds it. An unpinned object with a known UID is
// deleted with the UID as precondition (one request: such an object never
// changes hands); otherwise the object is read first.
func (s *Store) releaseOne(k store.Key, e entry) error {
	name := kube.AllocationName(e.Address)
	if e.UID != "" && !e.Pinned {
		err := s.c.DeleteAllocation(s.ctx, name, e.UID, "")
		if err == nil || kube.IsNotFound(err) || kube.IsConflict(err) {
			return nil // freed, gone, or another object now (someone else's)
		}
		return err
	}
	for attempt := 0; attempt < 5; attempt++ {
		a, err := s.c.GetAllocation(s.ctx, name)
		if kube.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if !a.HeldBy(k.ContainerID, k.IfName) {
			return nil // taken over by a newer sandbox of a pinned pod, or never ours
		}
		if a.Pinned() {
			detach(a)
			_, err = s.c.UpdateAllocation(s.ctx, a)
		} else {
			err = s.c.DeleteAllocation(s.ctx, name, string(a.UID), a.ResourceVersion)
		}
		if err == nil || kube.IsNotFound(err) {
			return nil
		}
		if !kube.IsConflict(err) {
			return err
		}
	}
	return fmt.Errorf("%s kept changing while it was released", name)
}

// ReleaseKey frees everything k holds. Without an index entry (the node's
// state was lost) it asks the API server which objects name k.
func (s *Store) ReleaseKey(k store.Key) ([]netip.Addr, error) {
	es, err := s.readIndex(k)
	if err != nil {
		return nil, err
	}
	if len(es) == 0 && s.queuedFor(k) {
		return nil, nil // a DEL repeated while its release waits in the journal
	}
	if len(es) == 0 {
		objs, err := s.c.ListAllocations(s.ctx, kube.LabelAttachment+"="+kube.AttachmentLabel(k.ContainerID, k.IfName))
		if errors.Is(err, kube.ErrUnreachable) {
			return nil, s.queue(k, nil)
		}
		if err != nil {
			return nil, err
		}
		for _, a := range objs {
			if a.HeldBy(k.ContainerID, k.IfName) {
				es = append(es, entry{Address: a.Addr(), UID: string(a.UID), Pinned: a.Pinned()})
			}
		}
	}
	var freed []netip.Addr
	var errs []error
	for _, e := range es {
		if err := s.Release(k, e.Address); err != nil {
			errs = append(errs, fmt.Errorf("release %s: %w", e.Address, err))
			continue
		}
		freed = append(freed, e.Address)
	}
	return freed, errors.Join(errs...)
}

// Cursor is where this node's allocation from range set set continues. A
// node without one starts at an offset derived from its name, so that
// nodes start in different parts of a pool.
func (s *Store) Cursor(set int) (netip.Addr, error) {
	var ip netip.Addr
	data, err := os.ReadFile(s.cursorPath(set))
	if err == nil {
		if ip, err = netip.ParseAddr(strings.TrimSpace(string(data))); err == nil {
			return ip, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return ip, err
	}
	r := s.cfg.Ranges[set][0]
	h := fnv.New64a()
	h.Write([]byte(s.node))
	return addOffset(r.Start, h.Sum64()%rangeSize(r)), nil
}

func (s *Store) SetCursor(set int, ip netip.Addr) error {
	return os.WriteFile(s.cursorPath(set), []byte(ip.String()), 0o644)
}

func (s *Store) cursorPath(set int) string {
	var pools []string
	for _, r := range s.cfg.Ranges[set] {
		if !slices.Contains(pools, r.Pool) {
			pools = append(pools, r.Pool)
		}
	}
	return filepath.Join(s.dir, cursorFile+strings.Join(pools, "+"))
}

// rangeSize is the number of addresses in r, capped at 2^32.
func rangeSize(r config.Range) uint64 {
	a, b := r.Start.As16(), r.End.As16()
	for i := 0; i < 12; i++ {
		if a[i] != b[i] {
			return 1 << 32
		}
	}
	lo := func(x [16]byte) uint64 {
		return uint64(x[12])<<24 | uint64(x[13])<<16 | uint64(x[14])<<8 | uint64(x[15])
	}
	return lo(b) - lo(a) + 1
}

func addOffset(ip netip.Addr, n uint64) netip.Addr {
	b := ip.As16()
	for i := 15; i >= 0 && n > 0; i-- {
		sum := uint64(b[i]) + n&0xff
		b[i] = byte(sum)
		n = n>>8 + sum>>8
	}
	out := netip.AddrFrom16(b)
	if ip.Is4() {
		return out.Unmap()
	}
	return out
}

// List returns the addresses held by attachments on this node (CNI GC).
func (s *Store) List() ([]store.Reservation, error) {
	objs, err := s.c.ListAllocations(s.ctx, kube.LabelNode+"="+kube.LabelValue(s.node))
	if err != nil {
		return nil, err
	}
	var out []store.Reservation
	for _, a := range objs {
		if at := a.Spec.Attachment; at != nil && at.Node == s.node {
			out = append(out, store.Reservation{IP: a.Addr(), Key: store.Key{ContainerID: at.ContainerID, IfName: at.IfName}})
		}
	}
	return out, nil
}

// Keys returns the attachments of this node: in the index, and named by
// objects in the API server.
func (s *Store) Keys() ([]store.Key, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, indexDir))
	if err != nil {
		return nil, err
	}
	seen := map[store.Key]bool{}
	var keys []store.Key
	for _, e := range ents {
		if k, ok := keyFromFileName(e.Name()); ok && !isTemp(e.Name()) && !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	rs, err := s.List()
	if err != nil {
		return nil, err
	}
	for _, r := range rs {
		if !seen[r.Key] {
			seen[r.Key] = true
			keys = append(keys, r.Key)
		}
	}
	return keys, nil
}
