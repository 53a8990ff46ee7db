// Package k8s runs a real Kubernetes cluster on this machine, without docker
// or VMs: etcd, kube-apiserver, kube-controller-manager and kube-scheduler
// v1.34.3, and kubelet + containerd nodes, each node in its own network and
// mount namespace. No kube-proxy and no CNI are installed: the cluster is
// where warpnet is installed the way operators do it (the Helm chart, the
// image from `make image`) and proven under its real callers. `make cluster`
// (cmd/warp-cluster) leaves one running for people; tests use Start.
//
// It follows the verified recipe in ../shared/ENVIRONMENT.md ("A real node")
// and ../shared/recipes/kubelet-node.sh, with per-cluster names, directories
// and ports so that concurrent clusters (test packages, `make cluster`) never
// collide, and a Down that works from the cluster's directory alone, so a
// killed run's leftovers are swept by the next one. Per cluster NAME:
//
//   - directory <tmp>/warpnet-k8s/NAME: state.json (owner PID), control plane
//     data, certificates, logs, and per node its containerd/kubelet state and
//     its private copies of the standard host paths (nodeN/root/...).
//   - network namespaces NAME-net (the underlay: bridge br0 10.200.0.1/24 and
//     fd00:200::1/64, routes nothing to the machine) and NAME-nodeN (eth0
//     10.200.0.1N and fd00:200::1N on that
//     bridge). Kubernetes node names are the namespace names. AddExternal
//     adds NAME-ext, a host outside the cluster on that bridge (10.200.0.50).
//   - cgroups warpnet-k8s/NAME in every hierarchy: every process the cluster
//     starts is born in warpnet-k8s/NAME/system (cgroup v2, CLONE_INTO_CGROUP),
//     and each node's pods live under warpnet-k8s/NAME/NAME-nodeN (kubelet's
//     cgroupRoot), so Down kills everything with one cgroup.kill.
//   - per node, a mount namespace (nodeN/mnt.ns) shared by containerd, runc
//     and kubelet, in which: the node's own copies of /var/lib/kubelet,
//     /var/lib/containerd, /run/containerd, /var/lib/cni, /var/log, /opt/cni/bin,
//     /etc/cni/net.d and /run/warpnet are bind-mounted (two kubelets, or two
//     warpds, would collide on them); files holding the values kubelet wants are bind-mounted over the
//     machine-wide sysctls it would otherwise rewrite (protectKernelDefaults
//     makes a missing one fail instead of touching the machine); and a fresh
//     bpffs is mounted at /sys/fs/bpf, so each node's warpd and plugins pin
//     their own maps. Mount points missing on the machine are created empty
//     and removed when the last cluster goes.
//
// With Options.SRIOVVFs every node also gets a simulated SR-IOV NIC
// (internal/sriov/sim, made with `warpctl sim sriov create`) in
// <cluster>/sriov/<node>, and its containerd runs with the simulator's
// WARP_SYSFS_ROOT and WARP_SIM_PF_STATE, which reach every CNI plugin.
//
// The machine's own network namespace gets only loopback listeners (etcd,
// the API server) and unix sockets: node namespaces reach the API server
// through a socat unix-socket bridge (127.0.0.1:PORT inside every node), and
// the API server reaches kubelets (logs, exec) through an HTTP CONNECT proxy
// on a unix socket that runs inside NAME-net (--egress-selector-config-file).
// Machine sysctls, routes and firewall rules are never changed.
package k8s

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/warpnet/warpnet/internal/flock"
	"github.com/warpnet/warpnet/internal/mountinfo"
	"github.com/warpnet/warpnet/internal/sriov/sim"
	"github.com/warpnet/warpnet/tests/harness"
)

const (
	// ServiceCIDR and ClusterCIDR of every cluster; each node gets a /24 of
	// ClusterCIDR as spec.podCIDR (kube-controller-manager --allocate-node-cidrs).
	ServiceCIDR = "10.96.0.0/16"
	ClusterCIDR = "10.244.0.0/16"
	// The IPv6 halves: the cluster is dual-stack (IPv4 first). Each node's
	// spec.podCIDRs get a /64 of ClusterCIDR6 beside the /24.
	ServiceCIDR6 = "fd00:10:96::/112"
	ClusterCIDR6 = "fd00:10:244::/56"
	// DNSServiceIP is the kubelets' clusterDNS: pods' resolv.conf names it.
	DNSServiceIP = "10.96.0.10"
	// cgroupParent is the directory of all clusters in every cgroup hierarchy.
	cgroupParent = "warpnet-k8s"
	cgroupFS     = "/sys/fs/cgroup"
)

// nodePaths are the host paths each node gets its own copy of.
var nodePaths = []string{"/var/lib/kubelet", "/var/lib/containerd", "/run/containerd", "/var/lib/cni", "/var/log", "/opt/cni/bin", "/etc/cni/net.d",
	"/run/warpnet"} // warpd's node facts, read by the plugins on the host

// sysctls are the machine-wide values kubelet insists on, served to it from
// files instead.
var sysctls = [][2]string{
	{"vm/overcommit_memory", "1"}, {"vm/panic_on_oom", "0"}, {"kernel/panic", "10"},
	{"kernel/panic_on_oops", "1"}, {"kernel/keys/root_maxkeys", "1000000"}, {"kernel/keys/root_maxbytes", "25000000"},
}

