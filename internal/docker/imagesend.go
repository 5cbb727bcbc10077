package docker

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/distribution/reference"
)

// Sending an image to a server without a registry: the server says which layers it
// has (as chain IDs, which name a layer together with every layer under it), and the
// tar `docker save` wrote here is cut down to its manifest, configs and the layer files
// the server lacks. `docker load` looks each layer's chain ID up before it opens the
// layer's file, so one that is there is never read (moby's tarexport loader; an engine
// with the containerd image store wants every blob, and is sent the whole image).

// ServerImages is what a server's engine holds, as `handoff image present` prints it.
type ServerImages struct {
	Images map[string][]string `json:"images"` // image ID → its tags
	Chains []string            `json:"chains"` // the chain ID of every layer prefix of every image
	// Platform is the engine's os/arch ("linux/amd64"): an image of another one does
	// not run there.
	Platform string `json:"platform"`
}

// Tagged says whether the server has image id under the tag ref.
func (s ServerImages) Tagged(id, ref string) bool {
	want := normalTag(ref)
	for _, t := range s.Images[id] {
		if normalTag(t) == want {
			return true
		}
	}
	return false
}

// TagID is the ID of the image the server has under the tag ref; "" if none.
func (s ServerImages) TagID(ref string) string {
	want := normalTag(ref)
	for id, tags := range s.Images {
		for _, t := range tags {
			if normalTag(t) == want {
				return id
			}
		}
	}
	return ""
}

// Has says whether the server has the layer chain chainID.
func (s ServerImages) Has() func(chainID string) bool {
	set := make(map[string]bool, len(s.Chains))
	for _, c := range s.Chains {
		set[c] = true
	}
	return func(c string) bool { return set[c] }
}

// normalTag is ref as the engine names it in full (docker.io/library/app:latest), or
// ref itself when it is not a reference.
func normalTag(ref string) string {
	n, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return ref
	}
	return reference.TagNameOnly(n).String()
}

// ChainIDs are the chain IDs of each prefix of a stack of layers given by their diff
// IDs, bottom first: the first is its diff ID, each next one sha256("<below> <diff>").
func ChainIDs(diffIDs []string) []string {
	out := make([]string, len(diffIDs))
	for i, d := range diffIDs {
		if i == 0 {
			out[i] = d
			continue
		}
		sum := sha256.Sum256([]byte(out[i-1] + " " + d))
		out[i] = "sha256:" + hex.EncodeToString(sum[:])
	}
	return out
}

// Missing are the indexes of the layers (by diff ID, bottom first) whose chain the
// server lacks: the layers to send.
func Missing(diffIDs []string, have func(chainID string) bool) []int {
	var out []int
	for i, c := range ChainIDs(diffIDs) {
		if !have(c) {
			out = append(out, i)
		}
	}
	return out
}

// Reduced says what ReduceSave wrote.
type Reduced struct {
	Images     []string // the image IDs in the tar
	Layers     int      // layers of the images
	Sent       int      // of them, written
	LayerBytes int64    // the size of the images' layer files in the saved tar
	SentBytes  int64    // of which, written
}

// ErrNotSaveTar is a tar that is not what `docker save` writes.
var ErrNotSaveTar = errors.New("not a docker save tar")

// savedEntry is one entry of a saved tar and where its data starts in the file.
type savedEntry struct {
	hdr    *tar.Header
	offset int64
}

