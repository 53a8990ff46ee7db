// Package ociimage builds container images without a container engine: each
// image is one layer of files on an empty base, written as an OCI image
// layout tar that `ctr images import` (containerd) accepts. Output is
// reproducible: the same files, names and settings give the same bytes, so
// the same digests (no timestamps, fixed owners, sorted entries).
//
// `make image` packs warpnet's binaries with it (install/mkimage), and the
// real-cluster tests build their sandbox (pause) and app images with it.
package ociimage

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/warpnet/warpnet/internal/atomicfile"
)

// File is one regular file of an image's layer.
type File struct {
	Path string // absolute path inside the image, e.g. /usr/bin/warpd
	Mode int64  // permission bits, e.g. 0o755
	Data []byte
}

// Image is one single-layer image.
type Image struct {
	// Name is the full reference containerd lists it under, e.g.
	// "localhost/warpnet:v1" or "registry.k8s.io/pause:3.10".
	Name string
	// Dirs are extra directories in the layer (e.g. /tmp with mode 01777),
	// besides the parents of Files, which are added with mode 0755.
	Dirs       map[string]int64
	Files      []File
	Entrypoint []string
	Cmd        []string
	Env        []string
	Labels     map[string]string
}

// ReadFile returns a File with the contents of the file src on this machine.
func ReadFile(imagePath, src string, mode int64) (File, error) {
	b, err := os.ReadFile(src)
	if err != nil {
		return File{}, err
	}
	return File{Path: imagePath, Mode: mode, Data: b}, nil
}

// Built is the result of Build for one image.
type Built struct {
	Name   string
	Digest string // manifest digest, sha256:...
	Image  v1.Image
}

// Build makes the images (not yet written).
func Build(imgs ...Image) ([]Built, error) {
	var out []Built
	for _, im := range imgs {
		if im.Name == "" {
			return nil, fmt.Errorf("ociimage: an image needs a name")
		}
		layer, err := layerOf(im)
		if err != nil {
			return nil, fmt.Errorf("ociimage: %s: %w", im.Name, err)
		}
		base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
		base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
		img, err := mutate.AppendLayers(base, layer)
		if err != nil {
			return nil, fmt.Errorf("ociimage: %s: %w", im.Name, err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			return nil, err
		}
		cf = cf.DeepCopy()
		cf.Architecture, cf.OS = "amd64", "linux"
		cf.Config.Entrypoint, cf.Config.Cmd, cf.Config.Env, cf.Config.Labels = im.Entrypoint, im.Cmd, im.Env, im.Labels
		cf.History = nil // no creation times
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			return nil, err
		}
		d, err := img.Digest()
		if err != nil {
			return nil, err
		}
		out = append(out, Built{Name: im.Name, Digest: d.String(), Image: img})
	}
	return out, nil
}

// WriteTar writes the images as one OCI image layout tar (oci-layout,
// index.json annotated with each image's name, blobs/sha256/...).
func WriteTar(w io.Writer, built []Built) error {
	type manifestRef struct {
		MediaType   types.MediaType   `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int64             `json:"size"`
		Annotations map[string]string `json:"annotations"`
	}
	index := struct {
		SchemaVersion int           `json:"schemaVersion"`
		MediaType     string        `json:"mediaType"`
		Manifests     []manifestRef `json:"manifests"`
	}{SchemaVersion: 2, MediaType: string(types.OCIImageIndex)}
	blobs := map[string][]byte{}
	for _, b := range built {
		raw, err := b.Image.RawManifest()
		if err != nil {
			return err
		}
		cfg, err := b.Image.RawConfigFile()
		if err != nil {
			return err
		}
		blobs[b.Digest] = raw
		blobs[digestOf(cfg)] = cfg
		layers, err := b.Image.Layers()
		if err != nil {
			return err
		}
		for _, l := range layers {
			d, err := l.Digest()
			if err != nil {
				return err
			}
			rc, err := l.Compressed()
			if err != nil {
				return err
			}
			data, err := io.ReadAll(rc)
			rc.Close()
			if err != nil {
				return err
			}
			blobs[d.String()] = data
		}
		tag := b.Name[strings.LastIndex(b.Name, ":")+1:]
		index.Manifests = append(index.Manifests, manifestRef{
			MediaType: types.OCIManifestSchema1, Digest: b.Digest, Size: int64(len(raw)),
			Annotations: map[string]string{"io.containerd.image.name": b.Name, "org.opencontainers.image.ref.name": tag},
		})
	}
	idx, err := json.Marshal(index)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	add := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := add("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	if err := add("index.json", idx); err != nil {
		return err
	}
	names := make([]string, 0, len(blobs))
	for d := range blobs {
		names = append(names, d)
	}
	sort.Strings(names)
	for _, d := range names {
		if err := add("blobs/sha256/"+strings.TrimPrefix(d, "sha256:"), blobs[d]); err != nil {
			return err
		}
	}
	return tw.Close()
}

// WriteFile builds the images and writes them to path (atomically: a
// temporary file renamed into place). It returns what it built.
func WriteFile(path string, imgs ...Image) ([]Built, error) {
	built, err := Build(imgs...)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := WriteTar(&buf, built); err != nil {
		return nil, err
	}
	return built, atomicfile.Replace(path, buf.Bytes(), 0o644)
}

func digestOf(b []byte) string {
	h, _, _ := v1.SHA256(bytes.NewReader(b))
	return h.String()
}

// layerOf packs the image's files (and their parent directories) into a
// deterministic tar: sorted, owned by root, no times.
func layerOf(im Image) (v1.Layer, error) {
	dirs := map[string]int64{}
	for d, m := range im.Dirs {
		dirs[strings.Trim(path.Clean(d), "/")] = m
	}
	files := map[string]File{}
	for _, f := range im.Files {
		p := strings.Trim(path.Clean(f.Path), "/")
		if p == "" || p == "." || strings.HasPrefix(p, "..") {
			return nil, fmt.Errorf("bad file path %q", f.Path)
		}
		if _, dup := files[p]; dup {
			return nil, fmt.Errorf("file %s given twice", f.Path)
		}
		files[p] = f
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if _, ok := dirs[d]; !ok {
				dirs[d] = 0o755
			}
		}
	}
	var names []string
	for d := range dirs {
		names = append(names, d+"/")
	}
	for p := range files {
		names = append(names, p)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		h := &tar.Header{Name: n, Uid: 0, Gid: 0, Format: tar.FormatPAX}
		if strings.HasSuffix(n, "/") {
			h.Typeflag, h.Mode = tar.TypeDir, dirs[strings.TrimSuffix(n, "/")]
			if err := tw.WriteHeader(h); err != nil {
				return nil, err
			}
			continue
		}
		f := files[n]
		h.Typeflag, h.Mode, h.Size = tar.TypeReg, f.Mode, int64(len(f.Data))
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer))
}
