package kube

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/warpnet/warpnet/ipam/kube"
	"github.com/warpnet/warpnet/ipam/store"
)

// queued is a journal entry: releases of one attachment that could not
// reach the API server. All means "whatever the attachment holds" (its
// index was gone too): the retry asks the API server.
type queued struct {
	ContainerID string    `json:"containerID"`
	IfName      string    `json:"ifName"`
	Since       time.Time `json:"since"`
	Entries     []entry   `json:"entries,omitempty"`
	All         bool      `json:"all,omitempty"`
}

// queuedFor reports whether k has queued releases.
func (s *Store) queuedFor(k store.Key) bool {
	_, err := os.Stat(s.journalPath(k))
	return err == nil
}

func (s *Store) journalPath(k store.Key) string { return filepath.Join(s.dir, journalDir, fileName(k)) }

// queue adds releases of k to the journal.
func (s *Store) queue(k store.Key, es []entry) error {
	var q queued
	if err := readJSON(s.journalPath(k), &q); err != nil {
		return err
	}
	if q.Since.IsZero() {
		q = queued{ContainerID: k.ContainerID, IfName: k.IfName, Since: time.Now().UTC()}
	}
	for _, e := range es {
		if !slices.ContainsFunc(q.Entries, func(x entry) bool { return x.Address == e.Address }) {
			q.Entries = append(q.Entries, e)
		}
	}
	if len(es) == 0 {
		q.All = true
	}
	fmt.Fprintf(os.Stderr, "warp-ipam: the API server cannot be reached; the release of %s/%s is queued in %s and retried by the next call on this node\n",
		k.ContainerID, k.IfName, s.journalPath(k))
	return writeJSON(s.journalPath(k), q)
}

// Pending returns how many attachments have queued releases.
func (s *Store) Pending() (int, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, journalDir))
	n := 0
	for _, e := range ents {
		if _, ok := keyFromFileName(e.Name()); ok && !isTemp(e.Name()) {
			n++
		}
	}
	return n, err
}

// Drain retries the queued releases until the journal is empty or the API
// server fails again (then the rest waits for the next call). It needs no
// lock: each entry is one attachment's, and releasing twice is harmless.
func (s *Store) Drain() (released int, err error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, journalDir))
	if err != nil {
		return 0, err
	}
	for _, de := range ents {
		k, ok := keyFromFileName(de.Name())
		if !ok || isTemp(de.Name()) {
			continue
		}
		path := filepath.Join(s.dir, journalDir, de.Name())
		var q queued
		if err := readJSON(path, &q); err != nil {
			return released, err
		}
		es := q.Entries
		if q.All {
			objs, err := s.c.ListAllocations(s.ctx, kube.LabelAttachment+"="+kube.AttachmentLabel(k.ContainerID, k.IfName))
			if err != nil {
				return released, err
			}
			for _, a := range objs {
				if a.HeldBy(k.ContainerID, k.IfName) {
					es = append(es, entry{Address: a.Addr(), UID: string(a.UID), Pinned: a.Pinned()})
				}
			}
		}
		for _, e := range es {
			if err := s.releaseOne(k, e); err != nil {
				return released, fmt.Errorf("queued release of %s for %s/%s: %w", e.Address, k.ContainerID, k.IfName, err)
			}
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return released, err
		}
		released++
		fmt.Fprintf(os.Stderr, "warp-ipam: queued release of %s/%s done (queued since %s)\n", k.ContainerID, k.IfName, q.Since.Format(time.RFC3339))
	}
	return released, nil
}

// Abandon queues the claims of this call whose outcome it could not learn
// (the API server stopped answering mid-request) and drops them from k's
// index, so that a runtime that never DELs the failed attachment leaks
// nothing either. Addresses k held before this call are left alone.
func (s *Store) Abandon(k store.Key) error {
	if len(s.unknown) == 0 {
		return nil
	}
	if err := s.queue(k, s.unknown); err != nil {
		return err
	}
	for _, e := range s.unknown {
		if err := s.updateEntry(k, e.Address, func(*entry) bool { return false }); err != nil {
			return err
		}
	}
	s.unknown = nil
	return nil
}

// QueueRelease queues the release of everything attachment k holds without
// an API client: for a DEL whose configuration no longer lets it reach the
// API server (a kubeconfig gone or broken). A later call with a working
// configuration performs it.
func QueueRelease(dataDir, network string, k store.Key) error {
	dir := Dir(dataDir, network)
	if err := os.MkdirAll(filepath.Join(dir, journalDir), 0o755); err != nil {
		return err
	}
	s := &Store{dir: dir}
	es, err := s.readIndex(k)
	if err != nil {
		return err
	}
	if err := s.queue(k, es); err != nil {
		return err
	}
	return s.writeIndex(k, nil)
}
