package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/warpnet/warpnet/internal/atomicfile"
	"github.com/warpnet/warpnet/internal/buildinfo"
	"github.com/warpnet/warpnet/internal/cniargs"
	"github.com/warpnet/warpnet/internal/cnierr"
	"github.com/warpnet/warpnet/internal/flock"
	"github.com/warpnet/warpnet/internal/nodefacts"
	"github.com/warpnet/warpnet/ipam/config"
	"github.com/warpnet/warpnet/ipam/kube"
	kubestore "github.com/warpnet/warpnet/ipam/store/kube"
)

// kubeRun is one plugin call against the kubernetes store: the client, the
// node-local store, and the deadline every API request of the call shares.
type kubeRun struct {
	cfg    *config.Config
	client *kube.Client
	st     *kubestore.Store
	node   string
	ctx    context.Context
	cancel context.CancelFunc
}

// openKube connects to the API server (lazily: the first request dials) and
// opens the node-local state. The call's API work is bounded by ipam.timeout.
func openKube(cfg *config.Config) (*kubeRun, error) {
	path := cfg.Kube.Kubeconfig
	if path == "" {
		path = kube.DefaultKubeconfig
	}
	client, err := kube.LoadKubeconfig(path, "warp-ipam/"+buildinfo.Version, cfg.Kube.Timeout)
	if err != nil {
		return nil, cnierr.Invalid("ipam.kubeconfig", "%v", err)
	}
	node, err := nodeName(cfg)
	if err != nil {
		return nil, err
	}
	r := &kubeRun{cfg: cfg, client: client, node: node}
	r.ctx, r.cancel = context.WithTimeout(context.Background(), cfg.Kube.Timeout)
	if r.st, err = kubestore.Open(r.ctx, client, cfg.DataDir, cfg.Network, node); err != nil {
		r.cancel()
		return nil, cnierr.New(types.ErrIOFailure, "ipam.dataDir: %v", err)
	}
	// The lock only serialises this node's allocators, for milliseconds
	// each; waiting longer than the call's API budget is pointless.
	r.st.SetLockTimeout(cfg.Kube.Timeout)
	return r, nil
}

// nodeName is ipam.nodeName, else the node warpd publishes, else the
// hostname (which is the node name with kubelet's defaults).
func nodeName(cfg *config.Config) (string, error) {
	if cfg.Kube.NodeName != "" {
		return cfg.Kube.NodeName, nil
	}
	path := cfg.Kube.NodeFacts
	if path == "" {
		path = nodefacts.DefaultPath
	}
	if f, err := nodefacts.Read(path); err == nil && f.Node != "" {
		return f.Node, nil
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "", cnierr.Invalid("ipam.nodeName", "missing, warpd has not published the node name (%s) and the hostname is unknown: %v", path, err)
	}
	return h, nil
}

// close retries queued releases with what is left of the call's budget,
// then releases everything.
func (r *kubeRun) close() {
	if n, err := r.st.Drain(); err != nil && n == 0 && !errors.Is(err, kube.ErrUnreachable) {
		fmt.Fprintf(os.Stderr, "warp-ipam: retrying queued releases: %v\n", err)
	}
	r.st.Close()
	r.cancel()
}

// podArgs reads the pod's identity from CNI_ARGS, as Kubernetes runtimes
// pass it; the kubernetes store records who holds each address.
func podArgs(envArgs string) (ns, name, uid string, err error) {
	a, err := cniargs.Parse(envArgs)
	if err != nil {
		return "", "", "", err
	}
	ns, name, uid = string(a.K8S_POD_NAMESPACE), string(a.K8S_POD_NAME), string(a.K8S_POD_UID)
	if ns == "" || name == "" {
		return "", "", "", cnierr.New(types.ErrInvalidEnvironmentVariables,
			"CNI_ARGS: K8S_POD_NAMESPACE and K8S_POD_NAME are required with \"store\": %q (Kubernetes runtimes pass them); got %q", config.StoreKubernetes, envArgs)
	}
	return ns, name, uid, nil
}