// BaseDir holds every cluster's directory, the lock and the list of mount
// points created on the machine.
func BaseDir() string { return filepath.Join(os.TempDir(), "warpnet-k8s") }

// Options describe a cluster to start.
type Options struct {
	Name  string // unique; names namespaces, cgroups, nodes ([a-z0-9-], short)
	Nodes int    // default 2
	// Images are OCI layout tars imported into every node's containerd
	// (besides the pause and test app images the cluster builds itself).
	Images []string
	// Owner is the PID whose death makes the cluster a leftover for Sweep;
	// 0: kept until Down (make cluster).
	Owner int
	// Detach: processes survive this process (make cluster). Otherwise they
	// die with it (PR_SET_PDEATHSIG), and Sweep removes the rest.
	Detach bool
	// SRIOVVFs > 0 gives every node a simulated SR-IOV NIC (internal/sriov/sim)
	// with that many VFs: its hardware, as far as the node's software can
	// tell (see Node.SRIOV).
	SRIOVVFs int
	Log      func(format string, args ...any)
}

// Cluster is a running cluster.
type Cluster struct {
	Name       string
	Dir        string
	Kubeconfig string // admin kubeconfig (token, 127.0.0.1:APIPort)
	APIPort    int    // the API server's port on 127.0.0.1, also inside every node
	Token      string // admin token (system:masters)
	Nodes      []*Node

	opts Options
	sys  *os.File // the unified cgroup every process is born in
}

// Node is one kubelet + containerd node.
type Node struct {
	Name    string // Kubernetes node name = network namespace name
	Index   int    // 1-based
	IP      string // 10.200.0.(10+Index)
	IP6     string // fd00:200::(10+Index)
	NetNS   string // /run/netns/Name
	Dir     string // nodeN/
	Root    string // nodeN/root: the node's /opt/cni/bin, /etc/cni/net.d, ... live below
	MountNS string // nodeN/mnt.ns
	Sock    string // containerd's socket
	// SRIOV is the node's simulated SR-IOV NIC (Options.SRIOVVFs), in
	// SRIOVDir(); nil without one.
	SRIOV *sim.PF
}

// SRIOVDir is where the node's simulated SR-IOV NIC keeps its sysfs tree and
// PF-side state: <cluster>/sriov/<node name>, so that one hostPath
// (<cluster>/sriov) with the node's name below it serves a DaemonSet on
// every node.
func (c *Cluster) SRIOVDir(n *Node) string { return filepath.Join(c.Dir, "sriov", n.Name) }

type state struct {
	Name  string `json:"name"`
	Nodes int    `json:"nodes"`
	Owner int    `json:"owner"`
	Port  int    `json:"apiPort"`
}

