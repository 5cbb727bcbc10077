package docker

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestChainIDs(t *testing.T) {
	a, b, c := "sha256:"+sha([]byte("a")), "sha256:"+sha([]byte("b")), "sha256:"+sha([]byte("c"))
	ab := "sha256:" + sha([]byte(a+" "+b))
	abc := "sha256:" + sha([]byte(ab+" "+c))
	require.Equal(t, []string{a, ab, abc}, ChainIDs([]string{a, b, c}))
	require.Empty(t, ChainIDs(nil))
	// A layer on another base is another chain: the same diff ID on top of b alone.
	require.NotEqual(t, ChainIDs([]string{a, c})[1], ChainIDs([]string{b, c})[1])
}

func TestMissing(t *testing.T) {
	diffs := []string{"sha256:1", "sha256:2", "sha256:3"}
	chains := ChainIDs(diffs)
	have := func(set ...string) func(string) bool {
		return func(c string) bool {
			for _, s := range set {
				if s == c {
					return true
				}
			}
			return false
		}
	}
	require.Equal(t, []int{2}, Missing(diffs, have(chains[0], chains[1])), "the base is there: only the top")
	require.Equal(t, []int{0, 1, 2}, Missing(diffs, have()), "a server with nothing")
	require.Empty(t, Missing(diffs, have(chains...)))
	// The server has layer 2's diff on another base: that is not the chain, it is sent.
	require.Equal(t, []int{1, 2}, Missing(diffs, have(chains[0], diffs[1])))
}

func TestServerImagesTagged(t *testing.T) {
	s := ServerImages{Images: map[string][]string{"sha256:x": {"app:v2", "registry.example.com/web:1"}}}
	require.True(t, s.Tagged("sha256:x", "app:v2"))
	require.True(t, s.Tagged("sha256:x", "docker.io/library/app:v2"))
	require.True(t, s.Tagged("sha256:x", "registry.example.com/web:1"))
	require.False(t, s.Tagged("sha256:x", "app:v3"))
	require.False(t, s.Tagged("sha256:y", "app:v2"))
	require.False(t, s.Tagged("sha256:x", "app"), "app is app:latest")
}

// fakeLayer is a layer of a synthetic saved image: its file's content and its diff ID.
type fakeLayer struct {
	data []byte
	diff string
}

func fakeLayers(n int) []fakeLayer {
	out := make([]fakeLayer, n)
	for i := range out {
		d := bytes.Repeat([]byte{byte('a' + i)}, 1000*(i+1))
		out[i] = fakeLayer{data: d, diff: "sha256:" + sha(d)}
	}
	return out
}

type tarEntry struct {
	name, link string
	data       []byte
}

func writeTar(t *testing.T, entries []tarEntry) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "saved.tar"))
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	tw := tar.NewWriter(f)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.data)), Typeflag: tar.TypeReg}
		if e.link != "" {
			h = &tar.Header{Name: e.name, Linkname: e.link, Mode: 0o777, Typeflag: tar.TypeSymlink}
		}
		if e.data == nil && e.link == "" && e.name[len(e.name)-1] == '/' {
			h = &tar.Header{Name: e.name, Mode: 0o755, Typeflag: tar.TypeDir}
		}
		require.NoError(t, tw.WriteHeader(h))
		_, err := tw.Write(e.data)
		require.NoError(t, err)
	}
	require.NoError(t, tw.Close())
	return f
}

func fakeConfig(layers []fakeLayer) []byte {
	var diffs []string
	for _, l := range layers {
		diffs = append(diffs, l.diff)
	}
	b, _ := json.Marshal(map[string]any{"architecture": "amd64", "os": "linux", "rootfs": map[string]any{"type": "layers", "diff_ids": diffs}})
	return b
}

