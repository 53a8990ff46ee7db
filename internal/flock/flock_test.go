package flock

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// A lock held by another process: the waiter times out with ErrTimeout, and
// gets it once the holder dies (the kernel releases it).
func TestTimeoutAndRelease(t *testing.T) {
	if os.Getenv("FLOCK_HOLD") != "" {
		l, err := Open(os.Getenv("FLOCK_HOLD"))
		if err == nil {
			err = l.Lock()
		}
		if err != nil {
			os.Exit(3)
		}
		os.Stdout.WriteString("held\n")
		time.Sleep(time.Minute)
		os.Exit(0)
	}
	path := filepath.Join(t.TempDir(), "lock")
	cmd := exec.Command(os.Args[0], "-test.run=^TestTimeoutAndRelease$")
	cmd.Env = append(os.Environ(), "FLOCK_HOLD="+path)
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	buf := make([]byte, 5)
	if _, err := out.Read(buf); err != nil || string(buf) != "held\n" {
		t.Fatalf("holder did not start: %q %v", buf, err)
	}

	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.SetTimeout(100 * time.Millisecond)
	if err := l.Lock(); !errors.Is(err, ErrTimeout) {
		t.Fatalf("Lock = %v, want ErrTimeout", err)
	}
	if err := l.RLock(); !errors.Is(err, ErrTimeout) {
		t.Fatalf("RLock = %v, want ErrTimeout", err)
	}
	// The holder dies: the next wait succeeds without any timeout racing.
	l.SetTimeout(time.Minute)
	done := make(chan error, 1)
	go func() { done <- l.Lock() }()
	cmd.Process.Kill()
	cmd.Wait()
	if err := <-done; err != nil {
		t.Fatalf("Lock after the holder died: %v", err)
	}
}

// Two Locks on one path exclude each other within a process, shared locks
// do not, and Acquire works on directories.
func TestInProcess(t *testing.T) {
	dir := t.TempDir()
	a, _ := OpenDir(dir)
	b, _ := OpenDir(dir)
	defer a.Close()
	defer b.Close()
	b.SetTimeout(50 * time.Millisecond)
	if err := a.RLock(); err != nil {
		t.Fatal(err)
	}
	if err := b.RLock(); err != nil {
		t.Fatalf("second shared lock: %v", err)
	}
	b.Unlock()
	if err := b.Lock(); !errors.Is(err, ErrTimeout) {
		t.Fatalf("exclusive under a shared lock: %v", err)
	}
	a.Unlock()
	release, err := Acquire(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Lock(); !errors.Is(err, ErrTimeout) {
		t.Fatalf("exclusive under Acquire: %v", err)
	}
	release()
	if err := b.Lock(); err != nil {
		t.Fatalf("after release: %v", err)
	}
}

// TryLock takes a free lock and gives up at once on a held one.
func TestTryLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l")
	a, _ := Open(path)
	b, _ := Open(path)
	defer a.Close()
	defer b.Close()
	if ok, err := a.TryLock(); !ok || err != nil {
		t.Fatalf("free lock: %v %v", ok, err)
	}
	if ok, err := b.TryLock(); ok || err != nil {
		t.Fatalf("held lock: %v %v, want false without error", ok, err)
	}
	a.Unlock()
	if ok, err := b.TryLock(); !ok || err != nil {
		t.Fatalf("released lock: %v %v", ok, err)
	}
}