// Up starts a cluster and returns once every node is registered (nodes stay
// NotReady until a CNI is installed: install warpnet with helm). On error it
// removes what it made.
func Up(ctx context.Context, o Options) (c *Cluster, err error) {
	if o.Nodes == 0 {
		o.Nodes = 2
	}
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
	if !validName(o.Name) {
		return nil, fmt.Errorf("cluster name %q: want [a-z0-9-], at most 20 characters", o.Name)
	}
	for _, tool := range []string{"etcd", "containerd", "containerd-shim-runc-v2", "runc", "ctr", "socat", "nsenter", "unshare", "ip", "python3", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s is not installed (make deps installs it)", tool)
		}
	}
	for _, b := range KubeBinaries {
		if !executable(KubeBinary(b)) {
			return nil, fmt.Errorf("%s is not built: make kube", KubeBinary(b))
		}
	}
	dir := filepath.Join(BaseDir(), o.Name)
	if err := os.MkdirAll(BaseDir(), 0o755); err != nil {
		return nil, err
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("cluster %s exists (%s): take it down first", o.Name, dir)
		}
		return nil, err
	}
	c = &Cluster{Name: o.Name, Dir: dir, opts: o}
	defer func() {
		if err != nil {
			o.Log("k8s: start failed: %v; removing what was made", err)
			if derr := Down(dir, o.Log); derr != nil {
				err = fmt.Errorf("%w (and cleaning up: %v)", err, derr)
			}
			c = nil
		}
	}()
	st := state{Name: o.Name, Nodes: o.Nodes, Owner: o.Owner}
	if err := writeState(dir, st); err != nil {
		return nil, err
	}
	start := time.Now()
	for i := 1; i <= o.Nodes; i++ {
		n := &Node{Name: fmt.Sprintf("%s-node%d", o.Name, i), Index: i, IP: fmt.Sprintf("10.200.0.%d", 10+i), IP6: fmt.Sprintf("fd00:200::%d", 10+i),
			Dir: filepath.Join(dir, fmt.Sprintf("node%d", i))}
		n.NetNS, n.Root, n.MountNS, n.Sock = "/run/netns/"+n.Name, filepath.Join(n.Dir, "root"), filepath.Join(n.Dir, "mnt.ns"), filepath.Join(n.Dir, "containerd.sock")
		c.Nodes = append(c.Nodes, n)
	}
	if err := c.makeCgroups(); err != nil {
		return nil, fmt.Errorf("cgroups: %w", err)
	}
	if err := c.startControlPlane(ctx); err != nil {
		return nil, err
	}
	st.Port = c.APIPort
	if err := writeState(dir, st); err != nil {
		return nil, err
	}
	o.Log("k8s: control plane ready after %.1fs (API server https://127.0.0.1:%d)", time.Since(start).Seconds(), c.APIPort)
	images, err := buildTestImages(dir)
	if err != nil {
		return nil, err
	}
	if err := c.makeUnderlay(); err != nil {
		return nil, fmt.Errorf("underlay: %w", err)
	}
	for _, n := range c.Nodes {
		if err := c.startNode(ctx, n, append([]string{images}, o.Images...)); err != nil {
			return nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	if err := c.waitRegistered(ctx); err != nil {
		return nil, err
	}
	o.Log("k8s: %d nodes registered after %.1fs", len(c.Nodes), time.Since(start).Seconds())
	return c, nil
}

func validName(s string) bool {
	if s == "" || len(s) > 20 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

func writeState(dir string, st state) error {
	b, _ := json.Marshal(st)
	return os.WriteFile(filepath.Join(dir, "state.json"), b, 0o644)
}

func readState(dir string) (state, error) {
	var st state
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err == nil {
		err = json.Unmarshal(b, &st)
	}
	return st, err
}

// ---------------------------------------------------------------- cgroups

// hierarchies lists the cgroup mounts under /sys/fs/cgroup (hybrid: the v1
// controllers and "unified"; pure v2: just the root, reported as "").
func hierarchies() ([]string, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(cgroupFS, &st); err != nil {
		return nil, err
	}
	if st.Type == unix.CGROUP2_SUPER_MAGIC {
		return []string{""}, nil
	}
	ents, err := os.ReadDir(cgroupFS)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		p := filepath.Join(cgroupFS, e.Name())
		if e.IsDir() && unix.Statfs(p, &st) == nil && (st.Type == unix.CGROUP_SUPER_MAGIC || st.Type == unix.CGROUP2_SUPER_MAGIC) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// unified returns the cgroup2 mount.
func unified() (string, error) { return mountinfo.Cgroup2() }

// CgroupDir is the cluster's directory in the cgroup2 hierarchy; a node's
// pods are under CgroupDir/<node name> (what warpd attaches to).
func (c *Cluster) CgroupDir() string {
	u, _ := unified()
	return filepath.Join(u, cgroupParent, c.Name)
}

// makeCgroups creates the cluster's cgroups, under the base lock: the last
// cluster to go removes the shared warpnet-k8s parents under the same lock.
func (c *Cluster) makeCgroups() error {
	return withBaseLock(c.makeCgroupsLocked)
}

func (c *Cluster) makeCgroupsLocked() error {
	hs, err := hierarchies()
	if err != nil {
		return err
	}
	u, err := unified()
	if err != nil {
		return err
	}
	for _, h := range hs {
		base := filepath.Join(cgroupFS, h)
		if filepath.Join(cgroupFS, h) == u {
			continue // below
		}
		for _, n := range c.Nodes {
			// kubelet insists that its cgroupRoot exists in every controller;
			// cpuset needs cpus and mems at each level before tasks can join.
			rel := []string{cgroupParent, c.Name, n.Name}
			for i := range rel {
				d := filepath.Join(append([]string{base}, rel[:i+1]...)...)
				if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
					return err
				}
				if h == "cpuset" {
					for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
						if cur, _ := os.ReadFile(filepath.Join(d, f)); len(bytes.TrimSpace(cur)) == 0 {
							v, _ := os.ReadFile(filepath.Join(filepath.Dir(d), f))
							if err := os.WriteFile(filepath.Join(d, f), v, 0o644); err != nil {
								return fmt.Errorf("%s/%s: %w", d, f, err)
							}
						}
					}
				}
			}
		}
	}
	sys := filepath.Join(u, cgroupParent, c.Name, "system")
	if err := os.MkdirAll(sys, 0o755); err != nil {
		return err
	}
	for _, n := range c.Nodes {
		if err := os.MkdirAll(filepath.Join(u, cgroupParent, c.Name, n.Name), 0o755); err != nil {
			return err
		}
	}
	c.sys, err = os.Open(sys)
	return err
}

// ---------------------------------------------------------------- processes

// start runs argv as a cluster process: born in the cluster's system
// cgroup (so Down's cgroup.kill reaches it and everything it forks), output
// to dir/logs/what.log, and unless detached dying with this process.
func (c *Cluster) start(what string, argv ...string) (*exec.Cmd, error) {
	return c.startEnv(what, nil, argv...)
}

// startEnv is start with env added to this process's environment.
func (c *Cluster) startEnv(what string, env []string, argv ...string) (*exec.Cmd, error) {
	logs := filepath.Join(c.Dir, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(logs, what+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Dir = c.Dir
	attr := &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(c.sys.Fd())}
	if c.opts.Detach {
		attr.Setsid = true
	} else {
		attr.Pdeathsig = syscall.SIGKILL
	}
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", what, err)
	}
	if !c.opts.Detach {
		go func() { _ = cmd.Wait() }() // reap; Down kills it
	} // detached: init reaps it once this process is gone
	return cmd, nil
}

// LogPath is where a cluster process's output goes ("kube-apiserver",
// "node1-kubelet", ...).
func (c *Cluster) LogPath(what string) string { return filepath.Join(c.Dir, "logs", what+".log") }

func run(argv ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func waitUntil(ctx context.Context, timeout time.Duration, what string, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %v: %w", what, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// ---------------------------------------------------------------- control plane

func (c *Cluster) startControlPlane(ctx context.Context) error {
	cp := filepath.Join(c.Dir, "cp")
	if err := os.MkdirAll(cp, 0o755); err != nil {
		return err
	}
	if err := writePKI(cp); err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	c.Token = "admin-" + randomHex(16)
	tokens := c.Token + ",admin,admin,system:masters\n"
	for _, n := range c.Nodes {
		tokens += fmt.Sprintf("%s-%s,system:node:%s,%s,system:nodes\n", n.Name, randomHex(12), n.Name, n.Name)
	}
	if err := os.WriteFile(filepath.Join(cp, "tokens.csv"), []byte(tokens), 0o600); err != nil {
		return err
	}
	egress := fmt.Sprintf(`apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport: {uds: {udsName: %s}}
`, filepath.Join(cp, "egress.sock"))
	if err := os.WriteFile(filepath.Join(cp, "egress.yaml"), []byte(egress), 0o644); err != nil {
		return err
	}
	for attempt := 1; ; attempt++ {
		err := c.startEtcdAndAPIServer(ctx, cp)
		if err == nil {
			break
		}
		if !errors.Is(err, errPortTaken) || attempt == 5 {
			return err
		}
		c.opts.Log("k8s: a port was taken meanwhile; retrying on others")
	}
	c.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	if err := os.WriteFile(c.Kubeconfig, kubeconfig(c.APIPort, c.Token), 0o600); err != nil {
		return err
	}
	// controller-manager: service accounts, kube-root-ca.crt, DaemonSets, node
	// CIDRs, garbage collection. scheduler: binds pods (DaemonSet pods too).
	// Secure port 0: they serve nothing, so they need no port.
	cert := filepath.Join(cp, "certs", "apiserver.crt")
	if _, err := c.start("kube-controller-manager", KubeBinary("kube-controller-manager"),
		"--kubeconfig="+c.Kubeconfig, "--secure-port=0", "--leader-elect=false",
		"--use-service-account-credentials=true", "--service-account-private-key-file="+filepath.Join(cp, "sa.key"),
		"--root-ca-file="+cert, "--allocate-node-cidrs=true", "--cluster-cidr="+ClusterCIDR+","+ClusterCIDR6,
		"--node-cidr-mask-size-ipv4=24", "--node-cidr-mask-size-ipv6=64", "--service-cluster-ip-range="+ServiceCIDR+","+ServiceCIDR6); err != nil {
		return err
	}
	if _, err := c.start("kube-scheduler", KubeBinary("kube-scheduler"),
		"--kubeconfig="+c.Kubeconfig, "--secure-port=0", "--leader-elect=false"); err != nil {
		return err
	}
	// The only way from a node namespace to the machine: a unix socket.
	if _, err := c.start("apiserver-bridge", "socat", "UNIX-LISTEN:"+filepath.Join(cp, "apiserver.sock")+",fork,mode=600,unlink-early",
		"TCP:127.0.0.1:"+strconv.Itoa(c.APIPort)); err != nil {
		return err
	}
	return nil
}

var errPortTaken = errors.New("port taken")

func (c *Cluster) startEtcdAndAPIServer(ctx context.Context, cp string) error {
	ports := make([]int, 3)
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return err
		}
		ports[i] = p
	}
	client, peer := fmt.Sprintf("http://127.0.0.1:%d", ports[0]), fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	// Fresh logs: an earlier attempt's "address already in use" must not count.
	_ = os.Remove(c.LogPath("etcd"))
	_ = os.Remove(c.LogPath("kube-apiserver"))
	data := filepath.Join(cp, "etcd")
	_ = os.RemoveAll(data)
	etcd, err := c.start("etcd", "etcd", "--name=default", "--data-dir="+data,
		"--listen-client-urls="+client, "--advertise-client-urls="+client,
		"--listen-peer-urls="+peer, "--initial-advertise-peer-urls="+peer, "--initial-cluster=default="+peer)
	if err != nil {
		return err
	}
	hc := &http.Client{Timeout: 2 * time.Second}
	if err := waitUntil(ctx, time.Minute, "etcd", func() error {
		if exited(etcd) {
			return errExited
		}
		resp, err := hc.Get(client + "/health")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}); err != nil {
		_ = etcd.Process.Kill()
		if bytes.Contains(readFile(c.LogPath("etcd")), []byte("address already in use")) {
			return errPortTaken
		}
		return fmt.Errorf("etcd: %w\n%s", err, tail(c.LogPath("etcd"), 20))
	}
	c.APIPort = ports[2]
	api, err := c.start("kube-apiserver", KubeBinary("kube-apiserver"),
		"--etcd-servers="+client, "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(c.APIPort), "--cert-dir="+filepath.Join(cp, "certs"),
		"--service-cluster-ip-range="+ServiceCIDR+","+ServiceCIDR6, "--token-auth-file="+filepath.Join(cp, "tokens.csv"),
		"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
		"--service-account-key-file="+filepath.Join(cp, "sa.key"), "--service-account-signing-key-file="+filepath.Join(cp, "sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc", "--allow-privileged=true", "--profiling=false",
		// kubectl logs/exec: the API server dials kubelets only through the
		// proxy inside the underlay namespace, never from the machine's.
		"--egress-selector-config-file="+filepath.Join(cp, "egress.yaml"),
		"--kubelet-client-certificate="+filepath.Join(cp, "kubelet-client.crt"),
		"--kubelet-client-key="+filepath.Join(cp, "kubelet-client.key"),
		"--kubelet-preferred-address-types=InternalIP")
	if err != nil {
		return err
	}
	hc = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true}}
	err = waitUntil(ctx, 3*time.Minute, "kube-apiserver /readyz", func() error {
		if exited(api) {
			return errExited
		}
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("https://127.0.0.1:%d/readyz", c.APIPort), nil)
		req.Header.Set("Authorization", "Bearer "+c.Token)
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status)
		}
		return nil
	})
	if err != nil {
		_ = api.Process.Kill()
		_ = etcd.Process.Kill()
		if bytes.Contains(readFile(c.LogPath("kube-apiserver")), []byte("address already in use")) {
			return errPortTaken
		}
		return fmt.Errorf("%w\n%s", err, tail(c.LogPath("kube-apiserver"), 30))
	}
	return nil
}