// legacySave is a tar as Docker 20.10's `docker save` writes it: <id>/layer.tar per
// layer, <config hex>.json, manifest.json last; the last layer's layer.tar is a link to
// the first's (the save of an image whose two layers have the same content).
func legacySave(t *testing.T, layers []fakeLayer) (*os.File, string) {
	cfg := fakeConfig(layers)
	var entries []tarEntry
	var paths []string
	for i, l := range layers {
		dir := sha([]byte{byte(i)})
		entries = append(entries, tarEntry{name: dir + "/"}, tarEntry{name: dir + "/VERSION", data: []byte("1.0")},
			tarEntry{name: dir + "/json", data: []byte(`{}`)})
		if i == len(layers)-1 && i > 0 {
			entries = append(entries, tarEntry{name: dir + "/layer.tar", link: "../" + sha([]byte{0}) + "/layer.tar"})
		} else {
			entries = append(entries, tarEntry{name: dir + "/layer.tar", data: l.data})
		}
		paths = append(paths, dir+"/layer.tar")
	}
	m, _ := json.Marshal([]saveManifest{{Config: sha(cfg) + ".json", RepoTags: []string{"app:v2"}, Layers: paths}})
	entries = append(entries, tarEntry{name: sha(cfg) + ".json", data: cfg},
		tarEntry{name: "manifest.json", data: m}, tarEntry{name: "repositories", data: []byte(`{"app":{"v2":"x"}}`)})
	return writeTar(t, entries), "sha256:" + sha(cfg)
}

// ociSave is a tar as Docker 25+ writes it: every file a blob under blobs/sha256.
func ociSave(t *testing.T, layers []fakeLayer) (*os.File, string) {
	cfg := fakeConfig(layers)
	entries := []tarEntry{{name: "blobs/"}, {name: "blobs/sha256/"}}
	var paths []string
	for _, l := range layers {
		entries = append(entries, tarEntry{name: "blobs/sha256/" + sha(l.data), data: l.data})
		paths = append(paths, "blobs/sha256/"+sha(l.data))
	}
	om := []byte(`{"schemaVersion":2,"config":{"digest":"sha256:` + sha(cfg) + `"}}`)
	m, _ := json.Marshal([]saveManifest{{Config: "blobs/sha256/" + sha(cfg), RepoTags: []string{"app:v2"}, Layers: paths}})
	entries = append(entries, tarEntry{name: "blobs/sha256/" + sha(cfg), data: cfg}, tarEntry{name: "blobs/sha256/" + sha(om), data: om},
		tarEntry{name: "index.json", data: []byte(`{"schemaVersion":2}`)}, tarEntry{name: "manifest.json", data: m},
		tarEntry{name: "oci-layout", data: []byte(`{"imageLayoutVersion":"1.0.0"}`)})
	return writeTar(t, entries), "sha256:" + sha(cfg)
}

// names lists a tar's entries, and the content of each regular file.
func names(t *testing.T, r io.Reader) ([]string, map[string][]byte) {
	t.Helper()
	tr := tar.NewReader(r)
	var out []string
	data := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out, data
		}
		require.NoError(t, err)
		out = append(out, h.Name)
		b, err := io.ReadAll(tr)
		require.NoError(t, err)
		data[h.Name] = b
	}
}

func allNames(t *testing.T, f *os.File) []string {
	_, err := f.Seek(0, io.SeekStart)
	require.NoError(t, err)
	n, _ := names(t, f)
	return n
}

func without(list []string, drop ...string) []string {
	var out []string
	for _, s := range list {
		keep := true
		for _, d := range drop {
			keep = keep && s != d
		}
		if keep {
			out = append(out, s)
		}
	}
	return out
}

func haveChains(diffs ...string) func(string) bool {
	set := map[string]bool{}
	for _, c := range ChainIDs(diffs) {
		set[c] = true
	}
	return func(c string) bool { return set[c] }
}

