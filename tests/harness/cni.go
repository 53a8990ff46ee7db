package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/types/create"
)

// modulePath identifies the repository's own go.mod among nested modules.
const modulePath = "github.com/warpnet/warpnet"

// systemPluginDirs are where distributions install the reference plugins
// (Debian: /usr/lib/cni; upstream tarballs: /opt/cni/bin).
var systemPluginDirs = []string{"/usr/lib/cni", "/opt/cni/bin"}

var (
	repoRootOnce sync.Once
	repoRoot     string
)

// RepoRoot returns the directory holding the repository's go.mod, found by
// walking up from the working directory (go test runs in the package's
// directory). A go.mod declaring github.com/warpnet/warpnet wins over nested
// modules; failing that the nearest go.mod; "" if there is none.
func RepoRoot() string {
	repoRootOnce.Do(func() {
		wd, err := os.Getwd()
		if err != nil {
			return
		}
		nearest := ""
		for dir := wd; ; {
			if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil {
				if nearest == "" {
					nearest = dir
				}
				if goModModule(data) == modulePath {
					repoRoot = dir
					return
				}
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
		repoRoot = nearest
	})
	return repoRoot
}

func goModModule(data []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module"); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

// BinDir returns where `make build` puts the plugin binaries: $WARP_BIN_DIR,
// or <RepoRoot>/bin.
func BinDir() string {
	if v := os.Getenv("WARP_BIN_DIR"); v != "" {
		return v
	}
	return filepath.Join(RepoRoot(), "bin")
}

// Plugin is a CNI plugin binary.
type Plugin struct {
	Name string
	Path string
	// CNIPath is the default CNI_PATH: BinDir, then the system plugin
	// directories, so that our plugins find their IPAM delegates (ours or
	// the reference ones).
	CNIPath string

	env   *Env
	netns *NetNS // run inside this namespace (see In); nil: the caller's
}

// ownPrefix starts the names of warpnet's own plugins: they always come from
// BinDir, never from the machine's CNI directories, so a test exercises what
// `make build` produced and not some installed copy.
const ownPrefix = "warp-"

// Plugin resolves a plugin binary: warpnet's own (warp-*) from BinDir() only,
// reference plugins (host-local, bridge, ...) from /usr/lib/cni, then
// /opt/cni/bin. A missing binary skips the test (fails it when
// WARP_E2E_REQUIRED=1).
func (e *Env) Plugin(t testing.TB, name string) *Plugin {
	t.Helper()
	return e.plugin(t, name, BinDir())
}

// FaultPlugin is warpnet plugin name built with crash points
// (internal/faultpoint), from BinDir()/faultpoints; its delegates (warp-ipam)
// are the crash-point builds too, so one WARP_FAULTPOINT can name a step of
// either.
func (e *Env) FaultPlugin(t testing.TB, name string) *Plugin {
	t.Helper()
	if !strings.HasPrefix(name, ownPrefix) {
		t.Fatalf("harness: %q is not a warpnet plugin; only those have crash points", name)
	}
	return e.plugin(t, name, filepath.Join(BinDir(), "faultpoints"))
}

func (e *Env) plugin(t testing.TB, name, bin string) *Plugin {
	t.Helper()
	if name == "" || strings.ContainsRune(name, '/') {
		t.Fatalf("harness: plugin name %q must be a bare file name", name)
	}
	// CNI_PATH: our build first (delegates such as warp-ipam), then the
	// reference plugins, which tests may delegate to as well.
	dirs := append([]string{bin}, systemPluginDirs...)
	search := systemPluginDirs
	if strings.HasPrefix(name, ownPrefix) {
		search = []string{bin}
	}
	for _, dir := range search {
		path := filepath.Join(dir, name)
		if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return &Plugin{Name: name, Path: path, CNIPath: strings.Join(dirs, ":"), env: e}
		}
	}
	skipOrFatal(t, "CNI plugin %q not found in %s (run make build)", name, strings.Join(search, ", "))
	return nil
}

// FaultPoints runs call (normally an ADD or DEL) once with crash points
// logged and returns the points it passed, in order, each once (CrashAt
// kills at a point's first pass): the steps a crash test must kill the
// plugin at. The call must succeed.
func (p *Plugin) FaultPoints(t testing.TB, call Call) []string {
	t.Helper()
	log := filepath.Join(p.env.TempDir, fmt.Sprintf("faultpoints-%d.log", time.Now().UnixNano()))
	call.Env = append(append([]string(nil), call.Env...), "WARP_FAULTPOINT_LOG="+log)
	p.MustSucceed(t, call)
	data, err := os.ReadFile(log)
	if err != nil {
		t.Fatalf("harness: %s passed no crash point (is it a faultpoints build?): %v", p.Path, err)
	}
	var points []string
	for _, point := range strings.Fields(string(data)) {
		if !slices.Contains(points, point) {
			points = append(points, point)
		}
	}
	return points
}

// CrashAt runs call with the plugin killed by SIGKILL at crash point point
// (a delegate's point kills the delegate, and its caller then fails), and
// fails the test unless the call failed.
func (p *Plugin) CrashAt(t testing.TB, point string, call Call) *Outcome {
	t.Helper()
	call.Env = append(append([]string(nil), call.Env...), "WARP_FAULTPOINT="+point)
	out := p.mustExec(t, call)
	if out.ExitCode == 0 {
		t.Fatalf("harness: %s did not crash at %s:\n%s", p.Name, point, out)
	}
	return out
}

// Call is one invocation of a plugin in the CNI environment protocol. Empty
// fields are not set at all, so tests can check how a plugin reacts to a
// missing variable.
type Call struct {
	Command     string   // CNI_COMMAND: ADD, DEL, CHECK, STATUS, GC, VERSION
	ContainerID string   // CNI_CONTAINERID
	Netns       string   // CNI_NETNS, e.g. NetNS.Path
	IfName      string   // CNI_IFNAME
	Args        string   // CNI_ARGS
	Path        string   // CNI_PATH; defaults to Plugin.CNIPath
	Config      []byte   // network configuration on stdin
	Env         []string // extra "KEY=value" entries; they override everything else
}

// Outcome is what a plugin invocation produced.
type Outcome struct {
	Stdout, Stderr []byte
	ExitCode       int // -1 if the plugin was killed by a signal
	// CPU is the CPU time (user and system) the plugin process used.
	CPU time.Duration
	// Err is the CNI error the plugin printed (on stdout per the spec, on
	// stderr as a fallback) when it exited non-zero; nil if none parsed.
	Err *types.Error
}

func (o *Outcome) String() string {
	return fmt.Sprintf("exit code %d\nstdout: %s\nstderr: %s", o.ExitCode, bytes.TrimSpace(o.Stdout), bytes.TrimSpace(o.Stderr))
}

// environ builds the plugin's environment: ours minus any CNI_* variable
// (a stray one from the caller's shell would change the test), plus the
// call's protocol variables, plus Call.Env.
func (p *Plugin) environ(c Call) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CNI_") {
			env = append(env, kv)
		}
	}
	for _, kv := range [][2]string{
		{"CNI_COMMAND", c.Command},
		{"CNI_CONTAINERID", c.ContainerID},
		{"CNI_NETNS", c.Netns},
		{"CNI_IFNAME", c.IfName},
		{"CNI_ARGS", c.Args},
	} {
		if kv[1] != "" {
			env = append(env, kv[0]+"="+kv[1])
		}
	}
	path := c.Path
	if path == "" {
		path = p.CNIPath
	}
	env = append(env, "CNI_PATH="+path)
	return append(env, c.Env...) // exec uses the last value of a duplicate key
}