var errExited = errors.New("exited")

func exited(cmd *exec.Cmd) bool {
	if cmd.Process == nil {
		return true
	}
	// Signal 0 fails once the process is gone (or reaped).
	return cmd.Process.Signal(syscall.Signal(0)) != nil
}

func kubeconfig(port int, token string) []byte {
	return fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters:
- name: warpnet
  cluster: {server: "https://127.0.0.1:%d", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: %q}
contexts:
- name: warpnet
  context: {cluster: warpnet, user: u}
current-context: warpnet
`, port, token)
}

// ---------------------------------------------------------------- underlay

func (c *Cluster) netName() string { return c.Name + "-net" }

func (c *Cluster) makeUnderlay() error {
	net := c.netName()
	for _, args := range [][]string{
		{"netns", "add", net}, {"-n", net, "link", "set", "lo", "up"},
		{"-n", net, "link", "add", "br0", "type", "bridge"},
		{"-n", net, "addr", "add", "10.200.0.1/24", "dev", "br0"},
		{"-n", net, "addr", "add", "fd00:200::1/64", "dev", "br0", "nodad"},
		{"-n", net, "link", "set", "br0", "up"},
	} {
		if err := run(append([]string{"ip"}, args...)...); err != nil {
			return err
		}
	}
	if err := sysctlIn("/run/netns/"+net, "net/ipv4/ip_forward", "1"); err != nil {
		return err
	}
	cp := filepath.Join(c.Dir, "cp")
	if err := os.WriteFile(filepath.Join(cp, "egress.py"), []byte(egressProxy), 0o644); err != nil {
		return err
	}
	if _, err := c.start("egress-proxy", "nsenter", "--net=/run/netns/"+net, "python3", filepath.Join(cp, "egress.py"),
		filepath.Join(cp, "egress.sock"), "10.200.0.0/24"); err != nil {
		return err
	}
	return nil
}

// The external host's addresses: on the underlay, outside every cluster
// CIDR.
const (
	ExternalIP  = "10.200.0.50"
	ExternalIP6 = "fd00:200::50"
)

// External is a host outside the cluster on the nodes' underlay, as a
// client of NodePorts and LoadBalancer IPs is: the network namespace
// NAME-ext with eth0 on br0 (ExternalIP, ExternalIP6) and no route to pods
// or Services.
type External struct {
	NetNS   string // /run/netns/NAME-ext
	IP, IP6 string
}

// AddExternal creates the cluster's external host; Down removes it.
func (c *Cluster) AddExternal() (*External, error) {
	name := c.Name + "-ext"
	for _, args := range [][]string{
		{"netns", "add", name}, {"-n", name, "link", "set", "lo", "up"},
		{"-n", c.netName(), "link", "add", "v-ext", "type", "veth", "peer", "name", "eth0", "netns", name},
		{"-n", c.netName(), "link", "set", "v-ext", "master", "br0", "up"},
		{"-n", name, "addr", "add", ExternalIP + "/24", "dev", "eth0"},
		{"-n", name, "addr", "add", ExternalIP6 + "/64", "dev", "eth0", "nodad"},
		{"-n", name, "link", "set", "eth0", "up"},
	} {
		if err := run(append([]string{"ip"}, args...)...); err != nil {
			return nil, err
		}
	}
	return &External{NetNS: "/run/netns/" + name, IP: ExternalIP, IP6: ExternalIP6}, nil
}

// Do runs fn in the external host's network namespace; sockets fn makes
// stay there.
func (e *External) Do(fn func() error) error {
	return ns.WithNetNSPath(e.NetNS, func(ns.NetNS) error { return fn() })
}

// sysctlIn writes a per-network-namespace sysctl inside the namespace at path.
func sysctlIn(path, key, value string) error {
	return ns.WithNetNSPath(path, func(ns.NetNS) error {
		return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644)
	})
}

// egressProxy: HTTP CONNECT proxy on a unix socket (run inside the underlay
// namespace): the API server's only path to kubelets. Only the node subnet.
const egressProxy = `import asyncio, ipaddress, sys
ALLOW = ipaddress.ip_network(sys.argv[2])
async def pipe(r, w):
    try:
        while (b := await r.read(65536)):
            w.write(b); await w.drain()
    except Exception: pass
    finally: w.close()
async def handle(cr, cw):
    try:
        head = await cr.readuntil(b"\r\n\r\n")
        method, target = head.split(b" ")[:2]
        host, port = target.decode().rsplit(":", 1)
        host = host.strip("[]")
        if method != b"CONNECT" or ipaddress.ip_address(host) not in ALLOW:
            cw.write(b"HTTP/1.1 403 Forbidden\r\n\r\n"); cw.close(); return
        ur, uw = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5)
    except Exception:
        cw.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n"); cw.close(); return
    cw.write(b"HTTP/1.1 200 Connection established\r\n\r\n"); await cw.drain()
    await asyncio.gather(pipe(cr, uw), pipe(ur, cw))