// The server has the base (the first two layers): the reduced tar is the saved one
// without their layer files, byte for byte in the rest, and says what it left out.
func TestReduceSaveLegacyLayout(t *testing.T) {
	layers := fakeLayers(3)
	layers[2] = fakeLayer{data: layers[0].data, diff: "sha256:" + sha([]byte("top"))} // its file links to layer 0's
	f, id := legacySave(t, layers)
	var out bytes.Buffer
	r, err := ReduceSave(f, &out, haveChains(layers[0].diff, layers[1].diff))
	require.NoError(t, err)
	require.Equal(t, Reduced{Images: []string{id}, Layers: 3, Sent: 1, LayerBytes: 3000, SentBytes: 1000}, r)
	got, data := names(t, &out)
	d0, d1 := sha([]byte{0}), sha([]byte{1})
	// Layer 0's file stays: the top layer's link points at it.
	require.Equal(t, without(allNames(t, f), d1+"/layer.tar"), got)
	require.Equal(t, layers[0].data, data[d0+"/layer.tar"])

	// Nothing there: everything is sent.
	out.Reset()
	r, err = ReduceSave(f, &out, haveChains())
	require.NoError(t, err)
	require.Equal(t, 3, r.Sent)
	got, _ = names(t, &out)
	require.Equal(t, allNames(t, f), got)

	// All there, as when the image is there under another tag: no layer file is sent,
	// the link to one that is left out neither.
	out.Reset()
	r, err = ReduceSave(f, &out, haveChains(layers[0].diff, layers[1].diff, layers[2].diff))
	require.NoError(t, err)
	require.Equal(t, 0, r.Sent)
	got, _ = names(t, &out)
	require.Equal(t, without(allNames(t, f), d0+"/layer.tar", d1+"/layer.tar", sha([]byte{2})+"/layer.tar"), got)
}

func TestReduceSaveOCILayout(t *testing.T) {
	layers := fakeLayers(3)
	f, id := ociSave(t, layers)
	var out bytes.Buffer
	r, err := ReduceSave(f, &out, haveChains(layers[0].diff, layers[1].diff))
	require.NoError(t, err)
	require.Equal(t, Reduced{Images: []string{id}, Layers: 3, Sent: 1, LayerBytes: 6000, SentBytes: 3000}, r)
	got, data := names(t, &out)
	require.Equal(t, without(allNames(t, f), "blobs/sha256/"+sha(layers[0].data), "blobs/sha256/"+sha(layers[1].data)), got)
	require.Equal(t, layers[2].data, data["blobs/sha256/"+sha(layers[2].data)])
	require.Contains(t, got, "index.json")
	require.Contains(t, got, "manifest.json")
}

// What is sent is gzip'd: it comes back the same.
func TestReduceSaveGzipRoundTrip(t *testing.T) {
	layers := fakeLayers(2)
	f, _ := ociSave(t, layers)
	var plain, packed bytes.Buffer
	_, err := ReduceSave(f, &plain, haveChains(layers[0].diff))
	require.NoError(t, err)
	gz := gzip.NewWriter(&packed)
	_, err = ReduceSave(f, gz, haveChains(layers[0].diff))
	require.NoError(t, err)
	require.NoError(t, gz.Close())
	zr, err := gzip.NewReader(&packed)
	require.NoError(t, err)
	back, err := io.ReadAll(zr)
	require.NoError(t, err)
	require.Equal(t, plain.Bytes(), back)
}

func TestReduceSaveRefusesWhatIsNotASave(t *testing.T) {
	f := writeTar(t, []tarEntry{{name: "hello.txt", data: []byte("hi")}})
	_, err := ReduceSave(f, io.Discard, haveChains())
	require.ErrorIs(t, err, ErrNotSaveTar)
	layers := fakeLayers(2)
	cfg := fakeConfig(layers)
	m, _ := json.Marshal([]saveManifest{{Config: "c.json", Layers: []string{"one/layer.tar"}}})
	f = writeTar(t, []tarEntry{{name: "c.json", data: cfg}, {name: "manifest.json", data: m}})
	_, err = ReduceSave(f, io.Discard, haveChains())
	require.ErrorIs(t, err, ErrNotSaveTar, "two diff IDs, one layer")
}
