// Package mountinfo reads /proc/self/mountinfo, to find where filesystems
// such as cgroup2 and bpffs are mounted: hybrid machines mount cgroup2 at
// /sys/fs/cgroup/unified, pure cgroup v2 nodes at /sys/fs/cgroup, so it has
// to be detected rather than assumed.
package mountinfo

import (
	"bufio"
	"errors"
	"os"
	"strconv"
	"strings"
)

// Mount is one line of mountinfo.
type Mount struct {
	MountPoint string
	FSType     string
}

// Read parses /proc/self/mountinfo: field 5 is the mount point
// (octal-escaped), and the field after the " - " separator the fs type.
func Read() ([]Mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 5 || sep < 0 || sep+1 >= len(fields) {
			continue
		}
		out = append(out, Mount{MountPoint: unescape(fields[4]), FSType: fields[sep+1]})
	}
	return out, sc.Err()
}

// Cgroup2 returns the first cgroup2 mount point.
func Cgroup2() (string, error) {
	mounts, err := Read()
	if err != nil {
		return "", err
	}
	for _, m := range mounts {
		if m.FSType == "cgroup2" {
			return m.MountPoint, nil
		}
	}
	return "", errors.New("no cgroup2 filesystem is mounted (see /proc/self/mountinfo); mount one or pass its path")
}

// unescape undoes the kernel's octal escaping of space, tab, newline and
// backslash in mountinfo paths.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