async def main():
    async with await asyncio.start_unix_server(handle, path=sys.argv[1]) as srv: await srv.serve_forever()
asyncio.run(main())
`

// ---------------------------------------------------------------- nodes

func (c *Cluster) startNode(ctx context.Context, n *Node, images []string) error {
	start := time.Now()
	for _, d := range []string{n.Dir, filepath.Join(n.Dir, "sysctl")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// Network: eth0 on the underlay bridge, default route via it.
	veth := fmt.Sprintf("v-n%d", n.Index)
	for _, args := range [][]string{
		{"netns", "add", n.Name}, {"-n", n.Name, "link", "set", "lo", "up"},
		{"-n", c.netName(), "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", n.Name},
		{"-n", c.netName(), "link", "set", veth, "master", "br0", "up"},
		{"-n", n.Name, "addr", "add", n.IP + "/24", "dev", "eth0"},
		{"-n", n.Name, "addr", "add", n.IP6 + "/64", "dev", "eth0", "nodad"},
		{"-n", n.Name, "link", "set", "eth0", "up"},
		{"-n", n.Name, "route", "add", "default", "via", "10.200.0.1"},
	} {
		if err := run(append([]string{"ip"}, args...)...); err != nil {
			return err
		}
	}
	// The API server at 127.0.0.1:APIPort inside the node too.
	if _, err := c.start(fmt.Sprintf("node%d-apiserver-bridge", n.Index), "nsenter", "--net="+n.NetNS, "socat",
		fmt.Sprintf("TCP-LISTEN:%d,bind=127.0.0.1,fork,reuseaddr", c.APIPort), "UNIX-CONNECT:"+filepath.Join(c.Dir, "cp", "apiserver.sock")); err != nil {
		return err
	}
	if err := c.makeMountNS(n); err != nil {
		return fmt.Errorf("mount namespace: %w", err)
	}
	// The node's hardware, before the software that looks at it starts.
	var hwEnv []string
	if c.opts.SRIOVVFs > 0 {
		// warpctl, not sim.Create in this process: creating the underlay
		// namespace retires the OS thread that did it, and a thread's exit
		// kills the children it forked with Pdeathsig (the cluster's daemons).
		warpctl := filepath.Join(harness.BinDir(), "warpctl")
		if err := run(warpctl, "sim", "sriov", "create", "--netns", n.NetNS, "--dir", c.SRIOVDir(n), "--vfs", strconv.Itoa(c.opts.SRIOVVFs)); err != nil {
			return fmt.Errorf("simulated SR-IOV NIC (make build makes %s): %w", warpctl, err)
		}
		pf, err := sim.Load(c.SRIOVDir(n))
		if err != nil {
			return err
		}
		n.SRIOV = pf
		// What a real node's CNI plugins find in /sys and the PF driver, the
		// simulator's plugins find through these two variables. containerd
		// passes its environment to every CNI plugin it runs (and Multus to
		// its delegates), as a real node's containerd would pass what its
		// service unit sets: the conflists and plugins stay as shipped.
		hwEnv = pf.Env()
	}
	if err := c.startContainerd(ctx, n, images, hwEnv); err != nil {
		return err
	}
	if err := c.startKubelet(n); err != nil {
		return err
	}
	c.opts.Log("k8s: %s: kubelet started (%.1fs after node setup began)", n.Name, time.Since(start).Seconds())
	return nil
}

// inMount runs argv inside the node's mount namespace (and its network
// namespace, for the daemons).
func (n *Node) inMount(argv ...string) []string {
	return append([]string{"nsenter", "--mount=" + n.MountNS, "--net=" + n.NetNS}, argv...)
}

func (c *Cluster) makeMountNS(n *Node) error {
	if err := os.WriteFile(n.MountNS, nil, 0o644); err != nil {
		return err
	}
	if err := run("unshare", "--mount="+n.MountNS, "--propagation", "private", "true"); err != nil {
		return err
	}
	for _, kv := range sysctls {
		f := filepath.Join(n.Dir, "sysctl", strings.ReplaceAll(kv[0], "/", "_"))
		if err := os.WriteFile(f, []byte(kv[1]+"\n"), 0o644); err != nil {
			return err
		}
		if err := run(n.inMount("mount", "--bind", f, "/proc/sys/"+kv[0])...); err != nil {
			return err
		}
	}
	for _, p := range nodePaths {
		if err := os.MkdirAll(n.Root+p, 0o755); err != nil {
			return err
		}
		if err := makeMountpoint(p); err != nil {
			return err
		}
		if err := run(n.inMount("mount", "--bind", n.Root+p, p)...); err != nil {
			return err
		}
	}
	// The node's own bpffs: warpd and the plugins pin there, not in the
	// machine's (each bpf mount is a new instance; it dies with the
	// namespace). Shared, as systemd mounts it on real nodes, so that a
	// HostToContainer volume of it is allowed; its peer group lives only in
	// this namespace.
	if err := run(n.inMount("mount", "-t", "bpf", "bpf", "/sys/fs/bpf")...); err != nil {
		return err
	}
	return run(n.inMount("mount", "--make-shared", "/sys/fs/bpf")...)
}

// makeMountpoint creates a missing host path (and missing parents) as an
// empty directory, recording each in BaseDir()/created-dirs so that the last
// cluster to go removes them; under the lock shared with that removal.
func makeMountpoint(p string) error {
	if st, err := os.Stat(p); err == nil && st.IsDir() {
		return nil
	}
	return withBaseLock(func() error {
		var created []string
		acc := "/"
		for _, part := range strings.Split(strings.Trim(p, "/"), "/") {
			acc = filepath.Join(acc, part)
			if err := os.Mkdir(acc, 0o755); err == nil {
				created = append(created, acc)
			} else if !errors.Is(err, fs.ErrExist) {
				return err
			}
		}
		if len(created) == 0 {
			return nil
		}
		f, err := os.OpenFile(filepath.Join(BaseDir(), "created-dirs"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = f.WriteString(strings.Join(created, "\n") + "\n")
		return err
	})
}

func withBaseLock(fn func() error) error {
	if err := os.MkdirAll(BaseDir(), 0o755); err != nil {
		return err
	}
	l, err := flock.Open(filepath.Join(BaseDir(), "lock"))
	if err != nil {
		return err
	}
	defer l.Close()
	if err := l.Lock(); err != nil {
		return err
	}
	defer l.Unlock()
	return fn()
}

func (c *Cluster) startContainerd(ctx context.Context, n *Node, images, env []string) error {
	conf := fmt.Sprintf(`version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = %[1]q