// In returns the plugin run inside n, as a runtime on that (simulated) node
// runs it: plugins that create host-side links must never run in the
// machine's own namespace. It uses nsenter, which keeps the cgroup and bpffs
// mounts (ip netns exec would remount /sys and hide them).
func (p *Plugin) In(n *NetNS) *Plugin {
	q := *p
	q.netns = n
	return &q
}

func (p *Plugin) command(ctx context.Context, c Call) *exec.Cmd {
	argv := []string{p.Path}
	if p.netns != nil {
		argv = []string{"nsenter", "--net=" + p.netns.Path, "--", p.Path}
	}
	var cmd *exec.Cmd
	if ctx != nil {
		cmd = exec.CommandContext(ctx, argv[0], argv[1:]...)
	} else {
		cmd = exec.Command(argv[0], argv[1:]...)
	}
	cmd.Env = p.environ(c)
	cmd.Stdin = bytes.NewReader(c.Config)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = waitDelay
	return cmd
}

// Exec runs the plugin and waits for it. A non-zero exit is not a Go error:
// it is reported in the Outcome (with the parsed CNI error), since tests
// check failures as often as successes. The Go error is for failures to run
// the plugin at all, and for ctx ending before the plugin did (then the
// Outcome is returned too).
func (p *Plugin) Exec(ctx context.Context, c Call) (*Outcome, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	cmd := p.command(ctx, c)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if cmd.ProcessState == nil {
		return nil, fmt.Errorf("harness: run CNI plugin %s: %w", p.Path, err)
	}
	o := &Outcome{Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), ExitCode: cmd.ProcessState.ExitCode(),
		CPU: cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()}
	if o.ExitCode != 0 {
		o.Err = parseCNIError(o.Stdout)
		if o.Err == nil {
			o.Err = parseCNIError(o.Stderr)
		}
	}
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return o, fmt.Errorf("harness: CNI plugin %s %s: %w\n%s", p.Name, c.Command, cerr, o)
		}
		if _, ok := errors.AsType[*exec.ExitError](err); !ok {
			return o, fmt.Errorf("harness: CNI plugin %s %s: %w\n%s", p.Name, c.Command, err, o)
		}
	}
	return o, nil
}

