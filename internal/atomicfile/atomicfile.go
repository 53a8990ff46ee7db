// Package atomicfile replaces files so that readers (other processes, the
// next boot) see the old content or the new, never a mix: the data goes to
// a temporary file in the same directory, is fsynced, renamed over the
// target, and the directory is fsynced.
package atomicfile

import (
	"bytes"
	"os"
	"path/filepath"
)

// Write makes path hold data with mode, unless it already does
// (changed=false). A process executing or holding the old file keeps it.
func Write(path string, data []byte, mode os.FileMode) (changed bool, err error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		if st, err := os.Stat(path); err == nil && st.Mode().Perm() == mode && st.Mode().IsRegular() {
			return false, nil
		}
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".warpnet-tmp-")
	if err != nil {
		return false, err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if _, err = f.Write(data); err == nil {
		if err = f.Chmod(mode); err == nil {
			err = f.Sync()
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, err
	}
	if err = os.Rename(tmp, path); err != nil {
		return false, err
	}
	d, err := os.Open(dir)
	if err != nil {
		return true, err
	}
	defer d.Close()
	return true, d.Sync()
}