// saveManifest is one entry of a saved tar's manifest.json (both the legacy layout,
// <id>/layer.tar, and the OCI layout of Docker 25+, blobs/sha256/<hex>, have it).
type saveManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// ReduceSave writes to dst the tar saved holds (as `docker save` wrote it) without the
// layer files of the layers whose chain the server has. Everything else (manifest.json,
// configs, index.json, the OCI manifests) is written as it is.
func ReduceSave(saved *os.File, dst io.Writer, have func(chainID string) bool) (Reduced, error) {
	entries, err := indexTar(saved)
	if err != nil {
		return Reduced{}, err
	}
	byName := make(map[string]savedEntry, len(entries))
	for _, e := range entries {
		byName[path.Clean(e.hdr.Name)] = e
	}
	// resolve follows a (legacy layout) layer.tar that links to another layer's.
	resolve := func(name string) string {
		name = path.Clean(name)
		for range 8 {
			e, ok := byName[name]
			if !ok || e.hdr.Typeflag != tar.TypeSymlink {
				return name
			}
			name = path.Clean(path.Join(path.Dir(name), e.hdr.Linkname))
		}
		return name
	}
	read := func(name string) ([]byte, error) {
		e, ok := byName[resolve(name)]
		if !ok || e.hdr.Typeflag != tar.TypeReg {
			return nil, fmt.Errorf("%w: no file %s in it", ErrNotSaveTar, name)
		}
		return io.ReadAll(io.NewSectionReader(saved, e.offset, e.hdr.Size))
	}
	raw, err := read("manifest.json")
	if err != nil {
		return Reduced{}, err
	}
	var manifest []saveManifest
	if err := json.Unmarshal(raw, &manifest); err != nil {
		return Reduced{}, fmt.Errorf("%w: manifest.json: %v", ErrNotSaveTar, err)
	}
	var r Reduced
	layer, needed := map[string]bool{}, map[string]bool{}
	for _, m := range manifest {
		cfg, err := read(m.Config)
		if err != nil {
			return Reduced{}, err
		}
		var img struct {
			RootFS struct {
				DiffIDs []string `json:"diff_ids"`
			} `json:"rootfs"`
		}
		if err := json.Unmarshal(cfg, &img); err != nil {
			return Reduced{}, fmt.Errorf("%w: config %s: %v", ErrNotSaveTar, m.Config, err)
		}
		if len(img.RootFS.DiffIDs) != len(m.Layers) {
			return Reduced{}, fmt.Errorf("%w: %s names %d layers, its config %d", ErrNotSaveTar, m.Config, len(m.Layers), len(img.RootFS.DiffIDs))
		}
		sum := sha256.Sum256(cfg)
		r.Images = append(r.Images, "sha256:"+hex.EncodeToString(sum[:]))
		missing := map[int]bool{}
		for _, i := range Missing(img.RootFS.DiffIDs, have) {
			missing[i] = true
		}
		for i, l := range m.Layers {
			f := resolve(l)
			e, ok := byName[f]
			if !ok {
				return Reduced{}, fmt.Errorf("%w: no layer file %s in it", ErrNotSaveTar, l)
			}
			r.Layers++
			if !layer[f] {
				r.LayerBytes += e.hdr.Size // a file two layers link to is in the tar once
			}
			layer[f] = true
			if missing[i] {
				r.Sent++
				if !needed[f] {
					r.SentBytes += e.hdr.Size
				}
				needed[f] = true
			}
		}
	}
	left := func(name string) bool {
		f := resolve(name)
		return layer[f] && !needed[f]
	}
	tw := tar.NewWriter(dst)
	for _, e := range entries {
		if left(e.hdr.Name) {
			continue
		}
		if err := tw.WriteHeader(e.hdr); err != nil {
			return Reduced{}, err
		}
		if e.hdr.Typeflag == tar.TypeReg && e.hdr.Size > 0 {
			if _, err := io.Copy(tw, io.NewSectionReader(saved, e.offset, e.hdr.Size)); err != nil {
				return Reduced{}, err
			}
		}
	}
	return r, tw.Close()
}

// indexTar lists a tar file's entries with the offset of each one's data (a saved tar's
// manifest.json comes last: it is read before anything is written).
func indexTar(f *os.File) ([]savedEntry, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	tr := tar.NewReader(f)
	var out []savedEntry
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrNotSaveTar, err)
		}
		// The reader seeks past each entry's data: the file's offset is where it starts.
		off, err := f.Seek(0, io.SeekCurrent)
		if err != nil {
			return nil, err
		}
		if hdr.Typeflag == tar.TypeReg && strings.Contains(hdr.Name, "..") {
			return nil, fmt.Errorf("%w: entry %q", ErrNotSaveTar, hdr.Name)
		}
		out = append(out, savedEntry{hdr: hdr, offset: off})
	}
}