// prepareAdd reads the pod and the pools, resolves them into cfg's ranges
// and requests, and tells the store whose addresses it reserves, including
// the pinned ones a StatefulSet pod takes back. It returns the selection
// (for routes and DNS) and the pinned objects a fixed request superseded.
func (r *kubeRun) prepareAdd(args *skel.CmdArgs) (*kube.Selection, []*kube.IPAllocation, error) {
	ns, name, uid, err := podArgs(args.Args)
	if err != nil {
		return nil, nil, err
	}
	pod, err := r.readPod(ns, name, uid)
	if kube.IsNotFound(err) {
		return nil, nil, cnierr.New(types.ErrTryAgainLater, "pod %s/%s does not exist (deleted meanwhile?)", ns, name)
	}
	if err != nil {
		return nil, nil, r.apiError(err)
	}
	if uid == "" {
		uid = string(pod.UID)
	}
	sel, err := r.selectPools(pod, args.IfName)
	if err != nil {
		return nil, nil, r.apiError(err)
	}
	owner := &kubestore.Owner{Pod: kube.PodRef{Namespace: ns, Name: name, UID: uid, Interface: args.IfName}}
	var adopt, superseded []*kube.IPAllocation
	if sts, ok := pod.StatefulSet(); ok {
		owner.StatefulSet = sts
		objs, err := r.client.ListAllocations(r.ctx, kube.LabelPod+"="+kube.PodLabel(ns, name))
		if err != nil {
			return nil, nil, r.apiError(err)
		}
		requested := map[bool]bool{} // family (IPv4?) has a fixed request
		asked := map[netip.Addr]bool{}
		for _, q := range r.cfg.Requests {
			requested[q.Addr.Is4()], asked[q.Addr] = true, true
		}
		for i := range objs {
			a := &objs[i]
			if !a.Pinned() || a.Spec.Pod.Namespace != ns || a.Spec.Pod.Name != name || a.Spec.Pod.Interface != args.IfName {
				continue
			}
			ip := a.Addr()
			if asked[ip] {
				adopt = append(adopt, a) // asked for again: take it back
				continue
			}
			if sel.Pools[a.Spec.Pool] == nil || requested[ip.Is4()] || !usable(r.cfg, ip) {
				superseded = append(superseded, a)
				continue
			}
			requested[ip.Is4()] = true
			adopt = append(adopt, a)
			r.cfg.Requests = append(r.cfg.Requests, config.Request{Field: fmt.Sprintf("the address pinned to StatefulSet %s pod %s", sts.Name, name), Addr: ip})
		}
	}
	if err := r.cfg.MatchRequested(); err != nil {
		return nil, nil, err
	}
	r.st.ForPod(r.cfg, owner, adopt)
	return sel, superseded, nil
}

// readPod returns pod namespace/name as warpd published it on the node,
// else from the API server. The published facts serve only when the
// runtime named the pod's UID and it matches: a pod recreated under the
// same name that warpd has not seen yet is read from the API server.
func (r *kubeRun) readPod(ns, name, uid string) (*kube.Pod, error) {
	if uid != "" {
		dir := r.cfg.Kube.PodFacts
		if dir == "" {
			dir = kube.DefaultPodFactsDir
		}
		if pod, ok := kube.ReadPodFacts(dir, ns, name, uid); ok {
			return pod, nil
		}
	}
	return r.client.GetPod(r.ctx, ns, name)
}

// poolsTTL is how long a node reuses its list of the cluster's IPPools:
// pools change rarely, and reading them once per ADD would be a third of
// its requests. A pool the list lacks is looked up again at once; other
// changes (new exclusions, a deleted pool) are seen within poolsTTL, or
// poolsStale while the API server is slow to answer the refresh.
const poolsTTL = 5 * time.Second