func parseCNIError(b []byte) *types.Error {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return nil
	}
	var e types.Error
	if json.Unmarshal(b, &e) != nil || (e.Code == 0 && e.Msg == "") {
		return nil
	}
	return &e
}

// Start starts the plugin without waiting, for tests that kill a plugin in
// the middle of an operation. Stdout and stderr go to separate
// *OutputBuffer (see Output). The process dies with the test binary, and is
// killed and reaped at the Env's cleanup if still running.
func (p *Plugin) Start(c Call) (*exec.Cmd, error) {
	cmd := p.command(nil, c)
	cmd.Stdout, cmd.Stderr = &OutputBuffer{}, &OutputBuffer{}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("harness: start CNI plugin %s: %w", p.Path, err)
	}
	pr := &proc{cmd: cmd}
	if p.env != nil {
		p.env.Defer(fmt.Sprintf("stop CNI plugin %s %s (pid %d)", p.Name, c.Command, cmd.Process.Pid), pr.stop)
	}
	return cmd, nil
}

// MustSucceed runs the plugin (bounded by CommandTimeout) and returns its
// stdout; it fails the test with stdout and stderr unless the plugin exits 0.
func (p *Plugin) MustSucceed(t testing.TB, c Call) []byte {
	t.Helper()
	o := p.mustExec(t, c)
	if o.ExitCode != 0 {
		t.Fatalf("CNI plugin %s %s failed: %s", p.Name, c.Command, o)
	}
	return o.Stdout
}

