// Package flock is warpnet's one way to serialise processes: flock(2) on a
// file or directory, with one timeout policy and one error.
//
// CNI plugins are short-lived processes that share state on disk and on
// bpffs; a flock is released by the kernel when its holder dies, so a killed
// plugin never wedges a node. Waiting is bounded (DefaultTimeout) so that a
// stuck holder turns into a clear "try again" error instead of a hung
// runtime. Waiters queue in the kernel (a blocking flock), which is fair;
// polling with LOCK_NB starves processes under a burst of ADDs.
package flock

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultTimeout is how long Lock and RLock wait for a held lock.
const DefaultTimeout = 30 * time.Second

// ErrTimeout is wrapped by Lock and RLock when the lock stayed held by
// another process for longer than the timeout. CNI plugins report it as
// "try again later" (code 11).
var ErrTimeout = errors.New("lock is held by another process")

// Lock is an open lock file or directory. Locks are per Lock value (per
// open file description), so two Locks on one path exclude each other also
// within one process; one Lock must not be used by two goroutines at once.
type Lock struct {
	fd      int
	path    string
	timeout time.Duration
}

// Open opens path as a lock, creating it as an empty regular file (mode
// 0600) if it does not exist; its directory must exist.
func Open(path string) (*Lock, error) {
	fd, err := unix.Open(path, unix.O_CREAT|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	return &Lock{fd: fd, path: path, timeout: DefaultTimeout}, nil
}

// OpenDir opens the directory path as a lock (bpffs cannot hold regular
// files, but a directory can be flock'ed).
func OpenDir(path string) (*Lock, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	return &Lock{fd: fd, path: path, timeout: DefaultTimeout}, nil
}

// SetTimeout changes how long this Lock waits (tests shorten it).
func (l *Lock) SetTimeout(d time.Duration) { l.timeout = d }

// Path is the locked file or directory.
func (l *Lock) Path() string { return l.path }

// Lock takes the lock exclusively, waiting at most the timeout.
func (l *Lock) Lock() error { return l.acquire(unix.LOCK_EX) }

// RLock takes the lock shared, waiting at most the timeout.
func (l *Lock) RLock() error { return l.acquire(unix.LOCK_SH) }

// TryLock takes the lock exclusively if nobody holds it, without waiting:
// for work that one process does on behalf of the others (a refresh), which
// the others skip while it runs.
func (l *Lock) TryLock() (bool, error) {
	err := retry(l.fd, unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("flock %s: %w", l.path, err)
	}
	return true, nil
}

// Unlock releases the lock; Close releases it too.
func (l *Lock) Unlock() error { return retry(l.fd, unix.LOCK_UN) }

// Close releases the lock (if held) and closes the descriptor.
func (l *Lock) Close() error {
	if l == nil || l.fd < 0 {
		return nil
	}
	err := unix.Close(l.fd)
	l.fd = -1
	return err
}

func (l *Lock) acquire(how int) error {
	// Uncontended (the usual case): take it at once, without the thread
	// handoff that waiting costs.
	err := retry(l.fd, how|unix.LOCK_NB)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EWOULDBLOCK) {
		return fmt.Errorf("flock %s: %w", l.path, err)
	}
	// The waiter works on a duplicate of the descriptor (the same open
	// file description, so the same lock) that it closes itself: if we
	// stop waiting and the caller closes l.fd, a late grant is released
	// at once and never lands on a reused descriptor number.
	dup, err := unix.FcntlInt(uintptr(l.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("flock %s: %w", l.path, err)
	}
	// state decides, once, whether a grant is kept or given back.
	const waiting, granted, abandoned = 0, 1, 2
	var state atomic.Int32
	done := make(chan error, 1)
	go func() {
		defer unix.Close(dup)
		err := retry(dup, how)
		if err == nil && !state.CompareAndSwap(waiting, granted) {
			_ = retry(dup, unix.LOCK_UN) // nobody waits for it any more
			return
		}
		done <- err
	}()
	timer := time.NewTimer(l.timeout)
	defer timer.Stop()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("flock %s: %w", l.path, err)
		}
		return nil
	case <-timer.C:
		if !state.CompareAndSwap(waiting, abandoned) {
			// Granted (or failed) just as the timer fired.
			if err := <-done; err != nil {
				return fmt.Errorf("flock %s: %w", l.path, err)
			}
			return nil
		}
		return fmt.Errorf("%w: waited %s for %s; try again, or find the process that holds it (lsof %s)",
			ErrTimeout, l.timeout, l.path, l.path)
	}
}

// retry runs flock, repeating it when a signal interrupted it.
func retry(fd, how int) error {
	for {
		err := unix.Flock(fd, how)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// Acquire opens path (a directory or a regular file, created if missing)
// and locks it, exclusively or shared, for one critical section; release
// closes it.
func Acquire(path string, exclusive bool) (release func(), err error) {
	var l *Lock
	var st unix.Stat_t
	if unix.Stat(path, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
		l, err = OpenDir(path)
	} else {
		l, err = Open(path)
	}
	if err != nil {
		return nil, err
	}
	if exclusive {
		err = l.Lock()
	} else {
		err = l.RLock()
	}
	if err != nil {
		l.Close()
		return nil, err
	}
	return func() { l.Close() }, nil
}
