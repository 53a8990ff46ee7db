package sim

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsRunDir is where `ip netns` keeps named namespaces; the underlay
// namespace is created there so that `ip netns`, nsenter and the test
// harness's sweep see it like any other.
const netnsRunDir = "/run/netns"

// openNetNS opens the network namespace at path and checks that it is one
// and that it is neither the machine's own (PID 1's, when readable: in a
// container it may not be) nor this process's (its main thread's): the
// simulator's links must never be created there (see
// shared/ENVIRONMENT.md: nothing may connect the machine's namespace to test
// namespaces).
func openNetNS(path string) (netns.NsHandle, error) {
	if path == "" {
		return netns.None(), errors.New("no node network namespace given")
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return netns.None(), fmt.Errorf("open network namespace %s: %w", path, err)
	}
	h := netns.NsHandle(fd)
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil || sfs.Type != unix.NSFS_MAGIC {
		h.Close()
		return netns.None(), fmt.Errorf("%s is not a namespace file (want e.g. /run/netns/NAME or /proc/PID/ns/net)", path)
	}
	if t, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE); err != nil || t != unix.CLONE_NEWNET {
		h.Close()
		return netns.None(), fmt.Errorf("%s is not a network namespace", path)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		h.Close()
		return netns.None(), err
	}
	for _, own := range []struct{ path, what string }{
		{"/proc/1/ns/net", "the machine's own network namespace (PID 1's)"},
		{"/proc/self/ns/net", "the network namespace this program runs in"},
	} {
		var o unix.Stat_t
		if unix.Stat(own.path, &o) == nil && o.Dev == st.Dev && o.Ino == st.Ino {
			h.Close()
			return netns.None(), fmt.Errorf("%s is %s; the simulator only builds inside a separate node namespace: create one with `ip netns add NODE` and pass /run/netns/NODE", path, own.what)
		}
	}
	return h, nil
}

// createNamedNetNS creates a network namespace bound at /run/netns/<name>,
// as `ip netns add` does: /run/netns is made a shared mount point (so that
// the bind mount propagates into mount namespaces made later, e.g. by `ip
// netns exec`), an empty file is created, and a thread that has unshared
// its network namespace bind-mounts it there. That thread is never given
// back to the Go scheduler (no UnlockOSThread), so it exits with its
// goroutine instead of running other goroutines in the new namespace.
func createNamedNetNS(name string) (string, error) {
	if name == "" || name == "." || name == ".." || filepath.Base(name) != name {
		return "", fmt.Errorf("invalid network namespace name %q", name)
	}
	if err := os.MkdirAll(netnsRunDir, 0o755); err != nil {
		return "", err
	}
	madeMount := false
	for {
		err := unix.Mount("", netnsRunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EINVAL) || madeMount {
			return "", fmt.Errorf("make %s a shared mount: %w", netnsRunDir, err)
		}
		if err := unix.Mount(netnsRunDir, netnsRunDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return "", fmt.Errorf("bind-mount %s onto itself: %w", netnsRunDir, err)
		}
		madeMount = true
	}
	path := filepath.Join(netnsRunDir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("network namespace %s already exists (a leftover? remove it with `ip netns del %s`)", name, name)
		}
		return "", err
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with this goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare network namespace: %w", err)
			return
		}
		self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(self, path, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind-mount new network namespace on %s: %w", path, err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return "", err
	}
	return path, nil
}

// deleteNamedNetNS undoes createNamedNetNS, as `ip netns del` does. Already
// gone is success. Links in the namespace go away once nothing else holds it
// (the simulator starts no process there).
func deleteNamedNetNS(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil &&
		!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount network namespace %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}