// MustFail runs the plugin (bounded by CommandTimeout) and returns the CNI
// error it printed; it fails the test unless the plugin exits non-zero with
// a CNI error of the given code (see the types.Err* constants).
func (p *Plugin) MustFail(t testing.TB, c Call, code uint) *types.Error {
	t.Helper()
	o := p.mustExec(t, c)
	switch {
	case o.ExitCode == 0:
		t.Fatalf("CNI plugin %s %s succeeded, want CNI error code %d: %s", p.Name, c.Command, code, o)
	case o.Err == nil:
		t.Fatalf("CNI plugin %s %s failed without a CNI error, want code %d: %s", p.Name, c.Command, code, o)
	case o.Err.Code != code:
		t.Fatalf("CNI plugin %s %s: CNI error code %d (%q), want %d: %s", p.Name, c.Command, o.Err.Code, o.Err.Msg, code, o)
	}
	return o.Err
}

func (p *Plugin) mustExec(t testing.TB, c Call) *Outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), CommandTimeout)
	defer cancel()
	o, err := p.Exec(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// CNIVersion is the cniVersion NetConf puts into configurations.
const CNIVersion = "1.0.0"

// NetConf returns a network configuration as a map: cniVersion (CNIVersion),
// name and type, plus fields (which may override those three). Marshal it
// with ConfigJSON.
func NetConf(name, pluginType string, fields map[string]any) map[string]any {
	m := map[string]any{"cniVersion": CNIVersion, "name": name, "type": pluginType}
	maps.Copy(m, fields)
	return m
}

// ConfigJSON marshals a configuration (a map from NetConf, or a struct) for
// Call.Config, failing the test if it cannot.
func ConfigJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("harness: marshal CNI config: %v", err)
	}
	return b
}

// ParseResult parses a plugin's ADD output (any supported cniVersion) into a
// current (1.x) result, failing the test if it cannot.
func ParseResult(t testing.TB, stdout []byte) *types100.Result {
	t.Helper()
	r, err := create.CreateFromBytes(stdout)
	if err != nil {
		t.Fatalf("harness: parse CNI result: %v\n%s", err, stdout)
	}
	res, err := types100.GetResult(r)
	if err != nil {
		t.Fatalf("harness: convert CNI result: %v\n%s", err, stdout)
	}
	return res
}

// WithPrevResult returns conf with r added as prevResult, as a runtime
// passes it to CHECK (and DEL).
func WithPrevResult(t testing.TB, conf []byte, r *types100.Result) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(conf, &m); err != nil {
		t.Fatalf("harness: config: %v", err)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatalf("harness: result: %v", err)
	}
	var prev map[string]any
	json.Unmarshal(b, &prev)
	m["prevResult"] = prev
	return ConfigJSON(t, m)
}

// IPAMReservations lists the addresses reserved on disk for network under
// dataDir, read straight from the files (one per address, named by it) that
// warp-ipam and host-local keep there: an oracle independent of the plugin.
func IPAMReservations(dataDir, network string) []string {
	entries, _ := os.ReadDir(filepath.Join(dataDir, network))
	var out []string
	for _, e := range entries {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			out = append(out, e.Name())
		}
	}
	return out
}

// IPAMFiles is what warp-ipam keeps for network under dataDir that belongs
// to attachments, read straight from disk: address files ("10.0.0.2"), index
// entries ("attachments/<containerID>:<ifname>") and temporary files, each
// with its content. The lock, the cursors and the index marker, which belong
// to the network, are left out. A crash test compares it before and after.
func IPAMFiles(dataDir, network string) map[string]string {
	dir := filepath.Join(dataDir, network)
	out := map[string]string{}
	for _, sub := range []string{"", "attachments"} {
		entries, _ := os.ReadDir(filepath.Join(dir, sub))
		for _, e := range entries {
			name := e.Name()
			if e.IsDir() || name == "lock" || name == ".v1" || strings.HasPrefix(name, "last_reserved_ip.") {
				continue
			}
			data, _ := os.ReadFile(filepath.Join(dir, sub, name))
			out[filepath.Join(sub, name)] = string(data)
		}
	}
	return out
}