[ttrpc]
  address = "%[1]s.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "/var/lib/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[2]q
  # Without CAP_SYS_RESOURCE (this sandbox lacks it) runc fails on oom_score_adj.
  restrict_oom_score_adj = true
  # Else pod netns files appear as /run/netns/cni-* on the machine.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
`, n.Sock, PauseImage)
	cf := filepath.Join(n.Dir, "containerd.toml")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		return err
	}
	what := fmt.Sprintf("node%d-containerd", n.Index)
	cd, err := c.startEnv(what, env, n.inMount("containerd", "--config", cf)...)
	if err != nil {
		return err
	}
	if err := waitUntil(ctx, time.Minute, "containerd", func() error {
		if exited(cd) {
			return fmt.Errorf("%w:\n%s", errExited, tail(c.LogPath(what), 20))
		}
		return run("ctr", "--address", n.Sock, "version")
	}); err != nil {
		return err
	}
	for _, img := range images {
		if err := run("ctr", "--address", n.Sock, "-n", "k8s.io", "images", "import", img); err != nil {
			return err
		}
	}
	return nil
}

// ImportImage imports an OCI layout tar into every node's containerd (what
// an operator does with an image that is not in a registry).
func (c *Cluster) ImportImage(tar string) error {
	for _, n := range c.Nodes {
		if err := run("ctr", "--address", n.Sock, "-n", "k8s.io", "images", "import", tar); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) startKubelet(n *Node) error {
	var token string
	tokens, _ := os.ReadFile(filepath.Join(c.Dir, "cp", "tokens.csv"))
	for _, line := range strings.Split(string(tokens), "\n") {
		if f := strings.Split(line, ","); len(f) >= 2 && f[1] == "system:node:"+n.Name {
			token = f[0]
		}
	}
	kc := filepath.Join(n.Dir, "kubeconfig")
	if err := os.WriteFile(kc, kubeconfig(c.APIPort, token), 0o600); err != nil {
		return err
	}
	conf := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
cgroupRoot: /%s/%s/%s
containerRuntimeEndpoint: unix://%s
# Refuse (instead of rewriting) machine-wide sysctls: the node's mount
# namespace serves the values kubelet wants from files.
protectKernelDefaults: true
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication: {anonymous: {enabled: false}, webhook: {enabled: true}, x509: {clientCAFile: %s}}
authorization: {mode: Webhook}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
maxPods: 60
serializeImagePulls: false
# The cluster's DNS Service (a test deploys CoreDNS behind it).
clusterDNS: [%s]
clusterDomain: cluster.local
`, cgroupParent, c.Name, n.Name, n.Sock, n.IP, filepath.Join(c.Dir, "cp", "ca.crt"), DNSServiceIP)
	cf := filepath.Join(n.Dir, "kubelet.yaml")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		return err
	}
	_, err := c.start(fmt.Sprintf("node%d-kubelet", n.Index), n.inMount(KubeBinary("kubelet"), "--config="+cf, "--kubeconfig="+kc,
		"--hostname-override="+n.Name, "--node-ip="+n.IP+","+n.IP6, "-v=1")...)
	return err
}

