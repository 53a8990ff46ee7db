// Package atomicfile replaces files so that readers (other processes, the
// next boot) see the old content or the new, never a mix: the data goes to
// a temporary file in the same directory and is renamed over the target.
// Write also fsyncs the file and the directory (state that must survive a
// power loss); Replace does not (caches and hints).
package atomicfile

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
)

// Write makes path hold data with mode, unless it already does
// (changed=false). A process executing or holding the old file keeps it.
// The data and the rename are on disk when it returns.
func Write(path string, data []byte, mode os.FileMode) (changed bool, err error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		if st, err := os.Stat(path); err == nil && st.Mode().Perm() == mode && st.Mode().IsRegular() {
			return false, nil
		}
	}
	if err := replace(path, data, mode, true); err != nil {
		return false, err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return true, err
	}
	defer d.Close()
	return true, d.Sync()
}

// Replace makes path hold data with mode, as Write does but without
// comparing first and without waiting for the disk: after a crash a reader
// may find the old content (never a mix). For caches, hints and records
// whose loss something else repairs, written on hot paths.
func Replace(path string, data []byte, mode os.FileMode) error {
	return replace(path, data, mode, false)
}

// tempMark is in the name of every temporary file, which also starts with
// a dot.
const tempMark = ".warpnet-tmp-"

// IsTemp reports whether a directory entry's name is a temporary file of
// Write or Replace (left behind by a crash, or in flight): readers that
// list a directory skip it.
func IsTemp(name string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name, tempMark)
}

// replace writes data to a temporary file beside path (a unique name, so
// concurrent writers never share one) and renames it over path.
func replace(path string, data []byte, mode os.FileMode, sync bool) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+tempMark)
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if _, err = f.Write(data); err == nil {
		if err = f.Chmod(mode); err == nil && sync {
			err = f.Sync()
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