// poolsStale bounds how old a list the node's other processes keep using
// while one of them refreshes it: without it, every ADD that starts while
// the list is expired lists the pools too, so a burst of ADDs costs one
// list each when the API server is slow, which makes it slower.
const poolsStale = 30 * time.Second

type poolsCache struct {
	At    time.Time     `json:"at"`
	Pools []kube.IPPool `json:"pools"`
}

// selectPools resolves the pod's pools into r.cfg from the node's recent
// list of pools, or a fresh one.
func (r *kubeRun) selectPools(pod *kube.Pod, ifName string) (*kube.Selection, error) {
	path := filepath.Join(kubestore.Dir(r.cfg.DataDir, r.cfg.Network), "pools.json")
	var cached poolsCache
	if data, err := os.ReadFile(path); err == nil && json.Unmarshal(data, &cached) == nil {
		age := time.Since(cached.At)
		usable := age >= 0 && age < poolsTTL
		if !usable && age >= 0 && age < poolsStale {
			// Expired: one process of the node refreshes it, the others
			// keep using it meanwhile.
			if refresh, err := flock.Open(path + ".lock"); err == nil {
				defer refresh.Close() // held until the new list is written
				got, err := refresh.TryLock()
				usable = err == nil && !got
			}
		}
		if usable {
			sel, err := kube.Select(r.ctx, r.client, r.cfg, pod, r.node, ifName, cached.Pools)
			if !errors.Is(err, kube.ErrNoPool) {
				return sel, err
			}
		}
	}
	at := time.Now()
	pools, err := r.client.ListPools(r.ctx)
	if err != nil {
		return nil, err
	}
	if data, err := json.Marshal(poolsCache{At: at, Pools: pools}); err == nil {
		_ = atomicfile.Replace(path, data, 0o644) // a cache: the next call lists again
	}
	return kube.Select(r.ctx, r.client, r.cfg, pod, r.node, ifName, pools)
}

// usable reports whether ip may still be handed out from cfg's ranges (a
// pinned address whose pool changed may not).
func usable(cfg *config.Config, ip netip.Addr) bool {
	for _, rs := range cfg.Ranges {
		if r, ok := rs.RangeFor(ip); ok {
			return ip != r.Gateway && !r.NetworkOrBroadcast(ip) && !cfg.Excluded(ip)
		}
	}
	return false
}

// dropSuperseded deletes pinned addresses the pod no longer uses, once it
// has its new ones; a failure leaves them to warpd's leak collector.
func (r *kubeRun) dropSuperseded(objs []*kube.IPAllocation) {
	for _, a := range objs {
		if err := r.client.DeleteAllocation(r.ctx, a.Name, string(a.UID), a.ResourceVersion); err != nil && !kube.IsNotFound(err) {
			fmt.Fprintf(os.Stderr, "warp-ipam: could not release %s, which pod %s/%s no longer uses: %v\n", a.Spec.Address, a.Spec.Pod.Namespace, a.Spec.Pod.Name, err)
		}
	}
}

// apiError gives API server errors their CNI codes: unreachable or
// overloaded is "try again later" (11), with the bound that was waited.
func (r *kubeRun) apiError(err error) error {
	var te *types.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &te):
		return te
	case errors.Is(err, kube.ErrUnreachable), errors.Is(err, context.DeadlineExceeded):
		return cnierr.New(types.ErrTryAgainLater, "the API server %s did not answer within ipam.timeout (%v): %v", r.client.Server, r.cfg.Kube.Timeout, err)
	default:
		var ae *kube.APIError
		if errors.As(err, &ae) && (ae.Code == 401 || ae.Code == 403) {
			return cnierr.New(types.ErrIOFailure, "the API server %s refused warp-ipam (check the kubeconfig's credentials and the RBAC rules in install/): %v", r.client.Server, err)
		}
		return cnierr.New(types.ErrIOFailure, "%v", err)
	}
}