// ---------------------------------------------------------------- teardown

// Down stops the cluster whose directory is dir and removes everything it
// made: processes (one cgroup.kill), mount namespaces, network namespaces,
// cgroups, the directory, and (if it was the last cluster) the mount points
// created on the machine. It works from the directory alone, so it also
// removes a killed run's leftovers; running it again is harmless.
func Down(dir string, log func(string, ...any)) error {
	if log == nil {
		log = func(string, ...any) {}
	}
	st, err := readState(dir)
	if err != nil {
		if _, serr := os.Stat(dir); errors.Is(serr, fs.ErrNotExist) {
			return nil
		}
		st = state{Name: filepath.Base(dir)} // half-made: no state yet
	}
	name := st.Name
	if !validName(name) || filepath.Base(dir) != name {
		return fmt.Errorf("refusing to take down %s: not a cluster directory", dir)
	}
	var errs []error
	// 1. Every process of the cluster: daemons in system/, containers and
	//    shims below the nodes' cgroups.
	hs, _ := hierarchies()
	var trees []string
	for _, h := range hs {
		if t := filepath.Join(cgroupFS, h, cgroupParent, name); isDir(t) {
			trees = append(trees, t)
		}
	}
	for _, t := range trees {
		killTree(t)
	}
	for _, t := range trees {
		if !waitEmpty(t, 20*time.Second) {
			errs = append(errs, fmt.Errorf("processes left in %s", t))
		}
	}
	// 2. Mount namespaces (with every mount kubelet and containerd made).
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if mnt := filepath.Join(dir, e.Name(), "mnt.ns"); strings.HasPrefix(e.Name(), "node") && fileExists(mnt) {
			if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("umount %s: %w", mnt, err))
			}
		}
	}
	// 3. Network namespaces.
	nets, _ := filepath.Glob("/run/netns/" + name + "-node*")
	for _, p := range append(nets, "/run/netns/"+name+"-ext", "/run/netns/"+name+"-net") {
		if fileExists(p) {
			if err := run("ip", "netns", "del", filepath.Base(p)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// 4. cgroups, children first.
	for _, t := range trees {
		if err := rmTree(t); err != nil {
			errs = append(errs, err)
		}
	}
	// 5. The directory, after detaching anything still mounted inside it
	//    (RemoveAll would otherwise descend into it).
	mounts, _ := mountinfo.Read()
	for _, m := range mounts {
		if strings.HasPrefix(m.MountPoint, dir+"/") {
			_ = unix.Unmount(m.MountPoint, unix.MNT_DETACH)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	// 6. The mount points made on the machine, once no cluster needs them.
	errs = append(errs, removeCreatedDirs())
	if err := errors.Join(errs...); err != nil {
		return err
	}
	log("k8s: cluster %s removed", name)
	return nil
}

func removeCreatedDirs() error {
	return withBaseLock(func() error {
		ents, _ := os.ReadDir(BaseDir())
		for _, e := range ents {
			if e.IsDir() {
				return nil // another cluster still runs: its nodes mount on them
			}
		}
		// The shared cgroup parents (created under this lock).
		if hs, err := hierarchies(); err == nil {
			for _, h := range hs {
				_ = unix.Rmdir(filepath.Join(cgroupFS, h, cgroupParent))
			}
		}
		list := filepath.Join(BaseDir(), "created-dirs")
		data, err := os.ReadFile(list)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		dirs := strings.Fields(string(data))
		sort.Sort(sort.Reverse(sort.StringSlice(dirs))) // children before parents
		for _, d := range dirs {
			_ = unix.Rmdir(d) // only empty ones go; a non-empty one is not ours alone
		}
		if err := os.Remove(list); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	})
}

// killTree kills every process in a cgroup tree of ours: cgroup.kill on
// cgroup2, else each PID (v1).
func killTree(dir string) {
	if os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0o644) == nil {
		return
	}
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		data, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
		return nil
	})
}

func waitEmpty(dir string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		empty := true
		_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				if data, _ := os.ReadFile(filepath.Join(p, "cgroup.procs")); len(bytes.TrimSpace(data)) > 0 {
					empty = false
					killTree(p)
				}
			}
			return nil
		})
		if empty {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func rmTree(dir string) error {
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	var errs []error
	for i := len(dirs) - 1; i >= 0; i-- {
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := unix.Rmdir(dirs[i])
			if err == nil || errors.Is(err, unix.ENOENT) {
				break
			}
			if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("rmdir %s: %w", dirs[i], err))
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
}

// Sweep takes down the clusters whose owner process is gone (a test run
// that was killed). Clusters without an owner (make cluster) and those of
// live processes are left alone.
func Sweep(log func(string, ...any)) error {
	ents, err := os.ReadDir(BaseDir())
	if err != nil {
		return nil
	}
	var errs []error
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(BaseDir(), e.Name())
		st, err := readState(dir)
		if err != nil {
			// A cluster dies before its state exists only if its creator
			// died within moments; leave young ones to their creator.
			if info, serr := os.Stat(dir); serr == nil && time.Since(info.ModTime()) > 10*time.Minute {
				errs = append(errs, Down(dir, log))
			}
			continue
		}
		if st.Owner > 0 && st.Owner != os.Getpid() && !alive(st.Owner) {
			log("k8s: sweeping cluster %s of dead process %d", st.Name, st.Owner)
			errs = append(errs, Down(dir, log))
		}
	}
	return errors.Join(errs...)
}

func alive(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func readFile(p string) []byte {
	b, _ := os.ReadFile(p)
	return b
}

func tail(p string, n int) string {
	lines := strings.Split(strings.TrimRight(string(readFile(p)), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
