package ociimage_test

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/warpnet/warpnet/internal/ociimage"
)

func sample(name string) ociimage.Image {
	return ociimage.Image{
		Name:       name,
		Dirs:       map[string]int64{"/tmp": 0o1777},
		Files:      []ociimage.File{{Path: "/usr/bin/b", Mode: 0o755, Data: []byte("bbb")}, {Path: "/usr/bin/a", Mode: 0o755, Data: []byte("aaa")}},
		Entrypoint: []string{"/usr/bin/a"},
		Env:        []string{"PATH=/usr/bin"},
	}
}

func tarOf(t *testing.T, imgs ...ociimage.Image) ([]byte, []ociimage.Built) {
	t.Helper()
	built, err := ociimage.Build(imgs...)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := ociimage.WriteTar(&buf, built); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), built
}

// Same input, same bytes: the digest is reproducible.
func TestReproducible(t *testing.T) {
	a, ba := tarOf(t, sample("localhost/x:1"))
	b, bb := tarOf(t, sample("localhost/x:1"))
	if !bytes.Equal(a, b) || ba[0].Digest != bb[0].Digest {
		t.Fatalf("two builds differ: %s vs %s", ba[0].Digest, bb[0].Digest)
	}
	c := sample("localhost/x:1")
	c.Files[0].Data = []byte("changed")
	if _, bc := tarOf(t, c); bc[0].Digest == ba[0].Digest {
		t.Fatal("different content, same digest")
	}
}

// The image is a valid OCI image, and the layout's index names it the way
// `ctr images import` reads it.
func TestValidLayout(t *testing.T) {
	data, built := tarOf(t, sample("localhost/x:1"), sample("registry.k8s.io/pause:3.10"))
	// What a reader of the tar sees is a valid OCI layout (digests, sizes,
	// media types, layer contents).
	dir := t.TempDir()
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		p := filepath.Join(dir, h.Name)
		_ = os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Index(idx); err != nil {
		t.Fatalf("the written layout is not valid: %v", err)
	}
	tr = tar.NewReader(bytes.NewReader(data))
	var index struct {
		Manifests []struct {
			Digest      string            `json:"digest"`
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
	}
	files := map[string]bool{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = true
		if h.Name == "index.json" {
			if err := json.NewDecoder(tr).Decode(&index); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !files["oci-layout"] || len(index.Manifests) != 2 {
		t.Fatalf("layout: files %v, index %+v", files, index)
	}
	for i, m := range index.Manifests {
		if m.Annotations["io.containerd.image.name"] != built[i].Name || m.Digest != built[i].Digest {
			t.Errorf("index entry %d: %+v, want %s %s", i, m, built[i].Name, built[i].Digest)
		}
		if !files["blobs/sha256/"+m.Digest[len("sha256:"):]] {
			t.Errorf("manifest blob %s missing", m.Digest)
		}
	}
	layers, _ := built[0].Image.Layers()
	rc, _ := layers[0].Uncompressed()
	defer rc.Close()
	lr := tar.NewReader(rc)
	var names []string
	for {
		h, err := lr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !h.ModTime.IsZero() && h.ModTime.Unix() != 0 || h.Uid != 0 {
			t.Errorf("%s: mtime %v uid %d", h.Name, h.ModTime, h.Uid)
		}
		names = append(names, h.Name)
	}
	want := []string{"tmp/", "usr/", "usr/bin/", "usr/bin/a", "usr/bin/b"}
	if len(names) != len(want) {
		t.Fatalf("layer entries %v, want %v", names, want)
	}
	for i := range want {
		if names[i] != want[i] {
			t.Fatalf("layer entries %v, want %v", names, want)
		}
	}
}
