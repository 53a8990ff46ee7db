// Package installer puts warpnet onto a node: the work of the DaemonSet's
// init container (cmd/warp-install), and of install/install.sh by hand.
//
// It copies the CNI plugins into the node's CNI bin directory, writes the
// network configuration (conflist) into its CNI conf directory, and writes
// the kubeconfig warp-ipam uses, from the pod's service account. Every file
// is written to a temporary name in the same directory, fsynced, renamed into
// place and the directory fsynced, so a runtime never sees a half-written
// plugin or conflist, and a running plugin keeps its old inode during an
// upgrade. Files whose content is already right are left alone, so running
// it again changes nothing (and containerd sees no config event). Other
// plugins' files are never touched.
package installer

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containernetworking/cni/libcni"

	"github.com/warpnet/warpnet/internal/atomicfile"
	"github.com/warpnet/warpnet/internal/kubeconfig"
)

// Plugins are the CNI plugins warpnet ships. They are always installed
// (replacing older versions).
var Plugins = []string{"warp-ipam", "warp-veth", "warp-sriov"}

// Helpers are plugins a runtime needs besides ours (containerd's CRI calls
// "loopback" for every pod's lo). They are installed only where missing:
// another vendor's copy is left alone.
var Helpers = []string{"loopback"}

// Primary modes: whether the conflist is written.
const (
	PrimaryAuto = "auto" // write it unless Multus owns the primary network
	PrimaryYes  = "yes"  // always write it
	PrimaryNo   = "no"   // never write it (and remove a copy we wrote earlier)
)

// Options say what to install where. Zero values are not defaults: the
// command fills them from its flags.
type Options struct {
	SrcDir     string // where the plugin binaries are (the image's /usr/bin)
	CNIBinDir  string // host CNI bin dir, e.g. /host/opt/cni/bin
	CNIConfDir string // host CNI conf dir, e.g. /host/etc/cni/net.d

	Conflist     string // source conflist file ("" = do not write one)
	ConflistName string // its name in CNIConfDir (default: base name of Conflist)
	Primary      string // PrimaryAuto, PrimaryYes or PrimaryNo

	// Kubeconfig is where warp-ipam's kubeconfig goes ("" = none).
	// ServiceAccountDir holds the pod's token, ca.crt and namespace; the
	// server is KubeServer, else https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT.
	Kubeconfig        string
	ServiceAccountDir string
	KubeServer        string

	Log io.Writer // progress lines; nil = discard
}

// Result says what Install did.
type Result struct {
	Installed []string // files written (plugins, conflist, kubeconfig)
	Unchanged []string // files already right
	Removed   []string // files removed (our conflist, when not primary)
	Warnings  []string
}

// Install does the whole installation; see the package comment. It stops at
// the first error, which names the file and says what to do.
func Install(o Options) (*Result, error) {
	r := &Result{}
	logf := func(format string, args ...any) {
		if o.Log != nil {
			fmt.Fprintf(o.Log, format+"\n", args...)
		}
	}
	if o.SrcDir == "" || o.CNIBinDir == "" {
		return nil, errors.New("the source directory and the CNI bin directory are required")
	}
	var src []byte
	if o.Conflist != "" {
		var err error
		// Validate the source before anything changes on the node.
		if src, err = os.ReadFile(o.Conflist); err != nil {
			return nil, fmt.Errorf("read conflist: %w", err)
		}
		if _, err := libcni.ConfListFromBytes(src); err != nil {
			return nil, fmt.Errorf("conflist %s is not a valid CNI network configuration list: %w", o.Conflist, err)
		}
		if o.CNIConfDir == "" {
			return nil, errors.New("a conflist needs the CNI conf directory")
		}
	}

	if err := os.MkdirAll(o.CNIBinDir, 0o755); err != nil {
		return nil, fmt.Errorf("CNI bin directory: %w", err)
	}
	for _, name := range append(append([]string{}, Plugins...), Helpers...) {
		helper := !contains(Plugins, name)
		from, to := filepath.Join(o.SrcDir, name), filepath.Join(o.CNIBinDir, name)
		data, err := os.ReadFile(from)
		if err != nil {
			if helper && errors.Is(err, os.ErrNotExist) {
				continue // not shipped in this build: the node must have it
			}
			return nil, fmt.Errorf("plugin %s: %w (is --src the directory of the warpnet binaries?)", name, err)
		}
		if helper && isExecutable(to) {
			logf("%s: present, kept", to)
			r.Unchanged = append(r.Unchanged, to)
			continue
		}
		changed, err := atomicfile.Write(to, data, 0o755)
		if err != nil {
			return nil, fmt.Errorf("install plugin %s: %w", name, err)
		}
		record(r, logf, to, changed)
	}

	if o.Conflist != "" {
		name := o.ConflistName
		if name == "" {
			name = filepath.Base(o.Conflist)
		}
		if filepath.Base(name) != name || !isConfName(name) {
			return nil, fmt.Errorf("conflist name %q: want a plain file name ending in .conflist", name)
		}
		if err := os.MkdirAll(o.CNIConfDir, 0o755); err != nil {
			return nil, fmt.Errorf("CNI conf directory: %w", err)
		}
		dest := filepath.Join(o.CNIConfDir, name)
		write, why, err := shouldWrite(o.Primary, o.CNIConfDir, name)
		if err != nil {
			return nil, err
		}
		if write {
			// The plugins it names must be there before the runtime may
			// read it; then what landed on disk is checked again.
			if err := validate(o.Conflist, src, o.CNIBinDir); err != nil {
				return nil, err
			}
			changed, err := atomicfile.Write(dest, src, 0o644)
			if err != nil {
				return nil, fmt.Errorf("write conflist: %w", err)
			}
			record(r, logf, dest, changed)
			if err := Validate(dest, o.CNIBinDir); err != nil {
				return nil, err
			}
			if first, err := firstConf(o.CNIConfDir); err == nil && first != name {
				w := fmt.Sprintf("%s sorts before %s in %s: the runtime uses it as the pod network, not warpnet", first, name, o.CNIConfDir)
				r.Warnings = append(r.Warnings, w)
				logf("warning: %s", w)
			}
		} else {
			logf("conflist not written: %s", why)
			if err := os.Remove(dest); err == nil {
				r.Removed = append(r.Removed, dest)
				logf("%s: removed (written by an earlier install)", dest)
			} else if !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("remove %s: %w", dest, err)
			}
		}
	}

	if o.Kubeconfig != "" {
		kc, err := kubeconfig.FromServiceAccount(o.ServiceAccountDir, o.KubeServer)
		if err != nil {
			return nil, fmt.Errorf("warp-ipam kubeconfig: %w (or pass --ipam-kubeconfig=\"\" to write none)", err)
		}
		if err := os.MkdirAll(filepath.Dir(o.Kubeconfig), 0o755); err != nil {
			return nil, fmt.Errorf("warp-ipam kubeconfig: %w", err)
		}
		changed, err := atomicfile.Write(o.Kubeconfig, kc, kubeconfig.Mode)
		if err != nil {
			return nil, fmt.Errorf("warp-ipam kubeconfig: %w", err)
		}
		record(r, logf, o.Kubeconfig, changed)
	}
	return r, nil
}

