package mountinfo

import "testing"

func TestUnescape(t *testing.T) {
	if got := unescape(`/tmp/a\040b\134c`); got != `/tmp/a b\c` {
		t.Errorf("unescape = %q", got)
	}
}

func TestReadFindsRoot(t *testing.T) {
	mounts, err := Read()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		if m.MountPoint == "/" && m.FSType != "" {
			return
		}
	}
	t.Fatalf("no / mount among %d", len(mounts))
}