func record(r *Result, logf func(string, ...any), path string, changed bool) {
	if changed {
		r.Installed = append(r.Installed, path)
		logf("%s: installed", path)
	} else {
		r.Unchanged = append(r.Unchanged, path)
		logf("%s: unchanged", path)
	}
}

// shouldWrite decides whether the conflist goes into dir (see the Primary
// modes). Under auto, Multus owns the primary network when the first config
// in dir (the one the runtime uses) is a Multus one.
func shouldWrite(mode, dir, ours string) (bool, string, error) {
	switch mode {
	case PrimaryYes, "":
		return true, "", nil
	case PrimaryNo:
		return false, "--primary=no", nil
	case PrimaryAuto:
		first, err := firstConf(dir)
		if err != nil || first == ours {
			return true, "", nil
		}
		if isMultus(filepath.Join(dir, first)) {
			return false, fmt.Sprintf("Multus owns the primary network (%s); warpnet is delegated to through NetworkAttachmentDefinitions", first), nil
		}
		return true, "", nil
	default:
		return false, "", fmt.Errorf("--primary=%q: want auto, yes or no", mode)
	}
}

// firstConf returns the config file a runtime picks in dir: the first by
// name among *.conf, *.conflist and *.json (libcni's order).
func firstConf(dir string) (string, error) {
	files, err := libcni.ConfFiles(dir, []string{".conf", ".conflist", ".json"})
	if err != nil {
		return "", err
	}
	if len(files) == 0 {
		return "", os.ErrNotExist
	}
	sort.Strings(files)
	return filepath.Base(files[0]), nil
}

func isMultus(path string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	var conf struct {
		Type    string `json:"type"`
		Plugins []struct {
			Type string `json:"type"`
		} `json:"plugins"`
	}
	if json.Unmarshal(data, &conf) != nil {
		return false
	}
	types := []string{conf.Type}
	for _, p := range conf.Plugins {
		types = append(types, p.Type)
	}
	for _, t := range types {
		if t == "multus" || t == "multus-shim" {
			return true
		}
	}
	return false
}

func isConfName(name string) bool {
	return strings.HasSuffix(name, ".conflist") && len(name) > len(".conflist")
}

// Validate checks an installed conflist the way the runtime will read it:
// it parses with libcni, and every plugin it names (and every IPAM plugin
// they name) is an executable in binDir.
func Validate(conflist, binDir string) error {
	data, err := os.ReadFile(conflist)
	if err != nil {
		return fmt.Errorf("validate: %w", err)
	}
	return validate(conflist, data, binDir)
}

func validate(conflist string, data []byte, binDir string) error {
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		return fmt.Errorf("validate %s: %w", conflist, err)
	}
	if len(list.Plugins) == 0 {
		return fmt.Errorf("validate %s: no plugins", conflist)
	}
	for i, p := range list.Plugins {
		need := []string{p.Network.Type}
		if p.Network.IPAM.Type != "" {
			need = append(need, p.Network.IPAM.Type)
		}
		for _, t := range need {
			if t == "" || strings.ContainsRune(t, '/') {
				return fmt.Errorf("validate %s: plugins[%d] has type %q", conflist, i, t)
			}
			if !isExecutable(filepath.Join(binDir, t)) {
				return fmt.Errorf("validate %s: plugins[%d] needs plugin %q, which is not an executable in %s", conflist, i, t, binDir)
			}
		}
	}
	return nil
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
